"""What every gradient policy solves: the bound field, the scheme, the precision and the
grid of one call (:class:`_Problem`), and the forward march over that grid."""

from __future__ import annotations

import bisect
import contextlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from ._field import _Field, _rng_state
from ._precision import AdjointScaler, PrecisionPolicy
from ._rk import _Coeffs, _Grid, _grid, _rk_step
from ._solution import AdjointStats
from ._tableaus import ButcherTableau

__all__ = ["_Problem", "_integrate"]


@dataclass(eq=False)
class _Problem:
    """The fixed setup of one solve, validated by the entry point; the gradient policy reads
    it and keeps its own per-solve state. ``grid`` is a cache: the steps' coefficients,
    formed by the forward pass and reused by the backward pass (``t`` without gradient)."""

    fld: _Field
    tab: ButcherTableau
    pol: PrecisionPolicy
    ms: list[int]  # substeps per interval
    hdt: torch.dtype
    out_dtypes: list[torch.dtype]
    n_leaf: int
    stats: AdjointStats
    spec: Any  # the state's structure (see _tree)
    scaler: AdjointScaler | None  # the caller's (None: a fresh one where fp16 needs one)
    # the gradient's tensors were collected from a module (no params=[...]): the backward
    # checks once that func's graph reaches no other tensor requiring grad
    hidden_check: bool = False
    # a plain callable without params=[...]: it may close over tensors requiring grad
    closure_risk: bool = False
    grid: _Grid | None = None
    # adaptive steps: the step-size rule (a StepOptions; None: the fixed grid ``ms``), steps
    # per sample of a batch, and the run's record (accepted steps, status) left by the solve
    adaptive: Any = None
    per_sample: bool = False
    run: Any = None

    @property
    def func(self) -> Callable:
        return self.fld.func

    @property
    def steps(self) -> _Steps:
        """``(interval, substep)`` of every RK step, in order (a sequence: ``steps[s]``,
        ``len``, iteration), formed on demand: nothing is kept per step."""
        return _Steps(self.ms)

    def outputs(self, outs: list[Tensor]) -> list[Tensor]:
        """The trajectory leaves in the dtypes returned to the caller."""
        return [o.to(d) for o, d in zip(outs, self.out_dtypes)]


class _Steps(Sequence):
    """The ``(interval, substep)`` of every step, computed from the interval offsets."""

    def __init__(self, ms: list[int]):
        self.offsets = [0, *itertools.accumulate(ms)]  # first step of each interval

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, s: int) -> tuple[int, int]:
        if not 0 <= s < len(self):
            raise IndexError(f"step {s} of {len(self)}")
        i = bisect.bisect_right(self.offsets, s) - 1
        return i, s - self.offsets[i]


class _Tape(Protocol):
    """Steps run with their graph kept for the backward pass (see ``_gradient._checkpoint``)."""

    def keeps(self, s: int) -> bool: ...

    def step(self, s: int, co: _Coeffs, y: list[Tensor]) -> list[Tensor]: ...


class _Captured(Protocol):
    """A captured forward step (see ``_gradient._cuda_graphs``)."""

    def forward_step(self, y: list[Tensor], co: _Coeffs) -> list[Tensor]: ...

    def check_deterministic(self, before: Any) -> None: ...


def _integrate(
    pb: _Problem,
    t: Tensor,
    y0: list[Tensor],
    store: Any | None,
    record: bool = True,
    captured: _Captured | None = None,
    tape: _Tape | None = None,
) -> list[Tensor]:
    """March over the grid; return per-leaf stacked outputs (in H).

    ``store`` (``append``) receives the input state of every step (the final state is not
    needed by the backward pass), in the policy's storage dtype; the pass then notes the
    field's random draws and buffer updates for the backward pass, unless ``record`` is false
    (a replay). ``captured``: replay a captured forward step instead of evaluating it (grad
    mode off only). ``tape``: the steps it :meth:`~_Tape.keeps` run through it with their
    graph (their states are not stored)."""
    y = [yl.to(pb.hdt) for yl in y0]
    sdt = pb.pol.storage
    outs = [[yl] for yl in y]
    # Without a graph, one autocast context with the weight-cast cache spans the whole solve:
    # each weight is cast to 16 bit once, not once per stage (with a graph the cache stays off
    # so that per-stage weight gradients meet in fp32; see PrecisionPolicy.context).
    free = not torch.is_grad_enabled()
    graphed = free and captured is not None
    cached = free and not graphed  # a captured step enters its own (cache-free) context
    # the adjoint's forward pass notes the random draws and buffer updates of the field
    record = store is not None and record
    rng0 = _rng_state(pb.fld.device) if record and graphed else None
    with (
        # (captured steps: evaluations inside a capture must not read the generators, and a
        # field that draws is refused below)
        pb.fld.record(rng=not graphed) if record else contextlib.nullcontext(),
        pb.pol.context(pb.fld.device, cache=True) if cached else contextlib.nullcontext(),
    ):
        grid = iter(_grid(pb, t))
        per_step = record and not graphed and not pb.fld.per_call
        s = 0
        for m in pb.ms:
            for _ in range(m):
                kept = tape is not None and tape.keeps(s)
                if store is not None and not kept:
                    store.append([yl if sdt is None else yl.to(sdt) for yl in y])
                if per_step:
                    pb.fld.note_rng()
                co = next(grid)
                if kept:
                    y = tape.step(s, co, y)
                elif graphed:
                    y = captured.forward_step(y, co)
                    if rng0 is not None:
                        captured.check_deterministic(rng0)
                        rng0 = None
                else:
                    y = _rk_step(pb.fld, pb.tab, co, y, pb.pol, enter=not free)
                s += 1
            for o, yl in zip(outs, y):
                o.append(yl)
    return [torch.stack(o) for o in outs]
