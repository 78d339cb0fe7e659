"""sdeint's exact discrete adjoint: what the forward pass keeps for the backward pass (every
step state, every k-th, ``K`` binomial checkpoints, step graphs, or what a memory budget
allows; the ODE engine's policies of ``DiscreteAdjoint(checkpoints=...)``) and the reverse
recursion, with the Brownian increments regenerated from the path wherever a step is run
again."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ._gradient._checkpoint import MemoryBudget, _budget_plan, _SavedBytes
from ._gradient._revolve import _Revolve

if TYPE_CHECKING:
    from ._sde import _Run

__all__: list[str] = []


class _Record:
    """The forward pass's record of an SDE solve of ``n`` steps.

    ``mode`` is a normalised ``checkpoints`` option: ``"steps"`` (every step's input state;
    with ``every = k > 1``, the state before every ``k``-th step, the others recomputed one
    segment at a time), an int ``K`` (binomial checkpointing, :class:`_Revolve`), ``"all"``
    (every step's graph) or a :class:`MemoryBudget` (decided after measuring the first
    step's graph, by the rule the ODE engine uses). Step ``s`` keeps its graph when
    ``s >= keep_from``; the earlier steps store states. The backward pass reads
    :meth:`state` in non-increasing ``s``, or ``graphs`` for the kept steps."""

    def __init__(self, run: _Run, mode: Any, params: list[Tensor]) -> None:
        self.run, self.params = run, params
        self.n = len(run.grid) - 1
        self.every = run.every
        self.states: list[Tensor] = []  # every (every-th) step state, in order
        self.segment: dict[int, Tensor] = {}  # checkpoint_every: the segment being reversed
        self.revolve: _Revolve | None = None
        self.graphs: dict[int, tuple[Tensor, Tensor]] = {}
        self.budget = mode.nbytes if isinstance(mode, MemoryBudget) else None
        self.keep_from = 0 if mode == "all" or self.budget is not None else self.n
        if isinstance(mode, int) and mode < self.n:  # (K >= n: every state)
            self.revolve = _Revolve(self.n, mode, self._advance)
        self.recomputed = 0
        self.peak = 0
        self.consumed = False  # a backward pass has run (and freed the kept graphs)

    # ------------------------------------------------------------------ forward
    def step(self, s: int, y: Tensor) -> Tensor:
        """Step ``s`` of the forward pass (no graph kept unless ``s >= keep_from``)."""
        if s < self.keep_from:
            self._push(s, y)
            return self.run.one(s, y)
        measure = self.budget is not None and s == 0
        saved = _SavedBytes(self._resident()) if measure else contextlib.nullcontext()
        with torch.enable_grad(), saved:
            yin = y.detach().requires_grad_(True)
            yout = self.run.one(s, yin)
        if measure:
            b_s = y.numel() * y.element_size()
            self.keep_from, k = _budget_plan(self.budget, self.n, b_s, saved.nbytes)  # type: ignore[union-attr]
            if k is not None and k < self.keep_from:
                self.revolve = _Revolve(self.keep_from, k, self._advance)
        if s >= self.keep_from:
            self.graphs[s] = (yin, yout)
        else:  # (the budget keeps no graph of the first step)
            self._push(s, y)
        self._note()
        return yout.detach()

    def _push(self, s: int, y: Tensor) -> None:
        if self.revolve is not None:
            self.revolve.push(s, y)
        elif s % self.every == 0:
            self.states.append(y)
        self._note()

    def saved(self) -> list[Tensor]:
        """The states stored by plain storage (``"steps"``, ``checkpoint_every``): handed to
        ``save_for_backward`` (so that an in-place change of ``y0`` is caught) and back."""
        out, self.states = self.states, []
        return out

    # ------------------------------------------------------------------ backward
    def state(self, s: int, saved: list[Tensor]) -> Tensor:
        """Step ``s``'s input state (``s`` non-increasing from call to call)."""
        if self.revolve is not None:
            y = self.revolve.state(s)
        elif self.every == 1:
            y = saved[s]
        else:
            if s not in self.segment:  # the segment's states, from its stored first state
                start = s - s % self.every
                y = saved[start // self.every]
                self.segment = {start: y}
                for q in range(start, s):
                    y = self.segment[q + 1] = self.run.one(q, y)
                self.recomputed += s - start
            y = self.segment.pop(s)
        self._note(len(saved))
        return y

    # ------------------------------------------------------------------ plumbing
    def _advance(self, y: Tensor, s: int) -> Tensor:
        self.recomputed += 1
        with torch.no_grad():
            return self.run.one(s, y)

    def _note(self, plain: int = -1) -> None:
        if self.revolve is not None:
            held = self.revolve.peak
        elif plain >= 0:
            held = plain + len(self.segment)
        else:
            held = len(self.states)
        self.peak = max(self.peak, held + len(self.graphs))

    def _resident(self) -> set[int]:
        """Storages that exist anyway (the parameters): not counted in a step graph."""
        return {x.untyped_storage().data_ptr() for x in self.params}


def backward(run: _Run, rec: _Record, saved: list[Tensor], gout: Tensor, params: list[Tensor]):
    """The discrete adjoint: ``a_n = (∂Φ_n/∂y_n)^T a_{n+1}`` (plus the output gradients),
    ``∂θ = Σ_n (∂Φ_n/∂θ)^T a_{n+1}``; each step's VJP through its kept graph, or through its
    graph rebuilt from the state :meth:`_Record.state` serves, the increment regenerated
    from the Brownian path."""
    at = {n: k for k, n in enumerate(run.outs)}
    a = torch.zeros_like(gout[0])
    gp: list[Tensor | None] = [None] * len(params)
    for n in range(rec.n - 1, -1, -1):
        if n + 1 in at:
            a = a + gout[at[n + 1]]
        if n in rec.graphs:  # consumed (and freed) before the first rebuild
            yin, yout = rec.graphs.pop(n)
            vjp = torch.autograd.grad(yout, [yin, *params], a, allow_unused=True)
        else:
            y = rec.state(n, saved)
            with torch.enable_grad():
                y = y.detach().requires_grad_(True)
                vjp = torch.autograd.grad(run.one(n, y), [y, *params], a, allow_unused=True)
        a = vjp[0] if vjp[0] is not None else torch.zeros_like(a)
        for i, v in enumerate(vjp[1:]):
            if v is not None:
                gp[i] = v if gp[i] is None else gp[i] + v
    if 0 in at:
        a = a + gout[at[0]]
    return a, gp


class _Adjoint(torch.autograd.Function):
    """Forward without a graph keeping the record; backward by :func:`backward`."""

    @staticmethod
    def forward(ctx, run: _Run, y0: Tensor, *params: Tensor) -> Tensor:  # type: ignore[override]
        rec = _Record(run, run.checkpoints, list(params))
        outs = run.forward(run.start if run.start is not None else y0.detach(), rec)
        ctx.run, ctx.rec, ctx.params = run, rec, params  # the caller's tensors: f, g read them
        run.stats.stored_states = max(run.stats.stored_states, rec.peak)
        run.stats.kept_graphs = len(rec.graphs)
        # the stored states (the first aliases y0), else y0: an in-place change of y0 before
        # the backward pass raises autograd's error instead of corrupting the gradient
        states = rec.saved()
        ctx.plain = len(states) > 0
        ctx.save_for_backward(*(states if ctx.plain else [y0]))
        return torch.stack(outs)

    @staticmethod
    def backward(ctx, gout: Tensor):  # type: ignore[override]
        if torch.is_grad_enabled():
            raise RuntimeError(
                "sdeint's discrete adjoint gives first derivatives only; for higher-order "
                "derivatives (create_graph=True) use gradient='backprop'"
            )
        run, rec = ctx.run, ctx.rec
        if rec.keep_from < rec.n and rec.consumed:
            raise RuntimeError(
                "sdeint's adjoint kept step graphs from the forward pass (checkpoints='all' or "
                "a memory budget) for one backward pass; they were freed by an earlier "
                "backward. Solve again, or use checkpoints='steps' or an integer K"
            )
        rec.consumed = True
        saved = list(ctx.saved_tensors) if ctx.plain else []
        nfe0, recomputed0 = run.prob.nfe_f + run.prob.nfe_g, rec.recomputed
        a, gp = backward(run, rec, saved, gout, list(ctx.params))
        st = run.stats
        st.nfe += run.prob.nfe_f + run.prob.nfe_g - nfe0
        st.recomputed_steps += rec.recomputed - recomputed0
        st.stored_states = max(st.stored_states, rec.peak)
        return (None, a, *gp)
