"""(Preconditioned) conjugate gradients, matrix-free and batched over leading dimensions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._operators import LinearOperator
from ._status import CGStatus

__all__ = ["CGResult", "cg"]


@dataclass
class CGResult:
    """Result of :func:`cg`.

    Attributes:
        x: the approximate solution (shape of ``b``).
        status: :class:`CGStatus` — CONVERGED when every system met the stopping rule.
        iterations: number of CG iterations run.
        residual_norms: ``‖r_k‖`` per iteration, shape ``(iterations + 1, *batch)``.
        converged: per-system boolean tensor of shape ``batch`` (a 0-d tensor if unbatched).
    """

    x: torch.Tensor
    status: CGStatus
    iterations: int
    residual_norms: torch.Tensor
    converged: torch.Tensor


def _as_apply(A, name: str, state: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(A, LinearOperator):
        return A.mv
    if isinstance(A, torch.Tensor):
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"cg: dense {name} must be a square 2-D tensor, got {tuple(A.shape)}.")
        if state != (A.shape[0],):
            raise ValueError(
                f"cg: a dense {A.shape[0]}×{A.shape[0]} {name} acts on vectors, but each system's "
                f"state has shape {state}; pass b of shape (*batch, {A.shape[0]}) with batch_dims "
                "= b.ndim − 1, or a LinearOperator / callable for other state shapes."
            )
        return lambda x: x @ A.mT  # each system's vector is the last dimension
    if callable(A):
        return A
    raise TypeError(f"cg: {name} must be a LinearOperator, a square tensor or a callable.")


def cg(
    A: LinearOperator | torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    x0: torch.Tensor | None = None,
    *,
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    M: LinearOperator | torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_dims: int = 0,
    check_every: int = 1,
) -> CGResult:
    r"""Solve ``A x = b`` for symmetric positive definite ``A`` by (preconditioned) CG.

    Hestenes–Stiefel iteration with preconditioner ``M ≈ A^{-1}``:
    ``α_k = r_kᵀz_k / p_kᵀAp_k``, ``x_{k+1} = x_k + α_k p_k``, ``r_{k+1} = r_k − α_k A p_k``,
    ``z_{k+1} = M r_{k+1}``, ``β_k = r_{k+1}ᵀz_{k+1} / r_kᵀz_k``, ``p_{k+1} = z_{k+1} + β_k p_k``.

    Stopping rule (as ``scipy.sparse.linalg.cg``): stop when
    ``‖b − A x_k‖₂ ≤ max(rtol·‖b‖₂, atol)``, or after ``maxiter`` iterations. The test is
    evaluated on the host every ``check_every`` iterations (a single device sync); between
    checks the iteration runs without syncs and converged systems are frozen on device.

    With ``batch_dims = k`` the first ``k`` dimensions of ``b`` index independent systems
    (``A`` must act on each separately, e.g. block-diagonal); inner products and the
    stopping rule are then per system.

    Args:
        A: SPD operator on tensors shaped like ``b`` (a :class:`LinearOperator`, a callable,
            or a dense ``n×n`` matrix when each system is a vector: ``b`` of shape
            ``(*batch, n)`` with ``batch_dims = b.ndim − 1``).
        b: right-hand side, shape ``(*batch, *state)``.
        x0: initial guess (default zeros), shape of ``b``.
        rtol, atol: relative and absolute tolerances of the stopping rule.
        maxiter: iteration cap (default ``10 · numel(state)``).
        M: preconditioner (an SPD approximation of ``A^{-1}``), same kinds as ``A``.
        batch_dims: number of leading batch dimensions of ``b``.
        check_every: host-side convergence test frequency.

    Returns:
        :class:`CGResult` with ``x``, ``status``, ``iterations``, ``residual_norms``, ``converged``.
        ``status`` is BREAKDOWN when a non-positive curvature ``pᵀAp ≤ 0`` was met (A not SPD)
        or a NaN/Inf appeared (from ``A`` or ``M``); a system with a non-finite residual never
        counts as converged.

    Raises:
        ValueError: on shape mismatch (a dense ``A`` needs each system's state to be a
            vector), negative tolerances, non-finite ``b`` or ``x0``, or an operator tagged
            non-symmetric.

    Reference:
        Hestenes & Stiefel, "Methods of conjugate gradients for solving linear systems" (1952);
        scipy.sparse.linalg.cg for the stopping rule.

    Example:
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> b = torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> res = cg(A, b, rtol=1e-12)
        >>> res.status.ok, bool(torch.allclose(res.x, torch.linalg.solve(A, b)))
        (True, True)
    """
    if not isinstance(b, torch.Tensor):
        raise TypeError("cg: b must be a tensor.")
    if isinstance(A, LinearOperator) and not A.symmetric:
        raise ValueError(
            "cg: A is tagged non-symmetric; CG needs a symmetric positive definite operator "
            "(build it with symmetric=True, psd=True, or use a least-squares solver)."
        )
    if rtol < 0 or atol < 0:
        raise ValueError(f"cg: rtol and atol must be >= 0, got rtol={rtol}, atol={atol}.")
    if not 0 <= batch_dims <= b.ndim:
        raise ValueError(f"cg: batch_dims={batch_dims} must be in [0, b.ndim={b.ndim}].")
    if check_every < 1:
        raise ValueError("cg: check_every must be >= 1.")
    if not bool(torch.isfinite(b).all()):
        raise ValueError("cg: b contains NaN or Inf.")
    if x0 is not None and x0.shape != b.shape:
        raise ValueError(f"cg: x0 has shape {tuple(x0.shape)}, b has {tuple(b.shape)}.")
    if x0 is not None and not bool(torch.isfinite(x0).all()):
        raise ValueError("cg: x0 contains NaN or Inf.")
    state = tuple(b.shape[batch_dims:])
    apply_a = _as_apply(A, "A", state)
    apply_m = (lambda r: r) if M is None else _as_apply(M, "M", state)
    state_dims = tuple(range(batch_dims, b.ndim))
    n_state = 1
    for d in state_dims:
        n_state *= b.shape[d]
    if maxiter is None:
        maxiter = 10 * max(n_state, 1)
    bshape = b.shape[:batch_dims] + (1,) * (b.ndim - batch_dims)

    def dot(u, v):
        if batch_dims == 0:
            return torch.dot(u.reshape(-1), v.reshape(-1))
        return (u * v).sum(dim=state_dims) if state_dims else u * v

    def expand(s):
        return s.reshape(bshape)

    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - apply_a(x) if x0 is not None else b.clone()
    bnorm = torch.sqrt(dot(b, b))
    tol = torch.clamp(rtol * bnorm, min=atol)
    if x0 is not None:  # b = 0 has the solution x = 0 (scipy returns it at once)
        zero_b = expand(bnorm == 0)
        x = torch.where(zero_b, 0.0, x)
        r = torch.where(zero_b, b, r)
    rnorm = torch.sqrt(dot(r, r))
    history = [rnorm]
    active = rnorm > tol
    z = apply_m(r)
    p = z.clone()
    rz = dot(r, z)
    status = CGStatus.MAX_ITERATIONS
    it = 0
    if not bool(active.any()):
        status = CGStatus.CONVERGED
    else:
        breakdown = torch.zeros_like(active)
        while it < maxiter:
            Ap = apply_a(p)
            pAp = dot(p, Ap)
            # non-positive curvature (A not SPD), or a NaN/Inf from A or M: no CG step
            bad = active & ~((pAp > 0) & torch.isfinite(pAp))
            breakdown = breakdown | bad
            step_ok = active & ~bad
            alpha = torch.where(step_ok, rz / torch.where(step_ok, pAp, torch.ones_like(pAp)), 0.0)
            ae = expand(alpha)
            x.addcmul_(ae, p)
            r.addcmul_(ae, Ap, value=-1.0)
            rnorm = torch.sqrt(dot(r, r))
            history.append(rnorm)
            blown = step_ok & ~torch.isfinite(rnorm)
            breakdown = breakdown | blown
            active = step_ok & ~blown & (rnorm > tol)
            it += 1
            z = apply_m(r)
            rz_new = dot(r, z)
            beta = torch.where(active, rz_new / torch.where(rz != 0, rz, torch.ones_like(rz)), 0.0)
            p.mul_(expand(beta)).add_(z)
            rz = rz_new
            if it % check_every == 0 or it == maxiter:
                if not bool(active.any()):
                    break
        if bool(breakdown.any()):
            status = CGStatus.BREAKDOWN
        elif not bool(active.any()):
            status = CGStatus.CONVERGED
    converged = torch.sqrt(dot(r, r)) <= tol  # (False for a NaN residual)
    return CGResult(
        x=x, status=status, iterations=it, residual_norms=torch.stack(history), converged=converged
    )
