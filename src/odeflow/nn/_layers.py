"""Layers as vector fields ``f(t, y; θ(t))`` with time-parameterized weights.

Every layer is an ``nn.Module`` with ``forward(t, y)``, so it can be handed to
:func:`odeflow.odeint` directly or integrated by the blocks of :mod:`odeflow.nn`. Its weights
are ``θ(t) = Σ_k θ_k φ_k(t/T)`` in a :class:`~odeflow.nn.TimeBasis` (default: one constant
piece, i.e. weights constant in time); the coefficients ``θ_k`` are the parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._basis import TimeBasis, get_basis
from ._operators import Operator, get_operator

__all__ = ["AntisymmetricLayer", "ParabolicLayer", "StandardLayer", "VectorFieldLayer"]

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": F.relu,
    "softplus": F.softplus,
    "sigmoid": torch.sigmoid,
    "identity": lambda x: x,
}


# σ'(u) from u and σ(u), for the hand-written vector–Jacobian products
_DERIVATIVES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "tanh": lambda u, s: 1.0 - s * s,
    "relu": lambda u, s: (u > 0).to(u.dtype),
    "softplus": lambda u, s: torch.sigmoid(u),
    "sigmoid": lambda u, s: s * (1.0 - s),
    "identity": lambda u, s: torch.ones_like(u),
}


def _activation(act: str | Callable) -> Callable[[torch.Tensor], torch.Tensor]:
    if callable(act):
        return act
    if act not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; valid names are: {', '.join(_ACTIVATIONS)}.")
    return _ACTIVATIONS[act]


def normalize(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Parameter-free normalization ``N``: zero mean, unit variance per sample over the features
    (dense) or per sample and channel over the pixels (images; instance normalization)."""
    dims = tuple(range(2, x.ndim)) if x.ndim > 2 else (1,)
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


class VectorFieldLayer(nn.Module):
    r"""Base class of the layers: ``forward(t, y) = field(y, θ(t))``.

    Subclasses register their weights with :meth:`_add_weight` and implement :meth:`field`.
    ``reversible`` marks layers the reversible blocks accept (deterministic, stateless).

    Args:
        operator: the layer's linear operator ``K`` (see :mod:`odeflow.nn` operators).
        width: channels (images) or features of the state.
        basis: a :class:`TimeBasis` or its name (``constant, linear, legendre, monomial``).
        basis_size: pieces, nodes or degree of the basis.
        horizon: the final time ``T`` of the weights' time grid (``s = t/T``).
        activation: ``"tanh"``, ``"relu"``, ``"softplus"``, ``"sigmoid"``, ``"identity"`` or a
            callable.
    """

    reversible = True

    def __init__(
        self,
        operator: Operator,
        width: int,
        *,
        basis: str | TimeBasis | None = None,
        basis_size: int | None = None,
        horizon: float = 1.0,
        activation: str | Callable = "tanh",
    ):
        super().__init__()
        if not (isinstance(horizon, (int, float)) and horizon > 0 and horizon < float("inf")):
            raise ValueError(f"{type(self).__name__}: horizon must be positive, got {horizon!r}.")
        self.operator = operator
        self.width = width
        self.basis = get_basis(basis, basis_size)
        self.horizon = float(horizon)
        self.activation = _activation(activation)
        self._activation_derivative = (
            _DERIVATIVES.get(activation) if isinstance(activation, str) else None
        )
        self._weight_names: list[str] = []

    def _add_weight(self, name: str, value: torch.Tensor) -> None:
        """Register the coefficients of a weight that starts constant in time at ``value``."""
        nb = self.basis.size
        if self.basis.partition_of_unity:
            coeff = value.unsqueeze(0).repeat(nb, *([1] * value.ndim))
        else:
            coeff = torch.zeros(nb, *value.shape, dtype=value.dtype)
            coeff[0] = value
        self.register_parameter(name, nn.Parameter(coeff))
        self._weight_names.append(name)

    def basis_values(self, t: torch.Tensor | float) -> torch.Tensor:
        """``φ_k(t/T)`` for all k, shape ``(basis.size,)``, in the weights' dtype and device."""
        p = getattr(self, self._weight_names[0])
        if isinstance(t, torch.Tensor):
            s = t.detach().reshape(-1)[:1].to(torch.float64 if t.device.type == "cpu" else t.dtype)
        else:
            s = torch.tensor([float(t)], dtype=torch.float64)
        return self.basis(s / self.horizon)[0].to(device=p.device, dtype=p.dtype)

    def weights(self, t: torch.Tensor | float) -> dict[str, torch.Tensor]:
        """The weights at time ``t``: ``{name: Σ_k φ_k(t/T) θ_k}``."""
        return self.weights_from(self.basis_values(t))

    def weights_from(self, phi: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weights for given basis values ``phi: (basis.size,)``."""
        if phi.numel() == 1:
            return {n: getattr(self, n)[0] * phi[0] for n in self._weight_names}
        out = {}
        for n in self._weight_names:
            c = getattr(self, n)
            out[n] = (phi @ c.reshape(c.shape[0], -1)).reshape(c.shape[1:])
        return out

    def basis_table(self, times) -> torch.Tensor:
        """``φ_k(t_i/T)`` for a list of times, ``(len(times), basis.size)``, weights' dtype."""
        p = getattr(self, self._weight_names[0])
        s = torch.tensor([float(t) / self.horizon for t in times], dtype=torch.float64)
        return self.basis(s).to(device=p.device, dtype=p.dtype)

    def field(
        self, y: torch.Tensor, w: dict[str, torch.Tensor]
    ) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError  # abstract

    def check(self, y: torch.Tensor) -> None:
        """Raise a clear ``ValueError``/``TypeError`` for a state of the wrong shape or type."""
        self.operator.check(y, type(self).__name__, self.width)

    def forward(self, t: torch.Tensor | float, y: torch.Tensor) -> torch.Tensor:
        """``f(t, y)``; ``y: (batch, width)`` or ``(batch, width, height, width)``."""
        self.check(y)
        return self.field(y, self.weights(t))

    def extra_repr(self) -> str:
        return f"width={self.width}, basis={self.basis!r}, horizon={self.horizon}"


class StandardLayer(VectorFieldLayer):
    r"""The ResNet layer ``f(t, y) = σ(N(K(t) y + b(t)))`` with optional normalization ``N``.

    Args:
        width: features (``operator="dense"``) or channels (``"conv"``, ``"lean"``).
        operator: ``"dense"``, ``"conv"`` (``kernel_size`` × ``kernel_size``), ``"lean"``
            (5-point stencil + 1×1) or an :class:`~odeflow.nn.Operator` from width to width.
        norm: apply the parameter-free :func:`normalize` before σ.
        basis, basis_size, horizon, activation: see :class:`VectorFieldLayer`.

    Reference: He et al., "Deep residual learning for image recognition" (arXiv:1512.03385);
    Haber & Ruthotto, "Stable architectures for deep neural networks" (arXiv:1705.03341).

    Example:
        >>> layer = StandardLayer(4)
        >>> layer(0.0, torch.zeros(2, 4)).shape
        torch.Size([2, 4])
    """

    def __init__(self, width, *, operator="dense", kernel_size=3, norm=False, **kw):
        op = get_operator(width, width, operator, kernel_size)
        if op.out_width != width:
            raise ValueError(f"StandardLayer: the operator must map width {width} to itself.")
        super().__init__(op, width, **kw)
        self.norm = bool(norm)
        for name, value in op.init().items():
            self._add_weight(name, value)
        self._add_weight("bias", torch.zeros(op.bias_shape(width)))

    def field(self, y, w):
        z = self.operator.apply(y, w) + w["bias"]
        return self.activation(normalize(z) if self.norm else z)


class AntisymmetricLayer(VectorFieldLayer):
    r"""The stable layer ``f(t, y) = σ((K − Kᵀ − γ I) y + b)``.

    ``K − Kᵀ`` is antisymmetric, so the Jacobian ``diag(σ')(K − Kᵀ)`` is similar to the
    antisymmetric ``D^{1/2}(K − Kᵀ)D^{1/2}`` (``D = diag(σ') ≥ 0``): its eigenvalues are imaginary
    and forward propagation neither explodes nor vanishes; ``γ ≥ 0`` adds a little damping.

    Args:
        width: features or channels; ``operator``: ``"dense"``, ``"conv"`` or ``"lean"``.
        gamma: the damping ``γ ≥ 0``.

    Reference: Haber & Ruthotto, "Stable architectures for deep neural networks"
    (arXiv:1705.03341).

    Example:
        >>> layer = AntisymmetricLayer(3, gamma=0.0).double()
        >>> J = torch.autograd.functional.jacobian(lambda y: layer(0.0, y), torch.zeros(1, 3,
        ...     dtype=torch.float64)).reshape(3, 3)
        >>> bool(torch.allclose(J, -J.T))
        True
    """

    def __init__(self, width, *, operator="dense", kernel_size=3, gamma=0.0, **kw):
        if not gamma >= 0:
            raise ValueError(f"AntisymmetricLayer: gamma must be >= 0, got {gamma!r}.")
        op = get_operator(width, width, operator, kernel_size)
        super().__init__(op, width, **kw)
        self.gamma = float(gamma)
        for name, value in op.init().items():
            self._add_weight(name, value)
        self._add_weight("bias", torch.zeros(op.bias_shape(width)))

    def field(self, y, w):
        z = self.operator.apply(y, w) - self.operator.adjoint(y, w) - self.gamma * y
        return self.activation(z + w["bias"])


class ParabolicLayer(VectorFieldLayer):
    r"""The "doubleSym" layer ``f(t, y) = sign · Kᵀ σ(N(K y + b))`` (``sign = −1``: parabolic).

    With ``sign = −1`` it is the gradient flow of ``Σ ψ(K y + b)`` (``ψ' = σ``): for monotone σ
    with ``0 ≤ σ' ≤ 1`` (tanh, ReLU) and no normalization, the forward Euler step
    ``y + h f(y)`` is non-expansive when ``h ≤ 2/‖K‖²``. ``sign = +1`` gives the stream
    ``∂H/∂z`` of a Hamiltonian network, and as an acceleration ``y'' = f(y)`` with
    :class:`~odeflow.nn.LeapfrogBlock` the hyperbolic network.

    Args:
        width: features or channels of ``y``; ``hidden``: output width of ``K`` (default ``width``).
        operator: ``"dense"``, ``"conv"`` or ``"lean"``; ``norm``: normalization ``N``.
        sign: ``−1`` (parabolic, default) or ``+1``.

    Reference: Ruthotto & Haber, "Deep neural networks motivated by partial differential
    equations" (arXiv:1804.04272).

    Example:
        >>> layer = ParabolicLayer(4, hidden=6)
        >>> layer(0.0, torch.ones(2, 4)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self, width, hidden=None, *, operator="dense", kernel_size=3, norm=False, sign=-1.0, **kw
    ):
        if sign not in (-1, 1, -1.0, 1.0):
            raise ValueError(f"ParabolicLayer: sign must be -1 or +1, got {sign!r}.")
        op = get_operator(width, hidden, operator, kernel_size)
        super().__init__(op, width, **kw)
        self.norm = bool(norm)
        self.sign = float(sign)
        for name, value in op.init().items():
            self._add_weight(name, value)
        self._add_weight("bias", torch.zeros(op.bias_shape(op.out_width)))

    def field(self, y, w):
        z = self.operator.apply(y, w) + w["bias"]
        z = self.activation(normalize(z) if self.norm else z)
        return self.sign * self.operator.adjoint(z, w)

    def field_vjp(self, y, w, a):
        r"""Hand-written VJP of ``f = s Kᵀσ(u)``, ``u = K y + b``: with ``g_u = s (K a) ⊙ σ'(u)``,
        ``(∂f/∂y)ᵀa = Kᵀ g_u``, ``∂⟨a, f⟩/∂K = s ∂⟨σ, K a⟩/∂K + ∂⟨g_u, K y⟩/∂K``,
        ``∂⟨a, f⟩/∂b = Σ g_u`` (no normalization; dense or conv operator)."""
        op, deriv = self.operator, self._activation_derivative
        if self.norm or deriv is None:
            return None
        u = op.apply(y, w) + w["bias"]
        s = self.activation(u)
        ka = op.apply(a, w)
        g_u = self.sign * ka * deriv(u, s)
        g1, g2 = op.weight_grad(a, s, w), op.weight_grad(y, g_u, w)
        if g1 is None or g2 is None:
            return None
        grads = {k: self.sign * g1[k] + g2[k] for k in g1}
        grads["bias"] = (
            g_u.sum(dim=0).reshape(w["bias"].shape)
            if g_u.ndim == 2
            else (g_u.sum(dim=(0, 2, 3)).reshape(w["bias"].shape))
        )
        return self.sign * op.adjoint(s, w), op.adjoint(g_u, w), grads
