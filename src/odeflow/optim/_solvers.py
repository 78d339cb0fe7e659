"""Gauss–Newton and L-BFGS: :func:`minimize` with a fixed descent and an Armijo search.

These wrappers keep the tuple-returning objectives of odeflow ≤ 0.x working: ``fn`` returns
``(f, g, H)`` or ``(f, g, H, info)`` for :func:`gauss_newton` and ``(f, g)`` (an ``info``
dict may follow) for :func:`lbfgs`; each tuple is converted to an :class:`Evaluation`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._descents import LBFGS, NewtonCG
from ._line_search import Armijo
from ._minimize import OptimizeResult, _run
from ._objective import Evaluation

__all__ = ["gauss_newton", "lbfgs"]


def _unpack(out) -> tuple:
    if not isinstance(out, tuple) or len(out) not in (2, 3, 4):
        raise TypeError(
            "objective must return (value, grad) for lbfgs or (value, grad, hessian[, info]) "
            "for gauss_newton."
        )
    return out


def _gn_evaluation(out) -> Evaluation:
    out = _unpack(out)
    info = dict(out[3]) if len(out) == 4 else {}
    return Evaluation(out[0], out[1], out[2] if len(out) > 2 else None, info)


def _lbfgs_evaluation(out) -> Evaluation:
    out = _unpack(out)
    info = dict(out[-1]) if len(out) > 2 and isinstance(out[-1], dict) else {}
    return Evaluation(out[0], out[1], None, info)


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
    This is ``minimize(fn, x0, NewtonCG(cg_rtol, cg_maxiter, precondition),
    Armijo(c1, max_steps=max_line_search))`` on the tuple objective.

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
    descent = NewtonCG(rtol=cg_rtol, maxiter=cg_maxiter, precondition=precondition)
    search = Armijo(c1=c1, max_steps=max_line_search)
    val = value if value is not None else (lambda z: _unpack(fn(z))[0])
    return _run(lambda z: _gn_evaluation(fn(z)), x0, descent, search, val, maxiter, gtol, ftol,
                xtol, verbose, desc, "gauss_newton")  # fmt: skip


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
    ``γ = sᵀy / yᵀy``. Stopping rules as :func:`gauss_newton`. This is
    ``minimize(fn, x0, LBFGS(memory), Armijo(c1, max_steps=max_line_search))``.

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
        >>> tuple(round(v, 4) for v in res.x.tolist())
        (1.0, 1.0)
    """
    descent = LBFGS(memory=memory)
    search = Armijo(c1=c1, max_steps=max_line_search)
    val = value if value is not None else (lambda z: _unpack(fn(z))[0])
    return _run(lambda z: _lbfgs_evaluation(fn(z)), x0, descent, search, val, maxiter, gtol, ftol,
                xtol, verbose, desc, "lbfgs")  # fmt: skip
