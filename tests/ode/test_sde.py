"""sdeint: observed strong and weak orders against closed-form solutions, noise types."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from odeflow import BrownianPath, sdeint, sdesolve
from odeflow.testing import observed_order

F64 = torch.float64
MU, SIG = 1.0, 0.5
HS = [2.0**-k for k in range(3, 8)]


def _gbm_errors(method, sde_type, noise_type="diagonal", paths=1000, seed=1):
    """Mean absolute error at T = 1 on geometric Brownian motion, same path for every dt.

    Itô: dY = μY dt + σY dW, Y = exp((μ − σ²/2)t + σW); Stratonovich: Y = exp(μt + σW).
    With scalar noise two components share one W (σ and 2σ)."""
    sig = torch.tensor([SIG, 2 * SIG], dtype=F64)
    if noise_type == "diagonal":
        shape, g = (paths, 2), (lambda t, y: sig * y)
    else:
        shape, g = (paths, 1), (lambda t, y: (sig * y)[..., None])
    bm = BrownianPath(0.0, 1.0, shape, seed=seed, dtype=F64, dt=HS[-1])
    y0 = torch.ones(paths, 2, dtype=F64)
    w1 = bm(0.0, 1.0)
    drift = MU - (sig**2 / 2 if sde_type == "ito" else 0)
    exact = torch.exp(drift + sig * w1)
    errs = []
    for h in HS:
        ys = sdeint(
            (lambda t, y: MU * y, g),
            y0,
            torch.tensor([0.0, 1.0], dtype=F64),
            bm=bm,
            dt=h,
            method=method,
            sde_type=sde_type,
            noise_type=noise_type,
        )
        errs.append((ys[-1] - exact).abs().mean().item())
    return errs


@pytest.mark.parametrize(
    ("method", "sde_type", "noise_type", "order"),
    [
        ("euler", "ito", "diagonal", 0.5),
        ("milstein", "ito", "diagonal", 1.0),
        ("milstein", "stratonovich", "diagonal", 1.0),
        ("heun", "stratonovich", "diagonal", 1.0),
        ("milstein", "ito", "scalar", 1.0),
        ("heun", "stratonovich", "scalar", 1.0),
    ],
)
def test_strong_order_on_geometric_brownian_motion(method, sde_type, noise_type, order):
    errs = _gbm_errors(method, sde_type, noise_type)
    assert all(b < a for a, b in itertools.pairwise(errs))
    assert abs(observed_order(errs, HS) - order) <= 0.2


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3, 4])
@pytest.mark.parametrize(
    ("method", "sde_type", "order"),
    [("euler", "ito", 0.5), ("milstein", "ito", 1.0), ("heun", "stratonovich", 1.0)],
)
def test_strong_order_many_paths(method, sde_type, order, seed):
    errs = _gbm_errors(method, sde_type, paths=8000, seed=seed)
    assert abs(observed_order(errs, HS) - order) <= 0.15


def test_general_noise_commuting_linear_sde():
    """dY_i = μY_i dt + Σ_k b_ik Y_i dW_k (commuting noise): Y_i = exp(c_i t + Σ_k b_ik W_k)
    with c_i = μ − ½Σ_k b_ik² (Itô) or μ (Stratonovich). Euler–Maruyama converges with
    order 0.5, stochastic Heun with order 1."""
    paths, b = 1000, torch.tensor([[0.3, 0.2, 0.1], [0.1, 0.4, 0.2]], dtype=F64)
    bm = BrownianPath(0.0, 1.0, (paths, 3), seed=5, dtype=F64, dt=HS[-1])
    sde = (lambda t, y: MU * y, lambda t, y: y[..., None] * b)
    y0 = torch.ones(paths, 2, dtype=F64)
    w1 = bm(0.0, 1.0)
    for method, sde_type, shift, order in [
        ("euler", "ito", (b**2).sum(1) / 2, 0.5),
        ("heun", "stratonovich", 0.0, 1.0),
    ]:
        exact = torch.exp(MU - shift + w1 @ b.T)
        errs = []
        for h in HS:
            ys = sdeint(sde, y0, [0.0, 1.0], bm=bm, dt=h, method=method, sde_type=sde_type,
                        noise_type="general")  # fmt: skip
            errs.append((ys[-1] - exact).abs().mean().item())
        assert abs(observed_order(errs, HS) - order) <= 0.2, (method, errs)


def test_heun_converges_to_the_stratonovich_solution():
    """A Stratonovich SDE with drift f equals the Itô SDE with drift f + ½ (∂g/∂y) g:
    stochastic Heun on the first and Milstein on the second approach one solution."""
    paths = 500
    bm = BrownianPath(0.0, 1.0, (paths, 1), seed=9, dtype=F64, dt=2.0**-9)
    f = lambda t, y: torch.sin(y)  # noqa: E731
    g = lambda t, y: 0.5 * torch.cos(y)  # noqa: E731
    f_ito = lambda t, y: torch.sin(y) - 0.125 * torch.cos(y) * torch.sin(y)  # noqa: E731
    y0 = torch.full((paths, 1), 0.3, dtype=F64)
    ts = [0.0, 1.0]
    diffs = []
    for h in [2.0**-5, 2.0**-7, 2.0**-9]:
        a = sdeint((f, g), y0, ts, bm=bm, dt=h, method="heun", sde_type="stratonovich")
        b = sdeint((f_ito, g), y0, ts, bm=bm, dt=h, method="milstein", sde_type="ito")
        diffs.append((a[-1] - b[-1]).abs().mean().item())
    assert diffs[-1] < 2e-3 and diffs[-1] < diffs[0] / 8


def test_weak_order_on_ornstein_uhlenbeck():
    """dX = −θX dt + σ dW: E X_t = x0 e^{−θt}, Var X_t = σ²(1 − e^{−2θt})/(2θ). Euler's
    weak order is 1 (mean error); the variance at the finest step is within sampling error."""
    theta, sigma, x0, paths = 1.0, 0.8, 10.0, 20_000
    hs = [0.2, 0.1, 0.05, 0.025]
    bm = BrownianPath(0.0, 1.0, (paths, 1), seed=4, dtype=F64, dt=hs[-1])
    sde = (lambda t, y: -theta * y, lambda t, y: torch.full_like(y, sigma))
    y0 = torch.full((paths, 1), x0, dtype=F64)
    mean, var = x0 * math.exp(-theta), sigma**2 * (1 - math.exp(-2 * theta)) / (2 * theta)
    errs = []
    for h in hs:
        xs = sdeint(sde, y0, [0.0, 1.0], bm=bm, dt=h)[-1]
        errs.append(abs(xs.mean().item() - mean))
    assert abs(observed_order(errs, hs) - 1.0) <= 0.2
    # Euler's variance on this grid: σ²h Σ_k (1 − θh)^{2k}, vs the sample variance
    h, n = hs[-1], round(1 / hs[-1])
    v_em = sigma**2 * h * sum((1 - theta * h) ** (2 * k) for k in range(n))
    assert abs(xs.var().item() - v_em) < 5 * v_em * (2 / paths) ** 0.5
    assert abs(v_em - var) < 0.03 * var


def test_outputs_at_intermediate_times_and_grid():
    """Output times off the dt grid are hit exactly (a shorter step ends there); additive
    noise with zero drift gives y(t) − y(0) = W(t) at every output."""
    ts = torch.tensor([0.0, 0.15, 0.5, 0.7071, 1.0], dtype=F64)
    sol = sdesolve(
        (lambda t, y: torch.zeros_like(y), lambda t, y: torch.ones_like(y)),
        torch.zeros(3, 2, dtype=F64),
        ts,
        dt=0.1,
    )
    assert sol.ys.shape == (5, 3, 2)
    assert sol.steps == 12  # 0, .1, .15, .2, …, .5, .6, .7, .7071, .8, .9, 1
    for k, t in enumerate(ts.tolist()):
        torch.testing.assert_close(sol.ys[k], sol.bm(0.0, t), rtol=0, atol=1e-14)
    assert sol.nfe == 2 * 12 and sol.status.value == "success"  # (the check is step 1's)


def test_sde_object_protocol_and_float32():
    class OU(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def __init__(self):
            super().__init__()
            self.theta = torch.nn.Parameter(torch.tensor(0.7))

        def f(self, t, y):
            return -self.theta * y

        def g(self, t, y):
            return 0.1 * torch.ones_like(y)

    torch.manual_seed(0)
    ys = sdeint(OU(), torch.ones(4, 3), torch.linspace(0, 1, 6), dt=0.05)
    assert ys.dtype == torch.float32 and ys.shape == (6, 4, 3)
    assert ys.requires_grad  # the module's parameter
    assert torch.isfinite(ys).all()
    torch.manual_seed(0)
    again = sdeint(OU(), torch.ones(4, 3), torch.linspace(0, 1, 6), dt=0.05)
    assert torch.equal(ys, again)


def test_inputs_not_modified():
    y0 = torch.ones(3, 2, dtype=F64)
    ts = torch.tensor([0.0, 1.0], dtype=F64)
    before = (y0.clone(), ts.clone())
    sdeint((lambda t, y: -y, lambda t, y: 0.1 * y), y0, ts, dt=0.1, method="milstein")
    assert torch.equal(y0, before[0]) and torch.equal(ts, before[1])
