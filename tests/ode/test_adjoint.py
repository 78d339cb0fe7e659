"""The discrete adjoint equals backprop through the same steps (float64, 1e-10 relative)."""

from __future__ import annotations

import gc
import math
import types

import pytest
import torch
from torch import nn

import odeflow
from odeflow.ode import TABLEAUS, ButcherTableau, DiscreteAdjoint

D64 = torch.float64
# the discrete adjoint rebuilds one step's graph ("step") or one stage's graph ("stage") at a time
RECOMPUTE = ["step", "stage"]


class MLPField(nn.Module):
    def __init__(self, d: int = 3, w: int = 8):
        super().__init__()
        self.l1 = nn.Linear(d + 1, w)
        self.l2 = nn.Linear(w, d)

    def forward(self, t, y):
        tt = t.expand(y.shape[0], 1).to(y.dtype)
        return self.l2(torch.tanh(self.l1(torch.cat([y, tt], dim=1))))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def _grads(gradient, method, t, spi=2):
    torch.manual_seed(0)
    f = MLPField().to(D64)
    y0 = torch.randn(5, 3, dtype=D64, requires_grad=True)
    tt = t.clone().requires_grad_(True)
    ys = odeflow.odeint(f, y0, tt, method=method, gradient=gradient, steps_per_interval=spi)
    w = torch.linspace(-1, 1, ys.numel(), dtype=D64).reshape(ys.shape)
    loss = (w * ys).sum() + (ys[-1] ** 2).sum()  # losses on intermediate outputs too
    gs = torch.autograd.grad(loss, [y0, tt, *f.parameters()])
    return ys.detach(), gs


# a user tableau whose stages 3 and 4 do not influence the step (b = 0, feeding only each
# other), and whose stage 1 has b = 0 but feeds stage 2: exercises the stage bookkeeping
DEAD = ButcherTableau(
    "dead-stages",
    a=((), (0.5,), (1.0, 0.0), (0.0, 0.0, 1.0)),
    b=(0.0, 1.0, 0.0, 0.0),
    c=(0.0, 0.5, 1.0, 1.0),
    order=2,
)


@pytest.mark.parametrize("method", [*TABLEAUS, DEAD])
@pytest.mark.parametrize("decreasing", [False, True])
@pytest.mark.parametrize("recompute", RECOMPUTE)
def test_adjoint_equals_backprop(method, decreasing, recompute):
    t = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=D64)
    if decreasing:
        t = t.flip(0)
    ya, ga = _grads(DiscreteAdjoint(recompute=recompute), method, t)
    yb, gb = _grads("backprop", method, t)
    assert torch.equal(ya, yb)
    for x, y in zip(ga, gb):
        assert _rel(x, y) < 1e-10


@pytest.mark.parametrize("recompute", RECOMPUTE)
def test_tuple_and_dict_states_adjoint_equals_backprop(recompute):
    torch.manual_seed(1)
    W = torch.randn(3, 3, dtype=D64, requires_grad=True)
    v = torch.randn(2, dtype=D64, requires_grad=True)

    def f(t, y):
        a, b = y["a"], y["b"]
        return {"a": torch.tanh(a @ W) * torch.cos(t) + b.sum(), "b": -b * v * (a**2).mean()}

    def run(gradient):
        a0 = torch.randn(4, 3, dtype=D64, generator=torch.Generator().manual_seed(2))
        b0 = torch.randn(2, dtype=D64, generator=torch.Generator().manual_seed(3))
        a0.requires_grad_()
        b0.requires_grad_()
        t = torch.linspace(0, 1.5, 4, dtype=D64, requires_grad=True)
        ys = odeflow.odeint(
            f,
            {"a": a0, "b": b0},
            t,
            method="rk38",
            gradient=gradient,
            steps_per_interval=3,
            params=[W, v],
        )
        assert ys["a"].shape == (4, 4, 3) and ys["b"].shape == (4, 2)
        loss = (ys["a"] ** 2).sum() + ys["b"][1:].sin().sum()
        return torch.autograd.grad(loss, [a0, b0, t, W, v])

    for x, y in zip(run(DiscreteAdjoint(recompute=recompute)), run("backprop")):
        assert _rel(x, y) < 1e-10


@pytest.mark.parametrize("recompute", RECOMPUTE)
def test_output_leaves_without_graph(recompute):
    """f may return leaves that depend on no input (constants, zeros)."""

    def f(t, y):
        return (torch.ones_like(y[0]), torch.zeros_like(y[1]) + y[0].sum() * t)

    out = []
    for g in (DiscreteAdjoint(recompute=recompute), "backprop"):
        a0 = torch.ones(3, dtype=D64, requires_grad=True)
        b0 = torch.ones(2, dtype=D64, requires_grad=True)
        t = torch.tensor([0.0, 0.5, 1.0], dtype=D64, requires_grad=True)
        ys = odeflow.odeint(f, (a0, b0), t, gradient=g, steps_per_interval=2)
        loss = (ys[0] * torch.arange(3.0, dtype=D64)).sum() + (ys[1] ** 2).sum()
        out.append(torch.autograd.grad(loss, [a0, b0, t]))
    for x, y in zip(*out):
        assert _rel(x, y) < 1e-12


def test_tuple_state_structure_kept():
    def f(t, y):
        return (-y[0], y[0].sum() * torch.ones_like(y[1]))

    ys = odeflow.odeint(f, (torch.ones(2, 3), torch.zeros(5)), torch.tensor([0.0, 1.0]))
    assert isinstance(ys, tuple) and ys[0].shape == (2, 2, 3) and ys[1].shape == (2, 5)


def test_no_grad_sampling_keeps_no_graph():
    f = MLPField()
    y0 = torch.randn(4, 3)
    with torch.no_grad():
        ys = odeflow.odeint(f, y0, torch.tensor([0.0, 1.0]), steps_per_interval=4)
    assert not ys.requires_grad and ys.grad_fn is None
    ys2 = odeflow.odeint(f, y0, torch.tensor([0.0, 1.0]), steps_per_interval=4, gradient="backprop")
    assert torch.allclose(ys, ys2.detach(), rtol=0, atol=0)


def test_closure_params_must_be_declared():
    w = torch.tensor(0.5, requires_grad=True)
    with pytest.raises(ValueError, match="params="):
        odeflow.odeint(lambda t, y: -w * y, torch.ones(2), torch.tensor([0.0, 1.0]))
    ys = odeflow.odeint(lambda t, y: -w * y, torch.ones(2), torch.tensor([0.0, 1.0]), params=[w])
    ys[-1].sum().backward()
    assert w.grad is not None and w.grad.item() < 0


def _loss_y0(f, t, recompute="step"):
    def loss(y0):
        ys = odeflow.odeint(f, y0, t, steps_per_interval=3,
                            gradient=DiscreteAdjoint(recompute=recompute))  # fmt: skip
        return (ys[1:] ** 2).sum() + ys[-1].sin().sum()

    return loss


@pytest.mark.parametrize("recompute", RECOMPUTE)
def test_taylor_in_y0(recompute):
    torch.manual_seed(3)
    f = MLPField().to(D64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=D64)
    x = torch.randn(5, 3, dtype=D64, requires_grad=True)
    loss = _loss_y0(f, t, recompute)
    g = torch.autograd.grad(loss(x), x)[0]
    v = torch.randn(5, 3, dtype=D64)
    r = odeflow.testing.taylor_test(loss, x.detach(), v, grad=g, second=False)
    assert r.passed(), r


@pytest.mark.parametrize("recompute", RECOMPUTE)
def test_taylor_in_params(recompute):
    torch.manual_seed(4)
    f = MLPField().to(D64)
    names = [n for n, _ in f.named_parameters()]
    shapes = [p.shape for p in f.parameters()]
    theta0 = torch.cat([p.detach().flatten() for p in f.parameters()])
    y0 = torch.randn(5, 3, dtype=D64)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=D64)

    def loss(theta):
        chunks = theta.split([s.numel() for s in shapes])
        pd = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}

        def field(tt, y):
            return torch.func.functional_call(f, pd, (tt, y))

        ys = odeflow.odeint(field, y0, t, steps_per_interval=2, params=[theta],
                            gradient=DiscreteAdjoint(recompute=recompute))  # fmt: skip
        return (ys**2).sum()

    th = theta0.clone().requires_grad_(True)
    g = torch.autograd.grad(loss(th), th)[0]
    v = torch.randn_like(theta0)
    r = odeflow.testing.taylor_test(loss, theta0, v, grad=g, second=False)
    assert r.passed(), r


def test_adjoint_forward_saves_no_graph():
    """Memory: the forward keeps only the input state of each step, no graph."""
    torch.manual_seed(5)
    f = MLPField(d=3, w=64)
    y0 = torch.randn(50, 3, requires_grad=True)
    t = torch.tensor([0.0, 1.0])
    saved = {"adjoint": 0, "backprop": 0}

    for mode in saved:

        def pack(x, mode=mode):
            saved[mode] += x.numel() * x.element_size()
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            ys = odeflow.odeint(f, y0, t, method="rk4", gradient=mode, steps_per_interval=10)
        if mode == "adjoint":
            store = ys.grad_fn.store
            assert len(store) == 10
            assert sum(s[0].numel() * s[0].element_size() for s in store) == 10 * 50 * 3 * 4
    # the inputs t, y0 and the parameters (saved, not copied), no activations
    input_bytes = sum(p.numel() * 4 for p in f.parameters()) + y0.numel() * 4
    assert saved["adjoint"] <= input_bytes + 64
    assert saved["backprop"] > 40 * 50 * 64 * 4  # ≥ one hidden activation per stage and step


@pytest.mark.parametrize("method, extra", [("rk4", 3), ("rk38", 3), ("euler", 0), (DEAD, -1)])
def test_stage_recompute_cost(method, extra):
    """Backward NFE: "step" evaluates the s stages once per step; "stage" first recomputes the
    stages feeding later ones (s - 1 for rk4), then rebuilds each stage that matters."""
    n = {}
    for rc in RECOMPUTE:
        y0 = torch.ones(2, 3, requires_grad=True)
        grad = DiscreteAdjoint(recompute=rc)
        sol = odeflow.solve(MLPField(), y0, torch.tensor([0.0, 1.0]), method=method,
                            steps_per_interval=5, gradient=grad)  # fmt: skip
        sol.ys[-1].sum().backward()
        n[rc] = sol.stats.nfe
    stages = odeflow.ode.get_tableau(method).stages
    assert n["step"] == 5 * stages
    assert n["stage"] == 5 * (stages + extra)


class _LiveSaved:
    """Tracks the bytes autograd holds in saved activations (parameters excluded)."""

    def __init__(self, params):
        self.ptrs = {p.data_ptr() for p in params}
        self.live = self.peak = 0

    def pack(self, x):
        if x.data_ptr() in self.ptrs:
            return x
        return _Held(self, x)

    @staticmethod
    def unpack(h):
        return h.x if isinstance(h, _Held) else h


class _Held:
    def __init__(self, owner, x):
        self.owner, self.x, self.n = owner, x, x.numel() * x.element_size()
        owner.live += self.n
        owner.peak = max(owner.peak, owner.live)

    def __del__(self):
        self.owner.live -= self.n


def test_stage_recompute_holds_one_stage_graph():
    """Memory: the backward of "stage" holds one stage's activations, "step" all s stages'."""
    torch.manual_seed(5)
    f = MLPField(d=3, w=256)
    peak = {}
    grads = {}
    x0 = torch.randn(64, 3)
    for rc in RECOMPUTE:
        y0 = x0.clone().requires_grad_()
        ys = odeflow.odeint(f, y0, torch.tensor([0.0, 1.0]), method="rk4", steps_per_interval=3,
                            gradient=DiscreteAdjoint(recompute=rc))  # fmt: skip
        tr = _LiveSaved(f.parameters())
        with torch.autograd.graph.saved_tensors_hooks(tr.pack, tr.unpack):
            grads[rc] = torch.autograd.grad((ys[-1] ** 2).sum(), [y0, *f.parameters()])
        assert tr.live == 0  # every saved activation released
        peak[rc] = tr.peak
    assert peak["step"] >= 4 * 64 * 256 * 4  # >= one hidden activation per stage
    assert 3.5 * peak["stage"] <= peak["step"], peak  # 1/s of it (s = 4; measured 4.0x)
    for a, b in zip(grads["stage"], grads["step"]):
        assert _rel(a, b) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("recompute", RECOMPUTE)
def test_gpu_peak_memory_is_step_states_plus_one_step_graph(cuda, recompute):
    """CUDA allocator, exact bytes: the adjoint's peak grows by one state per extra step and
    otherwise holds one step's graph; backprop's grows by every stage's activations."""
    torch.manual_seed(0)
    n, d, w = 1024, 64, 512
    f = MLPField(d=d, w=w).to(cuda)
    y0 = torch.randn(n, d, device=cuda, requires_grad=True)
    t = torch.tensor([0.0, 1.0], device=cuda)
    state = n * d * 4
    pbytes = sum(p.numel() * 4 for p in f.parameters())

    def peak(gradient, steps):
        for _ in range(2):  # the first call creates the .grad buffers
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            ys = odeflow.odeint(f, y0, t, gradient=gradient, steps_per_interval=steps)
            (ys[-1] ** 2).mean().backward()
            del ys
            torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    adj = DiscreteAdjoint(recompute=recompute)
    a8, a32 = peak(adj, 8), peak(adj, 32)
    b1, b8, b32 = peak("backprop", 1), peak("backprop", 8), peak("backprop", 32)
    print(
        f"{recompute}: adjoint 8/32 steps {a8}/{a32} B, backprop 1/8/32 {b1}/{b8}/{b32} B, "
        f"state {state} B"
    )
    assert abs((a32 - a8) - 24 * state) <= 2**20  # 24 more stored step states, nothing else
    assert b32 - b8 >= 24 * 4 * n * w * 4  # >= one hidden activation per stage and step
    # the stored states + one step's graph (backprop's one-step peak) + what the adjoint holds
    # beside it: the fp32 parameter-gradient accumulators, the adjoint state (old and new) and
    # the incoming gradient of the whole trajectory (len(t) states, held until the node returns;
    # backprop splits and frees it); measured on an H100: exactly these 4 states + 9.5 KB
    assert a8 <= 8 * state + b1 + pbytes + 2 * state + 2 * state


@pytest.mark.gpu
@pytest.mark.parametrize("recompute", RECOMPUTE)
def test_cpu_gpu_agreement(cuda, recompute):
    torch.manual_seed(6)
    f = MLPField().to(D64)
    y0 = torch.randn(5, 3, dtype=D64)
    t = torch.linspace(0, 1, 4, dtype=D64)
    out = []
    for dev in ("cpu", cuda):
        ff = MLPField().to(D64).to(dev)
        ff.load_state_dict(f.state_dict())
        y = y0.detach().clone().to(dev).requires_grad_()
        ys = odeflow.odeint(ff, y, t.to(dev), steps_per_interval=3,
                            gradient=DiscreteAdjoint(recompute=recompute))  # fmt: skip
        (ys**2).sum().backward()
        out.append((ys.detach().cpu(), y.grad.cpu(), [p.grad.cpu() for p in ff.parameters()]))
    assert torch.allclose(out[0][0], out[1][0], rtol=1e-10, atol=1e-12)
    assert torch.allclose(out[0][1], out[1][1], rtol=1e-10, atol=1e-12)
    for a, b in zip(out[0][2], out[1][2]):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_retain_graph():
    f = MLPField().to(D64)
    y0 = torch.randn(5, 3, dtype=D64, requires_grad=True)
    ys = odeflow.odeint(f, y0, torch.tensor([0.0, 1.0], dtype=D64))
    loss = (ys**2).sum()
    g1 = torch.autograd.grad(loss, y0, retain_graph=True)[0]
    g2 = torch.autograd.grad(loss, y0, retain_graph=True)[0]
    assert torch.equal(g1, g2)


def _second_order(gradient, method="rk4"):
    """First derivatives with create_graph=True, then the derivative of <g, v> (a Hessian-vector
    product in (y0, t, θ) jointly), for a loss on intermediate and final outputs."""
    torch.manual_seed(11)
    f = MLPField().to(D64)
    y0 = torch.randn(5, 3, dtype=D64, requires_grad=True)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=D64, requires_grad=True)
    ys = odeflow.odeint(f, y0, t, method=method, gradient=gradient, steps_per_interval=2)
    loss = (ys[1:] ** 2).sum() + ys[-1].sin().sum()
    wrt = [y0, t, *f.parameters()]
    g = torch.autograd.grad(loss, wrt, create_graph=True)
    gen = torch.Generator().manual_seed(12)
    vs = [torch.randn(x.shape, dtype=D64, generator=gen) for x in wrt]
    hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, vs)), wrt)
    return [x.detach() for x in g], hv


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
@pytest.mark.parametrize("recompute", RECOMPUTE)
def test_create_graph_gives_backprops_second_derivatives(method, recompute):
    """create_graph=True through the adjoint: differentiable gradients whose derivatives
    (Hessian-vector products in y0, t and θ) equal backprop's."""
    ga, ha = _second_order(DiscreteAdjoint(recompute=recompute), method)
    gb, hb = _second_order("backprop", method)
    for x, y in zip(ga + list(ha), gb + list(hb)):
        assert _rel(x, y) < 1e-10


def test_create_graph_taylor_test_of_the_gradient():
    """The gradient y0 -> dL/dy0 from the create_graph path is differentiable, and its
    derivative (the Hessian-vector product) passes a Taylor test of the loss to second order."""
    torch.manual_seed(13)
    f = MLPField().to(D64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=D64)
    loss = _loss_y0(f, t, "step")
    x = torch.randn(5, 3, dtype=D64, requires_grad=True)
    v = torch.randn(5, 3, dtype=D64)
    (g,) = torch.autograd.grad(loss(x), x, create_graph=True)
    (hv,) = torch.autograd.grad((g * v).sum(), x)
    r = odeflow.testing.taylor_test(loss, x.detach(), v, grad=g.detach(), hvp=hv)
    assert r.passed(), r


def test_create_graph_gradient_penalty_step():
    """A gradient penalty ||dL/dy0||^2 trained through the adjoint: its parameter gradient
    equals backprop's, and the NFE of the replayed solve is counted."""

    def penalty_grads(gradient):
        torch.manual_seed(14)
        f = MLPField().to(D64)
        y0 = torch.randn(6, 3, dtype=D64, requires_grad=True)
        sol = odeflow.solve(f, y0, torch.tensor([0.0, 1.0], dtype=D64), gradient=gradient,
                            steps_per_interval=3)  # fmt: skip
        (g,) = torch.autograd.grad((sol.ys[-1] ** 2).sum(), y0, create_graph=True)
        (g**2).sum().backward()
        return [p.grad for p in f.parameters()], sol

    ga, sol = penalty_grads("adjoint")
    gb, _ = penalty_grads("backprop")
    for x, y in zip(ga, gb):
        assert _rel(x, y) < 1e-10
    # backward NFE: the replay of 3 RK4 steps (create_graph pass), then the first-order
    # adjoint once more (the penalty reaches the output ys through dL/dys = 2 ys)
    assert sol.stats.nfe == 2 * 3 * 4


def test_create_graph_mixed_precision_matches_backprop():
    """bf16: the differentiable gradients are backprop's through the same autocast stages,
    bitwise, and so are their derivatives. (The loss is linear in ys, so the second
    derivative runs through the replayed graph only; with a nonlinear loss part of it would
    pass through the first-order bf16 adjoint, which differs from bf16 backprop at its own
    mixed-precision accuracy.)"""

    def run(gradient):
        torch.manual_seed(15)
        f = MLPField(w=16)
        y0 = torch.randn(8, 3, requires_grad=True)
        ys = odeflow.odeint(f, y0, torch.tensor([0.0, 1.0]), gradient=gradient,
                            precision="bf16", steps_per_interval=4)  # fmt: skip
        w = torch.linspace(-1, 1, ys[-1].numel()).reshape(ys[-1].shape)
        (g,) = torch.autograd.grad((w * ys[-1]).sum(), y0, create_graph=True)
        assert g.dtype == torch.float32 and g.requires_grad
        return g.detach(), torch.autograd.grad((g**2).sum(), f.l1.weight)[0]

    for x, y in zip(run("adjoint"), run("backprop")):
        assert torch.equal(x, y)


class DropoutField(nn.Module):
    """A stochastic field: dropout in training mode draws a new mask at every evaluation."""

    def __init__(self, d: int = 3, w: int = 16):
        super().__init__()
        self.f = MLPField(d, w)
        self.drop = nn.Dropout(0.3)

    def forward(self, t, y):
        return self.drop(self.f(t, y))


def _dropout_grads(gradient, create_graph=False, device="cpu"):
    torch.manual_seed(16)
    f = DropoutField().to(device, D64)
    y0 = torch.randn(5, 3, dtype=D64, requires_grad=True, device=device)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=D64, requires_grad=True, device=device)
    torch.manual_seed(17)  # the masks drawn in the forward pass
    ys = odeflow.odeint(f, y0, t, gradient=gradient, steps_per_interval=2)
    wrt = [y0, t, *f.parameters()]
    gs = torch.autograd.grad((ys[1:] ** 2).sum(), wrt, create_graph=create_graph)
    if create_graph:
        gs = torch.autograd.grad(sum((g**2).sum() for g in gs), wrt)
    return gs, torch.rand(3, device=device)  # the caller's random stream after backward


@pytest.mark.parametrize("recompute", RECOMPUTE)
def test_stochastic_field_rebuilt_with_the_forward_draws(recompute):
    """Dropout: the rebuild replays the random draws of the forward pass (the generators'
    states are noted per call), so the adjoint differentiates the function the forward pass
    evaluated and equals backprop; the caller's random stream is left as backprop leaves it."""
    ga, ra = _dropout_grads(DiscreteAdjoint(recompute=recompute))
    gb, rb = _dropout_grads("backprop")
    for x, y in zip(ga, gb):
        assert _rel(x, y) < 1e-10
    assert torch.equal(ra, rb)


def test_stochastic_field_second_derivatives():
    ga, ra = _dropout_grads(DiscreteAdjoint(), create_graph=True)
    gb, rb = _dropout_grads("backprop", create_graph=True)
    for x, y in zip(ga, gb):
        assert _rel(x, y) < 1e-10
    assert torch.equal(ra, rb)


class BatchNormField(nn.Module):
    """A field whose forward pass updates buffers: batch norm's running statistics."""

    def __init__(self, d: int = 3, w: int = 16):
        super().__init__()
        self.f = MLPField(d, w)
        self.norm = nn.BatchNorm1d(d)

    def forward(self, t, y):
        return self.norm(self.f(t, y))


def _batchnorm_run(gradient, create_graph=False):
    torch.manual_seed(18)
    f = BatchNormField().to(D64)
    y0 = torch.randn(6, 3, dtype=D64, requires_grad=True)
    ys = odeflow.odeint(f, y0, torch.tensor([0.0, 0.5, 1.0], dtype=D64), gradient=gradient,
                        steps_per_interval=2)  # fmt: skip
    wrt = [y0, *f.parameters()]
    gs = torch.autograd.grad((ys[1:] ** 2).sum(), wrt, create_graph=create_graph)
    if create_graph:
        gs = torch.autograd.grad(sum((g**2).sum() for g in gs), wrt)
    return gs, [b.clone() for b in f.buffers()]


@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize("recompute", RECOMPUTE)
def test_rebuild_leaves_running_statistics_as_backprop(recompute, create_graph):
    """The rebuild re-evaluates batch norm in training mode; the running statistics it
    updates again are restored, so after backward they (and num_batches_tracked) are
    backprop's, as are the gradients."""
    ga, ba = _batchnorm_run(DiscreteAdjoint(recompute=recompute), create_graph)
    gb, bb = _batchnorm_run("backprop", create_graph)
    # one relative error over all gradients: batch norm makes the last linear layer's bias
    # gradient exactly zero in exact arithmetic (round-off only), so no per-tensor ratio
    assert _rel(torch.cat([x.flatten() for x in ga]), torch.cat([y.flatten() for y in gb])) < 1e-10
    for x, y in zip(ba, bb):
        assert torch.equal(x, y)


@pytest.mark.gpu
@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize("recompute", RECOMPUTE)
def test_gpu_stochastic_field_rebuilt_with_the_forward_draws(cuda, recompute, create_graph):
    """The CUDA generator's state is noted and replayed like the CPU one's."""
    ga, ra = _dropout_grads(DiscreteAdjoint(recompute=recompute), create_graph, cuda)
    gb, rb = _dropout_grads("backprop", create_graph, cuda)
    for x, y in zip(ga, gb):
        assert _rel(x, y) < 1e-10
    assert torch.equal(ra, rb)


def test_deterministic_field_keeps_no_generator_states():
    f = MLPField().to(D64)
    y0 = torch.randn(5, 3, dtype=D64, requires_grad=True)
    ys = odeflow.odeint(f, y0, torch.tensor([0.0, 1.0], dtype=D64), steps_per_interval=8)
    assert ys.grad_fn.plan.fld.rng_log is None
    f.train(False)
    g = DropoutField().to(D64)
    ys = odeflow.odeint(g, y0, torch.tensor([0.0, 1.0], dtype=D64), steps_per_interval=8)
    # recompute="step" repeats a step's 4 evaluations in order: one state per step
    assert len(ys.grad_fn.plan.fld.rng_log) == 8
    ys = odeflow.odeint(g, y0, torch.tensor([0.0, 1.0], dtype=D64), steps_per_interval=8,
                        gradient=DiscreteAdjoint(recompute="stage"))  # fmt: skip
    assert len(ys.grad_fn.plan.fld.rng_log) == 8 * 4  # out of order: one per evaluation


@pytest.mark.parametrize("recompute", RECOMPUTE)
def test_in_place_change_of_y0_before_backward_raises(recompute):
    """The first stored state shares y0's memory: changing y0 in place between the forward and
    the backward pass is autograd's usual error, not a silently wrong gradient."""
    f = MLPField().to(D64)
    x = torch.randn(5, 3, dtype=D64, requires_grad=True)
    y0 = x * 1.0
    ys = odeflow.odeint(f, y0, torch.tensor([0.0, 1.0], dtype=D64),
                        gradient=DiscreteAdjoint(recompute=recompute))  # fmt: skip
    with torch.no_grad():
        y0.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (ys**2).sum().backward()


@pytest.mark.slow
@pytest.mark.parametrize("recompute", RECOMPUTE)
def test_compiled_field_equals_eager_without_recompiles(recompute):
    """torch.compile(func) works with the adjoint: two graphs (no-grad forward and the
    rebuild under enable_grad), no recompilation per step or per call."""
    import shutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("inductor on CPU needs a C compiler")
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(8)
    f = MLPField(d=3, w=16)
    fc = torch.compile(f)
    y0 = torch.randn(6, 3)
    t = torch.tensor([0.0, 0.5, 1.0])
    grads = []
    for func in (f, fc, fc, fc):
        for p in f.parameters():
            p.grad = None
        ys = odeflow.odeint(func, y0, t, steps_per_interval=3,
                            gradient=DiscreteAdjoint(recompute=recompute))  # fmt: skip
        (ys**2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in f.parameters()]))
    for g in grads[1:]:
        assert _rel(g, grads[0]) < 1e-5
    assert counters["stats"]["unique_graphs"] == 2


@pytest.mark.parametrize("method", ["rk4", "rk38", "ssprk3"])
@pytest.mark.parametrize("kdt", [torch.float32, torch.bfloat16])
def test_stage_inputs_rebuilt_bitwise(method, kdt):
    """The stage recompute forms Y_i = y + Σ_j (h a_ij) k_j in place (one fresh buffer) from
    16-bit stages and a 16-bit stored state; it must equal the forward's out-of-place sum
    (on the widened values) bit for bit."""
    from odeflow.ode._rk import _axpy, _coeffs

    tab = odeflow.ode.get_tableau(method)
    g = torch.Generator().manual_seed(9)
    ybase = [torch.randn(7, 5, generator=g).to(kdt), torch.randn(3, generator=g).to(kdt)]
    ks = [[torch.randn(7, 5, generator=g).to(kdt), torch.randn(3, generator=g).to(kdt)]
          for _ in range(tab.stages)]  # fmt: skip
    co = _coeffs(tab, torch.tensor(0.1), torch.tensor(0.37))
    y = [x.to(torch.float32) for x in ybase]
    k32 = [[x.to(torch.float32) for x in k] for k in ks]
    for i in range(1, tab.stages):
        ref = _axpy(y, k32, co.ca[i], torch.float32)
        got = _axpy(ybase, ks, co.ca[i], torch.float32, fresh=True)
        for a, b in zip(got, ref):
            assert a.dtype == torch.float32 and torch.equal(a, b)
    assert all(torch.equal(a, b.to(kdt)) for a, b in zip(ybase, y))  # inputs untouched
    assert all(torch.equal(a.to(kdt), b) for k, kk in zip(k32, ks) for a, b in zip(k, kk))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["rk4", "rk38", "ssprk3", "ralston", "euler"])
def test_grid_coefficients_equal_per_step_scalar_ops_bitwise(method, dtype):
    """The times and coefficients formed for all steps at once (vectorised) equal, bit for
    bit, the per-step scalar ops used by captured steps and by differentiable times."""
    from odeflow.ode._rk import _coeffs, _grid, _times

    tab = odeflow.ode.get_tableau(method)
    g = torch.Generator().manual_seed(3)
    for sign in (1.0, -1.0):
        t = sign * torch.cumsum(torch.rand(5, generator=g, dtype=dtype) + 0.05, 0)
        plan = types.SimpleNamespace(tab=tab, ms=[1, 3, 2, 7], grid=None)
        plan.steps = [(i, j) for i, m in enumerate(plan.ms) for j in range(m)]
        got = _grid(plan, t)
        assert len(got) == 13 and plan.grid is got  # kept for the backward pass
        for co, (i, j) in zip(got, plan.steps):
            tau, h = _times(t[i], t[i + 1], j, plan.ms[i])
            ref = _coeffs(tab, tau, h)
            same = [torch.equal(co.tau, tau), torch.equal(co.h, h)]
            same += [torch.equal(a, b) for a, b in zip(co.ts, ref.ts)]
            for row, rrow in zip([*co.ca, co.cb], [*ref.ca, ref.cb]):
                assert [j for j, _ in row] == [j for j, _ in rrow]
                same += [torch.equal(a, b) for (_, a), (_, b) in zip(row, rrow)]
            assert all(same), (method, dtype, i, j)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grid_chunks_equal_per_step_scalar_ops_bitwise(dtype):
    """The grid is formed a chunk of steps at a time (chunks crossing intervals here); any
    access order (the backward walks it in reverse) gives bitwise the per-step scalar ops."""
    from odeflow.ode._rk import _coeffs, _grid, _times

    tab = odeflow.ode.get_tableau("rk4")
    t = -torch.cumsum(torch.rand(5, generator=torch.Generator().manual_seed(4), dtype=dtype), 0)
    plan = types.SimpleNamespace(tab=tab, ms=[1, 3, 2, 7], grid=None)
    steps = [(i, j) for i, m in enumerate(plan.ms) for j in range(m)]
    grid = _grid(plan, t, chunk=4)
    assert len(grid) == 13 and plan.grid is grid
    for s in [12, 3, 4, 0, 11, 7, 8, -1, 5]:
        i, j = steps[s]
        co, ref = grid[s], _coeffs(tab, *_times(t[i], t[i + 1], j, plan.ms[i]))
        vals = [co.tau, co.h, *co.ts, *(c for row in [*co.ca, co.cb] for _, c in row)]
        refs = [ref.tau, ref.h, *ref.ts, *(c for row in [*ref.ca, ref.cb] for _, c in row)]
        assert all(torch.equal(a, b) for a, b in zip(vals, refs, strict=True)), s
        assert grid.chunk[1].shape[0] <= 4  # only the chunk in use is kept
    with pytest.raises(IndexError):
        grid[13]


def test_no_grad_solve_keeps_no_per_step_tensors():
    """A long no-grad solve stores nothing per step (it kept a dozen 0-d tensors of step
    coefficients for every step: some 9 KB per step, gigabytes for 10⁶ steps)."""
    n = 20_000
    live = []

    def tensors():
        return sum(type(o) is torch.Tensor for o in gc.get_objects())

    def f(t, y):
        live.append(None)
        if len(live) == 4 * n:  # the last stage of the last step
            live[-1] = tensors() - before
        return -y

    before = tensors()

    with torch.no_grad():
        ys = odeflow.odeint(f, torch.ones(2, dtype=D64), torch.tensor([0.0, 1.0], dtype=D64),
                            steps_per_interval=n)  # fmt: skip
    assert torch.allclose(ys[-1], torch.full((2,), math.exp(-1), dtype=D64))
    assert live[-1] < n  # (old: > 12 n)


def test_a_tensor_listed_twice_gets_its_gradient_once():
    torch.manual_seed(19)
    f = MLPField().to(D64)
    y0 = torch.randn(5, 3, dtype=D64)
    t = torch.tensor([0.0, 1.0], dtype=D64)
    ps = list(f.parameters())
    ys = odeflow.odeint(f, y0, t, params=[*ps, f.l1.weight], steps_per_interval=2)
    ga = torch.autograd.grad((ys**2).sum(), ps)
    ys = odeflow.odeint(f, y0, t, gradient="backprop", steps_per_interval=2)
    gb = torch.autograd.grad((ys**2).sum(), ps)
    for x, y in zip(ga, gb):
        assert _rel(x, y) < 1e-10


class Conditioned(nn.Module):
    """A conditional field: a context tensor (a function of an encoder's output) is set on the
    module before each solve."""

    def __init__(self):
        super().__init__()
        self.f = MLPField()
        self.ctx = None

    def forward(self, t, y):
        return self.f(t, y) + self.ctx


def test_undeclared_tensor_attribute_is_refused_and_declaring_it_works():
    torch.manual_seed(20)
    m = Conditioned().to(D64)
    enc = torch.randn(3, dtype=D64, requires_grad=True)
    y0 = torch.randn(5, 3, dtype=D64)
    t = torch.tensor([0.0, 1.0], dtype=D64)
    m.ctx = enc * 2
    with pytest.raises(ValueError, match=r"func\.ctx is a tensor that requires grad"):
        odeflow.odeint(m, y0, t)
    grads = []
    for gradient in ("adjoint", "backprop"):
        m.ctx = enc * 2
        params = [*m.parameters(), m.ctx] if gradient == "adjoint" else None
        ys = odeflow.odeint(m, y0, t, gradient=gradient, params=params, steps_per_interval=3)
        grads.append(torch.autograd.grad((ys**2).sum(), enc)[0])
    assert _rel(*grads) < 1e-10


def test_tensor_attribute_that_the_field_does_not_use_is_allowed():
    """An attribute that keeps a tensor from an earlier call (here the last output, for
    logging) requires grad but does not feed the field: no error, and the adjoint's gradients
    are backprop's."""

    class Logging(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = MLPField()
            self.last = None

        def forward(self, t, y):
            out = self.f(t, y)
            self.last = out  # requires grad after a graph-building evaluation
            return out

    torch.manual_seed(21)
    m = Logging().to(D64)
    y0 = torch.randn(4, 3, dtype=D64)
    t = torch.tensor([0.0, 1.0], dtype=D64)
    grads = []
    for gradient in ("backprop", "adjoint", "adjoint"):
        if gradient == "adjoint":  # left by backprop's graph / the adjoint's rebuild
            assert m.last.requires_grad
        ys = odeflow.odeint(m, y0, t, gradient=gradient, steps_per_interval=2)
        grads.append(torch.autograd.grad((ys**2).sum(), list(m.parameters())))
    for g in grads[1:]:
        for x, y in zip(g, grads[0]):
            assert _rel(x, y) < 1e-10


def test_parameters_without_a_path_get_none_as_with_backprop():
    class WithHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = MLPField()
            self.head = nn.Linear(3, 1)  # not used by forward

        def forward(self, t, y):
            return self.f(t, y)

    m = WithHead().to(D64)
    for gradient in ("adjoint", "backprop"):
        m.zero_grad(set_to_none=True)
        ys = odeflow.odeint(m, torch.randn(4, 3, dtype=D64), torch.tensor([0.0, 1.0]).double(),
                            gradient=gradient)  # fmt: skip
        (ys**2).sum().backward()
        assert m.head.weight.grad is None and m.f.l1.weight.grad is not None


def test_torch_func_transforms():
    """vmap, jacfwd and jacrev work with either gradient mode (checked against the batched
    solve and autograd); more in test_func_transforms.py."""
    t = torch.tensor([0.0, 0.5, 1.0], dtype=D64)

    def final(y0, gradient="backprop"):
        return odeflow.odeint(lambda s, y: -y * y.sum(), y0, t, gradient=gradient,
                              steps_per_interval=2)[-1]  # fmt: skip

    y0 = torch.tensor([[0.5, -0.2], [1.0, 0.3], [0.1, 0.2]], dtype=D64)
    for gradient in ("backprop", "adjoint"):
        vm = torch.func.vmap(lambda y, g=gradient: final(y, g))(y0)
        assert torch.allclose(vm, torch.stack([final(y) for y in y0]), rtol=1e-14, atol=0)
    x = y0[1].clone().requires_grad_()
    ref = torch.stack([torch.autograd.grad(final(x)[i], x)[0] for i in range(2)])
    assert torch.allclose(torch.func.jacrev(final)(y0[1]), ref, rtol=1e-12, atol=0)
    jf = torch.func.jacfwd(lambda y: final(y, "adjoint"))(y0[1])
    assert torch.allclose(jf, ref, rtol=1e-12, atol=0)
    assert torch.allclose(torch.func.jacrev(lambda y: final(y, "adjoint"))(y0[1]), ref,
                          rtol=1e-12, atol=0)  # fmt: skip
