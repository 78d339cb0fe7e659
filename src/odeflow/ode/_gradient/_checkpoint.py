"""What the discrete adjoint's forward pass keeps for its backward pass
(``DiscreteAdjoint(checkpoints=...)``): every step's input state, ``K`` revolve
checkpoints, every step's graph, or whatever a memory budget allows."""

from __future__ import annotations

import contextlib
import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._field import _owning_module
from .._problem import _Problem
from .._rk import _Coeffs, _coeffs, _grid, _rk_step, _times
from ._revolve import _Revolve

__all__ = ["MemoryBudget", "_Checkpoints", "_SavedBytes", "_budget_plan", "_check_checkpoints"]

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


@dataclass(frozen=True)
class MemoryBudget:
    r"""A memory budget for the discrete adjoint's record of the forward pass, in bytes.

    ``DiscreteAdjoint(checkpoints=MemoryBudget(...))`` chooses what to keep from the budget
    ``B``, the bytes of one step state ``b_s`` (in the storage dtype) and of one step's
    autograd graph ``b_g`` (its saved tensors, measured on the first step), for ``n`` steps:

    * ``n b_g ≤ B``: every step's graph (as ``checkpoints="all"``: nothing is rebuilt);
    * ``(n - 1) b_s + b_g ≤ B``: the states of the first steps and the graphs of the last
      ``m = min(n - 1, ⌊(B - n b_s) / (b_g - b_s)⌋) ≥ 1`` steps, kept from the forward pass
      instead of rebuilt;
    * otherwise binomial checkpointing of the first ``n - 1`` steps with
      ``K = max(1, ⌊(B - b_g) / b_s⌋)`` checkpoints, and the last step's graph kept.

    The backward pass consumes (and frees) the kept graphs before it rebuilds its first
    step graph, so what the adjoint holds between and during the passes, records plus the
    one step graph it works on, stays within ``B`` (the working state aside) whenever
    ``B ≥ b_s + b_g``; below that the one step graph goes over the budget.

    Args:
        nbytes: the budget, a positive number of bytes or a string with a unit:
            ``"512MiB"``, ``"1.5 GB"`` (B, kB, MB, GB, TB: powers of 1000; KiB, MiB, GiB,
            TiB: powers of 1024).

    Raises:
        ValueError: a budget that is not a positive finite size; at solve time, a budget
            below one step state (the message gives the state's size).
        TypeError: ``nbytes`` neither a number nor a string.

    Reference: Griewank, Walther, *Algorithm 799: revolve*, ACM TOMS 26 (2000).

    Example:
        >>> MemoryBudget("1.5 KiB").nbytes, MemoryBudget(2e3).nbytes
        (1536, 2000)
    """

    nbytes: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "nbytes", _parse_bytes(self.nbytes))


def _parse_bytes(v: Any) -> int:
    if isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*", v.lower())
        if m is None or m.group(2) not in _UNITS:
            raise ValueError(
                f"memory budget {v!r} is not a size; write e.g. '512MiB', '2GB' or a number "
                "of bytes"
            )
        v = float(m.group(1)) * _UNITS[m.group(2)]
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"a memory budget is a number of bytes or a string, got {v!r}")
    if not (math.isfinite(v) and v >= 1):
        raise ValueError(f"a memory budget must be a positive finite number of bytes, got {v!r}")
    return int(v)


def _check_checkpoints(c: Any) -> Any:
    """The normalised ``checkpoints`` option (a unit string becomes a MemoryBudget)."""
    if isinstance(c, MemoryBudget) or c in ("steps", "all"):
        return c
    if isinstance(c, str):
        try:
            return MemoryBudget(c)
        except ValueError:
            pass
    elif isinstance(c, numbers.Integral) and not isinstance(c, bool):
        if c < 1:
            raise ValueError(
                f"checkpoints={c}: the number of checkpoints must be at least 1 (one stored "
                "state, the initial one); use checkpoints='steps' to store every step"
            )
        return int(c)
    raise ValueError(
        f"unknown checkpoints {c!r} for DiscreteAdjoint; valid: 'steps' (store every step's "
        "state, the default), an int K >= 1 (binomial checkpointing with K stored states), "
        "'all' (keep every step's graph) or a memory budget, MemoryBudget(nbytes) or a "
        "string such as '512MiB'"
    )


class _Checkpoints:
    """The forward pass's record for the backward pass: input states of the steps before
    ``keep_from`` (all, or revolve's checkpoints), and the graphs of the steps from
    ``keep_from`` on. The forward pass calls ``append`` (a step's state) or ``step`` (a step
    run with its graph kept, where :meth:`keeps`); the backward pass reads ``self[s]``.

    ``chain``: each kept step's graph starts from the previous kept step's output (not from
    a detached copy of it), so that the backward pass differentiates all kept steps in one
    autograd call, as backprop does (see ``_vjp._kept_chain``); without it (fp16's scaled
    loop, which seeds and may redo every step on its own) each kept graph starts from a
    leaf of its own. ``need_y``: which leaves of ``y0`` need a gradient (chained: the first
    step's graph differentiates for those only, as backprop's does)."""

    def __init__(self, pb: _Problem, mode: Any, live: list[Tensor], td: Tensor, need_t: bool,
                 chain: bool = False, need_y: Sequence[bool] = ()):  # fmt: skip
        self.pb, self.live, self.td, self.need_t, self.chain = pb, live, td, need_t, chain
        self.need_y = list(need_y) if chain and need_y else [True] * pb.n_leaf
        self.steps = pb.steps
        self.n = len(self.steps)
        self.states: list[list[Tensor]] = []
        self.revolve: _Revolve | None = None
        self.graphs: dict[int, tuple[list[Tensor], list[Tensor], list[Tensor]]] = {}
        self.budget = mode.nbytes if isinstance(mode, MemoryBudget) else None
        self.keep_from = 0 if mode == "all" or self.budget is not None else self.n
        if isinstance(mode, int) and not isinstance(mode, bool):
            self._use_revolve(self.n, mode)
        self.next = 0  # the step whose input state comes next
        self.shapes: list[torch.Size] | None = None
        self.peak = 0

    # ------------------------------------------------------------------ forward
    def keeps(self, s: int) -> bool:
        return s >= self.keep_from

    def append(self, y: list[Tensor]) -> None:
        """Step ``self.next``'s input state (in the storage dtype)."""
        s, self.next = self.next, self.next + 1
        if self.shapes is None:
            self.shapes = [x.shape for x in y]
        if self.revolve is not None:
            self.revolve.push(s, y)
        else:
            self.states.append(y)
        self._note()

    def step(self, s: int, co: _Coeffs, y: list[Tensor]) -> list[Tensor]:
        """Step ``s`` from ``y`` (in H) with its graph, kept for the backward pass."""
        pb = self.pb
        if self.shapes is None:
            self.shapes = [x.shape for x in y]
        i, j = self.steps[s]
        measure = self.budget is not None and s == 0
        saved = _SavedBytes(self._resident()) if measure else contextlib.nullcontext()
        prev = self.graphs.get(s - 1) if self.chain else None
        with torch.enable_grad(), saved:
            if prev is not None:  # chained: the previous step's output (y's values), its graph
                yin = prev[1]
            else:  # (the first step: a leaf for the y0 leaves that need a gradient)
                need = self.need_y if s == 0 else [True] * len(y)
                yin = [x.detach().requires_grad_(r) for x, r in zip(y, need)]
            tin: list[Tensor] = []
            if self.need_t:
                tin = [self.td[i].clone().requires_grad_(), self.td[i + 1].clone().requires_grad_()]
                co = _coeffs(pb.tab, *_times(*tin, j, pb.ms[i]))
            yout = _rk_step(pb.fld, pb.tab, co, yin, pb.pol)
        self.next = s + 1
        if measure:
            self._decide(saved.nbytes)
        if self.keeps(s):
            self.graphs[s] = (yin, yout, tin)
        else:  # (the budget keeps no graph of the first step)
            self.next = s
            sdt = pb.pol.storage
            self.append([x if sdt is None else x.to(sdt) for x in y])
        self._note()
        return [o.detach() for o in yout]

    # ------------------------------------------------------------------ backward
    def __getitem__(self, s: int) -> list[Tensor]:
        """Step ``s``'s input state (from revolve's checkpoints: ``s`` non-increasing)."""
        if self.revolve is None:
            return self.states[s]
        y = self.revolve.state(s)
        self._note()
        return y

    def __len__(self) -> int:
        """Step states held now (every step's, or the checkpoints)."""
        return len(self.states) if self.revolve is None else len(self.revolve.ckpts)

    def __iter__(self):
        return iter(self.states if self.revolve is None else list(self.revolve.ckpts.values()))

    @property
    def recomputed(self) -> int:
        return 0 if self.revolve is None else self.revolve.advances

    def release(self) -> None:
        self.graphs.clear()

    # ------------------------------------------------------------------ plumbing
    def _note(self) -> None:
        held = self.revolve.peak if self.revolve is not None else len(self.states)
        self.peak = max(self.peak, held + len(self.graphs))

    def _use_revolve(self, n: int, k: int) -> None:
        if 0 < n and k < n:  # (k >= n checkpoints store every step)
            self.revolve = _Revolve(n, k, self._advance, keep=self._quantize)

    def _quantize(self, y: list[Tensor]) -> list[Tensor]:
        sdt = self.pb.pol.storage
        return [x if sdt is None or x.dtype == sdt else x.to(sdt) for x in y]

    def _advance(self, y: list[Tensor], s: int) -> list[Tensor]:
        """Step ``s`` recomputed without a graph (as the forward pass evaluated it, in H)."""
        pb = self.pb
        pb.fld.replay_rng(s)
        with torch.no_grad(), pb.pol.context(pb.fld.device, cache=True):
            yh = [x.to(pb.hdt) for x in y]
            return _rk_step(pb.fld, pb.tab, _grid(pb, self.td)[s], yh, pb.pol, enter=False)

    def _resident(self) -> set[int]:
        """Storages that exist anyway (parameters, buffers): not counted in a step graph."""
        mod = _owning_module(self.pb.func)
        extra = [*mod.parameters(), *mod.buffers()] if mod is not None else []
        return {x.untyped_storage().data_ptr() for x in [*self.live, *extra]}

    def _decide(self, b_g: int) -> None:
        """Choose ``keep_from`` and the checkpoints from the budget (see MemoryBudget)."""
        pb = self.pb
        item = torch.empty((), dtype=pb.pol.storage or pb.hdt).element_size()
        b_s = sum(math.prod(s) for s in self.shapes) * item
        self.keep_from, k = _budget_plan(self.budget, self.n, b_s, b_g)
        if k is not None:
            self._use_revolve(self.keep_from, k)


def _budget_plan(budget: int, n: int, b_s: int, b_g: int) -> tuple[int, int | None]:
    """What a memory budget keeps of ``n`` steps (see MemoryBudget), from the bytes of one
    step state ``b_s`` and of one step's graph ``b_g``: ``(keep_from, K)``, the steps from
    ``keep_from`` on keep their graphs and the steps before store every input state
    (``K is None``) or ``K`` revolve checkpoints."""
    if budget < b_s:
        raise ValueError(
            f"the memory budget of {budget:,} bytes is below one step state ({b_s:,} "
            f"bytes): binomial checkpointing needs at least one. Give a budget of at least "
            f"{b_s:,} bytes (one state and one step's graph: {b_s + b_g:,}), or "
            "checkpoints=1"
        )
    if n * b_g <= budget:
        return 0, None
    if (n - 1) * b_s + b_g <= budget:  # every state, and the last m >= 1 graphs
        m = n - 1 if b_g <= b_s else (budget - n * b_s) // (b_g - b_s)
        return n - max(1, min(n - 1, m)), None
    # the last graph is kept: consumed before the first rebuild, it costs nothing
    return n - 1, max(1, (budget - b_g) // b_s)


class _SavedBytes:
    """Within the block, the bytes of the tensors autograd saves (distinct storages, those
    in ``resident`` excluded): a step graph's size."""

    def __init__(self, resident: set[int]):
        self.seen = set(resident)
        self.nbytes = 0
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda x: x)

    def _pack(self, x: Tensor) -> Tensor:
        try:
            st = x.untyped_storage()
            key, size = st.data_ptr(), st.nbytes()
        except RuntimeError:  # (a tensor without a storage of its own: forward-AD duals)
            key, size = id(x), x.numel() * x.element_size()
        if key not in self.seen:
            self.seen.add(key)
            self.nbytes += size
        return x

    def __enter__(self) -> _SavedBytes:
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.__exit__(*exc)
