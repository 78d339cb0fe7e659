r"""Bound-constrained minimization: a projected Newton–Krylov method (PNKH-B style).

For ``min f(x)`` subject to ``l ≤ x ≤ u`` each iteration

1. splits the variables with the ε-active set of Bertsekas: ``A = {i: x_i ≤ l_i + ε, g_i > 0}
   ∪ {i: x_i ≥ u_i − ε, g_i < 0}`` with ``ε = min(ε₀, ‖x − P(x − g)‖)``, ``F`` the rest;
2. on ``F`` builds a rank-``r`` Lanczos approximation ``H_FF ≈ Q_r S Θ Sᵀ Q_rᵀ`` of the
   Hessian started at ``g_F`` (Ritz values replaced by ``max(|θ|, δ·θ_max)``, so the model
   is positive definite even where ``f`` is not convex) and sets
   ``p_F = −Q_r S Θ^{-1} Sᵀ Q_rᵀ g_F``; the active variables head for their bound,
   ``p_A = l_A − x_A`` (or ``u_A − x_A``);
3. backtracks along the projection arc ``x(t) = P(x + t p)`` until
   ``f(x) − f(x(t)) ≥ c₁ (−t g_Fᵀp_F + g_Aᵀ(x_A − x_A(t)))``.

Near a nondegenerate solution the active set is identified after finitely many steps and
the iteration becomes Newton–Lanczos on the free variables (quadratic convergence when
``r`` covers them).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from .._utils import check_finite_real, check_positive_int, outside_stacklevel
from ._minimize import OptimizeResult, _evaluate
from ._objective import Evaluation
from ._status import MinimizeStatus

__all__ = ["minimize_bounded"]


def _bounds(bounds, x0: torch.Tensor, who: str):
    if not (isinstance(bounds, tuple | list) and len(bounds) == 2):
        raise ValueError(f"{who}: bounds must be a pair (lower, upper); use None for no bound.")
    out = []
    for side, val, fill in (("lower", bounds[0], -math.inf), ("upper", bounds[1], math.inf)):
        t = torch.full_like(x0, fill) if val is None else torch.as_tensor(val, dtype=x0.dtype)
        try:
            t = torch.broadcast_to(t.to(x0.device), x0.shape).clone()
        except RuntimeError:
            raise ValueError(
                f"{who}: the {side} bound of shape {tuple(t.shape)} does not broadcast to x0's "
                f"shape {tuple(x0.shape)}."
            ) from None
        if bool(torch.isnan(t).any()):
            raise ValueError(f"{who}: the {side} bound contains NaN.")
        out.append(t)
    lo, hi = out
    if bool((lo > hi).any()):
        k = int((lo > hi).sum())
        raise ValueError(
            f"{who}: lower > upper for {k} component(s); each lower bound must be ≤ its upper."
        )
    return lo, hi


def _lanczos_direction(H, g, free, rank):
    """``−M g`` on the free variables with the Lanczos model ``M⁻¹`` of ``H_FF`` (rank r)."""
    gf = torch.where(free, g, 0.0)
    nrm = float(torch.linalg.vector_norm(gf))
    if nrm == 0.0:
        return torch.zeros_like(g), 0
    Q = [gf / nrm]
    alphas, betas = [], []
    for j in range(rank):
        w = torch.where(free, H.mv(Q[j]), 0.0)
        a = float((w * Q[j]).sum())
        alphas.append(a)
        for q in Q:  # full reorthogonalization (twice is enough)
            w = w - (w * q).sum() * q
        for q in Q:
            w = w - (w * q).sum() * q
        b = float(torch.linalg.vector_norm(w))
        if j == rank - 1 or b <= 1e-12 * max(abs(a), 1.0):
            break
        betas.append(b)
        Q.append(w / b)
    k = len(alphas)
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(betas[: k - 1], dtype=torch.float64)
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    theta, S = torch.linalg.eigh(T)
    big = float(theta.abs().max())
    theta = theta.abs().clamp_min(max(1e-10 * big, 1e-300))
    coef = S @ ((S[0] * nrm) / theta)  # M g = Q S Θ⁻¹ Sᵀ Qᵀ g, Qᵀg = ‖g‖e₁
    p = -sum(float(c) * q for c, q in zip(coef.tolist(), Q))
    return p, k


def minimize_bounded(
    fn: Callable[[torch.Tensor], Evaluation],
    x0: torch.Tensor,
    bounds: tuple,
    *,
    value: Callable[[torch.Tensor], float] | None = None,
    rank: int = 20,
    maxiter: int = 200,
    gtol: float = 1e-10,
    eps: float = 1e-3,
    c1: float = 1e-4,
    max_backtracks: int = 40,
) -> OptimizeResult:
    r"""Minimize ``f`` subject to ``lower ≤ x ≤ upper`` by projected Newton–Krylov (PNKH-B).

    The iteration is in the module docstring. Stops (CONVERGED) when the projected gradient
    ``‖x − P(x − ∇f)‖ ≤ gtol·max(1, ‖x₀ − P(x₀ − ∇f₀)‖)``; LINE_SEARCH_FAILED when
    ``max_backtracks`` halvings give no sufficient decrease; STAGNATED when a step leaves
    ``f`` unchanged; MAX_ITERATIONS otherwise.

    Args:
        fn: ``x ↦ Evaluation(value, grad, hessian)``; ``hessian`` a symmetric
            :class:`~odeflow.optim.LinearOperator` (Hessian–vector products; it may be
            indefinite).
        x0: the start (any shape; not modified). An infeasible start is projected onto the
            box with a warning.
        bounds: ``(lower, upper)``: numbers or tensors broadcastable to ``x0``; ``None`` for
            an absent side (``±inf`` entries are allowed).
        value: ``x ↦ f(x)`` for the line search (default ``fn(x).value``).
        rank: Lanczos steps per iteration (the rank of the Hessian model on ``F``).
        maxiter, gtol: iteration cap and the relative projected-gradient tolerance.
        eps: ``ε₀`` of the ε-active set.
        c1, max_backtracks: the sufficient-decrease constant and the backtracking cap.

    Returns:
        :class:`~odeflow.optim.OptimizeResult`; ``evaluations`` counts the line search's
        value-only evaluations; ``history`` logs ``value``, ``projected_grad``, ``step``,
        ``active`` (size of A) and ``lanczos`` (rank used) per iterate.

    Raises:
        ValueError: ``lower > upper`` anywhere, bounds that do not broadcast, a non-finite
            objective at the (projected) start, settings out of range.
        TypeError: ``fn`` does not return an :class:`~odeflow.optim.Evaluation` with a Hessian.

    Warns:
        UserWarning: when ``x0`` lies outside the box (it is projected).

    Reference:
        Kan, Fung & Ruthotto, "PNKH-B: A projected Newton–Krylov method for large-scale
        bound-constrained optimization", SIAM J. Sci. Comput. 43 (2021), arXiv:2005.13639;
        Bertsekas, "Projected Newton methods for optimization problems with simple
        constraints", SIAM J. Control Optim. 20 (1982).

    Example:
        >>> from odeflow.optim import Evaluation, LinearOperator
        >>> def f(x):  # ½‖x − 2‖² on the box [0, 1]²: the solution is (1, 1)
        ...     H = LinearOperator(lambda v: v, x.shape, symmetric=True)
        ...     return Evaluation(0.5 * float(((x - 2) ** 2).sum()), x - 2, H)
        >>> res = minimize_bounded(f, torch.zeros(2, dtype=torch.float64), bounds=(0.0, 1.0))
        >>> res.status.name, res.x.tolist()
        ('CONVERGED', [1.0, 1.0])
    """
    who = "minimize_bounded"
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise TypeError(f"{who}: x0 must be a floating-point tensor.")
    rank = check_positive_int("rank", rank, who=who)
    maxiter = check_positive_int("maxiter", maxiter, who=who)
    check_finite_real("gtol", gtol, nonnegative=True, who=who)
    check_finite_real("eps", eps, nonnegative=True, who=who)
    lo, hi = _bounds(bounds, x0, who)
    x = torch.minimum(torch.maximum(x0, lo), hi)
    if not torch.equal(x, x0):
        k = int((x != x0).sum())
        warnings.warn(
            f"{who}: x0 violates the bounds in {k} component(s); starting from its projection "
            "onto the box.",
            UserWarning,
            stacklevel=outside_stacklevel(),
        )
    val = value if value is not None else (lambda z: _evaluate(fn, z, who).value)
    ev = _evaluate(fn, x, who)
    if ev.hessian is None:
        raise TypeError(f"{who}: the objective must return a Hessian (Evaluation.hessian).")
    f = float(ev.value)
    if not (math.isfinite(f) and bool(torch.isfinite(ev.grad).all())):
        raise ValueError(f"{who}: the objective or its gradient is not finite at the start.")

    def proj_grad(x, g):
        return float(torch.linalg.vector_norm(x - torch.minimum(torch.maximum(x - g, lo), hi)))

    pg = proj_grad(x, ev.grad)
    pg0 = max(pg, 1.0)
    history = [{"value": f, "projected_grad": pg, "step": 0.0, "active": 0, "lanczos": 0}]
    status, evals, it = MinimizeStatus.MAX_ITERATIONS, 0, 0
    if pg <= gtol * pg0:
        status = MinimizeStatus.CONVERGED
    while status is MinimizeStatus.MAX_ITERATIONS and it < maxiter:
        g = ev.grad
        e = min(eps, pg)
        at_lo = (x <= lo + e) & (g > 0)
        at_hi = (x >= hi - e) & (g < 0)
        active = at_lo | at_hi
        free = ~active
        p, used = _lanczos_direction(ev.hessian, g, free, rank)
        p = torch.where(at_lo, lo - x, torch.where(at_hi, hi - x, p))
        slope_f = float(torch.where(free, g * p, 0.0).sum())  # < 0
        t, accepted = 1.0, False
        for _ in range(max_backtracks):
            xt = torch.minimum(torch.maximum(x + t * p, lo), hi)
            ft = float(val(xt))
            evals += 1
            decrease = -t * slope_f + float(torch.where(active, g * (x - xt), 0.0).sum())
            if math.isfinite(ft) and f - ft >= c1 * decrease:
                accepted = True
                break
            t *= 0.5
        if not accepted:
            status = MinimizeStatus.LINE_SEARCH_FAILED
            break
        f_prev, x = f, xt
        ev = _evaluate(fn, x, who)
        f, pg, it = float(ev.value), proj_grad(x, ev.grad), it + 1
        history.append(
            {
                "value": f,
                "projected_grad": pg,
                "step": t,
                "active": int(active.sum()),
                "lanczos": used,
            }
        )
        if pg <= gtol * pg0:
            status = MinimizeStatus.CONVERGED
        elif not f < f_prev:
            status = MinimizeStatus.STAGNATED
    return OptimizeResult(
        x=x, status=status, iterations=it, value=f, grad_norm=pg, history=history, evaluations=evals
    )
