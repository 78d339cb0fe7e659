"""One minimization loop: a descent direction times a line search, over ``fn(x) -> Evaluation``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .._utils import check_finite_real, check_int, progress
from ._descents import AbstractDescent
from ._line_search import AbstractLineSearch, Armijo
from ._objective import Evaluation
from ._status import MinimizeStatus

__all__ = ["OptimizeResult", "minimize"]


def _norm(u: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(u))


@dataclass
class OptimizeResult:
    """Result of :func:`minimize` (and :func:`gauss_newton`, :func:`lbfgs`).

    Attributes:
        x: the final iterate.
        status: :class:`~odeflow.optim.MinimizeStatus`.
        iterations: outer iterations taken.
        value: objective at ``x``.
        grad_norm: ``‖∇f(x)‖₂`` at the last evaluated iterate.
        history: one dict per iterate (``value``, ``grad_norm``, ``step``, the descent's
            entries such as ``cg_iterations``, and the objective's ``info``).
        evaluations: objective (value-only) evaluations spent in line searches.
    """

    x: torch.Tensor
    status: MinimizeStatus
    iterations: int
    value: float
    grad_norm: float
    history: list[dict[str, Any]] = field(default_factory=list)
    evaluations: int = 0


def _stop(
    it, f_prev, f, f_first, dx, x_first, g, g_first, ftol, xtol, gtol
) -> MinimizeStatus | None:
    """CONVERGED by one of the three tests (``ftol = 0`` / ``xtol = 0`` turn theirs off),
    STAGNATED when an accepted step left f unchanged (no decrease representable in the
    objective's precision) without meeting them, else None (go on)."""
    if g <= gtol * max(g_first, 1e-300):
        return MinimizeStatus.CONVERGED
    if it > 0 and ftol > 0 and abs(f_prev - f) <= ftol * (1.0 + abs(f_first)):
        return MinimizeStatus.CONVERGED
    if it > 0 and xtol > 0 and dx <= xtol * (1.0 + x_first):
        return MinimizeStatus.CONVERGED
    if it > 0 and not f < f_prev:
        return MinimizeStatus.STAGNATED
    return None


def _evaluate(fn, x: torch.Tensor, who: str) -> Evaluation:
    ev = fn(x)
    if not isinstance(ev, Evaluation):
        raise TypeError(
            f"{who}: the objective must return odeflow.optim.Evaluation(value, grad, "
            f"hessian=None, info={{}}), got {type(ev).__name__}."
        )
    return ev


def _check_settings(descent, search, maxiter, gtol, ftol, xtol, who) -> None:
    if not isinstance(descent, AbstractDescent):
        raise TypeError(
            f"{who}: descent must be an odeflow.optim descent (NewtonCG(), LBFGS(), or a "
            f"subclass of AbstractDescent), got {type(descent).__name__}."
        )
    if not isinstance(search, AbstractLineSearch):
        raise TypeError(
            f"{who}: search must be an odeflow.optim line search (Armijo(), FixedStep(t), or a "
            f"subclass of AbstractLineSearch), got {type(search).__name__}."
        )
    check_int("maxiter", maxiter, who=who)
    for name, tol in (("gtol", gtol), ("ftol", ftol), ("xtol", xtol)):
        check_finite_real(name, tol, nonnegative=True, who=who)


def _run(fn, x0, descent, search, value, maxiter, gtol, ftol, xtol, verbose, desc, who):
    """The loop shared by :func:`minimize` and its wrappers (``who`` names the caller)."""
    _check_settings(descent, search, maxiter, gtol, ftol, xtol, who)
    val = value if value is not None else (lambda z: _evaluate(fn, z, who).value)
    x = x0.clone()
    ev = _evaluate(fn, x, who)
    f, gn = float(ev.value), _norm(ev.grad)
    if not (math.isfinite(f) and math.isfinite(gn)):
        raise ValueError(
            f"{who}: objective or gradient is not finite at x0 (f={f}, ‖g‖={gn}); "
            "start from a feasible point."
        )
    f0, g0, x0n = f, gn, _norm(x0)
    state, info = descent.init(x, ev)
    history: list[dict[str, Any]] = [{"value": f, "grad_norm": gn, "step": 0.0, **info, **ev.info}]
    status = MinimizeStatus.CONVERGED if gn == 0.0 else MinimizeStatus.MAX_ITERATIONS
    evals = it = 0
    bar = progress(maxiter, desc=desc, verbose=verbose)
    while it < maxiter and status is not MinimizeStatus.CONVERGED:
        st = descent.step(state, x, ev)
        p = st.direction
        ls = search.search(val, x, f, ev.grad, p)
        evals += ls.evaluations
        if not ls.success:
            status = MinimizeStatus.LINE_SEARCH_FAILED
            break
        dx = ls.step * _norm(p)
        ev_new = _evaluate(fn, ls.x, who)
        state = descent.update(st.state, x, ev, ls.x, ev_new)
        it += 1
        f_prev, x, ev = f, ls.x, ev_new
        f, gn = float(ev.value), _norm(ev.grad)
        history.append({"value": f, "grad_norm": gn, "step": ls.step, **st.info, **ev.info})
        bar.update(1)
        bar.set_postfix(f=f"{f:.4g}", g=f"{gn:.2e}")
        stop = _stop(it, f_prev, f, f0, dx, x0n, gn, g0, ftol, xtol, gtol)
        if stop is not None:
            status = stop
            break
    bar.close()
    return OptimizeResult(
        x=x, status=status, iterations=it, value=f, grad_norm=gn, history=history, evaluations=evals
    )


def minimize(
    fn: Callable[[torch.Tensor], Evaluation],
    x0: torch.Tensor,
    descent: AbstractDescent,
    search: AbstractLineSearch | None = None,
    *,
    value: Callable[[torch.Tensor], torch.Tensor | float] | None = None,
    maxiter: int = 100,
    gtol: float = 1e-5,
    ftol: float = 0.0,
    xtol: float = 0.0,
    verbose: bool = False,
    desc: str = "minimize",
) -> OptimizeResult:
    r"""Minimize ``f`` by a descent direction times a line search.

    Each iteration asks ``descent`` for a direction ``p_k`` at ``x_k`` (``∇f_kᵀp_k < 0``),
    asks ``search`` for the step ``t_k``, sets ``x_{k+1} = x_k + t_k p_k`` and evaluates
    ``fn`` there. Gauss–Newton is ``minimize(fn, x0, NewtonCG(), Armijo())``; L-BFGS is
    ``minimize(fn, x0, LBFGS(), Armijo())``.

    Stops (status CONVERGED) when ``‖g_k‖ ≤ gtol·‖g_0‖``, or
    ``|f_k − f_{k−1}| ≤ ftol·(1 + |f_0|)``, or ``‖x_k − x_{k−1}‖ ≤ xtol·(1 + ‖x_0‖)``
    (``ftol = 0`` or ``xtol = 0`` turns that test off); STAGNATED when an accepted step left
    ``f`` unchanged otherwise (the decrease is below the objective's round-off);
    MAX_ITERATIONS after ``maxiter`` steps; LINE_SEARCH_FAILED when the search finds no step.

    Args:
        fn: the objective, ``x ↦ Evaluation(value, grad, hessian=None, info={})``
            (:class:`Evaluation`; ``hessian`` is needed by :class:`NewtonCG` only).
        x0: starting point (any shape; not modified).
        descent: :class:`NewtonCG`, :class:`LBFGS` or another :class:`AbstractDescent`.
        search: :class:`Armijo` (default), :class:`FixedStep` or another
            :class:`AbstractLineSearch`.
        value: ``x ↦ f`` for the line search (default ``fn(x).value``, which is costlier).
        maxiter, gtol, ftol, xtol: iteration cap (≥ 0) and the three stopping tolerances (≥ 0).
        verbose, desc: tqdm progress bar.

    Returns:
        :class:`OptimizeResult`.

    Raises:
        ValueError: the objective or gradient is not finite at ``x0``; a setting out of range.
        TypeError: ``fn`` does not return an :class:`Evaluation`; ``descent``/``search`` of
            the wrong kind.

    Reference:
        Nocedal & Wright, *Numerical Optimization*, 2nd ed. (2006), Ch. 3, 6-7; the split into
        descents and searches follows optimistix (Rader, Lyons & Kidger, arXiv:2402.09983).

    Example:
        >>> from odeflow.optim import Evaluation, LBFGS
        >>> def quad(x):  # f = ½‖x − 1‖²
        ...     return Evaluation(value=0.5 * float(((x - 1) ** 2).sum()), grad=x - 1)
        >>> res = minimize(quad, torch.zeros(3, dtype=torch.float64), LBFGS(), gtol=1e-10)
        >>> res.status.name, [round(v, 6) for v in res.x.tolist()]
        ('CONVERGED', [1.0, 1.0, 1.0])
    """
    search = Armijo() if search is None else search
    return _run(fn, x0, descent, search, value, maxiter, gtol, ftol, xtol, verbose, desc,
                "minimize")  # fmt: skip
