"""Matrix-free linear operators on tensors of any shape."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = [
    "DiagonalOperator",
    "IdentityOperator",
    "LinearOperator",
    "MatrixOperator",
    "jacobi_preconditioner",
]


def _shape(s: Sequence[int] | torch.Size | int) -> tuple[int, ...]:
    if isinstance(s, int):
        return (int(s),)
    return tuple(int(k) for k in s)


class LinearOperator:
    r"""A matrix-free linear map ``A: R^{in_shape} → R^{out_shape}`` given by a callable.

    The operator is applied to tensors whose trailing dimensions are ``in_shape``; it acts
    as the matrix of size ``(prod(out_shape), prod(in_shape))`` on the flattened tensor.
    Tags ``symmetric`` and ``psd`` (positive semidefinite) are promises the caller makes;
    solvers such as :func:`odeflow.optim.cg` check for them. Operators compose (``A @ B``),
    add (``A + B``), scale (``2.0 * A``) and negate; ``A @ x`` for a tensor ``x`` applies it.

    Args:
        matvec: ``x ↦ A x`` mapping a tensor of shape ``in_shape`` to ``out_shape``.
        in_shape: shape of the input tensor.
        out_shape: shape of the output tensor (defaults to ``in_shape``).
        dtype, device: of the tensors the operator acts on.
        symmetric: ``A = Aᵀ`` (requires ``in_shape == out_shape``).
        psd: ``xᵀAx ≥ 0`` for all x (implies ``symmetric``).
        rmatvec: ``y ↦ Aᵀ y`` if known (otherwise ``A.T`` exists only for symmetric A).
        diagonal: the diagonal of ``A`` as a tensor of shape ``in_shape`` if known (for Jacobi).

    Raises:
        ValueError: if ``symmetric``/``psd`` is claimed for a non-square operator.

    Reference:
        Saad, *Iterative Methods for Sparse Linear Systems* (2003), ch. 1 and 6.

    Example:
        >>> M = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
        >>> A = LinearOperator(lambda x: M @ x, (2,), symmetric=True, psd=True)
        >>> (2.0 * A + A) @ torch.tensor([1.0, 0.0])
        tensor([6., 3.])
    """

    def __init__(
        self,
        matvec: Callable[[torch.Tensor], torch.Tensor],
        in_shape: Sequence[int] | torch.Size | int,
        out_shape: Sequence[int] | torch.Size | int | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        symmetric: bool = False,
        psd: bool = False,
        rmatvec: Callable[[torch.Tensor], torch.Tensor] | None = None,
        diagonal: torch.Tensor | Callable[[], torch.Tensor] | None = None,
    ) -> None:
        self.in_shape = _shape(in_shape)
        self.out_shape = self.in_shape if out_shape is None else _shape(out_shape)
        if (symmetric or psd) and self.in_shape != self.out_shape:
            raise ValueError(
                f"LinearOperator: symmetric/psd claimed but in_shape {self.in_shape} != "
                f"out_shape {self.out_shape}; only square operators can be symmetric."
            )
        self._matvec = matvec
        self._rmatvec = rmatvec
        self._diagonal = diagonal
        self.dtype = dtype
        self.device = None if device is None else torch.device(device)
        self.psd = bool(psd)
        self.symmetric = bool(symmetric or psd)

    @property
    def shape(self) -> tuple[int, int]:
        """The shape of the equivalent matrix, ``(prod(out_shape), prod(in_shape))``."""
        return (math.prod(self.out_shape), math.prod(self.in_shape))

    def mv(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the operator: ``A x``."""
        return self._matvec(x)

    __call__ = mv

    def rmv(self, y: torch.Tensor) -> torch.Tensor:
        """Apply the transpose: ``Aᵀ y``."""
        if self._rmatvec is not None:
            return self._rmatvec(y)
        if self.symmetric:
            return self._matvec(y)
        raise NotImplementedError(
            "LinearOperator.rmv: this operator has no rmatvec; pass rmatvec= when building it."
        )

    @property
    def T(self) -> LinearOperator:
        """The transposed operator."""
        if self.symmetric:
            return self
        return LinearOperator(
            self.rmv,
            self.out_shape,
            self.in_shape,
            dtype=self.dtype,
            device=self.device,
            rmatvec=self._matvec,
        )

    def diagonal(self) -> torch.Tensor:
        """The diagonal of the operator (shape ``in_shape``), if it was supplied."""
        if self._diagonal is None:
            raise NotImplementedError(
                "LinearOperator.diagonal: the diagonal is unknown; pass diagonal= when building "
                "the operator (or estimate it yourself)."
            )
        return self._diagonal() if callable(self._diagonal) else self._diagonal

    def has_diagonal(self) -> bool:
        """Whether :meth:`diagonal` is available."""
        return self._diagonal is not None

    # --- algebra ---------------------------------------------------------------------
    def __matmul__(self, other):
        if isinstance(other, torch.Tensor):
            return self.mv(other)
        if isinstance(other, LinearOperator):
            if other.out_shape != self.in_shape:
                raise ValueError(
                    f"LinearOperator @: cannot compose, inner shapes {self.in_shape} and "
                    f"{other.out_shape} differ."
                )
            rm = None
            if (self._rmatvec is not None or self.symmetric) and (
                other._rmatvec is not None or other.symmetric
            ):
                rm = lambda y: other.rmv(self.rmv(y))  # noqa: E731
            return LinearOperator(
                lambda x: self.mv(other.mv(x)),
                other.in_shape,
                self.out_shape,
                dtype=self.dtype or other.dtype,
                device=self.device or other.device,
                rmatvec=rm,
            )
        return NotImplemented

    def __add__(self, other):
        if not isinstance(other, LinearOperator):
            return NotImplemented
        if other.in_shape != self.in_shape or other.out_shape != self.out_shape:
            raise ValueError(
                f"LinearOperator +: shapes differ ({self.in_shape}->{self.out_shape} vs "
                f"{other.in_shape}->{other.out_shape})."
            )
        diag = None
        if self.has_diagonal() and other.has_diagonal():
            diag = lambda: self.diagonal() + other.diagonal()  # noqa: E731
        rm = None
        if (self._rmatvec is not None or self.symmetric) and (
            other._rmatvec is not None or other.symmetric
        ):
            rm = lambda y: self.rmv(y) + other.rmv(y)  # noqa: E731
        return LinearOperator(
            lambda x: self.mv(x) + other.mv(x),
            self.in_shape,
            self.out_shape,
            dtype=self.dtype or other.dtype,
            device=self.device or other.device,
            symmetric=self.symmetric and other.symmetric,
            psd=self.psd and other.psd,
            rmatvec=rm,
            diagonal=diag,
        )

    def __mul__(self, c):
        if isinstance(c, LinearOperator | torch.Tensor):
            return NotImplemented
        c = float(c)
        diag = (lambda: c * self.diagonal()) if self.has_diagonal() else None
        rm = None
        if self._rmatvec is not None or self.symmetric:
            rm = lambda y: c * self.rmv(y)  # noqa: E731
        return LinearOperator(
            lambda x: c * self.mv(x),
            self.in_shape,
            self.out_shape,
            dtype=self.dtype,
            device=self.device,
            symmetric=self.symmetric,
            psd=self.psd and c >= 0,
            rmatvec=rm,
            diagonal=diag,
        )

    __rmul__ = __mul__

    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        return self + (-other)

    def to_dense(self) -> torch.Tensor:
        """Materialize the matrix ``(prod(out_shape), prod(in_shape))`` (small operators only)."""
        n = math.prod(self.in_shape)
        eye = torch.eye(n, dtype=self.dtype, device=self.device)
        cols = [self.mv(eye[k].reshape(self.in_shape)).reshape(-1) for k in range(n)]
        return torch.stack(cols, dim=1)

    def __repr__(self) -> str:
        tags = [t for t, on in (("symmetric", self.symmetric), ("psd", self.psd)) if on]
        extra = "".join(", " + t for t in tags)
        return f"LinearOperator({self.in_shape} -> {self.out_shape}{extra})"


class DiagonalOperator(LinearOperator):
    r"""The diagonal operator ``x ↦ d ⊙ x`` (elementwise).

    Args:
        d: the diagonal, any shape (the operator's ``in_shape``).

    Example:
        >>> D = DiagonalOperator(torch.tensor([1.0, 2.0]))
        >>> D @ torch.tensor([3.0, 4.0])
        tensor([3., 8.])
    """

    def __init__(self, d: torch.Tensor) -> None:
        if not isinstance(d, torch.Tensor):
            raise TypeError("DiagonalOperator: d must be a tensor.")
        self.d = d
        super().__init__(
            lambda x: d * x,
            d.shape,
            dtype=d.dtype,
            device=d.device,
            symmetric=True,
            psd=bool((d >= 0).all()),
            diagonal=d,
        )


class IdentityOperator(LinearOperator):
    """The identity on tensors of shape ``shape``.

    Example:
        >>> IdentityOperator((3,)) @ torch.ones(3)
        tensor([1., 1., 1.])
    """

    def __init__(self, shape: Sequence[int] | int, *, dtype=None, device=None) -> None:
        s = _shape(shape)
        super().__init__(
            lambda x: x,
            s,
            dtype=dtype,
            device=device,
            symmetric=True,
            psd=True,
            diagonal=lambda: torch.ones(s, dtype=dtype, device=device),
        )


class MatrixOperator(LinearOperator):
    """A dense matrix ``A`` (m, n) as an operator on vectors ``(n,)``.

    Example:
        >>> A = MatrixOperator(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
        >>> A.T @ torch.tensor([1.0, 1.0])
        tensor([1., 3.])
    """

    def __init__(self, A: torch.Tensor, *, symmetric: bool = False, psd: bool = False) -> None:
        if not isinstance(A, torch.Tensor) or A.ndim != 2:
            raise ValueError("MatrixOperator: A must be a 2-D tensor (m, n).")
        self.A = A
        super().__init__(
            lambda x: A @ x,
            (A.shape[1],),
            (A.shape[0],),
            dtype=A.dtype,
            device=A.device,
            symmetric=symmetric,
            psd=psd,
            rmatvec=lambda y: A.mT @ y,
            diagonal=(lambda: torch.diagonal(A)) if A.shape[0] == A.shape[1] else None,
        )


def jacobi_preconditioner(A: LinearOperator, *, floor: float = 0.0) -> DiagonalOperator:
    r"""Jacobi preconditioner ``M = diag(A)^{-1}`` for a symmetric positive definite ``A``.

    Entries of the diagonal at or below ``floor`` (relative to its largest entry) are
    replaced by that floor so that ``M`` stays positive definite.

    Args:
        A: operator with a known diagonal (``A.diagonal()``).
        floor: relative lower bound for diagonal entries (default 0: only exact zeros guarded).

    Returns:
        A :class:`DiagonalOperator` applying ``diag(A)^{-1}``.

    Raises:
        NotImplementedError: if ``A`` has no diagonal.

    Example:
        >>> A = MatrixOperator(torch.tensor([[4.0, 1.0], [1.0, 2.0]]), psd=True)
        >>> jacobi_preconditioner(A) @ torch.ones(2)
        tensor([0.2500, 0.5000])
    """
    d = A.diagonal()
    big = d.abs().amax()
    lo = torch.clamp(big * floor, min=torch.finfo(d.dtype).tiny)
    return DiagonalOperator(1.0 / torch.clamp(d, min=lo))
