r"""The two-moons task's exact likelihood and exact posterior samples (no reference files needed).

The two-moons simulator (Greenberg, Nonnenmacher, Macke, "Automatic posterior transformation
for likelihood-free inference", ICML 2019, arXiv 1905.07488; sbibm's variant, Lueckmann et
al., arXiv 2101.04653) is

    y = q + (0.25, 0) + c(θ),   q = (r cos a, r sin a),   a ~ U(−π/2, π/2),  r ~ N(0.1, 0.01²),
    c(θ) = (−|θ₁ + θ₂|/√2, (θ₂ − θ₁)/√2),

and its likelihood is tractable: (r, a) ↦ q is one-to-one with |∂q/∂(r, a)| = |r| (r > 0
gives q₁ > 0, r < 0 gives q₁ < 0), so with q = y − (0.25, 0) − c(θ) and r = sign(q₁)‖q‖

    p(y | θ) = N(r; 0.1, 0.01²) / (π‖q‖).

Exact posterior samples under the uniform prior on [−1, 1]²: on each half-plane
{±(θ₁ + θ₂) > 0} the map θ ↦ c(θ) is an isometry onto {c₁ < 0} (unit Jacobian), so
drawing q from the noise, c = y − (0.25, 0) − q, keeping c₁ < 0, choosing a half-plane
with probability ½ and keeping θ = c⁻¹(c) inside the prior box samples p(θ | y) exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._utils import check_int

__all__ = ["two_moons_log_likelihood", "two_moons_posterior_sample"]

_MU, _SIGMA = 0.1, 0.01


def _pairs(t, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        t = torch.as_tensor(t, dtype=torch.float64)
    if t.ndim < 1 or t.shape[-1] != 2 or not t.is_floating_point():
        raise ValueError(f"{name} must be a real tensor of shape (..., 2), got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return t


def two_moons_log_likelihood(theta: Tensor, y: Tensor) -> Tensor:
    r"""Exact log p(y | θ) of the two-moons simulator, broadcast over ``(..., 2)`` inputs.

    With q = y − (0.25, 0) − (−|θ₁ + θ₂|/√2, (θ₂ − θ₁)/√2) and r = sign(q₁)‖q‖,

        log p(y | θ) = log N(r; 0.1, 0.01²) − log π − log ‖q‖.

    Args:
        theta: ``(..., 2)`` parameters; y: ``(..., 2)`` observations (broadcast together).

    Returns:
        ``broadcast(...)`` log-likelihoods (+inf at q = 0 exactly: the density's integrable
        1/‖q‖ singularity, of weight N(0; 0.1, 0.01²) = O(e⁻⁵⁰)).

    Raises:
        ValueError: last dimension not 2, or non-finite inputs.

    Reference: Greenberg et al., arXiv 1905.07488; Lueckmann et al., arXiv 2101.04653.

    Example:
        >>> import torch
        >>> theta = torch.zeros(1, 2, dtype=torch.float64)
        >>> y = torch.tensor([[0.35, 0.0]], dtype=torch.float64)  # r = 0.1, a = 0: the mode
        >>> v = two_moons_log_likelihood(theta, y)
        >>> round(float(v), 6)  # −log(π · 0.1 · 0.01√(2π))
        4.844087
    """
    theta, y = _pairs(theta, "theta"), _pairs(y, "y")
    s = math.sqrt(0.5)
    c1 = -(s * (theta[..., 0] + theta[..., 1])).abs()
    c2 = s * (theta[..., 1] - theta[..., 0])
    q1, q2 = y[..., 0] - 0.25 - c1, y[..., 1] - c2
    norm = torch.hypot(q1, q2)
    r = torch.where(q1 < 0, -norm, norm)
    log_n = -0.5 * ((r - _MU) / _SIGMA) ** 2 - math.log(_SIGMA * math.sqrt(2 * math.pi))
    return log_n - math.log(math.pi) - torch.log(norm)


def two_moons_posterior_sample(
    y: Tensor, n: int, *, generator: torch.Generator | None = None, batch: int = 65_536
) -> Tensor:
    r"""``n`` exact samples of the two-moons posterior p(θ | y) under the U(−1, 1)² prior.

    The noise q = (r cos a, r sin a) is drawn from the simulator, c = y − (0.25, 0) − q, and
    θ is one of the two preimages of c under c(θ) (each with probability ½): with
    s = ±√2|c₁| and d = √2c₂, θ = ((s − d)/2, (s + d)/2). Draws with c₁ > 0 (no preimage)
    or θ outside the prior box are rejected; the rest are exact posterior samples (the
    preimage maps are isometries, see the module's docstring).

    Args:
        y: ``(2,)`` the observation.
        n: number of samples.
        generator: torch generator (CPU) for reproducible draws.
        batch: proposals per round.

    Returns:
        ``(n, 2)`` float64 samples.

    Raises:
        ValueError: ``y`` not of shape (2,) or not finite, ``n`` < 1, or an observation
            whose posterior is empty (no proposal accepted in 100 rounds).

    Reference: Greenberg et al., arXiv 1905.07488; Lueckmann et al., arXiv 2101.04653.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> th = two_moons_posterior_sample(torch.zeros(2), 1000, generator=g)
        >>> th.shape, bool(th.abs().max() <= 1)
        (torch.Size([1000, 2]), True)
    """
    y = _pairs(y, "y").to(torch.float64)
    if y.shape != (2,):
        raise ValueError(f"y must be one observation of shape (2,), got {tuple(y.shape)}")
    n = check_int("n", n, minimum=1)
    batch = check_int("batch", batch, minimum=1)
    out, have, rounds = [], 0, 0
    while have < n:
        rounds += 1
        if rounds > 100 and have == 0:
            raise ValueError(f"the posterior at y = {y.tolist()} is empty (or nearly so)")
        kw = {"generator": generator, "dtype": torch.float64}
        a = math.pi * (torch.rand(batch, **kw) - 0.5)
        r = _MU + _SIGMA * torch.randn(batch, **kw)
        c1 = y[0] - 0.25 - r * torch.cos(a)
        c2 = y[1] - r * torch.sin(a)
        sign = torch.where(torch.rand(batch, **kw) < 0.5, -1.0, 1.0)
        s, d = sign * math.sqrt(2.0) * c1.abs(), math.sqrt(2.0) * c2
        theta = torch.stack([(s - d) / 2, (s + d) / 2], dim=1)
        ok = (c1 < 0) & (theta.abs() <= 1).all(1)
        out.append(theta[ok])
        have += int(ok.sum())
    return torch.cat(out)[:n]
