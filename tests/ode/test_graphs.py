"""DiscreteAdjoint(cuda_graphs=True): captured steps give the eager adjoint's gradients.

On CPU the static-buffer path runs eagerly (``DiscreteAdjoint(..., _static_buffers=True)``,
see ``_adjoint``): buffer plumbing, the cache and its keys are checked without a GPU; the
``gpu`` tests check real capture."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

import odeflow
from odeflow.ode import _graphs

from .test_adjoint import DropoutField, MLPField


class TupleField(nn.Module):
    """A two-leaf state of different shapes: (x (n, d), s (n,))."""

    def __init__(self, d: int = 3):
        super().__init__()
        self.f = MLPField(d, 16)

    def forward(self, t, y):
        x, s = y
        dx = self.f(t, x)
        return dx, -(x * dx).sum(1) * s.tanh()


def _adjoint(cuda_graphs: bool = True, **kw) -> odeflow.DiscreteAdjoint:
    """The adjoint whose captured-step path runs off CUDA too (eagerly, over static buffers)."""
    return odeflow.DiscreteAdjoint(cuda_graphs=cuda_graphs, _static_buffers=True, **kw)


@pytest.fixture
def static():
    """An empty capture cache before and after the test."""
    _graphs.clear_cuda_graphs()
    yield
    _graphs.clear_cuda_graphs()


def _grads(func, y0, t, graphs, **kw):
    """Loss on every output time (injected adjoints between steps), all gradients."""
    func.zero_grad(set_to_none=True)
    leaves = list(y0) if isinstance(y0, tuple) else [y0]
    ys = odeflow.solve(func, y0, t, gradient=_adjoint(graphs), **kw)
    out = list(ys.ys) if isinstance(ys.ys, tuple) else [ys.ys]

    def weight(o):  # a different weight per output time
        return 1 + torch.arange(o.shape[0], device=o.device).view(-1, *[1] * (o.ndim - 1))

    loss = sum((o.float() ** 2 * weight(o)).sum() for o in out)
    gs = torch.autograd.grad(loss, leaves + list(func.parameters()))
    return [g.detach() for g in gs], ys


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_static_path_equals_eager_bitwise(static, precision):
    if precision == "fp16" and not odeflow.ode.get_precision("fp16", torch.device("cpu")).compute:
        pytest.skip("no fp16 autocast on this CPU build")
    torch.manual_seed(0)
    dt = torch.float64 if precision == "fp32" else torch.float32
    f = MLPField(3, 16).to(dt)
    y0 = torch.randn(6, 3, dtype=dt, requires_grad=True)
    t = torch.linspace(0, 1, 4, dtype=dt)
    kw = dict(steps_per_interval=3, precision=precision)
    ge, se = _grads(f, y0, t, False, **kw)
    gg, sg = _grads(f, y0, t, True, **kw)
    for a, b in zip(ge, gg):
        assert torch.equal(a, b)
    assert torch.equal(se.ys, sg.ys)
    assert se.nfe == sg.nfe and se.stats.nfe == sg.stats.nfe


def test_static_path_tuple_state_and_cache_reuse(static):
    torch.manual_seed(1)
    f = TupleField().double()
    y0 = (torch.randn(5, 3, dtype=torch.float64, requires_grad=True),
          torch.randn(5, dtype=torch.float64, requires_grad=True))  # fmt: skip
    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    ge, _ = _grads(f, y0, t, False, steps_per_interval=2)
    for _ in range(2):  # the second call reuses the first call's entry
        gg, _ = _grads(f, y0, t, True, steps_per_interval=2)
        for a, b in zip(ge, gg):
            assert torch.equal(a, b)
    assert [len(v) for v in _graphs._CACHE.values()] == [1]


def test_cache_keys_on_shapes_and_parameter_storage(static):
    f = MLPField(3, 16).double()
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    run = dict(gradient=_adjoint(True))
    odeflow.odeint(f, torch.randn(4, 3, dtype=torch.float64), t, **run).sum().backward()
    odeflow.odeint(f, torch.randn(7, 3, dtype=torch.float64), t, **run).sum().backward()
    assert len(_graphs._CACHE[id(f)]) == 2  # a second batch size: a second capture
    with torch.no_grad():  # an in-place update keeps the entry (the replays see it)
        f.l1.weight.mul_(0.5)
    odeflow.odeint(f, torch.randn(7, 3, dtype=torch.float64), t, **run).sum().backward()
    assert len(_graphs._CACHE[id(f)]) == 2
    f.l1.weight = nn.Parameter(f.l1.weight.detach().clone())  # a new tensor: recapture
    odeflow.odeint(f, torch.randn(7, 3, dtype=torch.float64), t, **run).sum().backward()
    assert len(_graphs._CACHE[id(f)]) == 3


def test_cache_dies_with_the_field(static):
    f = MLPField(3, 16).double()
    odeflow.odeint(f, torch.randn(4, 3, dtype=torch.float64), torch.tensor([0.0, 1.0]).double(),
                   gradient=_adjoint(True)).sum().backward()  # fmt: skip
    assert len(_graphs._CACHE) == 1
    del f
    gc.collect()
    assert len(_graphs._CACHE) == 0  # the captures hold no reference to the field


def test_bound_method_field_reuses_its_captures(static):
    class Owner:
        def __init__(self):
            self.a = torch.tensor([[-1.0, 0.5], [0.0, -2.0]], dtype=torch.float64)

        def rhs(self, t, y):
            return y @ self.a

    o = Owner()
    y0 = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    grad = _adjoint(True)
    gs = [torch.autograd.grad(odeflow.odeint(o.rhs, y0, t, gradient=grad).sum(), y0)[0]
          for _ in range(2)]  # fmt: skip
    assert torch.equal(*gs)
    entries = list(_graphs._CACHE[id(o)].values())  # keyed by the owner, not the bound method
    assert len(entries) == 1 and entries[0].backward is not None


def test_time_gradients_fall_back_to_eager(static):
    torch.manual_seed(2)
    f = MLPField(3, 16).double()
    y0 = torch.randn(4, 3, dtype=torch.float64)
    t = torch.linspace(0, 1, 3, dtype=torch.float64, requires_grad=True)
    grads = []
    for graphs in (False, True):
        ys = odeflow.odeint(f, y0, t, gradient=_adjoint(graphs))
        grads.append(torch.autograd.grad(ys[-1].square().sum(), t)[0])
    assert torch.equal(*grads)


def test_bad_options():
    with pytest.raises(ValueError, match="recompute='step'"):
        odeflow.DiscreteAdjoint(recompute="stage", cuda_graphs=True)
    with pytest.raises(TypeError, match="True or False"):
        odeflow.DiscreteAdjoint(cuda_graphs="yes")


def test_parameters_must_belong_to_the_module(static):
    w = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    y0, t = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0.0, 1.0]).double()
    grad = _adjoint(True)
    with pytest.raises(
        ValueError, match=r"parameters of func \(an nn\.Module, or a method of one\)"
    ):
        odeflow.odeint(lambda t, y: y @ w, y0, t, params=[w], gradient=grad)
    with pytest.raises(ValueError, match="1 of the 5 tensors"):
        f = MLPField(3, 16).double()
        odeflow.odeint(f, y0, t, params=[*f.parameters(), w], gradient=grad)
    # no parameter gradients: any callable
    y0.requires_grad_()
    ys = odeflow.odeint(lambda t, y: y @ w.detach(), y0, t, gradient=grad)
    ys.sum().backward()
    assert y0.grad is not None


def _running_statistics(device):
    """Captured steps of a batch-norm field: running statistics after backward are those of
    the eager adjoint (the rebuild's second update undone), call after call."""
    from .test_adjoint import BatchNormField

    torch.manual_seed(5)
    fe = BatchNormField().to(device, torch.float64)
    fg = BatchNormField().to(device, torch.float64)
    fg.load_state_dict(fe.state_dict())
    y0 = torch.randn(6, 3, dtype=torch.float64, device=device)
    t = torch.linspace(0, 1, 3, dtype=torch.float64, device=device)
    for _ in range(3):
        for f, graphs in ((fe, False), (fg, True)):
            _solve_grads(f, y0, t, graphs, steps_per_interval=2)
        for a, b in zip(fe.buffers(), fg.buffers()):
            if device == "cpu":  # the static path runs the same eager kernels: bitwise
                assert torch.equal(a, b)
            else:  # a capture may use other GEMM algorithms than eager (float64 round-off)
                torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)


def test_running_statistics_after_captured_steps(static):
    _running_statistics("cpu")


@pytest.mark.gpu
def test_gpu_running_statistics_after_captured_steps(cuda):
    """Graph replays update buffers without bumping their versions: the buffers seen changing
    at capture are the ones restored."""
    _graphs.clear_cuda_graphs()
    _running_statistics(cuda)
    _graphs.clear_cuda_graphs()


def _refuses_stochastic_field(device):
    """A captured rebuild cannot repeat the forward's random draws: a clear error."""
    f = DropoutField().to(device, torch.float64)
    y0 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True, device=device)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64, device=device)
    grad = _adjoint(True)
    with pytest.raises(ValueError, match="deterministic vector field"):
        odeflow.odeint(f, y0, t, gradient=grad)
    f.eval()  # no draws in eval mode
    odeflow.odeint(f, y0, t, gradient=grad).sum().backward()
    assert y0.grad is not None


def test_stochastic_field_is_refused(static):
    _refuses_stochastic_field("cpu")


@pytest.mark.gpu
def test_gpu_stochastic_field_is_refused(cuda):
    _graphs.clear_cuda_graphs()
    _refuses_stochastic_field(cuda)
    _graphs.clear_cuda_graphs()


def test_cpu_without_force_takes_the_eager_path():
    _graphs.clear_cuda_graphs()
    f = MLPField(3, 16)
    grad = odeflow.DiscreteAdjoint(cuda_graphs=True)
    odeflow.odeint(f, torch.randn(4, 3), torch.tensor([0.0, 1.0]),
                   gradient=grad).sum().backward()  # fmt: skip
    assert len(_graphs._CACHE) == 0 and odeflow.ode.graph_memory_bytes() == 0
    # off CUDA the option has no effect, so neither do its requirements
    w = torch.randn(3, 3, requires_grad=True)
    odeflow.odeint(lambda t, y: y @ w, torch.randn(4, 3), torch.tensor([0.0, 1.0]), params=[w],
                   gradient=grad).sum().backward()  # fmt: skip
    assert w.grad is not None


@pytest.fixture
def captures(monkeypatch):
    """Counts the captures taken, per kind ("forward"/"backward")."""
    counts = {"forward": 0, "backward": 0}
    real = _graphs.StepGraphs.capture

    def counting(self, kind, fn, inputs):
        counts[kind] += 1
        return real(self, kind, fn, inputs)

    monkeypatch.setattr(_graphs.StepGraphs, "capture", counting)
    return counts


def _solve_grads(func, y0, t, graphs, **kw):
    y0 = y0.detach().requires_grad_()
    ys = odeflow.odeint(func, y0, t, gradient=_adjoint(graphs), **kw)
    return torch.autograd.grad((ys**2).sum(), y0)[0]


def test_unhashable_field_keeps_its_captures(static, captures):
    """A dataclass instance (eq=True makes it unhashable) is cached by identity: one forward
    and one backward capture across calls, released with the field."""
    import dataclasses

    @dataclasses.dataclass
    class Field:
        a: torch.Tensor

        def __call__(self, t, y):
            return torch.tanh(y @ self.a)

    f = Field(torch.randn(3, 3, dtype=torch.float64))
    y0, t = torch.randn(4, 3, dtype=torch.float64), torch.linspace(0, 1, 3, dtype=torch.float64)
    ge = _solve_grads(f, y0, t, False, steps_per_interval=4)
    for _ in range(2):
        assert torch.equal(_solve_grads(f, y0, t, True, steps_per_interval=4), ge)
    assert captures == {"forward": 1, "backward": 1}
    del f
    gc.collect()
    assert len(_graphs._CACHE) == 0


def test_field_without_weakref_captures_once_per_solve(static, captures):
    """A callable that cannot be weakly referenced keeps its captures for one solve: the
    forward captures once (not once per step) and the backward replays that solve's capture."""

    class Slotted:
        __slots__ = ("a",)

        def __init__(self, a):
            self.a = a

        def __call__(self, t, y):
            return torch.tanh(y @ self.a)

    f = Slotted(torch.randn(3, 3, dtype=torch.float64))
    y0, t = torch.randn(4, 3, dtype=torch.float64), torch.linspace(0, 1, 3, dtype=torch.float64)
    ge = _solve_grads(f, y0, t, False, steps_per_interval=4)
    assert torch.equal(_solve_grads(f, y0, t, True, steps_per_interval=4), ge)
    assert captures == {"forward": 1, "backward": 1}
    assert len(_graphs._CACHE) == 0  # nothing global: nothing to leak


def test_cache_keys_on_train_eval_mode_and_state_structure(static):
    class Normed(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = MLPField(3, 16).double()
            self.norm = nn.BatchNorm1d(3).double()  # batch statistics in train mode only

        def forward(self, t, y):
            return {k: self.norm(self.f(t, v)) for k, v in y.items()}

    f = Normed()
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    a, b = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    run = dict(gradient=_adjoint(True))
    odeflow.odeint(f, {"a": a, "b": b}, t, **run)["a"].sum().backward()
    f.eval()  # running statistics: a graph recorded in train mode must not be replayed
    odeflow.odeint(f, {"a": a, "b": b}, t, **run)["a"].sum().backward()
    assert len(_graphs._CACHE[id(f)]) == 2
    odeflow.odeint(f, {"b": b, "a": a}, t, **run)["a"].sum().backward()  # other leaf order
    assert len(_graphs._CACHE[id(f)]) == 3


def test_inference_mode_capture_then_training(static):
    """Static buffers made under torch.inference_mode stay usable by later normal calls."""
    torch.manual_seed(3)
    f = MLPField(3, 16).double()
    y0, t = torch.randn(4, 3, dtype=torch.float64), torch.linspace(0, 1, 3, dtype=torch.float64)
    grad = _adjoint(True)
    with torch.inference_mode():
        yi = odeflow.odeint(f, y0, t, gradient=grad)
    with torch.no_grad():
        yn = odeflow.odeint(f, y0, t, gradient=grad)
    assert torch.equal(yi, yn)
    assert torch.equal(_solve_grads(f, y0, t, True), _solve_grads(f, y0, t, False))


def test_bound_method_of_a_module_with_parameters(static):
    """A method of an nn.Module as the field: its parameters are rebound through the owner
    (gradients bitwise equal to the eager adjoint), and the captures live with the owner."""

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = MLPField(3, 16)

        def rhs(self, t, y):
            return self.f(t, y) * 0.5

    torch.manual_seed(4)
    m = Model().double()
    y0, t = torch.randn(4, 3, dtype=torch.float64), torch.linspace(0, 1, 3, dtype=torch.float64)
    out = []
    for graphs in (False, True, True):
        ys = odeflow.odeint(m.rhs, y0, t, gradient=_adjoint(graphs),
                            params=list(m.parameters()))  # fmt: skip
        out.append(torch.autograd.grad((ys**2).sum(), list(m.parameters())))
    for gg in out[1:]:
        for a, b in zip(out[0], gg):
            assert torch.equal(a, b)
    assert len(_graphs._CACHE[id(m)]) == 1


# ------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_gpu_captured_gradients_equal_eager(cuda, precision):
    _graphs.clear_cuda_graphs()
    torch.manual_seed(0)
    f = MLPField(8, 64).to(cuda)
    y0 = torch.randn(256, 8, device=cuda, requires_grad=True)
    t = torch.linspace(0, 1, 4, device=cuda)
    kw = dict(steps_per_interval=4, precision=precision)
    # steps that move the weights by about half their size and stay bounded (lr = 0.1 blew
    # them up to 1e7 by the third call, past fp16's range: NaN in both solves)
    opt = torch.optim.SGD(f.parameters(), lr=1e-4)
    for _ in range(3):  # capture, then replays across in-place optimizer updates
        ge, se = _grads(f, y0, t, False, **kw)
        gg, sg = _grads(f, y0, t, True, **kw)
        assert all(torch.isfinite(g).all() for g in ge)
        for a, b in zip(ge, gg):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        assert sg.nfe == se.nfe and sg.stats.nfe == se.stats.nfe
        with torch.no_grad():
            for p, g in zip(f.parameters(), gg[1:]):
                p.grad = g
        opt.step()
    assert odeflow.ode.graph_memory_bytes() > 0
    _graphs.clear_cuda_graphs()


_UNSAFE = """
import torch, odeflow
from torch import nn

class Syncing(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, t, y):
        if float(y.abs().max()) > 1e6:  # a host sync: not capturable
            raise AssertionError
        return self.lin(y)

f = Syncing().cuda()
y0, t = torch.randn(4, 3, device="cuda"), torch.tensor([0.0, 1.0], device="cuda")
try:
    odeflow.odeint(f, y0, t, gradient=odeflow.DiscreteAdjoint(cuda_graphs=True)).sum().backward()
except RuntimeError as e:
    assert "capture-safe" in str(e), e
    print("clear error")
else:
    raise AssertionError("no error")
torch.randn(8, device="cuda")  # random draws still work after the failed capture
odeflow.odeint(f, y0, t).sum().backward()  # and eager solves
torch.cuda.synchronize()
print("usable")
"""


@pytest.mark.gpu
def test_gpu_capture_unsafe_field_gets_a_clear_error(cuda):
    # a failed capture can leave process-wide CUDA state behind: run it in its own process
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", _UNSAFE], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["clear", "error", "usable"]
