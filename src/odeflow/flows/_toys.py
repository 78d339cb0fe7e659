"""Seeded generators for the 2-D toy densities of the CNF literature, and the exact
density of the 8-Gaussians mixture.

The toys follow the definitions popularised by FFJORD (Grathwohl et al., arXiv
1810.01367) and used by OT-Flow (Onken et al., arXiv 2006.00104); they are written here
from their mathematical description with ``torch.Generator`` for reproducibility.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "TOYS",
    "eight_gaussians_entropy",
    "eight_gaussians_log_prob",
    "eight_gaussians_means",
    "make_toy",
]

_SQ2 = math.sqrt(2.0)
#: 8gaussians: centres at radius 4 (before the global 1/√2 scaling), component std 0.5/√2
_EG_RADIUS = 4.0
_EG_STD = 0.5 / 1.414


def _gen(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        return generator
    g = torch.Generator()
    g.manual_seed(0 if seed is None else int(seed))
    return g


def eight_gaussians_means(dtype: torch.dtype = torch.float64) -> Tensor:
    """Means (8, 2) of the 8gaussians mixture: radius 4/1.414 at angles kπ/4."""
    c = torch.tensor(
        [
            (1.0, 0.0),
            (-1.0, 0.0),
            (0.0, 1.0),
            (0.0, -1.0),
            (1.0 / _SQ2, 1.0 / _SQ2),
            (1.0 / _SQ2, -1.0 / _SQ2),
            (-1.0 / _SQ2, 1.0 / _SQ2),
            (-1.0 / _SQ2, -1.0 / _SQ2),
        ],
        dtype=torch.float64,
    )
    return (_EG_RADIUS * c / 1.414).to(dtype)


def eight_gaussians_log_prob(x: Tensor) -> Tensor:
    """Exact log-density of the 8gaussians toy.

    p(x) = (1/8) Σ_k N(x; μ_k, σ²I) with μ_k = 4 (cos kπ/4, sin kπ/4)/1.414 and
    σ = 0.5/1.414 (the generator draws ``(4 c_k + 0.5 ε)/1.414``).

    Args:
        x: points ``(n, 2)``.

    Returns:
        ``(n,)`` log-densities in the dtype of ``x``.

    Example:
        >>> import torch
        >>> lp = eight_gaussians_log_prob(torch.zeros(1, 2, dtype=torch.float64))
        >>> bool(lp < -10)
        True
    """
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"x must have shape (n, 2), got {tuple(x.shape)}")
    mu = eight_gaussians_means(x.dtype).to(x.device)
    d2 = ((x[:, None, :] - mu[None]) ** 2).sum(-1)  # (n, 8)
    log_comp = -0.5 * d2 / _EG_STD**2 - math.log(2 * math.pi * _EG_STD**2)
    return torch.logsumexp(log_comp, dim=1) - math.log(8.0)


def _check_dtype(dtype) -> None:
    """A real floating-point ``torch.dtype``, else ValueError (integer samples would be
    truncated)."""
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(
            f"dtype must be a floating-point torch.dtype (e.g. torch.float32), got {dtype!r}"
        )


def eight_gaussians_entropy(n: int = 200_000, seed: int = 0) -> tuple[float, float]:
    """Monte-Carlo entropy H = −E[log p(x)] of the 8gaussians toy (nats).

    Args:
        n: number of samples, an integer >= 2 (the standard error needs two).
        seed: seed of the draw.

    Returns:
        ``(estimate, standard_error)`` from ``n`` exact samples.

    Raises:
        ValueError: ``n`` < 2.

    Example:
        >>> h, se = eight_gaussians_entropy(20_000)
        >>> 2.7 < h < 2.9 and se < 0.01
        True
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (the number of samples), got {n!r}")
    x = make_toy("8gaussians", n, seed=seed, dtype=torch.float64)
    lp = eight_gaussians_log_prob(x)
    return float(-lp.mean()), float(lp.std() / math.sqrt(n))


def _eight_gaussians(n: int, g: torch.Generator) -> Tensor:
    mu = eight_gaussians_means(torch.float64)
    idx = torch.randint(0, 8, (n,), generator=g)
    return mu[idx] + _EG_STD * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _checkerboard(n: int, g: torch.Generator) -> Tensor:
    x1 = torch.rand(n, generator=g, dtype=torch.float64) * 4 - 2
    x2 = (
        torch.rand(n, generator=g, dtype=torch.float64)
        - torch.randint(0, 2, (n,), generator=g).double() * 2
    )
    x2 = x2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], 1) * 2


def _swissroll(n: int, g: torch.Generator) -> Tensor:
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1)
    pts = pts + torch.randn(n, 2, generator=g, dtype=torch.float64)
    return pts / 5.0


def _circles(n: int, g: torch.Generator) -> Tensor:
    n_out = n // 2
    n_in = n - n_out
    th_out = 2 * math.pi * torch.rand(n_out, generator=g, dtype=torch.float64)
    th_in = 2 * math.pi * torch.rand(n_in, generator=g, dtype=torch.float64)
    outer = torch.stack([torch.cos(th_out), torch.sin(th_out)], 1)
    inner = 0.5 * torch.stack([torch.cos(th_in), torch.sin(th_in)], 1)
    pts = torch.cat([outer, inner])[torch.randperm(n, generator=g)]
    pts = pts + 0.08 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return 3.0 * pts


def _moons(n: int, g: torch.Generator) -> Tensor:
    n_out = n // 2
    n_in = n - n_out
    a = math.pi * torch.rand(n_out, generator=g, dtype=torch.float64)
    b = math.pi * torch.rand(n_in, generator=g, dtype=torch.float64)
    upper = torch.stack([torch.cos(a), torch.sin(a)], 1)
    lower = torch.stack([1 - torch.cos(b), 0.5 - torch.sin(b)], 1)
    pts = torch.cat([upper, lower])[torch.randperm(n, generator=g)]
    pts = pts + 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return pts * 2 + torch.tensor([-1.0, -0.2], dtype=torch.float64)


def _pinwheel(n: int, g: torch.Generator) -> Tensor:
    k, radial_std, tangential_std, rate = 5, 0.3, 0.1, 0.25
    labels = torch.randint(0, k, (n,), generator=g)
    feats = torch.randn(n, 2, generator=g, dtype=torch.float64)
    feats = feats * torch.tensor([radial_std, tangential_std], dtype=torch.float64)
    feats[:, 0] += 1.0
    angles = 2 * math.pi * labels.double() / k + rate * torch.exp(feats[:, 0])
    c, s = torch.cos(angles), torch.sin(angles)
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # (n, 2, 2)
    # x_j = Σ_i f_i R_ij, as FFJORD's einsum("ti,tij->tj"): f rotated by −angle
    return 2.0 * torch.einsum("ni,nij->nj", feats, rot)


def _two_spirals(n: int, g: torch.Generator) -> Tensor:
    m = n - n // 2  # points drawn on the first arm (one more than the second for odd n)
    r = torch.sqrt(torch.rand(m, generator=g, dtype=torch.float64)) * 540 * (2 * math.pi) / 360
    dx = -torch.cos(r) * r + 0.5 * torch.rand(m, generator=g, dtype=torch.float64)
    dy = torch.sin(r) * r + 0.5 * torch.rand(m, generator=g, dtype=torch.float64)
    arm = torch.stack([dx, dy], 1)
    pts = torch.cat([arm, -arm[: n // 2]])  # the second arm mirrors the first
    pts = pts[torch.randperm(n, generator=g)] / 3.0
    return pts + 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)


#: name -> sampler(n, generator) returning float64 (n, 2)
TOYS: dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "swissroll": _swissroll,
    "circles": _circles,
    "moons": _moons,
    "pinwheel": _pinwheel,
    "2spirals": _two_spirals,
}


def make_toy(
    name: str,
    n: int,
    *,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw ``n`` samples of a 2-D toy density.

    Toys: ``8gaussians`` (mixture of eight isotropic Gaussians on a circle),
    ``checkerboard``, ``swissroll``, ``circles``, ``moons``, ``pinwheel`` and ``2spirals``
    (definitions of FFJORD, arXiv 1810.01367, as used by OT-Flow, arXiv 2006.00104).

    Args:
        name: one of :data:`TOYS`.
        n: number of samples (≥ 1).
        seed: seed of a fresh ``torch.Generator`` (ignored when ``generator`` is given).
        generator: an explicit CPU generator to draw from.
        dtype, device: of the returned tensor (samples are drawn in float64 on CPU).

    Returns:
        ``(n, 2)`` tensor.

    Raises:
        ValueError: unknown name (the valid ones are listed), ``n < 1``, or a ``dtype``
            that is not a real floating-point type.

    Example:
        >>> x = make_toy("8gaussians", 500, seed=1)
        >>> x.shape, x.dtype
        (torch.Size([500, 2]), torch.float32)
        >>> bool((make_toy("moons", 5, seed=3) == make_toy("moons", 5, seed=3)).all())
        True
    """
    if name not in TOYS:
        raise ValueError(f"unknown toy {name!r}; valid toys are: {', '.join(TOYS)}")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be an integer >= 1 (the number of samples), got {n!r}")
    _check_dtype(dtype)
    x = TOYS[name](int(n), _gen(seed, generator))
    return x.to(dtype=dtype, device=device)
