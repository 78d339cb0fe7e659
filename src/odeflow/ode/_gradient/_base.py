"""The interface every gradient policy implements."""

from __future__ import annotations

from torch import Tensor

from .._problem import _Problem

__all__ = ["GradientPolicy"]


class GradientPolicy:
    """How the gradient of a solve is formed. The entry point validates the inputs, builds
    the :class:`~odeflow.ode._problem._Problem` and calls :meth:`solve`; it never branches on
    the policy's type (diffrax's ``AbstractAdjoint.loop`` design)."""

    def solve(
        self, pb: _Problem, t: Tensor, leaves: list[Tensor], plist: list[Tensor]
    ) -> list[Tensor]:
        """The trajectory leaves ``(n, *leaf.shape)`` in the output dtypes, differentiable in
        ``t``, ``leaves`` and ``plist`` as this policy makes them."""
        raise NotImplementedError  # abstract

    def solve_steps(
        self, pb: _Problem, t: Tensor, leaves: list[Tensor], plist: list[Tensor]
    ) -> list[Tensor]:
        """Like :meth:`solve` for an adaptive solve (``pb.adaptive``: the step-size rule;
        the accepted steps are left in ``pb.run``)."""
        raise ValueError(
            f"gradient={type(self).__name__}() does not support adaptive steps; use "
            "gradient='adjoint', 'backprop' or odeflow.BacksolveAdjoint(), or fixed steps"
        )
