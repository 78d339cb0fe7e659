"""Gradient policies: each is a class whose ``solve`` runs the forward pass and wires its
backward pass (backprop; the discrete adjoint with its step/stage recompute, fp16 scaling
loop, torch.func path, create_graph replay and CUDA-graph capture)."""

from __future__ import annotations

from ._adjoint import DiscreteAdjoint
from ._backprop import Backprop
from ._base import GradientPolicy

__all__ = ["Backprop", "DiscreteAdjoint", "GradientPolicy", "_get_gradient"]


def _get_gradient(gradient: str | GradientPolicy) -> GradientPolicy:
    if isinstance(gradient, GradientPolicy):
        return gradient
    if gradient == "adjoint":
        return DiscreteAdjoint()
    if gradient == "backprop":
        return Backprop()
    raise ValueError(
        f"unknown gradient {gradient!r}; valid: 'adjoint', 'backprop', "
        "odeflow.DiscreteAdjoint() or odeflow.Backprop()"
    )
