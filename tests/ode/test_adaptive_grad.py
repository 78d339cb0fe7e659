"""Gradients of adaptive solves: the discrete adjoint of the accepted steps equals backprop
through the same steps (float64, 1e-10), and both approach the exact gradient."""

from __future__ import annotations

import math

import pytest
import torch

import odeflow
from odeflow.ode._embedded import EMBEDDED_TABLEAUS

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


def _grads(gradient, method, t, **kw):
    torch.manual_seed(1)
    func = Field()
    y0 = torch.randn(5, 3, dtype=D64, requires_grad=True)
    sol = odeflow.solve(func, y0, t, method=method, gradient=gradient, **kw)
    w = torch.linspace(-1, 1, sol.ys.numel(), dtype=D64).reshape(sol.ys.shape)
    loss = (sol.ys * w).sum() + sol.ys[-1].square().sum()
    gs = torch.autograd.grad(loss, [y0, *func.parameters()])
    return torch.cat([g.flatten() for g in gs]), sol


@pytest.mark.parametrize("method", list(EMBEDDED_TABLEAUS))
def test_discrete_adjoint_equals_backprop_through_accepted_steps(method):
    # outputs inside steps (dense output) and at step ends, rejected steps along the way
    t = torch.tensor([0.0, 0.13, 0.5, 1.1, 2.0], dtype=D64)
    ga, sa = _grads("adjoint", method, t, rtol=1e-5, atol=1e-7)
    gb, sb = _grads("backprop", method, t, rtol=1e-5, atol=1e-7)
    assert sa.steps == sb.steps and torch.equal(sa.ys, sb.ys)
    assert (ga - gb).abs().max() <= 1e-10 * gb.abs().max(), (ga - gb).abs().max()


def test_adjoint_of_a_tuple_state_matches_backprop():
    t = torch.tensor([0.0, 0.7, 1.5], dtype=D64)
    k = torch.tensor(0.8, dtype=D64, requires_grad=True)

    def f(t, y):  # a damped oscillator as (position, velocity)
        return (y[1], -k * y[0] - 0.1 * y[1])

    def grads(gradient):
        x0 = torch.tensor([1.0, 0.5], dtype=D64, requires_grad=True)
        v0 = torch.zeros(2, dtype=D64, requires_grad=True)
        ys = odeflow.odeint(f, (x0, v0), t, method="tsit5", rtol=1e-6, atol=1e-8,
                            gradient=gradient, params=[k])  # fmt: skip
        loss = ys[0].square().sum() + ys[1][-1].sum()
        return torch.stack([g.sum() for g in torch.autograd.grad(loss, [x0, v0, k])])

    ga, gb = grads("adjoint"), grads("backprop")
    assert (ga - gb).abs().max() <= 1e-10 * gb.abs().max()


def test_adjoint_gradient_approaches_the_exact_one():
    # y' = a y: y(T) = y0 e^{aT}, d y(T)/da = T y0 e^{aT}; the gradient's error falls with tol
    a = torch.tensor(-0.7, dtype=D64, requires_grad=True)
    t = torch.tensor([0.0, 2.0], dtype=D64)
    errs = []
    for tol in (1e-5, 1e-8, 1e-11):
        y = odeflow.odeint(lambda t, y: a * y, torch.ones(1, dtype=D64), t, method="dopri5",
                           rtol=tol, atol=tol, params=[a])  # fmt: skip
        (g,) = torch.autograd.grad(y[-1].sum(), a)
        errs.append(abs(g.item() - 2.0 * math.exp(-1.4)))
    assert errs[2] < errs[1] < errs[0] and errs[2] < 1e-9


def test_time_gradients_are_refused_with_adaptive_steps():
    t = torch.tensor([0.0, 1.0], dtype=D64, requires_grad=True)
    y0 = torch.ones(1, dtype=D64, requires_grad=True)
    with pytest.raises(ValueError, match="output times t"):
        odeflow.odeint(lambda t, y: -y, y0, t, method="dopri5")


def test_random_fields_are_refused_by_the_rebuilding_adjoints():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).double()
    y0 = torch.ones(3, 2, dtype=D64, requires_grad=True)
    t = torch.tensor([0.0, 0.5], dtype=D64)
    for gradient in ("adjoint", odeflow.BacksolveAdjoint()):
        with pytest.raises(ValueError, match="drew random numbers"):
            odeflow.odeint(lambda t, y: net(y), y0, t, method="dopri5", gradient=gradient,
                           params=list(net.parameters()), max_steps=20)  # fmt: skip
    net.eval()  # deterministic: fine
    ys = odeflow.odeint(lambda t, y: net(y), y0, t, method="dopri5",
                        params=list(net.parameters()))  # fmt: skip
    assert ys.requires_grad


def test_tensor_tolerances_must_broadcast_to_their_leaf():
    y0 = torch.ones(4, 2, dtype=D64)
    t = torch.tensor([0.0, 1.0], dtype=D64)
    ys = odeflow.odeint(lambda t, y: -y, y0, t, method="dopri5",
                        atol=torch.tensor([1e-9, 1e-3], dtype=D64))  # fmt: skip
    assert (ys[-1] - math.exp(-1)).abs().max() < 1e-6
    with pytest.raises(ValueError, match="does not broadcast"):
        odeflow.odeint(lambda t, y: -y, y0, t, method="dopri5", atol=torch.full((3,), 1e-6))
