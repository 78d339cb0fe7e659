r"""Tikhonov-regularized least squares with a general regularization operator."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._utils import check_finite_real
from ._bidiag import _as_operator, _check_rhs
from ._cg import cg
from ._operators import LinearOperator
from ._status import CGStatus

__all__ = ["TikhonovResult", "solve_tikhonov"]


@dataclass
class TikhonovResult:
    """Result of :func:`solve_tikhonov`.

    Attributes:
        x: the solution ``(*batch, *A.in_shape)``.
        status: :class:`~odeflow.optim.CGStatus` (CONVERGED for the direct solve).
        iterations: CG iterations on the normal equations (0 for the direct solve).
        method: ``"direct"`` (dense A and L) or ``"cg"`` (matrix-free).
    """

    x: torch.Tensor
    status: CGStatus
    iterations: int
    method: str


def _check_L(L, op: LinearOperator, who: str):
    if L is None:
        return None
    if isinstance(L, torch.Tensor):
        if L.ndim != 2 or L.shape[1] != math.prod(op.in_shape):
            raise ValueError(
                f"{who}: a dense L must be 2-D (p, n) with n = prod(A.in_shape) = "
                f"{math.prod(op.in_shape)}, got {tuple(L.shape)}."
            )
        return L
    if not isinstance(L, LinearOperator):
        raise TypeError(f"{who}: L must be a LinearOperator, a 2-D tensor or None.")
    if L.in_shape != op.in_shape:
        raise ValueError(
            f"{who}: L acts on {L.in_shape} but A on {op.in_shape}; L must map A's input space."
        )
    if L._rmatvec is None and not L.symmetric:
        raise ValueError(f"{who}: L has no transpose; build it with rmatvec=(z ↦ Lᵀz).")
    return L


def solve_tikhonov(
    A,
    b: torch.Tensor,
    lam: float,
    *,
    L=None,
    rtol: float = 1e-10,
    maxiter: int | None = None,
    batch_dims: int = 0,
) -> TikhonovResult:
    r"""Solve ``min_x ‖Ax − b‖² + λ²‖Lx‖²`` (``L = I`` by default).

    With dense ``A`` (and ``L``) the stacked least-squares problem
    ``min ‖[A; λL]x − [b; 0]‖`` is solved directly (QR); otherwise the normal equations
    ``(AᵀA + λ²LᵀL) x = Aᵀb`` are solved matrix-free by CG (relative residual ``rtol``).

    Args:
        A: a 2-D tensor ``(m, n)`` or a :class:`LinearOperator` with ``rmatvec``.
        b: ``(*batch, *A.out_shape)``.
        lam: λ ≥ 0 (``λ = 0`` needs ``A`` of full column rank).
        L: the regularization operator (a :class:`LinearOperator` on ``A.in_shape`` with
            ``rmatvec``, or a 2-D tensor ``(p, n)``), or None for the identity.
        rtol, maxiter: CG's tolerance and iteration cap (matrix-free path).
        batch_dims: leading batch dimensions of ``b`` (one system each).

    Returns:
        :class:`TikhonovResult`.

    Raises:
        ValueError: shape mismatches, non-finite ``b``, negative λ.
        TypeError: ``A`` or ``L`` of the wrong kind.

    Reference:
        Tikhonov & Arsenin, *Solutions of Ill-Posed Problems* (1977); Hansen, *Rank-Deficient
        and Discrete Ill-Posed Problems* (SIAM 1998), ch. 5.

    Example:
        >>> A = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> solve_tikhonov(A, torch.tensor([1.0, 2.0], dtype=torch.float64), 1.0).x
        tensor([0.5000, 0.8000], dtype=torch.float64)
    """
    who = "solve_tikhonov"
    op = _as_operator(A, who)
    batch = _check_rhs(op, b, batch_dims, who)
    lam = check_finite_real("lam", lam, nonnegative=True, who=who)
    L = _check_L(L, op, who)
    n = math.prod(op.in_shape)
    if isinstance(A, torch.Tensor) and (L is None or isinstance(L, torch.Tensor)):
        Lm = torch.eye(n, dtype=A.dtype, device=A.device) if L is None else L.to(A.dtype)
        M = torch.cat([A, lam * Lm], dim=0)
        rhs = b.reshape(-1, A.shape[0]).T
        rhs = torch.cat([rhs, rhs.new_zeros(Lm.shape[0], rhs.shape[1])], dim=0)
        Q, R = torch.linalg.qr(M)
        x = torch.linalg.solve_triangular(R, Q.T @ rhs, upper=True).T
        return TikhonovResult(x.reshape(*batch, n), CGStatus.CONVERGED, 0, "direct")
    Lop = None if L is None else _as_operator(L, who)

    def normal(x):
        y = op.rmv(op.mv(x))
        if lam > 0:
            y = y + lam**2 * (x if Lop is None else Lop.rmv(Lop.mv(x)))
        return y

    apply = torch.vmap(normal) if batch_dims else normal
    rhs = (torch.vmap(op.rmv) if batch_dims else op.rmv)(b)
    sol = cg(apply, rhs, rtol=rtol, maxiter=maxiter, batch_dims=batch_dims)
    return TikhonovResult(sol.x, sol.status, sol.iterations, "cg")
