"""The discrete adjoint under torch.func transforms: grad, vjp, jacrev, hessian, vmap of grad.

Every transform of a solve with ``gradient="adjoint"`` must give what the eager adjoint gives
(bitwise: the same steps, stages and VJPs) and what backprop through the same steps gives
(float64 round-off), including derivatives of second order.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, vjp, vmap

import odeflow
from odeflow.ode import TABLEAUS

from .test_adjoint import MLPField

D64 = torch.float64
T = torch.tensor([0.0, 0.4, 1.0], dtype=D64)


def _field():
    torch.manual_seed(0)
    return MLPField(3, 8).to(D64)


class _Solve(nn.Module):
    """``odeint`` (or, ``full``, ``odeflow.solve``) of the field ``f`` as a module, to call
    with ``functional_call``."""

    def __init__(self, f: nn.Module):
        super().__init__()
        self.f = f

    def forward(self, y0, t, kw, full=False):
        return (odeflow.solve if full else odeflow.odeint)(self.f, y0, t, **kw)


def _solve(f, P, y0, t, full=False, **kw):
    """The solve with ``f``'s parameters given by ``P`` (name -> tensor), the usual way to
    hand a module's parameters to a torch.func transform."""
    return functional_call(_Solve(f), {f"f.{n}": v for n, v in P.items()}, (y0, t, kw, full))


def _loss(f, P, y0, t, gradient, **kw):
    """A loss on every output time (adjoints injected between steps)."""
    ys = _solve(f, P, y0, t, gradient=gradient, steps_per_interval=2, **kw)
    w = torch.linspace(-1, 1, ys.numel(), dtype=ys.dtype).reshape(ys.shape)
    return (w * ys).sum() + (ys[-1] ** 2).sum()


def _params(f):
    return {n: p.detach() for n, p in f.named_parameters()}


def _eager(f, y0, t, gradient, **kw):
    f.zero_grad(set_to_none=True)
    y, tt = y0.clone().requires_grad_(), t.clone().requires_grad_()
    loss = _loss(f, dict(f.named_parameters()), y, tt, gradient, **kw)
    gy, gt, *gp = torch.autograd.grad(loss, [y, tt, *f.parameters()])
    return dict(zip(dict(f.named_parameters()), gp)), gy, gt


@pytest.mark.parametrize("method", list(TABLEAUS))
def test_grad_equals_the_eager_adjoint_and_backprop(method):
    f = _field()
    y0 = torch.randn(5, 3, dtype=D64)
    t = T if method != "euler" else T.flip(0)  # a decreasing grid too
    got = grad(lambda P, y, tt: _loss(f, P, y, tt, "adjoint", method=method), argnums=(0, 1, 2))(
        _params(f), y0, t
    )
    eager = _eager(f, y0, t, "adjoint", method=method)
    ref = _eager(f, y0, t, "backprop", method=method)
    for name in eager[0]:
        assert torch.equal(got[0][name], eager[0][name])
        torch.testing.assert_close(got[0][name], ref[0][name], rtol=1e-12, atol=1e-14)
    for k in (1, 2):  # y0 and t
        assert torch.equal(got[k], eager[k])
        torch.testing.assert_close(got[k], ref[k], rtol=1e-12, atol=1e-14)


def test_tuple_state_and_vjp():
    """A tuple state of two shapes; torch.func.vjp with a cotangent on every output."""
    torch.manual_seed(1)
    lin = nn.Linear(5, 5).to(D64)

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, t, y):
            a, b = y
            z = torch.tanh(self.lin(torch.cat([a, b.reshape(a.shape[0], -1)], 1)))
            return z[:, :1], z[:, 1:].reshape(b.shape)

    f = Pair()
    a0, b0 = torch.randn(4, 1, dtype=D64), torch.randn(4, 2, 2, dtype=D64)
    P = _params(f)

    def run(P, a, b, gradient):
        return _solve(f, P, (a, b), T, gradient=gradient)

    outs = {}
    for gradient in ("adjoint", "backprop"):
        (ya, yb), pull = vjp(lambda P, a, b, g=gradient: run(P, a, b, g), P, a0, b0)
        torch.manual_seed(2)
        outs[gradient] = pull((torch.randn_like(ya), torch.randn_like(yb)))
    gp_a, ga_a, gb_a = outs["adjoint"]
    gp_b, ga_b, gb_b = outs["backprop"]
    for name in gp_a:
        torch.testing.assert_close(gp_a[name], gp_b[name], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ga_a, ga_b, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gb_a, gb_b, rtol=1e-12, atol=1e-14)


def test_per_sample_gradients_by_vmap_of_grad():
    """vmap(grad): one parameter gradient per sample, as one eager solve per sample gives."""
    f = _field()
    y0 = torch.randn(6, 3, dtype=D64)
    per = vmap(grad(lambda P, y: _loss(f, P, y[None], T, "adjoint")), in_dims=(None, 0))(
        _params(f), y0
    )
    for i in range(y0.shape[0]):
        one = _eager(f, y0[i : i + 1], T, "adjoint")[0]
        for name, g in one.items():
            torch.testing.assert_close(per[name][i], g, rtol=1e-12, atol=1e-14)


def test_second_derivatives_equal_backprop():
    """Reverse over reverse (jacrev of jacrev) and forward over reverse (hessian) in y0 and in
    a weight: the backward pass is itself differentiated, through the stored states too."""
    f = _field()
    P = _params(f)
    y0 = torch.randn(2, 3, dtype=D64)

    def in_y(y, g):
        return _loss(f, P, y, T, g)

    def in_w(w, g):
        return _loss(f, {**P, "l2.weight": w}, y0, T, g)

    for fn, x in ((in_y, y0), (in_w, P["l2.weight"])):
        ref = hessian(lambda x, fn=fn: fn(x, "backprop"))(x)
        rr = jacrev(jacrev(lambda x, fn=fn: fn(x, "adjoint")))(x)
        fr = hessian(lambda x, fn=fn: fn(x, "adjoint"))(x)
        assert ref.abs().max() > 1e-3
        torch.testing.assert_close(rr, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(fr, ref, rtol=1e-10, atol=1e-12)


def test_jacfwd_with_parameters_that_need_grad():
    """Forward mode through the adjoint's function (its jvp rule) = backprop's jacfwd."""
    f = _field()
    P = _params(f)
    y0 = torch.randn(2, 3, dtype=D64)
    got = jacfwd(lambda P: _loss(f, P, y0, T, "adjoint"))(P)
    ref = jacfwd(lambda P: _loss(f, P, y0, T, "backprop"))(P)
    for name in P:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-12, atol=1e-14)


def test_bf16_grad_equals_the_eager_adjoint():
    """Mixed precision takes the same stages and casts under a transform: bitwise equal."""
    torch.manual_seed(0)
    f = MLPField(3, 16)
    y0 = torch.randn(5, 3)
    t = T.float()
    got = grad(lambda P: _loss(f, P, y0, t, "adjoint", precision="bf16"))(_params(f))
    eager = _eager(f, y0, t, "adjoint", precision="bf16")[0]
    for name in eager:
        assert torch.equal(got[name], eager[name])


def test_closed_over_tensor_is_refused():
    """A tensor the transform differentiates for that func reads but that is not among its
    parameters would get a zero gradient: refused with the fix."""
    y0 = torch.randn(4, 3, dtype=D64)

    def loss(w):
        return odeflow.odeint(lambda t, y: y @ w, y0, T)[-1].sum()

    with pytest.raises(ValueError, match="functional_call"):
        grad(loss)(torch.eye(3, dtype=D64))
    ref = grad(lambda w: odeflow.odeint(lambda t, y: y @ w, y0, T, gradient="backprop")[-1].sum())
    assert ref(torch.eye(3, dtype=D64)).abs().sum() > 0  # (what backprop gives instead)


def test_params_outside_the_module_and_fp16_are_refused():
    y0 = torch.randn(4, 3, dtype=D64)

    def loss(w):
        return odeflow.odeint(lambda t, y: y @ w, y0, T, params=[w])[-1].sum()

    with pytest.raises(ValueError, match=r"parameters of func \(an nn.Module"):
        grad(loss)(torch.eye(3, dtype=D64))
    if not odeflow.ode.get_precision("fp16", torch.device("cpu")).compute:
        pytest.skip("no fp16 autocast on this CPU build")
    f = MLPField(3, 8)
    with pytest.raises(ValueError, match="precision='bf16'"):
        grad(lambda P: _loss(f, P, y0.float(), T.float(), "adjoint", precision="fp16"))(_params(f))


def test_stochastic_field_gets_the_forward_draws():
    """Dropout: the backward pass under grad replays the forward pass's random draws."""
    torch.manual_seed(0)

    class Drop(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3).double()
            self.drop = nn.Dropout(0.3)

        def forward(self, t, y):
            return self.drop(torch.tanh(self.lin(y)))

    f = Drop()
    y0 = torch.randn(5, 3, dtype=D64)
    torch.manual_seed(7)
    got = grad(lambda P: _loss(f, P, y0, T, "adjoint"))(_params(f))
    torch.manual_seed(7)
    ref = _eager(f, y0, T, "backprop")[0]
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-12, atol=1e-14)


def test_running_statistics_as_with_the_eager_adjoint():
    """Batch norm in training mode: after grad, the running statistics are those the eager
    adjoint leaves (one update per stage of the forward pass; the check and the rebuild
    leave none)."""
    from .test_adjoint import BatchNormField

    torch.manual_seed(3)
    fe, ff = BatchNormField().double(), BatchNormField().double()
    ff.load_state_dict(fe.state_dict())
    y0 = torch.randn(6, 3, dtype=D64)
    _eager(fe, y0, T, "adjoint")
    # (torch.func lets a transformed function update only buffers it is given as inputs)
    B = {n: b.clone() for n, b in ff.named_buffers()}
    grad(lambda P, B: _loss(ff, {**P, **B}, y0, T, "adjoint"))(_params(ff), B)
    for (name, a), b in zip(fe.named_buffers(), B.values()):
        assert torch.equal(a, b), name
    assert fe.norm.num_batches_tracked.item() == 4 * 4  # 4 steps × 4 stages, forward only


def test_grad_in_y0_of_a_closure_over_ordinary_parameters():
    """Tensors the transform does not differentiate (a module's parameters used by a plain
    closure) are constants of the transformed function: no refusal, backprop's gradient."""
    torch.manual_seed(4)
    lin = nn.Linear(3, 3).double()  # parameters require grad, outside the transform
    y0 = torch.randn(4, 3, dtype=D64)

    def final(y, g):
        return (odeflow.odeint(lambda t, z: torch.tanh(lin(z)), y, T, gradient=g)[-1] ** 2).sum()

    torch.testing.assert_close(
        grad(final)(y0, "adjoint"), grad(final)(y0, "backprop"), rtol=1e-12, atol=1e-14
    )


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gpu_per_sample_grads_equal_the_eager_adjoint(cuda, precision):
    torch.manual_seed(0)
    f = MLPField(3, 32).to(cuda)
    y0 = torch.randn(4, 3, device=cuda)
    t = T.float().to(cuda)
    per = vmap(
        grad(lambda P, y: _loss(f, P, y[None], t, "adjoint", precision=precision)),
        in_dims=(None, 0),
    )(_params(f), y0)
    # the batched kernels round bf16 stage values differently from one sample's (1.6e-3
    # relative on CPU): the bound is a few bf16 units there, fp32 round-off otherwise
    tol = {"fp32": 1e-5, "bf16": 1e-2}[precision]
    for i in range(y0.shape[0]):
        one = _eager(f, y0[i : i + 1], t, "adjoint", precision=precision)[0]
        for name, g in one.items():
            assert ((per[name][i] - g).norm() / g.norm()).item() < tol


def test_per_sample_gradients_example_trains():
    """examples/per_sample_gradients.py (clipped per-sample gradients through the adjoint,
    DP-SGD style) learns the two moons: chance is 0.5."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "examples" / "per_sample_gradients.py"
    spec = importlib.util.spec_from_file_location("per_sample_gradients", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.train(iters=30, verbose=False)
    assert out["accuracy"] > 0.8
    assert torch.isfinite(out["norms"]).all() and out["norms"].shape == (64,)


def test_function_evaluations_as_the_eager_adjoint():
    """Under grad: one evaluation per stage forward and one per stage in the rebuild, as the
    eager adjoint (the transform's own dependence check is not counted)."""
    f = _field()
    y0 = torch.randn(5, 3, dtype=D64)

    seen = []

    def run(P):
        sol = _solve(f, P, y0, T, full=True)
        seen.append(sol)  # (its stats are filled in by the backward pass)
        return (sol.ys[-1] ** 2).sum()

    grad(run)(_params(f))
    got = seen[0]
    ref = odeflow.solve(f, y0, T)
    (ref.ys[-1] ** 2).sum().backward()
    assert got.nfe == ref.nfe == 2 * 4
    assert got.stats.nfe == ref.stats.nfe == 2 * 4


def test_solve_under_vmap_reports_the_batch_status():
    """``odeflow.solve`` under vmap returns each sample's trajectory, as one call per sample
    does, and a status for the whole batch: one non-finite sample makes it NONFINITE (the
    entry check of y0 cannot run per sample under vmap)."""
    f = MLPField().to(D64)
    y0 = torch.randn(3, 4, 3, dtype=D64)
    status = []

    def one(y):
        sol = odeflow.solve(f, y, T, steps_per_interval=2)
        status.append(sol.status)
        return sol.ys

    got = vmap(one)(y0)
    for k in range(3):
        torch.testing.assert_close(got[k], odeflow.odeint(f, y0[k], T, steps_per_interval=2),
                                   rtol=1e-12, atol=1e-12)  # fmt: skip
    assert status == [odeflow.ode.SolveStatus.SUCCESS]
    bad = y0.clone()
    bad[1, 0, 0] = float("nan")
    vmap(one)(bad)
    assert status[-1] == odeflow.ode.SolveStatus.NONFINITE


def test_a_time_grid_batched_by_vmap_is_refused():
    ts = torch.tensor([[0.0, 1.0], [0.0, 2.0]], dtype=D64)
    with pytest.raises(ValueError, match=r"t is batched by torch\.func\.vmap; all samples share"):
        vmap(lambda t: odeflow.odeint(lambda s, y: -y, torch.ones(3, dtype=D64), t))(ts)
