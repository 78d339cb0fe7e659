"""A finite-difference reference solver for 2-D HJB equations with a quadratic Hamiltonian."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["GridHJBSolution", "solve_hjb_grid"]


@dataclass(frozen=True)
class GridHJBSolution:
    """Grid values Φ(x, t) of :func:`solve_hjb_grid`.

    Attributes:
        axis: the grid coordinates along x₁ and along x₂ (the same), ``(n,)``.
        times: the times t at which Φ was kept, ascending, ``(k,)``.
        values: Φ at those times, ``(k, n, n)`` with ``values[k, i, j] = Φ(axis[i], axis[j],
            times[k])``.
        steps: the explicit time steps taken.
    """

    axis: np.ndarray
    times: np.ndarray
    values: np.ndarray
    steps: int

    @property
    def spacing(self) -> float:
        """The grid spacing h."""
        return float(self.axis[1] - self.axis[0])

    def __call__(self, x, t: float = 0.0) -> Tensor:
        """Φ(x, t) by bilinear interpolation at points ``(m, 2)``, t one of :attr:`times`.

        Raises:
            ValueError: t not among the kept times, or points outside the grid.
        """
        k = np.flatnonzero(np.isclose(self.times, float(t), rtol=0, atol=1e-12))
        if k.size == 0:
            raise ValueError(f"t = {t} was not kept; the solution holds t in {self.times.tolist()}")
        pts = torch.as_tensor(x).detach().cpu().double().numpy().reshape(-1, 2)
        lo, h, n = self.axis[0], self.spacing, self.axis.size
        u = (pts - lo) / h
        if not (np.isfinite(u).all() and u.min() >= 0 and u.max() <= n - 1):
            raise ValueError(
                f"points must lie in the grid [{lo}, {self.axis[-1]}]²; widen the domain"
            )
        i = np.minimum(np.floor(u).astype(int), n - 2)
        f = u - i
        V = self.values[k[0]]
        a, b = i[:, 0], i[:, 1]
        fx, fy = f[:, 0], f[:, 1]
        out = (1 - fx) * (1 - fy) * V[a, b] + fx * (1 - fy) * V[a + 1, b]
        out = out + (1 - fx) * fy * V[a, b + 1] + fx * fy * V[a + 1, b + 1]
        return torch.from_numpy(out)


def _diffusion_coefficients(noise) -> tuple[float, float, float, int]:
    A = np.asarray(noise, dtype=np.float64)
    if A.shape != (2, 2) or not np.allclose(A, A.T) or not np.isfinite(A).all():
        raise ValueError(f"noise must be a finite symmetric 2×2 matrix σσᵀ, got {A.tolist()}")
    c = abs(A[0, 1])
    if A[0, 0] < c or A[1, 1] < c:
        raise ValueError(
            "the monotone 7-point stencil needs a diagonally dominant σσᵀ "
            f"(a11, a22 ≥ |a12|), got {A.tolist()}"
        )
    return A[0, 0] - c, A[1, 1] - c, c, (1 if A[0, 1] >= 0 else -1)


def _padded(V: np.ndarray) -> np.ndarray:
    """V with one ghost layer, linearly extrapolated (corners included)."""
    P = np.empty((V.shape[0] + 2, V.shape[1] + 2))
    P[1:-1, 1:-1] = V
    P[0, 1:-1], P[-1, 1:-1] = 2 * V[0] - V[1], 2 * V[-1] - V[-2]
    P[:, 0], P[:, -1] = 2 * P[:, 1] - P[:, 2], 2 * P[:, -2] - P[:, -3]
    return P


def _rate(V, h, gain, coef, q) -> tuple[np.ndarray, float]:
    """∂_τΦ = ½tr(A∇²Φ) − (g/2)|∇Φ|²_Godunov + q and the largest one-sided slope."""
    c1, c2, c3, s = coef
    P = _padded(V)
    C = P[1:-1, 1:-1]
    xm, xp, ym, yp = P[:-2, 1:-1], P[2:, 1:-1], P[1:-1, :-2], P[1:-1, 2:]
    dp = P[2:, 2:] if s > 0 else P[2:, :-2]  # neighbours along (1, s) and (−1, −s)
    dm = P[:-2, :-2] if s > 0 else P[:-2, 2:]
    lap = c1 * (xp + xm - 2 * C) + c2 * (yp + ym - 2 * C) + c3 * (dp + dm - 2 * C)
    bx, fx, by, fy = (C - xm) / h, (xp - C) / h, (C - ym) / h, (yp - C) / h
    p2 = np.maximum(np.maximum(bx, 0) ** 2, np.minimum(fx, 0) ** 2)
    p2 = p2 + np.maximum(np.maximum(by, 0) ** 2, np.minimum(fy, 0) ** 2)
    slope = float(np.max(np.maximum(abs(bx), abs(fx)) + np.maximum(abs(by), abs(fy))))
    return 0.5 * lap / h**2 - 0.5 * gain * p2 + q, slope


def solve_hjb_grid(
    terminal: Callable[[Tensor], Tensor],
    *,
    noise,
    source: Callable[[Tensor], Tensor] | None = None,
    gain: float = 1.0,
    horizon: float = 1.0,
    bounds: tuple[float, float] = (-4.0, 4.0),
    n: int = 161,
    times: Sequence[float] = (0.0,),
    cfl: float = 0.45,
) -> GridHJBSolution:
    r"""Solve the 2-D HJB equation with a quadratic Hamiltonian on a grid, backward in time.

    .. math::
        -\partial_t\Phi - \tfrac12\operatorname{tr}(A\nabla^2\Phi)
        + \tfrac{g}{2}|\nabla\Phi|^2 = q(x),\qquad \Phi(\cdot, T) = G,

    the HJB of ż = u + σẆ, L = |u|²/(2g) + q(x) (A = σσᵀ; odeflow's sign conventions, as in
    :func:`odeflow.control.hjb_residual`). An explicit monotone scheme in τ = T − t on the
    square [a, b]² with spacing h: the Godunov (Rouy–Tourin) upwind form of |∇Φ|²,
    Σ_k max(max(D⁻ₖΦ, 0)², min(D⁺ₖΦ, 0)²), and the 7-point stencil
    (a₁₁ − |a₁₂|)D_xx + (a₂₂ − |a₁₂|)D_yy + |a₁₂|D_ξξ, ξ = (1, sign a₁₂)/h, which is
    monotone when a₁₁, a₂₂ ≥ |a₁₂|. The step Δτ = cfl/((a₁₁ + a₂₂ − |a₁₂|)/h² + g·s/h), s the
    largest sum of one-sided slopes, is chosen anew every step (small near T where G is
    steep). Ghost cells are extrapolated linearly, so the domain should reach well past the
    points of interest. First order in h (observed order tested on a 2-D LQR).

    Args:
        terminal: G, a function of ``(m, 2)`` float64 points returning ``(m,)``.
        noise: A = σσᵀ, a symmetric 2×2 matrix (array or tensor).
        source: q(x) (obstacle and state costs), or None.
        gain: g > 0 (H = (g/2)|p|², u* = −g∇Φ). horizon: T > 0.
        bounds: the square's ends (a, b). n: grid points per axis (≥ 5).
        times: times in [0, T] at which to keep Φ (default t = 0).
        cfl: safety factor ≤ 0.5.

    Returns:
        :class:`GridHJBSolution` (callable: bilinear interpolation).

    Raises:
        ValueError: a non-diagonally-dominant σσᵀ, bad sizes, times outside [0, T], a
            non-finite G or q.

    Reference: Rouy & Tourin, SIAM J. Numer. Anal. 29 (1992); Kushner & Dupuis, *Numerical
    Methods for Stochastic Control Problems in Continuous Time* (2001), ch. 5 (monotone
    stencils for mixed derivatives); the obstacle problem of Li, Verma, Ruthotto,
    arXiv 2209.13104.

    Example:
        >>> import torch
        >>> G = lambda x: 0.5 * (x * x).sum(-1)                 # LQR: Φ(0, x) = |x|²/4 + c
        >>> sol = solve_hjb_grid(G, noise=[[0.2, -0.1], [-0.1, 0.2]], bounds=(-3, 3), n=61)
        >>> exact = 0.25 + 0.5 * 0.4 * math.log(2.0)
        >>> abs(float(sol(torch.tensor([[1.0, 0.0]]))[0]) - exact) < 0.05
        True
    """
    coef = _diffusion_coefficients(noise.detach().cpu() if isinstance(noise, Tensor) else noise)
    if isinstance(n, bool) or not isinstance(n, int) or n < 5:
        raise ValueError(f"n must be an integer >= 5 (grid points per axis), got {n!r}")
    a, b = (float(v) for v in bounds)
    if not (math.isfinite(a) and math.isfinite(b) and a < b):
        raise ValueError(f"bounds must be finite with a < b, got {bounds!r}")
    if not (gain > 0 and horizon > 0 and 0 < cfl <= 0.5):
        raise ValueError("gain and horizon must be positive and cfl in (0, 0.5]")
    keep = sorted({float(t) for t in times}, reverse=True)
    if not keep or keep[0] > horizon or keep[-1] < 0:
        raise ValueError(f"times must lie in [0, {horizon}], got {list(times)!r}")
    axis = np.linspace(a, b, n)
    h = axis[1] - axis[0]
    X, Y = np.meshgrid(axis, axis, indexing="ij")
    pts = torch.from_numpy(np.stack([X.ravel(), Y.ravel()], 1))
    V = _field(terminal, pts, "terminal", X.shape)
    q = 0.0 if source is None else _field(source, pts, "source", X.shape)
    diff = coef[0] + coef[1] + coef[2]
    tau, steps, out = 0.0, 0, {}
    for t_keep in keep:
        target = horizon - t_keep
        while tau < target - 1e-14:
            r, slope = _rate(V, h, gain, coef, q)
            dt = min(cfl / (diff / h**2 + gain * slope / h + 1e-300), target - tau)
            V = V + dt * r
            tau, steps = tau + dt, steps + 1
        if not np.isfinite(V).all():
            raise ValueError("the grid solution overflowed; lower cfl or refine the grid")
        out[t_keep] = V.copy()
    ts = np.array(sorted(out))
    return GridHJBSolution(axis, ts, np.stack([out[t] for t in ts]), steps)


def _field(fn, pts: Tensor, name: str, shape) -> np.ndarray:
    v = torch.as_tensor(fn(pts)).detach().cpu().double().numpy().reshape(shape)
    if not np.isfinite(v).all():
        raise ValueError(f"the {name} function returned NaN or inf on the grid")
    return v
