"""The continuous adjoint as a gradient policy: :class:`BacksolveAdjoint`."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from torch import Tensor

from .._adaptive_solve import steps_backsolve
from .._problem import _Problem
from ._base import GradientPolicy

__all__ = ["BacksolveAdjoint"]


@dataclass(frozen=True)
class BacksolveAdjoint(GradientPolicy):
    r"""Gradient by the continuous adjoint: solve the adjoint ODE backward in time
    (optimize-then-discretize, Pontryagin; the neural-ODE paper's adjoint method).

    For ``y' = f(t, y, θ)`` and a loss ``L(y(t_0), …, y(t_N))`` the adjoint ``a(t) = ∂L/∂y(t)``
    and the parameter gradient solve, backward from ``t_N`` with ``a(t_N) = ∂L/∂y_N`` and
    ``g(t_N) = 0``,

    .. math::
        a' = -\Big(\frac{∂f}{∂y}\Big)^T a, \qquad g' = -\Big(\frac{∂f}{∂θ}\Big)^T a,
        \qquad a(t_j^-) = a(t_j^+) + ∂L/∂y_j,

    and ``∂L/∂y_0 = a(t_0)``, ``∂L/∂θ = g(t_0)``. The vector–Jacobian products are one
    autograd call per evaluation; the forward pass keeps no graph. This gradient is not the
    exact gradient of the computed solution (that is :class:`DiscreteAdjoint`): it converges
    to the true gradient at the method's order (for fixed steps the difference from the
    discrete adjoint falls as ``h^p``, tested).

    Two ways to know the state on the way back:

    * ``checkpoints=False`` (*backsolve*): ``y`` is re-integrated backward together with
      ``(a, g)`` as one augmented system ``(y, a, g)``, with the forward's method and, for
      an adaptive method, its tolerances (or ``rtol``/``atol`` here) on all three parts.
      Memory: ``O(1)`` in the number of steps. The backward ``y`` is not the forward's: for
      dissipative or stiff fields it can drift far from it (reconstruction error).
    * ``checkpoints=True``: the forward pass stores the state at the start of each step;
      the backward pass re-integrates each step forward from its checkpoint and solves the
      adjoint ODE backward across it with the same method, reading ``y`` from the step's
      dense output (the pair's interpolant, else cubic Hermite: one more evaluation per
      step). No backward reconstruction of ``y``: the stable variant, at the memory of the
      discrete adjoint (one state per step).

    Args:
        checkpoints: re-integrate the state from stored step states (``True``) or backward
            with the adjoint (``False``, default).
        rtol, atol: tolerances of the adjoint solve of the backsolve variant with an
            adaptive method (default: the forward's).
        seminorm: measure the backward solve's error on ``(y, a)`` only, not on the
            parameter integral ``g`` (which no other part reads): Kidger, Chen, Lyons,
            *"Hey, that's not an ODE": faster ODE adjoints via seminorms*, arXiv:2009.09457;
            fewer backward steps at the same forward accuracy.

    Raises:
        ValueError: for a non-positive or non-finite ``rtol``/``atol``.

    Reference:
        Chen, Rubanova, Bettencourt, Duvenaud, *Neural Ordinary Differential Equations*,
        arXiv:1806.07366; Gholami, Keutzer, Biros, *ANODE*, arXiv:1902.10298 (the
        reconstruction error and checkpointing); Zhuang et al., *Adaptive Checkpoint Adjoint*,
        arXiv:2006.02493.

    Example:
        >>> import torch, odeflow
        >>> y0 = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
        >>> t = torch.tensor([0.0, 1.0], dtype=torch.float64)
        >>> ys = odeflow.odeint(lambda t, y: -y, y0, t, method="dopri5", rtol=1e-10,
        ...                     atol=1e-10, gradient=BacksolveAdjoint())
        >>> ys[-1].sum().backward()  # d y(1) / d y0 = e^{-1}
        >>> abs(y0.grad.item() - 0.36787944117144233) < 1e-8
        True
        >>> BacksolveAdjoint(checkpoints=True)
        BacksolveAdjoint(checkpoints=True, rtol=None, atol=None, seminorm=False)
    """

    checkpoints: bool = False
    rtol: float | None = None
    atol: float | None = None
    seminorm: bool = False

    def __post_init__(self) -> None:
        for name in ("checkpoints", "seminorm"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if v is not None and (
                isinstance(v, bool)
                or not isinstance(v, numbers.Real)
                or not (math.isfinite(v) and v > 0)
            ):
                raise ValueError(
                    f"BacksolveAdjoint: {name} must be a positive finite number, got {v!r}"
                )

    def solve(self, pb: _Problem, t: Tensor, leaves: list[Tensor], plist: list[Tensor]):
        """A fixed-grid solve (``pb.ms`` steps per interval) with this adjoint."""
        return steps_backsolve(pb, t, leaves, plist, self, adaptive=False)

    def solve_steps(self, pb: _Problem, t: Tensor, leaves: list[Tensor], plist: list[Tensor]):
        """An adaptive solve (``pb.adaptive``) with this adjoint."""
        return steps_backsolve(pb, t, leaves, plist, self, adaptive=True)
