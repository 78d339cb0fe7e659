"""Line searches: the step length along a descent direction (Armijo backtracking, fixed step)."""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["AbstractLineSearch", "Armijo", "FixedStep", "LineSearchResult", "armijo"]


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u * v).sum()


@dataclass
class LineSearchResult:
    """Result of :func:`armijo` (and of every :class:`AbstractLineSearch`).

    Attributes:
        step: accepted step length ``t`` (0.0 when the search failed).
        x: the accepted point ``x + t p`` (the input ``x`` when it failed).
        value: objective at the accepted point.
        evaluations: number of objective evaluations.
        success: whether sufficient decrease was reached.
    """

    step: float
    x: torch.Tensor
    value: float
    evaluations: int
    success: bool


def armijo(
    value: Callable[[torch.Tensor], torch.Tensor | float],
    x: torch.Tensor,
    f0: float,
    g0: torch.Tensor,
    p: torch.Tensor,
    *,
    step: float = 1.0,
    c1: float = 1e-4,
    shrink: float = 0.5,
    max_steps: int = 25,
) -> LineSearchResult:
    r"""Backtracking line search for the Armijo sufficient-decrease condition.

    Finds the first ``t = step·shrink^k`` (k = 0, 1, …) with
    ``f(x + t p) ≤ f(x) + c1·t·∇f(x)ᵀp`` and ``f(x + t p)`` finite (so a barrier that
    returns ``inf`` outside its domain rejects the step).

    Args:
        value: ``x ↦ f(x)`` (tensor or float; ``inf``/``nan`` means infeasible).
        x: current point; ``f0 = f(x)`` and ``g0 = ∇f(x)`` (shape of ``x``).
        p: descent direction (``g0ᵀp < 0``).
        step, c1, shrink, max_steps: initial step, Armijo constant in (0, 1), backtracking
            factor in (0, 1) and the maximal number of trials.

    Returns:
        :class:`LineSearchResult`; ``success=False`` (and ``x`` unchanged) after ``max_steps``.

    Raises:
        ValueError: if ``p`` is not a descent direction or the constants are out of range.

    Reference:
        Nocedal & Wright, *Numerical Optimization*, 2nd ed. (2006), Alg. 3.1.

    Example:
        >>> f = lambda z: float((z**2).sum())
        >>> x = torch.tensor([1.0]); g = 2 * x
        >>> armijo(f, x, f(x), g, -g).step
        0.5
    """
    if not (0 < c1 < 1 and 0 < shrink < 1 and step > 0 and max_steps >= 1):
        raise ValueError("armijo: need 0 < c1 < 1, 0 < shrink < 1, step > 0, max_steps >= 1.")
    slope = float(_dot(g0, p))
    if not slope < 0:
        raise ValueError(
            f"armijo: p is not a descent direction (∇fᵀp = {slope:.3e} >= 0); check the sign of "
            "the direction or the gradient."
        )
    t = float(step)
    for k in range(1, max_steps + 1):
        xt = x + t * p
        ft = float(value(xt))
        if math.isfinite(ft) and ft <= f0 + c1 * t * slope:
            return LineSearchResult(step=t, x=xt, value=ft, evaluations=k, success=True)
        t *= shrink
    return LineSearchResult(step=0.0, x=x, value=f0, evaluations=max_steps, success=False)


class AbstractLineSearch(abc.ABC):
    """How far to go along a descent direction: one method, :meth:`search`.

    A line search is stateless; :func:`~odeflow.optim.minimize` calls it once per iteration.
    """

    @abc.abstractmethod
    def search(
        self,
        value: Callable[[torch.Tensor], torch.Tensor | float],
        x: torch.Tensor,
        f0: float,
        g0: torch.Tensor,
        p: torch.Tensor,
    ) -> LineSearchResult:
        """Choose ``t`` along ``p`` from ``x`` (``f0 = f(x)``, ``g0 = ∇f(x)``, ``g0ᵀp < 0``)."""


@dataclass(frozen=True)
class Armijo(AbstractLineSearch):
    r"""Backtracking to the Armijo condition ``f(x + tp) ≤ f(x) + c1·t·∇fᵀp`` (:func:`armijo`).

    Attributes:
        c1: Armijo constant in (0, 1).
        shrink: backtracking factor in (0, 1).
        max_steps: maximal number of trials.
        step: the first trial step.

    Reference: Nocedal & Wright, *Numerical Optimization*, 2nd ed. (2006), Alg. 3.1.

    Example:
        >>> x = torch.tensor([1.0])
        >>> Armijo().search(lambda z: float(z @ z), x, 1.0, 2 * x, -2 * x).step
        0.5
    """

    c1: float = 1e-4
    shrink: float = 0.5
    max_steps: int = 25
    step: float = 1.0

    def search(self, value, x, f0, g0, p) -> LineSearchResult:
        return armijo(
            value, x, f0, g0, p, step=self.step, c1=self.c1, shrink=self.shrink,
            max_steps=self.max_steps,
        )  # fmt: skip


@dataclass(frozen=True)
class FixedStep(AbstractLineSearch):
    r"""Always the step ``t`` (a learning rate): ``x ← x + t p``.

    The step is refused (``success=False``) only where the objective is not finite (outside
    a barrier's domain); there is no decrease test. One objective evaluation per iteration.

    Example:
        >>> x = torch.tensor([1.0])
        >>> FixedStep(0.25).search(lambda z: float(z @ z), x, 1.0, 2 * x, -2 * x).x
        tensor([0.5000])
    """

    step: float = 1.0

    def __post_init__(self):
        if not (math.isfinite(self.step) and self.step > 0):
            raise ValueError(f"FixedStep: step must be a finite number > 0, got {self.step!r}.")

    def search(self, value, x, f0, g0, p) -> LineSearchResult:
        xt = x + self.step * p
        ft = float(value(xt))
        if not math.isfinite(ft):
            return LineSearchResult(step=0.0, x=x, value=f0, evaluations=1, success=False)
        return LineSearchResult(step=self.step, x=xt, value=ft, evaluations=1, success=True)
