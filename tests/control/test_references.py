"""The reference solutions themselves: Cole–Hopf Monte Carlo and Gaussian OT."""

import math

import numpy as np
import pytest
import torch

from odeflow.control import HJB, GaussianOT, LQRValue, cole_hopf_value, gaussian_ot_reference


def test_cole_hopf_matches_riccati_for_quadratic_terminal():
    """g = |x|²/2 gives an LQR problem: Cole–Hopf MC against the Riccati value."""
    d = 3
    g = lambda x: 0.5 * (x * x).sum(-1)  # noqa: E731
    x = torch.tensor([0.5, -1.0, 0.2], dtype=torch.float64)
    est = cole_hopf_value(g, x, t=0.25, samples=200_000, seed=1)
    exact = float(LQRValue(d, gain=2.0, Qf=1.0, noise=2.0)(x[None], 0.25))
    assert abs(est.value - exact) < 4 * est.stderr + 1e-12
    assert est.stderr < 5e-3


def test_cole_hopf_errors():
    with pytest.raises(ValueError, match="below the horizon"):
        cole_hopf_value(lambda x: x.sum(-1), torch.zeros(2), t=1.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        cole_hopf_value(lambda x: x.sum(-1) * math.inf, torch.zeros(2), samples=10)


@pytest.mark.slow
def test_cole_hopf_reference_100d():
    """u(0, 0) of the 100-D benchmark with 10⁶ samples (FBSNN fork's saved runs: 4.5897)."""
    est = HJB(dim=100).reference(samples=10**6)
    assert est.stderr < 1e-3
    assert abs(est.value - 4.5899) < 4 * est.stderr + 3e-4


def test_gaussian_ot_reference_minimises_the_cost():
    """The closed form is the minimiser over Gaussian terminal laws N(m, s²I)."""
    m0, m1, s0, s1, lam, d = np.array([0.0, 1.0]), np.array([2.0, -1.0]), 1.2, 0.6, 3.0, 2
    ref = gaussian_ot_reference(m0, s0, m1, s1, lam)

    def cost(m, s):
        tr = 0.5 * (((m0 - m) ** 2).sum() + d * (s0 - s) ** 2)
        kl = 0.5 * d * (s**2 / s1**2 - 1 - 2 * math.log(s / s1)) + ((m - m1) ** 2).sum() / (
            2 * s1**2
        )
        return tr + lam * kl

    assert math.isclose(cost(ref.mean, ref.std), ref.cost, rel_tol=1e-12)
    for dm, ds in [(1e-3, 0), (0, 1e-3), (-1e-3, -1e-3)]:
        assert cost(ref.mean + dm, ref.std + ds) > ref.cost
    pb = GaussianOT(dim=4, lam=2.0)
    assert pb.reference().mean.shape == (4,)


def test_crowd_interaction_derivative_is_the_first_variation():
    """δF/δρ of the crowd problem's F(ρ) = ∫(Q + 0.01 log ρ)ρ, checked on a grid density by
    a finite difference of F in the direction η: dF[η] = ∫ δF/δρ · η."""
    from odeflow.control import CrowdMotion

    pb = CrowdMotion(dim=2)
    g = torch.linspace(-4, 4, 41, dtype=torch.float64)
    X, Y = torch.meshgrid(g, g, indexing="ij")
    x = torch.stack([X.reshape(-1), Y.reshape(-1)], 1)
    h = float(g[1] - g[0]) ** 2
    rho = torch.exp(-0.5 * ((x - torch.tensor([0.0, 1.0])) ** 2).sum(1)) / (2 * math.pi)
    eta = torch.cos(x[:, 0]) * rho  # (keeps ρ ± εη positive)
    t = torch.tensor(0.0, dtype=torch.float64)

    def F(r):
        return h * float((r * (pb.obstacle(x, t) + pb.interaction(x, r.log(), t))).sum())

    eps = 1e-6
    fd = (F(rho + eps * eta) - F(rho - eps * eta)) / (2 * eps)
    dF = pb.obstacle(x, t) + pb.interaction_derivative(x, rho.log(), t)
    assert abs(fd - h * float((dF * eta).sum())) < 1e-7 * max(1.0, abs(fd))
