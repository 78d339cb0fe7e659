"""VarPro: the reduced loss, its envelope-theorem gradient, and Gauss–Newton VarPro."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from odeflow.optim import SteihaugCG, VarPro, gnvpro, solve_last_layer, varpro_objective
from odeflow.optim._varpro import reduced_loss_value
from odeflow.testing import taylor_test

F64 = torch.float64


def _net(seed=0, width=6, d=2):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(d, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh()
    ).double()


def _peaks(n=60, seed=1):
    g = torch.Generator().manual_seed(seed)
    X = 6 * torch.rand(n, 2, generator=g, dtype=F64) - 3
    a, b = X[:, 0], X[:, 1]
    f = 3 * (1 - a) ** 2 * torch.exp(-(a**2) - (b + 1) ** 2)
    f = f - 10 * (a / 5 - a**3 - b**5) * torch.exp(-(a**2) - b**2)
    f = f - torch.exp(-((a + 1) ** 2) - b**2) / 3
    return X, f[:, None] / 4


def _reduced(model, X, Y):
    names = [k for k, _ in model.features.named_parameters()]
    shapes = [p.shape for _, p in model.features.named_parameters()]

    def phi(theta):
        ps, i = {}, 0
        for k, s in zip(names, shapes):
            ps[k] = theta[i : i + math.prod(s)].reshape(s)
            i += math.prod(s)
        Z = functional_call(model.features, ps, (X,))
        Z = torch.cat([Z, Z.new_ones(Z.shape[0], 1)], 1)
        W = solve_last_layer(Z, Y, loss=model.loss, lam=model.lam).weight
        return reduced_loss_value(
            Z, Y, W, torch.full((W.shape[1],), model.lam, dtype=F64), model.loss
        )

    return phi


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_envelope_gradient_passes_a_taylor_test(loss):
    X, f = _peaks()
    Y = f if loss == "mse" else (f[:, 0] > 0).long() + (f[:, 0] > 0.5).long()
    model = VarPro(_net(), loss=loss, lam=1e-2 if loss == "mse" else 0.3)
    model.zero_grad()
    model.reduced_loss(X, Y).value.backward()
    theta = torch.cat([p.detach().reshape(-1) for p in model.features.parameters()])
    grad = torch.cat([p.grad.reshape(-1) for p in model.features.parameters()])
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    res = taylor_test(_reduced(model, X, Y), theta, v, grad=grad, second=False, h0=0.1, n=14)
    assert abs(res.order1 - 2) <= 0.2, (res.e1, res.order1)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_reduced_loss_is_the_full_loss_at_the_inner_optimum(loss):
    X, f = _peaks()
    Y = f if loss == "mse" else (f[:, 0] > 0).long()
    lam = 1e-2 if loss == "mse" else 0.3
    model = VarPro(_net(), loss=loss, lam=lam)
    out = model.reduced_loss(X, Y)
    W = out.last.weight.clone().requires_grad_(True)
    lin = nn.Linear(6, W.shape[1]).double()  # an ordinary last layer holding W*
    with torch.no_grad():
        lin.weight.copy_(W[:-1].T)
        lin.bias.copy_(W[-1])
    logits = lin(model.features(X))
    if loss == "mse":
        full = 0.5 * ((logits - Y) ** 2).sum() / len(X)
    else:
        full = nn.functional.cross_entropy(logits, Y, reduction="sum") / len(X)
    full = full + 0.5 * lam**2 / len(X) * (W.detach() ** 2).sum()
    assert float(out.value.detach()) == pytest.approx(float(full.detach()), rel=1e-12)
    # and W* is the inner optimum: the full loss's gradient in W vanishes there
    Z = model.feature_matrix(X).detach()
    val = reduced_loss_value(Z, Y, W, torch.full((W.shape[1],), lam, dtype=F64), loss)
    (gW,) = torch.autograd.grad(val, W)
    assert float(gW.norm()) <= 1e-9


def test_hybrid_inner_solve_chooses_lambda_per_output():
    X, f = _peaks(80)
    Y = torch.cat(
        [f, f + 0.01 * torch.randn(80, 1, generator=torch.Generator().manual_seed(0), dtype=F64)], 1
    )
    model = VarPro(_net(width=10), lam="gcv")
    out = model.reduced_loss(X, Y)
    assert out.last.lam.shape == (2,) and bool((out.last.lam > 0).all())
    Z = model.feature_matrix(X).detach()
    for c in range(2):  # W* is the Tikhonov solution at the λ it chose
        l2 = float(out.last.lam[c]) ** 2
        ref = torch.linalg.solve(Z.T @ Z + l2 * torch.eye(Z.shape[1], dtype=F64), Z.T @ Y[:, c])
        assert torch.allclose(out.last.weight[:, c], ref, rtol=1e-6, atol=1e-8)


def test_gauss_newton_operator_and_gnvpro_training():
    X, f = _peaks(80)
    model = VarPro(_net(width=8), lam=1e-3)
    fn, theta = varpro_objective(model, X, f)
    ev = fn(theta)
    model.zero_grad()
    model.reduced_loss(X, f).value.backward()
    grad = torch.cat([p.grad.reshape(-1) for p in model.features.parameters()])
    assert torch.allclose(ev.grad, grad, rtol=1e-10, atol=1e-13)  # envelope gradient twice
    u, w = torch.randn(2, theta.numel(), generator=torch.Generator().manual_seed(1), dtype=F64)
    assert float(u @ ev.hessian.mv(w)) == pytest.approx(float(w @ ev.hessian.mv(u)), rel=1e-9)
    assert float(u @ ev.hessian.mv(u)) > 0
    res = gnvpro(model, X, f, maxiter=15, cg_maxiter=10)
    values = [h["value"] for h in res.history]
    assert all(b <= a for a, b in itertools.pairwise(values))  # Armijo: monotone decrease
    assert values[-1] < 0.1 * values[0]
    pred = model(X)
    assert float(0.5 * ((pred.detach() - f) ** 2).sum() / len(X)) <= values[-1]


def test_gnvpro_in_a_trust_region():
    X, f = _peaks(80)
    model = VarPro(_net(width=8), lam=1e-3)
    res = gnvpro(model, X, f, maxiter=15, descent=SteihaugCG(radius=1.0, maxiter=10))
    values = [h["value"] for h in res.history]
    assert all(b <= a for a, b in itertools.pairwise(values))
    assert values[-1] < 0.1 * values[0]
    assert {"radius", "cg_stop"} <= set(res.history[1])


def test_bad_input():
    X, f = _peaks(20)
    with pytest.raises(ValueError, match="loss"):
        VarPro(_net(), loss="hinge")
    with pytest.raises(RuntimeError, match="fit_last_layer"):
        VarPro(_net())(X)
    with pytest.raises(ValueError, match="lam > 0"):
        solve_last_layer(
            torch.randn(20, 3, dtype=F64), (f[:, 0] > 0).long(), loss="cross_entropy", lam=0.0
        )
    with pytest.raises(ValueError, match="NaN"):
        solve_last_layer(torch.full((20, 3), float("nan"), dtype=F64), f)
    with pytest.raises(ValueError, match="rows"):
        solve_last_layer(torch.randn(19, 3, dtype=F64), f)
    with pytest.raises(ValueError, match="fixed numeric lam"):
        varpro_objective(VarPro(_net(), lam="gcv"), X, f)


def test_gnvpro_with_a_lambda_too_small_for_float32_says_so():
    """Nearly dependent features (64 tanh units on 40 points) with lam=1e-8 in float32:
    the normal equations are not positive definite in that precision; a ValueError names
    lam and the fix (never torch's raw LinAlgError)."""
    torch.manual_seed(0)
    m = VarPro(nn.Sequential(nn.Linear(1, 64), nn.Tanh()), lam=1e-8)
    x = torch.linspace(-1, 1, 40)[:, None]
    with pytest.raises(ValueError, match=r"lam=1e-08.*pass a larger lam or use float64"):
        gnvpro(m, x, torch.sin(4 * x), maxiter=5)
