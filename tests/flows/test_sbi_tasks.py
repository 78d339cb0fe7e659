"""SBI benchmark simulators: their published definitions, checked by closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from odeflow.flows import sbi_task
from odeflow.flows._sbi_tasks import lotka_volterra_states


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_gaussian_linear_moments():
    theta, y = sbi_task("gaussian_linear").simulate(40_000, generator=_g())
    assert theta.shape == y.shape == (40_000, 10)
    cov = torch.cov(torch.cat([theta, y], 1).T)
    # Cov(θ) = 0.1 I, Cov(θ, y) = 0.1 I, Cov(y) = 0.2 I
    ref = torch.zeros(20, 20, dtype=torch.float64)
    ref[:10, :10] = ref[:10, 10:] = ref[10:, :10] = 0.1 * torch.eye(10)
    ref[10:, 10:] = 0.2 * torch.eye(10)
    assert float((cov - ref).abs().max()) < 0.01


def test_two_moons_crescent():
    theta, y = sbi_task("two_moons").simulate(20_000, generator=_g(1))
    s = math.sqrt(0.5)
    p = y - torch.stack([-(s * (theta[:, 0] + theta[:, 1])).abs(),
                         s * (theta[:, 1] - theta[:, 0])], 1)  # fmt: skip
    r = torch.hypot(p[:, 0] - 0.25, p[:, 1])
    assert abs(float(r.mean()) - 0.1) < 5e-4 and abs(float(r.std()) - 0.01) < 5e-4
    assert float((p[:, 0] - 0.25).min()) > -1e-3  # a ∈ (−π/2, π/2): the right half-circle
    assert float(theta.abs().max()) <= 1


def test_slcp_covariance():
    t = sbi_task("slcp")
    theta = torch.tensor([[0.5, -1.0, 1.2, -0.8, 0.7]], dtype=torch.float64).expand(20_000, 5)
    y = t.simulator(theta, _g(2)).reshape(-1, 2)  # 4 i.i.d. draws per row
    s1, s2, rho = 1.2**2, 0.8**2, math.tanh(0.7)
    ref = torch.tensor([[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]], dtype=torch.float64)
    torch.testing.assert_close(y.mean(0), theta[0, :2], atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(y.T), ref, atol=0.03, rtol=0.02)


def test_lotka_volterra_matches_scipy():
    scipy_integrate = pytest.importorskip("scipy.integrate")
    theta, _ = sbi_task("lotka_volterra").simulate(6, generator=_g(3))
    us = lotka_volterra_states(theta)
    ts = 2.1 * np.arange(10)
    for i in range(6):
        a, b, c, d = theta[i].tolist()
        sol = scipy_integrate.solve_ivp(
            lambda t, u, a=a, b=b, c=c, d=d: [a * u[0] - b * u[0] * u[1],
                                              -c * u[1] + d * u[0] * u[1]],
            (0, 19.0), [30.0, 1.0], t_eval=ts, rtol=1e-10, atol=1e-10, method="DOP853",
        )  # fmt: skip
        ref = torch.from_numpy(sol.y)
        assert float(((us[i] - ref).abs() / ref.abs().clamp_min(1.0)).max()) < 1e-3


def test_lotka_volterra_noise_is_log_normal():
    t = sbi_task("lotka_volterra")
    theta = torch.tensor([[0.9, 0.05, 0.9, 0.05]], dtype=torch.float64).expand(4000, 4)
    y = t.simulator(theta, _g(4))
    clean = lotka_volterra_states(theta[:1]).reshape(20)
    r = torch.log(y) - torch.log(clean)
    assert abs(float(r.mean())) < 0.01 and abs(float(r.std()) - 0.1) < 0.005


def test_unknown_task():
    with pytest.raises(ValueError, match="valid tasks are: gaussian_linear"):
        sbi_task("nope")
