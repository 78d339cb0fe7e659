"""The batched Gillespie simulation of the stochastic Lotka–Volterra task: exact law of a
pure-death process, agreement with the rate equations at large populations, seeds."""

from __future__ import annotations

import math

import pytest
import torch

from odeflow.flows import sbi_task
from odeflow.flows._sbi_ssa import gillespie_lotka_volterra, lotka_volterra_summaries


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_pure_death_is_binomial():
    # without prey only X → X − 1 fires (rate θ₂X): X(t) ~ Binomial(X₀, exp(−θ₂t)), exactly
    theta = torch.tensor([[1.0, 0.7, 1.0, 1.0]]).repeat(20_000, 1)
    out = gillespie_lotka_volterra(theta, x0=(50, 0), t_end=1.0, dt=0.5, generator=_g())
    for k, t in ((1, 0.5), (2, 1.0)):
        p = math.exp(-0.7 * t)
        x = out[:, 0, k]
        assert abs(float(x.mean()) - 50 * p) < 4 * math.sqrt(50 * p * (1 - p) / 20_000)
        assert abs(float(x.var()) / (50 * p * (1 - p)) - 1) < 0.05
    assert bool((out[:, 1] == 0).all()) and bool((out[:, 0, 0] == 50).all())


def test_mean_follows_rate_equations_at_large_population():
    # system size Ω: X/Ω, Y/Ω follow u̇₁ = u₁(θ₁Ωu₂ − θ₂), u̇₂ = u₂(θ₃ − θ₄Ωu₁) up to O(Ω^-1/2)
    from odeflow.ode import odeint

    omega, n = 10, 200
    th = torch.tensor([0.01 / omega, 0.5, 1.0, 0.01 / omega], dtype=torch.float64)
    out = gillespie_lotka_volterra(th.repeat(n, 1), x0=(50 * omega, 100 * omega), t_end=0.2,
                                   dt=0.1, generator=_g(1))  # fmt: skip

    def f(t, u):
        x, y = u[:, 0], u[:, 1]
        return torch.stack([th[0] * x * y - th[1] * x, th[2] * y - th[3] * x * y], 1)

    u0 = torch.tensor([[50.0 * omega, 100.0 * omega]], dtype=torch.float64)
    ode = odeint(f, u0, torch.tensor([0.0, 0.1, 0.2], dtype=torch.float64), method="rk4",
                 steps_per_interval=50)[:, 0].T  # (2, 3)  # fmt: skip
    rel = (out.mean(0) - ode).abs() / ode
    assert float(rel.max()) < 0.01
    assert float((out.std(0)[:, -1] / ode[:, -1]).max()) > 1e-3  # it is stochastic


def test_seed_reproduces_and_task_shapes():
    task = sbi_task("lotka_volterra_ssa")
    theta = torch.tensor([[0.01, 0.5, 1.0, 0.01]], dtype=torch.float64).repeat(4, 1)
    a = gillespie_lotka_volterra(theta, t_end=1.0, generator=_g(3))
    b = gillespie_lotka_volterra(theta, t_end=1.0, generator=_g(3))
    c = gillespie_lotka_volterra(theta, t_end=1.0, generator=_g(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (4, 2, 6) and bool((a >= 0).all())
    assert task.theta_dim == 4 and task.y_dim == 9
    s = lotka_volterra_summaries(a)
    assert s.shape == (4, 9) and bool(torch.isfinite(s).all())
    assert bool((s[:, 4:].abs() <= 1 + 1e-12).all())  # correlations


def test_cut_rows_are_nan_and_bad_input():
    theta = torch.tensor([[0.01, 0.5, 1.0, 0.01]], dtype=torch.float64)
    assert bool(torch.isnan(gillespie_lotka_volterra(theta, max_events=5, generator=_g())).all())
    with pytest.raises(ValueError, match="shape"):
        gillespie_lotka_volterra(torch.ones(3, 2))
    with pytest.raises(ValueError, match="positive"):
        gillespie_lotka_volterra(-torch.ones(3, 4))
    with pytest.raises(ValueError, match="x0"):
        gillespie_lotka_volterra(torch.ones(1, 4), x0=(1.5, 2))
