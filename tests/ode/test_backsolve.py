"""The continuous adjoint: convergence to the discrete adjoint at the method's order, and
agreement with torchdiffeq's odeint_adjoint."""

from __future__ import annotations

import pytest
import torch

import odeflow
from odeflow.ode import BacksolveAdjoint
from odeflow.testing import observed_order

D64 = torch.float64


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(3, 8, generator=g, dtype=D64) / 2)
        self.w2 = torch.nn.Parameter(torch.randn(8, 3, generator=g, dtype=D64) / 3)
        self.b = torch.nn.Parameter(torch.randn(8, generator=g, dtype=D64) / 4)

    def forward(self, t, y):
        return torch.tanh(y @ self.w1 + self.b) @ self.w2 * torch.cos(t)


T_OUT = torch.tensor([0.0, 0.3, 0.7, 1.5], dtype=D64)


def _grads(func, gradient, **kw):
    y0 = torch.linspace(-1, 1, 12, dtype=D64).reshape(4, 3).requires_grad_()
    ys = odeflow.odeint(func, y0, T_OUT, gradient=gradient, **kw)
    loss = ys.square().sum() + ys[1].sum()
    gs = torch.autograd.grad(loss, [y0, *func.parameters()])
    return torch.cat([g.flatten() for g in gs])


@pytest.mark.parametrize("checkpoints", [False, True])
@pytest.mark.parametrize("method, order", [("rk4", 4), ("bosh3", 3)])
def test_error_against_discrete_adjoint_falls_at_the_methods_order(method, order, checkpoints):
    func = Field()
    ns = [4, 8, 16, 32] if order == 4 else [8, 16, 32, 64]
    errs = []
    for n in ns:
        kw = dict(method=method, steps_per_interval=n)
        exact_discrete = _grads(func, "adjoint", **kw)
        cont = _grads(func, BacksolveAdjoint(checkpoints=checkpoints), **kw)
        errs.append((cont - exact_discrete).abs().max().item())
    assert abs(observed_order(errs, [1 / n for n in ns]) - order) <= 0.3, errs


@pytest.mark.parametrize("checkpoints", [False, True])
def test_agrees_with_torchdiffeq_odeint_adjoint(checkpoints):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    func = Field()
    tol = dict(rtol=1e-8, atol=1e-8)
    ours = _grads(func, BacksolveAdjoint(checkpoints=checkpoints), method="dopri5", **tol)
    y0 = torch.linspace(-1, 1, 12, dtype=D64).reshape(4, 3).requires_grad_()
    ys = torchdiffeq.odeint_adjoint(func, y0, T_OUT, method="dopri5", **tol)
    loss = ys.square().sum() + ys[1].sum()
    theirs = torch.cat([g.flatten() for g in torch.autograd.grad(loss, [y0, *func.parameters()])])
    exact = _grads(func, "adjoint", method="dopri5", rtol=1e-12, atol=1e-12)
    # both within the tolerance's reach of the converged gradient, and of each other
    scale = exact.abs().max()
    assert (ours - exact).abs().max() < 1e-6 * scale
    assert (theirs - exact).abs().max() < 1e-6 * scale
    assert (ours - theirs).abs().max() < 1e-6 * scale


def test_checkpointed_handles_outputs_inside_steps():
    # adaptive steps with outputs inside them: the adjoint jumps at the output times
    func = Field()
    t = torch.tensor([0.0, 0.05, 0.4, 0.41, 1.5], dtype=D64)

    def grads(gradient, tol):
        y0 = torch.linspace(-1, 1, 12, dtype=D64).reshape(4, 3).requires_grad_()
        ys = odeflow.odeint(func, y0, t, method="tsit5", rtol=tol, atol=tol, gradient=gradient)
        loss = (ys * torch.arange(5, dtype=D64)[:, None, None]).sum()
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, [y0, *func.parameters()])])

    exact = grads("adjoint", 1e-12)
    for ck in (False, True):
        g = grads(BacksolveAdjoint(checkpoints=ck), 1e-9)
        assert (g - exact).abs().max() < 1e-6 * exact.abs().max(), ck


def test_bad_backsolve_arguments():
    with pytest.raises(ValueError, match="rtol must be a positive finite"):
        BacksolveAdjoint(rtol=0.0)
    with pytest.raises(ValueError, match="atol must be a positive finite"):
        BacksolveAdjoint(atol=float("nan"))
    with pytest.raises(TypeError, match="checkpoints must be True or False"):
        BacksolveAdjoint(checkpoints="yes")
    with pytest.raises(TypeError, match="seminorm must be True or False"):
        BacksolveAdjoint(seminorm=1)


def test_refusals_time_gradients_and_torch_func():
    y0 = torch.ones(2, dtype=D64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=D64, requires_grad=True)
    with pytest.raises(ValueError, match="output times t"):
        odeflow.odeint(lambda t, y: -y, y0, t, steps_per_interval=4, gradient=BacksolveAdjoint())
    with pytest.raises(ValueError, match=r"torch\.func transforms"):
        torch.func.grad(
            lambda y: odeflow.odeint(lambda t, y: -y, y, t.detach(), method="dopri5")[-1].sum()
        )(torch.ones(2, dtype=D64))


def test_seminorm_saves_backward_evaluations():
    func = Field()
    exact = _grads(func, "adjoint", method="dopri5", rtol=1e-12, atol=1e-12)
    nfe = {}
    for semi in (False, True):
        y0 = torch.linspace(-1, 1, 12, dtype=D64).reshape(4, 3).requires_grad_()
        sol = odeflow.solve(func, y0, T_OUT, method="dopri5", rtol=1e-7, atol=1e-7,
                            gradient=BacksolveAdjoint(seminorm=semi))  # fmt: skip
        loss = sol.ys.square().sum() + sol.ys[1].sum()
        g = torch.cat([x.flatten() for x in torch.autograd.grad(loss, [y0, *func.parameters()])])
        assert (g - exact).abs().max() < 1e-5 * exact.abs().max(), semi
        nfe[semi] = sol.stats.nfe
    assert 0 < nfe[True] < nfe[False], nfe
