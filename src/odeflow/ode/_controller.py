"""Step-size control for embedded Runge–Kutta pairs: error norm, PI controller, first step."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["PIController"]


def _positive(name: str, x: Any, upper: float = math.inf) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not 0 < x < upper:
        bound = "" if upper == math.inf else f" and below {upper}"
        raise ValueError(f"{name} must be a positive finite number{bound}, got {x!r}")
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x!r}")
    return float(x)


@dataclass(frozen=True)
class PIController:
    r"""Proportional–integral step-size controller (Gustafsson; Hairer–Wanner's DOPRI5 rule).

    With the error ratio ``r_n = ‖e_n / (atol + rtol·max(|y_n|, |y_{n+1}|))‖_RMS`` of step
    ``n`` (accepted iff ``r_n ≤ 1``) and ``k = min(p, p̂) + 1`` the next step is

    .. math::
        h_{n+1} = h_n \cdot \mathrm{clip}\big(\mathrm{safety}\;
            r_n^{-(i + p)/k}\; r_{n-1}^{\,p/k},\; f_{\min},\; f_{\max}\big)

    (``i = icoeff``, ``p = pcoeff``); after a rejection ``h ← h · max(f_min, safety·r^{-1/k})``
    and the step that follows a rejection does not grow. ``pcoeff=0, icoeff=1`` is the
    integral (I) controller of torchdiffeq; the defaults ``pcoeff=0.2, icoeff=0.65`` give
    Hairer's DOPRI5 exponents ``r_n^{-0.17} r_{n-1}^{0.04}`` for a 5(4) pair.

    Args:
        pcoeff: proportional gain (≥ 0).
        icoeff: integral gain (> 0).
        safety: factor below 1 applied to every proposal.
        factor_min: smallest step-size ratio ``h_{n+1}/h_n`` (in ``(0, 1)``).
        factor_max: largest step-size ratio (> 1).

    Raises:
        ValueError: for gains or factors outside these ranges.

    Reference:
        K. Gustafsson, *Control theoretic techniques for stepsize selection in explicit
        Runge–Kutta methods*, ACM TOMS 17 (1991) 533–554; Hairer & Wanner, *Solving ODEs II*,
        §IV.2; Söderlind, *Digital filters in adaptive time-stepping*, ACM TOMS 29 (2003).

    Example:
        >>> c = PIController()
        >>> round(c.factor(0.5, 1.0, k=5), 4)  # an accepted step with half the tolerated error
        1.0126
        >>> PIController(pcoeff=0.0, icoeff=1.0).factor(2.0 ** 5, 1.0, k=5, accepted=False)
        0.45
    """

    pcoeff: float = 0.2
    icoeff: float = 0.65
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0

    def __post_init__(self) -> None:
        if (
            isinstance(self.pcoeff, bool)
            or not isinstance(self.pcoeff, numbers.Real)
            or not (math.isfinite(self.pcoeff) and self.pcoeff >= 0)
        ):
            raise ValueError(f"pcoeff must be a finite number >= 0, got {self.pcoeff!r}")
        _positive("icoeff", self.icoeff)
        _positive("safety", self.safety, 1.0 + 1e-12)
        _positive("factor_min", self.factor_min, 1.0)
        if _positive("factor_max", self.factor_max) <= 1.0:
            raise ValueError(f"factor_max must exceed 1, got {self.factor_max!r}")

    def factor(
        self, ratio: float, prev_ratio: float, k: int, accepted: bool = True, grow: bool = True
    ) -> float:
        """The ratio ``h_{n+1} / h_n`` after a step with error ratio ``ratio`` (see above);
        ``grow=False`` caps it at 1 (the step after a rejection)."""
        if not math.isfinite(ratio):
            return self.factor_min
        if not accepted:
            return max(self.factor_min, min(1.0, self.safety * ratio ** (-1.0 / k)))
        if ratio == 0.0:
            f = self.factor_max
        else:
            f = self.safety * ratio ** (-(self.icoeff + self.pcoeff) / k)
            f *= max(prev_ratio, 1e-4) ** (self.pcoeff / k)
        f = min(self.factor_max, max(self.factor_min, f))
        return f if grow else min(f, 1.0)


# --------------------------------------------------------------------------- tolerances
Tol = float | Tensor


def check_tolerance(name: str, tol: Any, n_leaf: int, keys: Sequence[Any] | None) -> list[Tol]:
    """``rtol``/``atol`` as one value per leaf: a positive finite number or a tensor of them
    (broadcast against the leaf), given once or per leaf (a sequence or, for a dict state,
    a dict with the state's keys)."""
    if isinstance(tol, dict):
        if keys is None or set(tol) != set(keys):
            raise ValueError(
                f"{name} as a dict needs a dict state with the same keys"
                + ("" if keys is None else f" {tuple(keys)}")
                + f", got keys {tuple(tol)}"
            )
        vals = [tol[k] for k in keys]
    elif isinstance(tol, list | tuple):
        if len(tol) != n_leaf:
            raise ValueError(
                f"{name} per leaf needs {n_leaf} values (one per leaf of y0), got {len(tol)}"
            )
        vals = list(tol)
    else:
        vals = [tol] * n_leaf
    out: list[Tol] = []
    for v in vals:
        if isinstance(v, Tensor):
            if not (v.is_floating_point() and torch.isfinite(v).all() and (v > 0).all()):
                raise ValueError(f"{name} must be positive and finite, got a tensor {v}")
            out.append(v.detach())
        elif isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name} must be a positive number (or a tensor), got {v!r}")
        elif not (math.isfinite(v) and v > 0):
            raise ValueError(
                f"{name} must be positive and finite, got {v!r}; typical values are "
                "rtol=1e-6, atol=1e-8"
            )
        else:
            out.append(float(v))
    return out


def error_ratio(
    err: list[Tensor], y0: list[Tensor], y1: list[Tensor], rtol: list[Tol], atol: list[Tol]
) -> Tensor:
    r"""``sqrt(mean_i (e_i / (atol + rtol·max(|y0_i|, |y1_i|)))²)`` over the elements of all
    leaves that have tolerances (one RMS norm over the whole state; fewer tolerances than
    leaves leave the trailing leaves out: a seminorm), a 0-d tensor (no gradient)."""
    total = None
    count = 0
    with torch.no_grad():
        for e, a, b, rt, at in zip(err, y0, y1, rtol, atol):  # (stops at the tolerances)
            sc = torch.maximum(a.abs(), b.abs()).mul_(rt).add_(at)
            q = (e / sc).square().sum()
            total = q if total is None else total + q
            count += e.numel()
    return (total / max(count, 1)).sqrt()


def rms_scaled(x: list[Tensor], scale: list[Tensor]) -> float:
    """``‖x / scale‖_RMS`` over all elements of the leaves that have a scale, as a float (one
    sync)."""
    with torch.no_grad():
        tot = sum((u / s).square().sum() for u, s in zip(x, scale))
        n = sum(u.numel() for u, _ in zip(x, scale))
        return math.sqrt(float(tot) / max(n, 1))


def initial_step(
    f: Callable[[float, list[Tensor]], list[Tensor]],
    t0: float,
    y0: list[Tensor],
    f0: list[Tensor],
    direction: float,
    order: int,
    rtol: list[Tol],
    atol: list[Tol],
) -> float:
    r"""Hairer's automatic first step (HNW I, §II.4, ``HINIT``), one extra evaluation of ``f``.

    With ``sc = atol + rtol·|y0|``, ``d0 = ‖y0/sc‖``, ``d1 = ‖f0/sc‖``: ``h0 = 0.01 d0/d1``
    (``1e-6`` if either is below ``1e-5``); one Euler step ``y1 = y0 + h0 f0``,
    ``d2 = ‖(f(t0 + h0, y1) − f0)/sc‖ / h0``; ``h1 = (0.01 / max(d1, d2))^{1/p}``
    (``max(1e-6, 1e-3 h0)`` if both are below ``1e-15``); the step is ``min(100 h0, h1)``.
    Returns the unsigned step."""
    with torch.no_grad():
        sc = [y.abs().mul(rt).add(at) for y, rt, at in zip(y0, rtol, atol)]
        d0 = rms_scaled(y0, sc)
        d1 = rms_scaled(f0, sc)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        y1 = [y + (direction * h0) * k for y, k in zip(y0, f0)]
        f1 = f(t0 + direction * h0, y1)
        d2 = rms_scaled([a - b for a, b in zip(f1, f0)], sc) / h0
        if max(d1, d2) <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / order)
        return min(100 * h0, h1)
