"""Gradient policies: each is a class whose ``solve`` runs the forward pass and wires its
backward pass (backprop; the discrete adjoint with its step/stage recompute, fp16 scaling
loop, torch.func path, create_graph replay and CUDA-graph capture; the continuous
adjoint)."""

from __future__ import annotations

from ._adjoint import DiscreteAdjoint
from ._backprop import Backprop
from ._backsolve import BacksolveAdjoint
from ._base import GradientPolicy
from ._checkpoint import MemoryBudget

__all__ = [
    "Backprop",
    "BacksolveAdjoint",
    "DiscreteAdjoint",
    "GradientPolicy",
    "MemoryBudget",
    "_get_gradient",
]


def _get_gradient(gradient: str | GradientPolicy) -> GradientPolicy:
    if isinstance(gradient, GradientPolicy):
        return gradient
    if gradient == "adjoint":
        return DiscreteAdjoint()
    if gradient == "backprop":
        return Backprop()
    raise ValueError(
        f"unknown gradient {gradient!r}; valid: 'adjoint', 'backprop', "
        "odeflow.DiscreteAdjoint(), odeflow.Backprop() or odeflow.BacksolveAdjoint()"
    )
