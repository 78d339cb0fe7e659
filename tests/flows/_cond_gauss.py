"""A joint Gaussian (x ∈ R⁴, y ∈ R³, random covariance) and its exact conditionals."""

from __future__ import annotations

import torch

DX, DY = 4, 3


def joint(seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(DX + DY, DX + DY, generator=g, dtype=dtype)
    cov = a @ a.T / (DX + DY) + 0.5 * torch.eye(DX + DY, dtype=dtype)
    return torch.randn(DX + DY, generator=g, dtype=dtype), cov


def conditional(mu, cov, y):
    """Mean (…, DX) and covariance (DX, DX) of x | y."""
    sxx, sxy, syy = cov[:DX, :DX], cov[:DX, DX:], cov[DX:, DX:]
    k = sxy @ torch.linalg.inv(syy)
    return mu[:DX] + (y - mu[DX:]) @ k.T, sxx - k @ sxy.T


def score(model, mu, cov, n_y: int = 10, n: int = 2000, seed: int = 1):
    """(worst mean error in conditional sd, worst relative cov error, mean KL(true‖model))."""
    torch.manual_seed(seed)
    dist = torch.distributions.MultivariateNormal(mu, cov)
    ys = dist.sample((n_y,))[:, DX:]
    em, ec, kl = [], [], []
    with torch.no_grad():
        for y in ys:
            m, c = conditional(mu, cov, y)
            xs = model(y).sample((n,)).to(mu.dtype)
            em.append(float(((xs.mean(0) - m) / c.diagonal().sqrt()).abs().max()))
            ec.append(float(torch.linalg.norm(torch.cov(xs.T) - c) / torch.linalg.norm(c)))
            exact = torch.distributions.MultivariateNormal(m, c)
            xt = exact.sample((n,))
            lq = model(y.to(model.x_loc.dtype)).log_prob(xt.to(model.x_loc.dtype)).double()
            kl.append(float((exact.log_prob(xt) - lq).mean()))
    return max(em), max(ec), sum(kl) / len(kl)


def data(n: int, seed: int = 0, dtype=torch.float64):
    mu, cov = joint(seed, torch.float64)
    torch.manual_seed(seed + 100)
    xy = torch.distributions.MultivariateNormal(mu, cov).sample((n,))
    return mu, cov, xy[:, :DX].to(dtype), xy[:, DX:].to(dtype)
