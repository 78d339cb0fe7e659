"""Per-sample adaptive steps (options={"per_sample_steps": True}): each sample of a batch
solved as if alone."""

from __future__ import annotations

import pytest
import torch

import odeflow

D64 = torch.float64
PER_SAMPLE = {"per_sample_steps": True}


def _field(t, y):  # a forced Van der Pol oscillator; t is (batch,) with per-sample steps
    x, v = y[..., 0], y[..., 1]
    force = 0.3 * torch.cos(t)
    return torch.stack([v, (1 - x * x) * v - x + force], -1)


Y0 = torch.tensor([[2.0, 0.0], [0.1, 0.0], [1.0, 1.0], [3.0, -1.0]], dtype=D64)
T = torch.tensor([0.0, 1.3, 4.0, 8.0], dtype=D64)


@pytest.mark.parametrize("method", ["bosh3", "dopri5", "dopri8"])
def test_each_sample_as_if_solved_alone(method):
    batch = odeflow.solve(_field, Y0, T, method=method, rtol=1e-5, atol=1e-7, options=PER_SAMPLE)
    steps = []
    for b in range(len(Y0)):
        alone = odeflow.solve(lambda t, y: _field(t.expand(1), y), Y0[b : b + 1], T,
                              method=method, rtol=1e-5, atol=1e-7)  # fmt: skip
        steps.append(alone.steps)
        assert (batch.ys[:, b] - alone.ys[:, 0]).abs().max() < 1e-10  # the same steps: round-off
    assert batch.steps == max(steps)
    joint = odeflow.solve(lambda t, y: _field(t.expand(len(Y0)), y), Y0, T, method=method,
                          rtol=1e-5, atol=1e-7)  # fmt: skip
    assert joint.steps >= max(steps) > min(steps)  # one system: every sample at the worst pace


def test_backprop_through_per_sample_steps():
    w = torch.tensor(0.7, dtype=D64, requires_grad=True)

    def f(t, y):
        return _field(t, y) * w

    grads = []
    for b in range(2):
        y0 = Y0[b : b + 1].clone().requires_grad_()
        ys = odeflow.odeint(lambda t, y: f(t.expand(1), y), y0, T, method="tsit5",
                            rtol=1e-7, atol=1e-9, gradient="backprop", params=[w])  # fmt: skip
        grads.append(torch.autograd.grad(ys.square().sum(), [y0, w]))
    y0 = Y0[:2].clone().requires_grad_()
    ys = odeflow.odeint(f, y0, T, method="tsit5", rtol=1e-7, atol=1e-9, gradient="backprop",
                        params=[w], options=PER_SAMPLE)  # fmt: skip
    gy, gw = torch.autograd.grad(ys.square().sum(), [y0, w])
    assert (gy - torch.cat([g[0] for g in grads])).abs().max() < 1e-10
    assert abs(gw - sum(g[1] for g in grads)) < 1e-10 * abs(gw)


@pytest.mark.parametrize("method", ["tsit5", "dopri8"])  # (dense output; partial steps)
def test_discrete_adjoint_of_per_sample_steps_equals_backprop(method):
    w = torch.tensor(0.7, dtype=D64, requires_grad=True)

    def grads(gradient):
        y0 = Y0.clone().requires_grad_()
        ys = odeflow.odeint(lambda t, y: _field(t, y) * w, y0, T, method=method, rtol=1e-3,
                            atol=1e-5, gradient=gradient, params=[w],
                            options=PER_SAMPLE)  # fmt: skip
        wts = torch.linspace(-1, 1, ys.numel(), dtype=D64).reshape(ys.shape)
        gs = torch.autograd.grad((ys * wts).sum() + ys[-1].square().sum(), [y0, w])
        return torch.cat([g.flatten() for g in gs])

    ga, gb = grads("adjoint"), grads("backprop")
    assert (ga - gb).abs().max() <= 1e-10 * gb.abs().max()


def test_per_sample_refusals():
    y0 = Y0.clone().requires_grad_()
    with pytest.raises(ValueError, match="gradient='adjoint'"):
        odeflow.odeint(_field, y0, T, method="dopri5", options=PER_SAMPLE,
                       gradient=odeflow.BacksolveAdjoint())  # fmt: skip
    with pytest.raises(ValueError, match="batched along dim 0 with one batch size"):
        odeflow.odeint(lambda t, y: (-y[0], -y[1]), (torch.ones(3), torch.ones(2)), T,
                       method="dopri5", options=PER_SAMPLE)  # fmt: skip
    with pytest.raises(TypeError, match="per_sample_steps"):
        odeflow.odeint(_field, Y0, T, method="dopri5", options={"per_sample_steps": 1})
