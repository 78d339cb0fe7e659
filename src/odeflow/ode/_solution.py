"""The result of a solve: :class:`Solution`, its :class:`SolveStatus` and the backward pass's
:class:`AdjointStats`."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["AdjointStats", "Solution", "SolveStatus"]


class SolveStatus(enum.Enum):
    """Outcome of a fixed-grid solve."""

    SUCCESS = "success"
    NONFINITE = "nonfinite"


@dataclass
class AdjointStats:
    """Statistics of the backward pass, filled in when ``backward`` runs.

    Attributes:
        scales: ``(steps,)`` fp32 tensor of the power-of-two adjoint scale used at each
            step (on the device; ``None`` until a scaled fp16 backward has run).
        retries: overflow recoveries (each recomputes the failed step with half the scale).
        syncs: host synchronisations made by the backward pass.
        nfe: function evaluations of the backward pass (recomputation for the VJPs).
    """

    scales: Tensor | None = None
    retries: int = 0
    syncs: int = 0
    nfe: int = 0


@dataclass
class Solution:
    """Result of :func:`solve`.

    Attributes:
        ts: the output times ``(n,)``.
        ys: the trajectory, ``(n, *y0.shape)`` per leaf, same structure as ``y0``.
        nfe: function evaluations of the forward pass.
        steps: RK steps taken.
        status: :class:`SolveStatus` (``NONFINITE`` if the trajectory has inf/NaN).
        stats: :class:`AdjointStats`, filled when ``backward`` runs through ``ys``.
    """

    ts: Tensor
    ys: Any
    nfe: int
    steps: int
    status: SolveStatus
    stats: AdjointStats = field(default_factory=AdjointStats)

    @property
    def scale_history(self) -> Tensor | None:
        """Per-step fp16 adjoint scales (``None`` before backward or without scaling)."""
        return self.stats.scales
