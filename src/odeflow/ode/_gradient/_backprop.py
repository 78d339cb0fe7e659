"""Plain backpropagation through the solver."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

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
