"""A value function written as a known baseline plus a trained correction."""

from __future__ import annotations

from ._value import ValueFunction, ValueJet

__all__ = ["ResidualValue"]


class ResidualValue(ValueFunction):
    r"""Φ(x, t) = Φ_base(x, t) + Φ_net(x, t): a closed-form baseline plus a network.

    The jet (Φ, ∇Φ, ∂ₜΦ, ΔΦ or ∇²Φ) is the sum of the two jets, so every solver and loss
    accepts it; only the network's parameters are trained. A baseline that carries the stiff
    part of the solution (e.g. the obstacle-free Riccati value of a problem with a large
    terminal weight, :meth:`StochasticObstacle.baseline`) leaves the network the smooth
    correction (here the obstacle's).

    Args:
        base: a :class:`ValueFunction` without trainable parameters (e.g. :class:`LQRValue`).
        net: a :class:`ValueFunction` of the same dimension (e.g. :class:`ValueNetwork`).

    Raises:
        ValueError: the dimensions differ.

    Reference: the residual (control-variate) form of a value function; Li, Verma, Ruthotto,
    arXiv 2209.13104, use the plain network.

    Example:
        >>> import torch
        >>> from odeflow.control import LQRValue, ValueNetwork
        >>> phi = ResidualValue(LQRValue(2, Qf=1.0), ValueNetwork(2, width=4).double())
        >>> phi.jet(torch.zeros(3, 2, dtype=torch.float64), 0.5, "laplacian").laplacian.shape
        torch.Size([3])
    """

    def __init__(self, base: ValueFunction, net: ValueFunction):
        super().__init__()
        if getattr(base, "dim", None) != getattr(net, "dim", None):
            raise ValueError(
                f"base (dim={getattr(base, 'dim', None)}) and net "
                f"(dim={getattr(net, 'dim', None)}) must have the same dimension"
            )
        self.dim = net.dim
        self.base = base
        self.net = net
        for p in self.base.parameters():
            p.requires_grad_(False)

    def jet(self, x, t, second=None) -> ValueJet:
        a, b = self.base.jet(x, t, second), self.net.jet(x, t, second)
        return ValueJet(*(None if u is None else u + v for u, v in zip(a, b, strict=True)))
