"""Bases in time for time-parameterized weights θ(t) = Σ_k θ_k φ_k(t/T).

The weight-time grid (the basis) is separate from the state grid (the integrator's steps), so
the depth of a network and its number of parameters are independent, and a trained block can
be evaluated with another number of steps (depth continuation).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "Legendre",
    "Monomial",
    "PiecewiseConstant",
    "PiecewiseLinear",
    "TimeBasis",
    "get_basis",
]


class TimeBasis:
    r"""A basis ``φ_0 … φ_{n−1}`` of functions on the unit interval ``s = t/T ∈ [0, 1]``.

    Subclasses implement :meth:`_eval`. ``partition_of_unity`` is True when ``Σ_k φ_k ≡ 1``
    (the piecewise bases): a constant weight is then the same value in every coefficient,
    otherwise it is ``φ_0``'s coefficient alone (``φ_0 ≡ 1``).
    """

    name = "basis"
    partition_of_unity = False

    def __init__(self, size: int):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{type(self).__name__}: size must be a positive int, got {size!r}.")
        self.size = size

    @property
    def min_steps(self) -> int:
        """Fewest integrator steps that sample (and so can determine) every coefficient."""
        return self.size

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        """Evaluate all basis functions at ``s`` (shape ``(m,)``, values in [0, 1]) → ``(m, n)``."""
        s = torch.as_tensor(s)
        if s.ndim == 0:
            s = s.reshape(1)
        if not s.is_floating_point():
            s = s.to(torch.get_default_dtype())
        return self._eval(s.clamp(0.0, 1.0))

    def _eval(self, s: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError  # abstract

    _pieces = 1  # intervals on which every φ_k is a polynomial (for exact quadrature)

    def sample_points(self) -> torch.Tensor:
        """Points of [0, 1] where the weights are compared by the time regularizers (float64)."""
        return torch.linspace(0.0, 1.0, 2 * self.size + 1, dtype=torch.float64)

    def gram(self, n_steps: int | None = None) -> torch.Tensor:
        r"""Gram matrix ``G_jk = ∫_0^1 φ_j φ_k ds`` (Gauss–Legendre quadrature per piece), or with
        ``n_steps`` its discrete version on the integrator's step times ``s_i = i/N``,
        ``G = Φᵀ Φ / N`` with ``Φ_ij = φ_j(s_i)``, ``i = 0 … N−1`` (float64)."""
        if n_steps is not None:
            s = torch.arange(n_steps, dtype=torch.float64) / n_steps
            phi = self(s)
            return phi.T @ phi / n_steps
        nodes, weights = np.polynomial.legendre.leggauss(self.size + 2)
        pieces = self._pieces
        s, w = [], []
        for j in range(pieces):  # exact for the piecewise bases and for polynomials
            s.append((j + (nodes + 1) / 2) / pieces)
            w.append(weights / (2 * pieces))
        s_t = torch.as_tensor(np.concatenate(s), dtype=torch.float64)
        w_t = torch.as_tensor(np.concatenate(w), dtype=torch.float64)
        phi = self(s_t)
        return phi.T @ (w_t[:, None] * phi)

    def condition_number(self, n_steps: int | None = None) -> float:
        """2-norm condition number of :meth:`gram` (continuous, or on ``n_steps`` step times)."""
        return float(torch.linalg.cond(self.gram(n_steps)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.size})"


class PiecewiseConstant(TimeBasis):
    r"""``n`` indicator functions of ``[j/n, (j+1)/n)``: with ``n`` equal to the number of steps
    this is the plain ResNet (one weight per layer).

    Example:
        >>> PiecewiseConstant(2)(torch.tensor([0.0, 0.6]))
        tensor([[1., 0.],
                [0., 1.]])
    """

    name = "constant"
    partition_of_unity = True

    @property
    def _pieces(self):
        return self.size

    def _eval(self, s):
        n = self.size
        slack = 8 * n * torch.finfo(s.dtype).eps  # a step time on a piece boundary
        idx = torch.floor(s * n + slack).clamp(0, n - 1).long()
        return torch.nn.functional.one_hot(idx, n).to(s.dtype)

    def sample_points(self):
        return (torch.arange(self.size, dtype=torch.float64) + 0.5) / self.size


class PiecewiseLinear(TimeBasis):
    r"""``n ≥ 2`` hat functions on the nodes ``j/(n−1)`` (linear interpolation of ``n`` weights).

    Example:
        >>> PiecewiseLinear(2)(torch.tensor([0.25]))
        tensor([[0.7500, 0.2500]])
    """

    name = "linear"
    partition_of_unity = True

    @property
    def _pieces(self):
        return self.size - 1

    def __init__(self, size: int):
        super().__init__(size)
        if size < 2:
            raise ValueError(f"PiecewiseLinear: needs at least 2 nodes, got {size}.")

    @property
    def min_steps(self) -> int:
        return self.size - 1

    def _eval(self, s):
        m = self.size - 1
        nodes = torch.arange(self.size, dtype=s.dtype, device=s.device) / m
        return (1.0 - (s[:, None] - nodes[None, :]).abs() * m).clamp(min=0.0)

    def sample_points(self):
        return torch.linspace(0.0, 1.0, self.size, dtype=torch.float64)


class _Polynomial(TimeBasis):
    """A basis of the polynomials of degree <= ``degree`` on [0, 1] (``degree + 1`` functions,
    resolved by at least ``degree`` steps)."""

    def __init__(self, degree: int):
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
            raise ValueError(f"{type(self).__name__}: degree must be an int >= 0, got {degree!r}.")
        super().__init__(degree + 1)
        self.degree = degree

    @property
    def min_steps(self) -> int:
        return max(self.degree, 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(degree={self.degree})"


class Legendre(_Polynomial):
    r"""Orthonormal shifted Legendre polynomials ``√(2k+1) P_k(2s − 1)``, ``k = 0 … degree``.

    Their Gram matrix on [0, 1] is the identity (condition number 1 at every degree), unlike
    the monomials' Hilbert matrix.

    Reference: Queiruga et al., "Continuous-in-depth neural networks" (arXiv:2008.02389),
    weights as expansions in basis functions of depth.

    Example:
        >>> round(Legendre(10).condition_number(), 8)
        1.0
    """

    name = "legendre"

    def _eval(self, s):
        x = 2.0 * s - 1.0
        cols = [torch.ones_like(x)]
        if self.degree >= 1:
            cols.append(x)
        for n in range(1, self.degree):
            cols.append(((2 * n + 1) * x * cols[n] - n * cols[n - 1]) / (n + 1))
        scale = torch.tensor(
            [math.sqrt(2 * k + 1) for k in range(self.size)], dtype=s.dtype, device=s.device
        )
        return torch.stack(cols, dim=-1) * scale


class Monomial(_Polynomial):
    r"""Monomials ``s^k``, ``k = 0 … degree`` (badly conditioned: Hilbert Gram matrix).

    Example:
        >>> Monomial(2)(torch.tensor([0.5]))
        tensor([[1.0000, 0.5000, 0.2500]])
    """

    name = "monomial"

    def _eval(self, s):
        k = torch.arange(self.size, dtype=s.dtype, device=s.device)
        return s[:, None] ** k[None, :]


_BASES = {
    "constant": PiecewiseConstant,
    "linear": PiecewiseLinear,
    "legendre": Legendre,
    "monomial": Monomial,
}


def get_basis(basis: str | TimeBasis | None, size: int | None = None) -> TimeBasis:
    """A :class:`TimeBasis` from a name (``constant, linear, legendre, monomial``) and size.

    ``size`` is the number of pieces (``constant``), of nodes (``linear``) or the degree
    (``legendre``, ``monomial``). ``None`` gives one constant piece (weights constant in time).

    Example:
        >>> get_basis("legendre", 3)
        Legendre(degree=3)
    """
    if basis is None:
        return PiecewiseConstant(1)
    if isinstance(basis, TimeBasis):
        return basis
    if basis not in _BASES:
        raise ValueError(f"unknown basis {basis!r}; valid names are: {', '.join(_BASES)}.")
    if size is None:
        size = 2 if basis == "linear" else 1
    return _BASES[basis](size)
