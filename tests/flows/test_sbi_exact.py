"""The exact two-moons likelihood and posterior sampler against quadrature and the simulator."""

import math

import pytest
import torch

from odeflow.flows import sbi_task, two_moons_log_likelihood, two_moons_posterior_sample

F64 = torch.float64


def _grid_around(theta, h=5e-4, half=0.15):
    """A y-grid (cell centres, spacing h) covering the likelihood's annulus at ``theta``."""
    s = math.sqrt(0.5)
    c1, c2 = -abs(s * float(theta[0] + theta[1])), s * float(theta[1] - theta[0])
    g = torch.arange(-half, half, h, dtype=F64) + h / 2
    y1, y2 = torch.meshgrid(g + 0.25 + c1, g + c2, indexing="ij")
    return torch.stack([y1, y2], -1).reshape(-1, 2)


@pytest.mark.parametrize("theta", [(0.3, -0.5), (-0.9, 0.8), (0.0, 0.0)])
def test_likelihood_is_a_density_with_the_simulators_mean(theta):
    """∫p(y | θ)dy = 1 by quadrature, and the quadrature mean of y equals the simulator's
    Monte-Carlo mean (10⁵ draws) within 4 standard errors."""
    theta = torch.tensor(theta, dtype=F64)
    y, h = _grid_around(theta), 5e-4
    p = two_moons_log_likelihood(theta, y).exp()
    assert abs(float(p.sum()) * h * h - 1) < 1e-6
    mean = (p[:, None] * y).sum(0) * h * h
    g = torch.Generator().manual_seed(0)
    ys = sbi_task("two_moons").simulator(theta.expand(100_000, 2), g)
    se = ys.std(0) / math.sqrt(ys.shape[0])
    assert bool(((ys.mean(0) - mean).abs() < 4 * se).all())


def test_posterior_sampler_matches_rejection_from_the_prior():
    """Samples of the exact sampler and of plain rejection sampling (prior proposals accepted
    with probability p(y | θ)/max p) agree in mean, covariance and the mass of each moon."""
    y = torch.tensor([0.1, -0.05], dtype=F64)
    g = torch.Generator().manual_seed(1)
    a = two_moons_posterior_sample(y, 20_000, generator=g)
    mu, sd = 0.1, 0.01
    r = (mu + math.sqrt(mu * mu - 4 * sd * sd)) / 2  # argmax of N(r; μ, σ²)/r
    bound = math.exp(-0.5 * ((r - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi) * math.pi * r)
    prop = 2 * torch.rand(3_000_000, 2, generator=g, dtype=F64) - 1
    lik = two_moons_log_likelihood(prop, y).exp()
    assert float(lik.max()) <= bound
    b = prop[torch.rand(prop.shape[0], generator=g, dtype=F64) * bound < lik]
    assert b.shape[0] > 5000
    se = b.std(0) / math.sqrt(b.shape[0])
    assert bool(((a.mean(0) - b.mean(0)).abs() < 4 * se * math.sqrt(2)).all())
    assert torch.allclose(torch.cov(a.T), torch.cov(b.T), atol=0.02)
    frac_a, frac_b = float((a.sum(1) > 0).double().mean()), float((b.sum(1) > 0).double().mean())
    assert abs(frac_a - frac_b) < 4 * math.sqrt(0.25 / b.shape[0]) * math.sqrt(2)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2\)"):
        two_moons_log_likelihood(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        two_moons_posterior_sample(torch.zeros(2, 2), 5)
    with pytest.raises(ValueError, match="NaN"):
        two_moons_posterior_sample(torch.tensor([math.nan, 0.0]), 5)
    with pytest.raises(ValueError, match="empty"):
        two_moons_posterior_sample(torch.tensor([5.0, 5.0]), 5, batch=100)
