"""Dense output inside one Runge–Kutta step: the pair's own interpolant, else cubic Hermite."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ._tableaus import ButcherTableau

__all__: list[str] = []


def combine(y: list[Tensor], ks: Sequence[list[Tensor]], h: float, w: Sequence[float]):
    """``y + Σ_j (h w_j) k_j`` per leaf (zero weights skipped; ``y`` itself if all are zero)."""
    out = []
    for leaf, yl in enumerate(y):
        acc = yl
        for j, wj in enumerate(w):
            if wj != 0.0 and j < len(ks):
                acc = acc.add(ks[j][leaf], alpha=h * wj)  # (one fused kernel per term)
        out.append(acc)
    return out


def dense_weights(tab: ButcherTableau, theta: float) -> tuple[float, ...] | None:
    """``b_i(θ) = Σ_k dense[i][k] θ^{k+1}`` of a pair with its own interpolant, else None."""
    dense = getattr(tab, "dense", None)
    if dense is None:
        return None
    return tuple(sum(c * theta ** (k + 1) for k, c in enumerate(row)) for row in dense)


def hermite(
    y0: list[Tensor], y1: list[Tensor], f0: list[Tensor], f1: list[Tensor], h: float, th: float
) -> list[Tensor]:
    r"""Cubic Hermite interpolant on a step of size ``h`` at ``t + θh`` (order 3, error
    ``O(h⁴)``): ``(2θ³−3θ²+1) y₀ + (θ³−2θ²+θ) h f₀ + (3θ²−2θ³) y₁ + (θ³−θ²) h f₁``."""
    h00 = 2 * th**3 - 3 * th**2 + 1
    h10 = (th**3 - 2 * th**2 + th) * h
    h01 = 3 * th**2 - 2 * th**3
    h11 = (th**3 - th**2) * h
    return [h00 * a + h10 * fa + h01 * b + h11 * fb for a, b, fa, fb in zip(y0, y1, f0, f1)]


def interpolate(
    tab: ButcherTableau,
    y0: list[Tensor],
    y1: list[Tensor],
    ks: Sequence[list[Tensor]],
    f1: list[Tensor] | None,
    h: float,
    theta: float,
) -> list[Tensor]:
    """The state at ``t + θh`` inside the step ``y0 → y1`` with stages ``ks``: ``y1`` at
    ``θ = 1``, the pair's dense output if it has one, else the cubic Hermite interpolant with
    the end slope ``f1 = f(t + h, y1)``."""
    if theta == 1.0:
        return y1
    w = dense_weights(tab, theta)
    if w is not None:
        return combine(y0, ks, h, w)
    if f1 is None:
        raise RuntimeError("Hermite interpolation needs the end slope f(t + h, y1)")
    return hermite(y0, y1, ks[0], f1, h, theta)
