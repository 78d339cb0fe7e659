"""Descent methods (Gauss–Newton–PCG, L-BFGS) times a backtracking Armijo search."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ._cg import Status, cg
from ._operators import jacobi_preconditioner

__all__ = ["LineSearchResult", "OptimizeResult", "armijo", "gauss_newton", "lbfgs"]


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u * v).sum()


def _norm(u: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(u))


@dataclass
class LineSearchResult:
    """Result of :func:`armijo`.

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


@dataclass
class OptimizeResult:
    """Result of :func:`gauss_newton` and :func:`lbfgs`.

    Attributes:
        x: the final iterate.
        status: :class:`~odeflow.optim.Status`.
        iterations: outer iterations taken.
        value: objective at ``x``.
        grad_norm: ``‖∇f(x)‖₂`` at the last evaluated iterate.
        history: one dict per iterate (``value``, ``grad_norm``, ``step``, ``cg_iterations`` and
            any extra entries the objective returned).
        evaluations: objective (value-only) evaluations spent in line searches.
    """

    x: torch.Tensor
    status: Status
    iterations: int
    value: float
    grad_norm: float
    history: list[dict[str, Any]] = field(default_factory=list)
    evaluations: int = 0


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


def _unpack(out) -> tuple:
    if not isinstance(out, tuple) or len(out) not in (2, 3, 4):
        raise TypeError(
            "objective must return (value, grad) for lbfgs or (value, grad, hessian[, info]) "
            "for gauss_newton."
        )
    return out


def _stop(it, f_prev, f, f_first, dx, x_first, g, g_first, ftol, xtol, gtol) -> Status | None:
    """CONVERGED by one of the three tests (``ftol = 0`` / ``xtol = 0`` turn theirs off),
    STAGNATED when an accepted step left f unchanged (no decrease representable in the
    objective's precision) without meeting them, else None (go on)."""
    if g <= gtol * max(g_first, 1e-300):
        return Status.CONVERGED
    if it > 0 and ftol > 0 and abs(f_prev - f) <= ftol * (1.0 + abs(f_first)):
        return Status.CONVERGED
    if it > 0 and xtol > 0 and dx <= xtol * (1.0 + x_first):
        return Status.CONVERGED
    if it > 0 and not f < f_prev:
        return Status.STAGNATED
    return None


def gauss_newton(
    fn: Callable[[torch.Tensor], tuple],
    x0: torch.Tensor,
    *,
    value: Callable[[torch.Tensor], torch.Tensor | float] | None = None,
    maxiter: int = 10,
    gtol: float = 1e-4,
    ftol: float = 1e-3,
    xtol: float = 1e-2,
    cg_rtol: float = 0.1,
    cg_maxiter: int = 10,
    precondition: bool = True,
    c1: float = 1e-4,
    max_line_search: int = 25,
    verbose: bool = False,
    desc: str = "Gauss-Newton",
) -> OptimizeResult:
    r"""Gauss–Newton (inexact Newton) with matrix-free PCG and an Armijo line search.

    At ``x_k`` the objective returns ``f``, ``g = ∇f`` and a symmetric PSD model Hessian
    ``H`` (Gauss–Newton ``JᵀJ`` plus regularizer Hessians). The step solves ``H p = −g``
    by CG to relative residual ``cg_rtol`` (at most ``cg_maxiter`` iterations; Jacobi
    preconditioned when ``H`` knows its diagonal), then :func:`armijo` chooses ``t``.

    Stops (status CONVERGED) when ``‖g_k‖ ≤ gtol·‖g_0‖``, or
    ``|f_{k} − f_{k−1}| ≤ ftol·(1 + |f_0|)``, or ``‖x_k − x_{k−1}‖ ≤ xtol·(1 + ‖x_0‖)``
    (``ftol = 0`` or ``xtol = 0`` turns that test off); STAGNATED when an accepted step left
    ``f`` unchanged otherwise (the decrease is below the objective's round-off: the gradient
    test cannot be met in this precision); MAX_ITERATIONS after ``maxiter`` steps;
    LINE_SEARCH_FAILED if no decrease is found.

    Args:
        fn: ``x ↦ (f, g, H)`` or ``(f, g, H, info)`` with ``H`` a :class:`LinearOperator`
            on tensors shaped like ``x`` and ``info`` a dict logged in the history.
        x0: starting point (any shape; not modified).
        value: ``x ↦ f`` for the line search (default: ``fn(x)[0]``, which is costlier).
        maxiter, gtol, ftol, xtol: iteration cap and the three stopping tolerances.
        cg_rtol, cg_maxiter, precondition: inner PCG controls.
        c1, max_line_search: Armijo constant and maximal number of halvings.
        verbose, desc: tqdm progress bar.

    Returns:
        :class:`OptimizeResult`.

    Raises:
        ValueError: if ``fn`` returns a non-finite value or gradient at ``x0``.

    Reference:
        Nocedal & Wright, *Numerical Optimization* (2006), §10.3 and §7.1; Julian et al.,
        "PyHySCO: GPU-enabled susceptibility artifact distortion correction", arXiv:2403.10706.

    Example:
        >>> A = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
        >>> y = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
        >>> from odeflow.optim import LinearOperator
        >>> H = LinearOperator(lambda v: A.T @ (A @ v), (2,), psd=True)
        >>> def fn(x):
        ...     r = A @ x - y
        ...     return 0.5 * float(r @ r), A.T @ r, H
        >>> res = gauss_newton(fn, torch.zeros(2, dtype=torch.float64), cg_rtol=1e-12)
        >>> bool(torch.allclose(res.x, torch.linalg.lstsq(A, y).solution))
        True
    """
    val = value if value is not None else (lambda z: _unpack(fn(z))[0])
    x = x0.clone()
    history: list[dict[str, Any]] = []
    out = _unpack(fn(x))
    f, g, H = float(out[0]), out[1], out[2]
    info = dict(out[3]) if len(out) == 4 else {}
    gn = _norm(g)
    if not (math.isfinite(f) and math.isfinite(gn)):
        raise ValueError(
            f"gauss_newton: objective or gradient is not finite at x0 (f={f}, ‖g‖={gn}); "
            "start from a feasible point."
        )
    f0, g0, x0n = f, gn, _norm(x0)
    history.append({"value": f, "grad_norm": gn, "step": 0.0, "cg_iterations": 0, **info})
    status = Status.MAX_ITERATIONS
    evals = 0
    bar = tqdm(total=maxiter, desc=desc, disable=not verbose, leave=False)
    it = 0
    if gn == 0.0:
        status = Status.CONVERGED
    while it < maxiter and status is not Status.CONVERGED:
        M = jacobi_preconditioner(H) if precondition and H.has_diagonal() else None
        sol = cg(H, -g, rtol=cg_rtol, maxiter=cg_maxiter, M=M)
        p = sol.x
        if not float(_dot(g, p)) < 0:  # CG made no progress (e.g. breakdown): steepest descent
            p = -g
        ls = armijo(val, x, f, g, p, c1=c1, max_steps=max_line_search)
        evals += ls.evaluations
        if not ls.success:
            status = Status.LINE_SEARCH_FAILED
            break
        dx = ls.step * _norm(p)
        x = ls.x
        it += 1
        f_prev = f
        out = _unpack(fn(x))
        f, g, H = float(out[0]), out[1], out[2]
        info = dict(out[3]) if len(out) == 4 else {}
        gn = _norm(g)
        history.append(
            {"value": f, "grad_norm": gn, "step": ls.step, "cg_iterations": sol.iterations, **info}
        )
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


def lbfgs(
    fn: Callable[[torch.Tensor], tuple],
    x0: torch.Tensor,
    *,
    value: Callable[[torch.Tensor], torch.Tensor | float] | None = None,
    memory: int = 10,
    maxiter: int = 100,
    gtol: float = 1e-5,
    ftol: float = 0.0,
    xtol: float = 0.0,
    c1: float = 1e-4,
    max_line_search: int = 25,
    verbose: bool = False,
    desc: str = "L-BFGS",
) -> OptimizeResult:
    r"""Limited-memory BFGS with the two-loop recursion and an Armijo line search.

    The direction is ``p = −H_k g`` with ``H_k`` the L-BFGS inverse-Hessian approximation
    from the last ``memory`` pairs ``s = x_{k+1} − x_k``, ``y = g_{k+1} − g_k`` (pairs with
    ``sᵀy ≤ 1e−10‖s‖‖y‖`` are skipped, keeping ``H_k`` positive definite) and initial scaling
    ``γ = sᵀy / yᵀy``. Stopping rules as :func:`gauss_newton`.

    Args:
        fn: ``x ↦ (f, g)`` (extra tuple entries: an ``info`` dict may be the last).
        x0: starting point (any shape).
        value: ``x ↦ f`` for the line search (default ``fn(x)[0]``).
        memory: number of stored pairs.
        maxiter, gtol, ftol, xtol, c1, max_line_search, verbose, desc: as :func:`gauss_newton`.

    Returns:
        :class:`OptimizeResult`.

    Raises:
        ValueError: if the objective or gradient is not finite at ``x0`` or ``memory < 1``.

    Reference:
        Nocedal, "Updating quasi-Newton matrices with limited storage", Math. Comp. 35 (1980);
        Nocedal & Wright (2006), Alg. 7.4.

    Example:
        >>> def rosen(z):
        ...     a, b = z[0], z[1]
        ...     f = (1 - a) ** 2 + 100 * (b - a**2) ** 2
        ...     g = torch.stack([-2 * (1 - a) - 400 * a * (b - a**2), 200 * (b - a**2)])
        ...     return float(f), g
        >>> res = lbfgs(rosen, torch.tensor([-1.2, 1.0], dtype=torch.float64), maxiter=200)
        >>> [round(v, 4) for v in res.x.tolist()]
        [1.0, 1.0]
    """
    if memory < 1:
        raise ValueError("lbfgs: memory must be >= 1.")
    val = value if value is not None else (lambda z: _unpack(fn(z))[0])
    x = x0.clone()
    out = _unpack(fn(x))
    f, g = float(out[0]), out[1]
    info = dict(out[-1]) if len(out) > 2 and isinstance(out[-1], dict) else {}
    gn = _norm(g)
    if not (math.isfinite(f) and math.isfinite(gn)):
        raise ValueError(
            f"lbfgs: objective or gradient is not finite at x0 (f={f}, ‖g‖={gn}); start from a "
            "feasible point."
        )
    f0, g0, x0n = f, gn, _norm(x0)
    history: list[dict[str, Any]] = [{"value": f, "grad_norm": gn, "step": 0.0, **info}]
    S: list[torch.Tensor] = []
    Y: list[torch.Tensor] = []
    RHO: list[float] = []
    status = Status.MAX_ITERATIONS if gn > 0 else Status.CONVERGED
    evals = 0
    it = 0
    bar = tqdm(total=maxiter, desc=desc, disable=not verbose, leave=False)
    while it < maxiter and status is not Status.CONVERGED:
        q = g.clone()
        alphas = []
        for s, y, rho in zip(reversed(S), reversed(Y), reversed(RHO)):
            a = rho * float(_dot(s, q))
            alphas.append(a)
            q = q - a * y
        if S:
            gamma = float(_dot(S[-1], Y[-1]) / _dot(Y[-1], Y[-1]))
        else:
            gamma = 1.0 / max(gn, 1e-300)  # first step of unit length
        r = gamma * q
        for (s, y, rho), a in zip(zip(S, Y, RHO), reversed(alphas)):
            bcoef = rho * float(_dot(y, r))
            r = r + (a - bcoef) * s
        p = -r
        if not float(_dot(g, p)) < 0:
            S.clear(), Y.clear(), RHO.clear()
            p = -g / max(gn, 1e-300)
        ls = armijo(val, x, f, g, p, c1=c1, max_steps=max_line_search)
        evals += ls.evaluations
        if not ls.success:
            status = Status.LINE_SEARCH_FAILED
            break
        x_new = ls.x
        out = _unpack(fn(x_new))
        f_new, g_new = float(out[0]), out[1]
        info = dict(out[-1]) if len(out) > 2 and isinstance(out[-1], dict) else {}
        s, y = x_new - x, g_new - g
        sy = float(_dot(s, y))
        if sy > 1e-10 * _norm(s) * _norm(y):
            S.append(s), Y.append(y), RHO.append(1.0 / sy)
            if len(S) > memory:
                S.pop(0), Y.pop(0), RHO.pop(0)
        it += 1
        dx = _norm(s)
        f_prev, f, g, x = f, f_new, g_new, x_new
        gn = _norm(g)
        history.append({"value": f, "grad_norm": gn, "step": ls.step, **info})
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
