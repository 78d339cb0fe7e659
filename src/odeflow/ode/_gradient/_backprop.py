"""Plain backpropagation through the solver."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .._adaptive_solve import steps_backprop
from .._problem import _integrate, _Problem
from ._base import GradientPolicy

__all__ = ["Backprop"]


@dataclass(frozen=True)
class Backprop(GradientPolicy):
    """Gradient by plain autograd through every stage of every step (for comparison).

    Example:
        >>> Backprop()
        Backprop()
    """

    def solve(self, pb: _Problem, t: Tensor, leaves: list[Tensor], plist: list[Tensor]):
        """The trajectory, with autograd's graph of every step when grad mode is on."""
        return pb.outputs(_integrate(pb, t, leaves, None))

    def solve_steps(self, pb: _Problem, t: Tensor, leaves: list[Tensor], plist: list[Tensor]):
        """An adaptive solve, with autograd's graph of every accepted step (the controller's
        decisions carry none: step sizes are constants)."""
        return steps_backprop(pb, t, leaves)
