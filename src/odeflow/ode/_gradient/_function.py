"""The discrete adjoint as an autograd function: the forward pass stores the step states,
the backward pass runs the recursion with the solve's step VJP and loop."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._precision import AdjointScaler
from .._problem import _integrate, _Problem
from ._checkpoint import _Checkpoints
from ._create_graph import _CreateGraph
from ._cuda_graphs import _CapturedSteps
from ._loops import _PlainLoop, _Recursion, _ScaledLoop
from ._stage import _StageVJP
from ._vjp import _CapturedVJP, _kept_chain, _KeptVJP, _StepVJP

__all__ = ["_AdjointFunction", "_AdjointRun"]


class _AdjointRun:
    """One solve's adjoint: which step VJP (``recompute``, captured steps) and which loop
    (plain, or fp16's scaled one) its backward pass runs, chosen once here."""

    def __init__(
        self,
        pb: _Problem,
        recompute: str,
        captured: _CapturedSteps | None,
        scaler: AdjointScaler | None,
        checkpoints: object = "steps",
    ):
        self.pb = pb
        self.captured = captured
        self.checkpoints = checkpoints
        self.vjp = {"step": _StepVJP, "stage": _StageVJP}[recompute]
        self.loop = _ScaledLoop(scaler) if scaler is not None and scaler.dynamic else _PlainLoop()

    def forward(self, t: Tensor, y0: list[Tensor], live: list[Tensor], need_t: bool,
                need_y: Sequence[bool] = ()):  # fmt: skip
        """The trajectory (in H) and the record for the backward pass (:class:`_Checkpoints`);
        ``need_y``: which leaves of ``y0`` need a gradient (all if not given)."""
        # kept steps chained (one autograd call) unless the scaled loop takes them one by one
        chain = not self.loop.redoes_steps
        store = _Checkpoints(self.pb, self.checkpoints, live, t, need_t, chain=chain,
                             need_y=need_y)  # fmt: skip
        outs = _integrate(self.pb, t, y0, store, captured=self.captured, tape=store)
        if self.captured is not None:
            self.captured.after_forward(store, t, live, need_t)
        stats = self.pb.stats
        stats.stored_states = max(stats.stored_states, store.peak)
        stats.kept_graphs = len(store.graphs)
        return outs, store

    def backward(self, store: _Checkpoints, t: Tensor, params, gouts, need_t: bool) -> tuple:
        """``(None, ∂t, ∂y0 leaves, ∂θ)`` by the adjoint recursion."""
        pb = self.pb
        live = list(params)
        nfe0, recomputed0 = pb.fld.nfe, store.recomputed
        rec = _Recursion(pb, store.shapes, t, live, gouts, need_t)
        args = (pb, store, live, t.detach(), need_t)
        if self.captured is not None and not need_t:  # (time gradients run eagerly)
            vjp = _CapturedVJP(self.captured, *args)
        else:
            vjp = self.vjp(*args)
        start = None
        if store.keep_from < store.n and store.chain:  # the kept steps in one autograd call
            _kept_chain(vjp, rec)
            start = store.keep_from
        elif store.keep_from < store.n:
            vjp = _KeptVJP(vjp, _StepVJP(*args), retain=self.loop.redoes_steps)
        try:
            if start is None:
                self.loop.solve(rec, vjp)
            elif start > 0:  # (the plain loop: the steps before the kept ones)
                self.loop.solve(rec, vjp, start)
        finally:
            if self.loop.redoes_steps:  # (kept graphs were retained for retries)
                store.release()
        pb.stats.nfe += pb.fld.nfe - nfe0
        pb.stats.recomputed_steps += store.recomputed - recomputed0
        pb.stats.stored_states = max(pb.stats.stored_states, store.peak)
        return rec.result()


class _AdjointFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run: _AdjointRun, t: Tensor, *tensors: Tensor):  # type: ignore[override]
        pb = run.pb
        y0 = [y.detach() for y in tensors[: pb.n_leaf]]
        live = list(tensors[pb.n_leaf :])
        need_y = ctx.needs_input_grad[2 : 2 + pb.n_leaf]
        outs, store = run.forward(t.detach(), y0, live, ctx.needs_input_grad[1], need_y)
        ctx.run, ctx.plan, ctx.store = run, pb, store
        # y0 too: the first stored state may alias it, so an in-place change of y0 before
        # the backward pass must raise autograd's error instead of corrupting the gradient;
        # and a differentiable backward (create_graph=True) replays the solve from it
        ctx.save_for_backward(t, *tensors)
        return tuple(pb.outputs(outs))

    @staticmethod
    def backward(ctx, *gouts: Tensor | None):  # type: ignore[override]
        run: _AdjointRun = ctx.run
        pb = run.pb
        t, *tensors = ctx.saved_tensors
        with pb.fld.replaying():  # random draws replayed, buffer updates undone
            if torch.is_grad_enabled():  # create_graph=True
                needs = ctx.needs_input_grad[1:]
                return None, *_CreateGraph().solve(pb, t, tensors, gouts, needs)
            need_t = ctx.needs_input_grad[1]
            return run.backward(ctx.store, t, tensors[pb.n_leaf :], gouts, need_t)
