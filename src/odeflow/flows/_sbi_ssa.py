r"""The stochastic Lotka–Volterra task: an exact, batched Gillespie simulation and its 9 statistics.

The predator–prey Markov jump process of Papamakarios & Murray ("Fast ε-free inference of
simulation models with Bayesian conditional density estimation", NeurIPS 2016, arXiv
1605.06376), used by the PCP-Map/COT-Flow paper (Wang et al., arXiv 2310.16975). With X
predators and Y prey and rates θ = (θ₁, θ₂, θ₃, θ₄), four reactions fire with propensities

    X → X + 1 : θ₁XY,   X → X − 1 : θ₂X,   Y → Y + 1 : θ₃Y,   Y → Y − 1 : θ₄XY,

from (X, Y)(0) = (50, 100), observed every 0.2 time units on [0, 30] (151 times). The
prior is log θ ~ U(−5, 2)⁴; the observation y ∈ R⁹ is the summary of the two series: their
means, their log(variance + 1), their autocorrelations at lags 1 and 2, and their
cross-correlation. Populations that exceed ``max_events`` reactions are cut and give rows of
NaN (as the ODE task's overflows do; ``fit`` refuses them: drop them first).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._utils import check_finite_real, check_int

__all__ = ["gillespie_lotka_volterra", "lotka_volterra_summaries"]

# state change of each reaction on (X, Y)
_CHANGE = ((1, 0), (-1, 0), (0, 1), (0, -1))


def gillespie_lotka_volterra(
    theta: Tensor,
    *,
    x0: tuple[int, int] = (50, 100),
    t_end: float = 30.0,
    dt: float = 0.2,
    max_events: int = 10_000,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Exact stochastic simulation (Gillespie's direct method) of a batch of predator–prey
    jump processes, vectorized over the batch.

    Each row of ``theta`` runs its own chain: from the state s = (X, Y) with propensities
    a = (θ₁XY, θ₂X, θ₃Y, θ₄XY) and a₀ = Σaⱼ, the waiting time is τ ~ Exp(a₀) and reaction
    j fires with probability aⱼ/a₀. All rows advance by one reaction per step of one loop
    (the loop runs over reactions, never over rows); the state at each observation time
    t_k = k·dt is the state holding at t_k. A row whose a₀ = 0 (both species extinct or
    the process absorbed) keeps its state to ``t_end``.

    Args:
        theta: ``(n, 4)`` positive rates θ.
        x0: initial (predators, prey).
        t_end, dt: observation horizon and spacing (``round(t_end/dt) + 1`` times).
        max_events: reactions allowed per row; a row that needs more becomes NaN.
        generator: torch generator for reproducible draws (CPU).

    Returns:
        ``(n, 2, T)`` float64 populations (predators, prey) at the T observation times.

    Raises:
        ValueError: ``theta`` not of shape (n, 4), not finite and positive; bad settings.

    Reference: Gillespie, "Exact stochastic simulation of coupled chemical reactions",
    J. Phys. Chem. 81 (1977); Papamakarios & Murray, arXiv 1605.06376.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> theta = torch.tensor([[0.01, 0.5, 1.0, 0.01]]).repeat(3, 1)
        >>> gillespie_lotka_volterra(theta, t_end=1.0, generator=g).shape
        torch.Size([3, 2, 6])
    """
    if not isinstance(theta, Tensor) or theta.ndim != 2 or theta.shape[1] != 4:
        raise ValueError(
            f"theta must be a tensor of shape (n, 4) (the four rates), got "
            f"{tuple(theta.shape) if isinstance(theta, Tensor) else type(theta).__name__}"
        )
    if not bool((torch.isfinite(theta) & (theta > 0)).all()):
        raise ValueError("theta must hold finite, positive rates")
    t_end = check_finite_real("t_end", t_end, positive=True)
    dt = check_finite_real("dt", dt, positive=True)
    max_events = check_int("max_events", max_events, minimum=1)
    if len(x0) != 2 or any(isinstance(v, bool) or int(v) != v or v < 0 for v in x0):
        raise ValueError(f"x0 must be two non-negative integers, got {x0!r}")
    th = theta.detach().to(torch.float64).cpu()
    n = th.shape[0]
    nobs = round(t_end / dt) + 1
    grid = dt * torch.arange(nobs, dtype=torch.float64)
    change = torch.tensor(_CHANGE, dtype=torch.float64)
    out = torch.full((n, 2, nobs), math.nan, dtype=torch.float64)
    # the working set: the rows still running, compacted when half of it has finished
    ids = torch.arange(n)
    p = th
    s = torch.tensor([float(x0[0]), float(x0[1])], dtype=torch.float64).repeat(n, 1)
    t = torch.zeros(n, dtype=torch.float64)
    nxt = torch.zeros(n, dtype=torch.long)  # the next observation index to fill
    for _ in range(max_events):
        xy = s[:, 0] * s[:, 1]
        a = torch.stack([p[:, 0] * xy, p[:, 1] * s[:, 0], p[:, 2] * s[:, 1], p[:, 3] * xy], 1)
        a0 = a.sum(1)
        u = torch.rand(ids.numel(), 2, generator=generator, dtype=torch.float64)
        # a0 = 0 (absorbed): no further reaction, t_new = inf
        t_new = torch.where(a0 > 0, t - torch.log1p(-u[:, 0]) / a0.clamp_min(1e-300), math.inf)
        # observation times in [t, t_new) see the state before this reaction
        hi = torch.searchsorted(grid, t_new).clamp_max(nobs)
        hit = torch.nonzero(hi > nxt).squeeze(1)
        while hit.numel():
            k = nxt[hit]
            out[ids[hit], :, k] = s[hit]
            nxt[hit] = k + 1
            hit = hit[nxt[hit] < hi[hit]]
        j = (torch.cumsum(a, 1) < (u[:, 1] * a0)[:, None]).sum(1).clamp_max(3)
        s = s + change[j]
        t = t_new
        running = nxt < nobs
        nrun = int(running.sum())
        if nrun == 0:
            ids = ids[:0]
            break
        if 2 * nrun <= ids.numel():
            ids, p, s, t, nxt = ids[running], p[running], s[running], t[running], nxt[running]
    if ids.numel():  # rows that ran out of reactions
        out[ids] = math.nan
    return out


def lotka_volterra_summaries(series: Tensor) -> Tensor:
    r"""The 9 summary statistics of Papamakarios & Murray (arXiv 1605.06376) for
    ``series: (n, 2, T)`` (predators, prey): for each series its mean, log(variance + 1) and
    autocorrelations at lags 1 and 2, then the cross-correlation of the two; ``(n, 9)``.

    With u the series standardized by its mean and standard deviation, the lag-ℓ
    autocorrelation is Σₜ uₜuₜ₊ₗ/(T − 1) and the cross-correlation Σₜ uₜvₜ/(T − 1); a
    constant series (extinct species) has correlations 0. NaN rows stay NaN.

    Example:
        >>> s = torch.stack([torch.linspace(0, 1, 11), torch.linspace(1, 0, 11)])[None]
        >>> round(float(lotka_volterra_summaries(s)[0, -1]), 6)  # perfectly anti-correlated
        -1.0
    """
    if not isinstance(series, Tensor) or series.ndim != 3 or series.shape[1] != 2:
        raise ValueError("series must be a tensor of shape (n, 2, T)")
    T = series.shape[-1]
    if T < 3:
        raise ValueError(f"series need at least 3 time points for lag-2 statistics, got {T}")
    mean = series.mean(-1)
    var = series.var(-1)
    sd = var.sqrt()
    u = torch.where(sd[..., None] > 0, (series - mean[..., None]) / sd[..., None].clamp_min(1e-300),
                    torch.zeros_like(series))  # fmt: skip
    ac1 = (u[..., 1:] * u[..., :-1]).sum(-1) / (T - 1)
    ac2 = (u[..., 2:] * u[..., :-2]).sum(-1) / (T - 1)
    xc = (u[:, 0] * u[:, 1]).sum(-1) / (T - 1)
    return torch.stack(
        [mean[:, 0], mean[:, 1], torch.log1p(var[:, 0]), torch.log1p(var[:, 1]),
         ac1[:, 0], ac2[:, 0], ac1[:, 1], ac2[:, 1], xc], dim=1,
    )  # fmt: skip
