"""Elementwise activations that know their first and second derivatives.

Each activation is a stateless :class:`torch.nn.Module`: ``act(z)`` is the value and
``act.derivatives(z)`` returns ``(σ(z), σ′(z), σ″(z))`` computed with plain torch ops, so
autograd through them (weight gradients of ∇f and Δf) is exact.
"""

from __future__ import annotations

import abc
import math

import torch
from torch import nn

__all__ = [
    "Activation",
    "Identity",
    "LogCosh",
    "SiLU",
    "Sigmoid",
    "Softplus",
    "Square",
    "Tanh",
]

_LOG2 = math.log(2.0)


class Activation(nn.Module, abc.ABC):
    r"""Base class of the elementwise activations σ used by the derivative blocks.

    Subclasses implement :meth:`derivatives` returning ``(σ(z), σ′(z), σ″(z))``; ``forward``
    returns σ(z). Activations hold no state between calls.

    Example:
        >>> s, ds, d2s = Tanh().derivatives(torch.zeros(2))
        >>> ds.tolist()
        [1.0, 1.0]
    """

    @abc.abstractmethod
    def derivatives(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(σ(z), σ′(z), σ″(z))``, each with the shape of ``z``."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.derivatives(z)[0]


class LogCosh(Activation):
    r"""σ(z) = log(2 cosh z) = log(e^z + e^{−z}), computed as ``logaddexp(z, −z)``.

    σ′(z) = tanh z, σ″(z) = 1 − tanh² z. ``logaddexp`` is stable for large |z| and, unlike
    the form ``|z| + log1p(exp(−2|z|))``, smooth under autograd at z = 0 (the kink of |z|
    gave autograd σ″(0) = 0 instead of 1, so torch.func through ``forward`` was wrong there).
    This is OT-Flow's activation (the antiderivative of tanh); see Onken et al., "OT-Flow:
    Fast and Accurate Continuous Normalizing Flows via Optimal Transport", arXiv:2006.00104.

    Example:
        >>> round(float(LogCosh()(torch.tensor(0.0))), 6) == round(math.log(2.0), 6)
        True
    """

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.logaddexp(z, -z)

    def derivatives(self, z):
        t = torch.tanh(z)
        return self.forward(z), t, 1.0 - t * t


class Tanh(Activation):
    r"""σ(z) = tanh z, σ′ = 1 − tanh², σ″ = −2 tanh (1 − tanh²).

    Example:
        >>> float(Tanh()(torch.tensor(0.0)))
        0.0
    """

    def forward(self, z):
        return torch.tanh(z)

    def derivatives(self, z):
        t = torch.tanh(z)
        d1 = 1.0 - t * t
        return t, d1, -2.0 * t * d1


class Softplus(Activation):
    r"""σ(z) = log(1 + e^z), computed as ``logaddexp(z, 0)``.

    σ′ = sigmoid s, σ″ = s(1 − s). (torch's ``softplus`` switches to z above a threshold, which
    is not the function whose derivatives are σ′, σ″; ``logaddexp`` is stable and exact
    everywhere, and smooth under autograd at z = 0, where the form
    ``max(z, 0) + log1p(exp(−|z|))`` gave autograd σ′(0) = 1 and σ″(0) = 0.) Convex
    and nondecreasing: the default activation of :class:`ICNN`.

    Example:
        >>> round(float(Softplus()(torch.tensor(0.0))), 6) == round(math.log(2.0), 6)
        True
    """

    def forward(self, z):
        return torch.logaddexp(z, torch.zeros_like(z))

    def derivatives(self, z):
        s = torch.sigmoid(z)
        return self.forward(z), s, s * (1.0 - s)


class Sigmoid(Activation):
    r"""σ(z) = 1/(1 + e^{−z}), σ′ = s(1 − s), σ″ = s(1 − s)(1 − 2s).

    Example:
        >>> float(Sigmoid()(torch.tensor(0.0)))
        0.5
    """

    def forward(self, z):
        return torch.sigmoid(z)

    def derivatives(self, z):
        s = torch.sigmoid(z)
        d1 = s * (1.0 - s)
        return s, d1, d1 * (1.0 - 2.0 * s)


class SiLU(Activation):
    r"""σ(z) = z·s(z) with s the sigmoid; σ′ = s + z s(1 − s), σ″ = s(1 − s)(2 + z(1 − 2s)).

    Example:
        >>> float(SiLU()(torch.tensor(0.0)))
        0.0
    """

    def forward(self, z):
        return nn.functional.silu(z)

    def derivatives(self, z):
        s = torch.sigmoid(z)
        q = s * (1.0 - s)
        return nn.functional.silu(z), s + z * q, q * (2.0 + z * (1.0 - 2.0 * s))


class Square(Activation):
    r"""The quadratic activation σ(z) = ½ z², σ′ = z, σ″ = 1.

    Example:
        >>> float(Square()(torch.tensor(2.0)))
        2.0
    """

    def forward(self, z):
        return 0.5 * z * z

    def derivatives(self, z):
        return 0.5 * z * z, z, torch.ones_like(z)


class Identity(Activation):
    r"""σ(z) = z, σ′ = 1, σ″ = 0.

    Example:
        >>> float(Identity()(torch.tensor(3.0)))
        3.0
    """

    def forward(self, z):
        return z

    def derivatives(self, z):
        return z, torch.ones_like(z), torch.zeros_like(z)
