"""The result of a solve: :class:`Solution`, its :class:`SolveStatus` and the backward pass's
:class:`AdjointStats`."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["AdjointStats", "Solution", "SolveStatus"]


class SolveStatus(enum.Enum):
    """Outcome of a solve: ``SUCCESS``; ``NONFINITE`` (inf/NaN in the trajectory);
    ``MAX_STEPS_REACHED`` (an adaptive solve stopped after ``max_steps`` attempted steps, the
    outputs it did not reach are NaN); ``STEP_SIZE_TOO_SMALL`` (an adaptive solve's step fell
    to round-off of t, e.g. at a blow-up or a stiff transient)."""

    SUCCESS = "success"
    NONFINITE = "nonfinite"
    MAX_STEPS_REACHED = "max_steps_reached"
    STEP_SIZE_TOO_SMALL = "step_size_too_small"


@dataclass
class AdjointStats:
    """Statistics of the backward pass, filled in when ``backward`` runs.

    Attributes:
        scales: ``(steps,)`` fp32 tensor of the power-of-two adjoint scale used at each
            step (on the device; ``None`` until a scaled fp16 backward has run).
        retries: overflow recoveries (each recomputes the failed step with half the scale).
        syncs: host synchronisations made by the backward pass.
        nfe: function evaluations of the backward pass (recomputation for the VJPs).
        stored_states: the most step records the discrete adjoint held at once (step
            states, checkpoints and the working state, kept step graphs), forward and
            backward pass.
        recomputed_steps: steps the backward pass recomputed without a graph to regain
            states between checkpoints (``checkpoints=K``), beyond rebuilding each step's
            graph once.
        kept_graphs: steps whose graph the forward pass kept (``checkpoints="all"``, or a
            memory budget), so that the backward pass did not rebuild them.
    """

    scales: Tensor | None = None
    retries: int = 0
    syncs: int = 0
    nfe: int = 0
    stored_states: int = 0
    recomputed_steps: int = 0
    kept_graphs: int = 0


@dataclass
class Solution:
    """Result of :func:`solve`.

    Attributes:
        ts: the output times ``(n,)``.
        ys: the trajectory, ``(n, *y0.shape)`` per leaf, same structure as ``y0``.
        nfe: function evaluations of the forward pass.
        steps: RK steps taken (adaptive: accepted steps; per-sample steps: the most
            accepted by one sample).
        rejected: rejected steps of an adaptive solve (per-sample: the most of one sample).
        status: :class:`SolveStatus` (``NONFINITE`` if the trajectory has inf/NaN).
        stats: :class:`AdjointStats`, filled when ``backward`` runs through ``ys``.
    """

    ts: Tensor
    ys: Any
    nfe: int
    steps: int
    status: SolveStatus
    stats: AdjointStats = field(default_factory=AdjointStats)
    rejected: int = 0

    @property
    def scale_history(self) -> Tensor | None:
        """Per-step fp16 adjoint scales (``None`` before backward or without scaling)."""
        return self.stats.scales
