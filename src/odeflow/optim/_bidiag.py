r"""Golub–Kahan bidiagonalization of a matrix-free operator, batched over right-hand sides.

``β₁u₁ = b``, ``α₁v₁ = Aᵀu₁`` and for ``k = 1, 2, …``

.. math::
    β_{k+1} u_{k+1} = A v_k − α_k u_k, \qquad α_{k+1} v_{k+1} = Aᵀ u_{k+1} − β_{k+1} v_k,

so that ``A V_k = U_{k+1} B_k`` with ``B_k`` the ``(k+1)×k`` lower bidiagonal matrix of the
``α``'s (diagonal) and ``β``'s (subdiagonal). In floating point the plain recurrence loses
the orthogonality of ``U`` and ``V`` as soon as Ritz values converge; full
reorthogonalization (classical Gram–Schmidt twice) keeps it at round-off, partial
reorthogonalization (Simon's ω-recurrence, as adapted to the bidiagonalization by Larsen)
reorthogonalizes only when the estimated loss exceeds ``√ε`` (semi-orthogonality).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch

from ._operators import LinearOperator, MatrixOperator

__all__ = ["Bidiagonalization", "Reorthogonalization", "golub_kahan"]


class Reorthogonalization(enum.Enum):
    """How the Krylov bases are kept orthogonal: ``NONE``, ``FULL`` or ``PARTIAL``."""

    NONE = "none"
    FULL = "full"
    PARTIAL = "partial"


def _as_reorth(value) -> Reorthogonalization:
    if isinstance(value, Reorthogonalization):
        return value
    try:
        return Reorthogonalization(value)
    except ValueError:
        raise ValueError(
            f"reorth must be one of 'full', 'partial', 'none' (or a Reorthogonalization), got "
            f"{value!r}."
        ) from None


def _as_operator(A, who: str) -> LinearOperator:
    if isinstance(A, LinearOperator):
        return A
    if isinstance(A, torch.Tensor):
        if A.ndim != 2:
            raise ValueError(f"{who}: a dense A must be a 2-D tensor (m, n), got {tuple(A.shape)}.")
        return MatrixOperator(A)
    raise TypeError(
        f"{who}: A must be a LinearOperator (with rmatvec) or a 2-D tensor, got {type(A).__name__}."
    )


def _check_rhs(A: LinearOperator, b: torch.Tensor, batch_dims: int, who: str) -> tuple[int, ...]:
    """Validate ``b`` of shape ``(*batch, *A.out_shape)``; return the batch shape."""
    if not isinstance(b, torch.Tensor) or not b.is_floating_point():
        raise TypeError(f"{who}: b must be a floating-point tensor (float32 or float64).")
    if isinstance(batch_dims, bool) or not isinstance(batch_dims, int) or batch_dims < 0:
        raise ValueError(f"{who}: batch_dims must be an integer >= 0, got {batch_dims!r}.")
    if tuple(b.shape[batch_dims:]) != A.out_shape:
        raise ValueError(
            f"{who}: b has shape {tuple(b.shape)}; with batch_dims={batch_dims} each right-hand "
            f"side has shape {tuple(b.shape[batch_dims:])}, but A maps {A.in_shape} -> "
            f"{A.out_shape}. Pass b of shape (*batch, *A.out_shape)."
        )
    if not bool(torch.isfinite(b).all()):
        raise ValueError(f"{who}: b contains NaN or Inf; clean the data first.")
    if A._rmatvec is None and not A.symmetric:
        raise ValueError(
            f"{who}: A has no transpose; build the LinearOperator with rmatvec=(y ↦ Aᵀy)."
        )
    return tuple(b.shape[:batch_dims])


@dataclass
class Bidiagonalization:
    r"""Result of :func:`golub_kahan` for ``nb`` right-hand sides (flattened batch).

    Attributes:
        U: left basis ``(nb, k+1, m)`` (``m = prod(A.out_shape)``).
        V: right basis ``(nb, k+1, n)``: ``v_1 … v_{k+1}`` (``v_{k+1}`` closes the step).
        alphas: ``(nb, k+1)``: ``α_1 … α_{k+1}``.
        betas: ``(nb, k+1)``: ``β_1 … β_{k+1}``.
        steps: ``k``.
        reorthogonalizations: how many vectors were reorthogonalized.
    """

    U: torch.Tensor
    V: torch.Tensor
    alphas: torch.Tensor
    betas: torch.Tensor
    steps: int
    reorthogonalizations: int = 0

    def B(self) -> torch.Tensor:
        """The lower bidiagonal ``B_k``, shape ``(nb, k+1, k)``."""
        return lower_bidiagonal(self.alphas[:, : self.steps], self.betas[:, 1 : self.steps + 1])


def lower_bidiagonal(alphas: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """``(nb, k+1, k)`` with ``alphas (nb, k)`` on the diagonal, ``betas (nb, k)`` below it."""
    nb, k = alphas.shape
    B = alphas.new_zeros(nb, k + 1, k)
    idx = torch.arange(k, device=alphas.device)
    B[:, idx, idx] = alphas
    B[:, idx + 1, idx] = betas
    return B


class _GolubKahan:
    """The incremental recurrence (internal): ``start`` then ``step`` k times."""

    def __init__(self, A: LinearOperator, b: torch.Tensor, batch_dims: int, reorth, capacity: int):
        self.A = A
        self.reorth = _as_reorth(reorth)
        self.nb = max(math.prod(b.shape[:batch_dims]), 1)
        self.batched = batch_dims > 0
        self.eps = torch.finfo(b.dtype).eps
        rb = b.reshape(self.nb, -1)
        m, n = rb.shape[1], math.prod(A.in_shape)
        self.U = rb.new_zeros(self.nb, capacity + 1, m)
        self.V = rb.new_zeros(self.nb, capacity + 1, n)
        self.alphas = rb.new_zeros(self.nb, capacity + 1)
        self.betas = rb.new_zeros(self.nb, capacity + 1)
        self.k = 0
        self.count = 0
        self.anorm = 0.0
        self.mu = rb.new_zeros(capacity + 2)  # estimates |u_{k+1}ᵀ u_j|, worst over the batch
        self.nu = rb.new_zeros(capacity + 2)  # estimates |v_{k+1}ᵀ v_j|
        self.force = False
        beta = torch.linalg.vector_norm(rb, dim=1)
        self.betas[:, 0] = beta
        self.U[:, 0] = rb / torch.where(beta > 0, beta, 1.0)[:, None]
        w = self._rmv(self.U[:, 0])
        alpha = torch.linalg.vector_norm(w, dim=1)
        self.alphas[:, 0] = alpha
        self.V[:, 0] = w / torch.where(alpha > 0, alpha, 1.0)[:, None]
        self.anorm = float(alpha.max())

    def _apply(self, f, x, shape_in):
        if self.batched:
            return torch.vmap(f)(x.reshape(self.nb, *shape_in)).reshape(self.nb, -1)
        return f(x.reshape(shape_in)).reshape(1, -1)

    def _mv(self, v):
        return self._apply(self.A.mv, v, self.A.in_shape)

    def _rmv(self, u):
        return self._apply(self.A.rmv, u, self.A.out_shape)

    @staticmethod
    def _cgs2(w, Q):
        """Classical Gram–Schmidt twice against the rows of ``Q (nb, j, d)``."""
        for _ in range(2):
            w = w - torch.einsum("bj,bjd->bd", torch.einsum("bjd,bd->bj", Q, w), Q)
        return w

    def step(self) -> None:
        """Extend the bidiagonalization by one step (``k → k+1``)."""
        k = self.k
        a = self.alphas[:, k]
        w = self._mv(self.V[:, k]) - a[:, None] * self.U[:, k]
        w = self._orthogonalize(w, self.U[:, : k + 1], "u")
        beta = torch.linalg.vector_norm(w, dim=1)
        self.betas[:, k + 1] = beta
        self.U[:, k + 1] = w / torch.where(beta > 0, beta, 1.0)[:, None]
        z = self._rmv(self.U[:, k + 1]) - beta[:, None] * self.V[:, k]
        z = self._orthogonalize(z, self.V[:, : k + 1], "v")
        alpha = torch.linalg.vector_norm(z, dim=1)
        self.alphas[:, k + 1] = alpha
        self.V[:, k + 1] = z / torch.where(alpha > 0, alpha, 1.0)[:, None]
        self.anorm = max(self.anorm, float(alpha.max()), float(beta.max()))
        self.k = k + 1

    def _orthogonalize(self, w, Q, which):
        if self.reorth is Reorthogonalization.FULL:
            self.count += 1
            return self._cgs2(w, Q)
        if self.reorth is Reorthogonalization.NONE:
            return w
        # partial: estimate the loss of orthogonality of the new vector; reorthogonalize it
        # (and the next vector) when the estimate exceeds √ε.
        j = Q.shape[1]
        norm = float(torch.linalg.vector_norm(w, dim=1).min())
        al, be = self.alphas[:, :j].amax(0), self.betas[:, : j + 1].amax(0)
        if which == "u":  # μ_{k+1,i} from ν_{k,·}, μ_{k,·}
            est = al * self.nu[:j] + be[:j] * torch.cat([self.nu.new_zeros(1), self.nu[: j - 1]])
            est = est + self.alphas[:, j - 1].amax() * self.mu[:j]
        else:  # ν_{k+1,i} from μ_{k+1,·}, ν_{k,·}
            est = be[1 : j + 1] * self.mu[1 : j + 1] + al * self.mu[:j]
            est = est + self.betas[:, j].amax() * self.nu[:j]
        est = est / max(norm, 1e-300) + self.eps * self.anorm / max(norm, 1e-300)
        est[j - 1] = self.eps  # local orthogonality is kept by the recurrence itself
        if self.force or float(est.max()) > math.sqrt(self.eps):
            w = self._cgs2(w, Q)
            self.count += 1
            est = torch.full_like(est, self.eps)
            self.force = not self.force  # the next vector too (Simon's rule)
        target = self.mu if which == "u" else self.nu
        target[:j] = est
        return w

    def result(self) -> Bidiagonalization:
        k = self.k
        return Bidiagonalization(
            U=self.U[:, : k + 1],
            V=self.V[:, : k + 1],
            alphas=self.alphas[:, : k + 1],
            betas=self.betas[:, : k + 1],
            steps=k,
            reorthogonalizations=self.count,
        )


def golub_kahan(
    A: LinearOperator | torch.Tensor,
    b: torch.Tensor,
    steps: int,
    *,
    reorth: str | Reorthogonalization = "full",
    batch_dims: int = 0,
) -> Bidiagonalization:
    r"""Golub–Kahan (lower) bidiagonalization: orthonormal ``U_{k+1}``, ``V_k`` with
    ``A V_k = U_{k+1} B_k`` and ``β₁U_{k+1}e₁ = b``.

    The recurrence is in the module docstring. ``reorth="full"`` orthogonalizes each new
    vector against all previous ones (Gram–Schmidt twice: ``‖UᵀU − I‖`` stays at round-off);
    ``"partial"`` does so only when Simon's ω-recurrence estimate of the loss of
    orthogonality exceeds ``√ε`` (and for the following vector), keeping the bases
    semi-orthogonal at a fraction of the cost; ``"none"`` runs the plain recurrence.

    Args:
        A: the operator ``R^{in_shape} → R^{out_shape}`` (needs ``rmatvec``) or a 2-D tensor.
        b: ``(*batch, *A.out_shape)``; with ``batch_dims > 0`` each right-hand side gets its
            own bidiagonalization (``A`` is applied with ``torch.vmap``).
        steps: ``k ≥ 1``.
        reorth: ``"full"``, ``"partial"`` or ``"none"``.
        batch_dims: number of leading batch dimensions of ``b``.

    Returns:
        :class:`Bidiagonalization` (bases flattened to ``(nb, ·, m)`` and ``(nb, ·, n)``).

    Raises:
        ValueError: ``b`` does not match ``A.out_shape``, is not finite, ``steps < 1``.
        TypeError: ``A`` of the wrong kind.

    Reference:
        Golub & Kahan, "Calculating the singular values and pseudo-inverse of a matrix",
        SIAM J. Numer. Anal. B 2 (1965); Simon, "The Lanczos algorithm with partial
        reorthogonalization", Math. Comp. 42 (1984); Larsen, "Lanczos bidiagonalization with
        partial reorthogonalization", DAIMI PB-537 (1998).

    Example:
        >>> A = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
        >>> gk = golub_kahan(A, torch.ones(3, dtype=torch.float64), 2)
        >>> V, U = gk.V[0, :2], gk.U[0]
        >>> bool(torch.allclose(A @ V.T, U.T @ gk.B()[0]))
        True
    """
    op = _as_operator(A, "golub_kahan")
    _check_rhs(op, b, batch_dims, "golub_kahan")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"golub_kahan: steps must be a positive integer, got {steps!r}.")
    gk = _GolubKahan(op, b, batch_dims, reorth, steps)
    for _ in range(steps):
        gk.step()
    return gk.result()
