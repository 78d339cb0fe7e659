"""One step's vector–Jacobian product for the discrete adjoint's backward recursion:
rebuild the whole step's graph from its stored state (``recompute="step"``), or replay the
captured rebuild + VJP (``cuda_graphs=True``). ``recompute="stage"`` is in ``_stage``.

Every strategy is called as ``vjp(s, seed) -> (interval, state adjoint, parameter
gradients, [∂/∂t_i, ∂/∂t_{i+1}])`` for step ``s`` seeded with the adjoint ``seed`` of its
output."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._problem import _Problem
from .._rk import _coeffs, _grid, _rk_step, _times
from .._walk import _check_hidden
from ._cuda_graphs import _CapturedSteps

__all__ = ["_CapturedVJP", "_KeptVJP", "_StepVJP", "_VJPBase", "_kept_chain"]

_FREED = (
    "the step graphs that DiscreteAdjoint(checkpoints=...) kept from the forward pass were "
    "freed by an earlier backward pass; a second backward through the same solve needs "
    "checkpoints='steps' or an integer (which rebuild the steps)"
)

StepGrads = tuple[int, list[Tensor], list[Tensor | None], list[Tensor]]


class _VJPBase:
    """What every step VJP reads: the problem, the stored states (``store[s]``: step ``s``'s
    input state, in the storage dtype), the tensors differentiated for, the detached times
    and whether their gradient is needed. The first VJP walks its graph once for tensors
    requiring grad that are not differentiated for (``pb.hidden_check``)."""

    def __init__(self, pb: _Problem, store: Any, live: list[Tensor], td: Tensor, need_t: bool):
        self.pb, self.store, self.live, self.td, self.need_t = pb, store, live, td, need_t
        self.steps = pb.steps
        self.grid = _grid(pb, td)  # the forward's (kept on the problem)
        self.unchecked = pb.hidden_check

    def check_once(self, outs: list[Tensor], known: list[Tensor], edges=()) -> None:
        if self.unchecked:
            _check_hidden(outs, known, edges)
            self.unchecked = False


class _StepVJP(_VJPBase):
    """Rebuild step ``s``'s graph from its stored state (replaying its random draws) and
    differentiate it at once: ``s`` evaluations of ``f`` and their VJPs per step."""

    def __call__(self, s: int, seed: list[Tensor]) -> StepGrads:
        pb, td, hdt = self.pb, self.td, self.pb.hdt
        i, j = self.steps[s]
        with torch.enable_grad():
            yin = [x.detach().to(hdt).requires_grad_() for x in self.store[s]]
            if self.need_t:
                ta = td[i].clone().requires_grad_()
                tb = td[i + 1].clone().requires_grad_()
                co = _coeffs(pb.tab, *_times(ta, tb, j, pb.ms[i]))  # the grid's values, of t
                tin = [ta, tb]
            else:
                co = self.grid[s]
                tin = []
            pb.fld.replay_rng(s)
            yout = _rk_step(pb.fld, pb.tab, co, yin, pb.pol)
            return i, *self.differentiate(yin, yout, tin, seed)

    def differentiate(self, yin: list[Tensor], yout: list[Tensor], tin: list[Tensor], seed,
                      retain: bool = False):  # fmt: skip
        """The VJP of the step graph ``yin -> yout`` (and times ``tin``) seeded by ``seed``
        (``retain``: keep the graph for another VJP)."""
        nl, live = self.pb.n_leaf, self.live
        with torch.enable_grad():
            inputs = yin + live + tin
            self.check_once(yout, inputs)
            g = torch.autograd.grad(
                yout, inputs, grad_outputs=seed, allow_unused=True, retain_graph=retain
            )
        gy = [torch.zeros_like(y) if x is None else x for x, y in zip(g[:nl], yin)]
        gp = list(g[nl : nl + len(live)])
        gt = [torch.zeros_like(self.td[0]) if x is None else x for x in g[nl + len(live) :]]
        return gy, gp, gt


class _CapturedVJP(_StepVJP):
    """Replay the captured rebuild + VJP of a step (the eager rebuild if the capture was
    evicted since the forward pass)."""

    def __init__(self, captured: _CapturedSteps, *args: Any):
        super().__init__(*args)
        self.captured = captured

    def __call__(self, s: int, seed: list[Tensor]) -> StepGrads:
        nl = self.pb.n_leaf
        i = self.steps[s][0]
        tau, h = self.grid[s].tau, self.grid[s].h
        x = self.store[s]
        replay = self.captured.backward_step(x, seed, tau, h, self.live, False)
        if replay is None:
            return super().__call__(s, seed)
        out = replay(*x, *seed, tau, h)
        # the state adjoint outlives the next replay; parameter gradients are consumed first
        return i, [v.clone() for v in out[:nl]], out[nl:], []


class _KeptVJP:
    """The VJP through a step graph kept by the forward pass (``store.graphs``), else
    ``fallback``'s rebuild. A kept graph is freed by its VJP unless ``retain`` (fp16's
    scaled loop may redo a step)."""

    def __init__(self, fallback: Any, eager: _StepVJP, retain: bool):
        self.fallback, self.eager, self.retain = fallback, eager, retain
        self.graphs = eager.store.graphs

    def __call__(self, s: int, seed: list[Tensor]) -> StepGrads:
        if s >= self.eager.store.keep_from and s not in self.graphs:
            raise RuntimeError(_FREED)
        if s not in self.graphs:
            return self.fallback(s, seed)
        yin, yout, tin = self.graphs[s] if self.retain else self.graphs.pop(s)
        i = self.eager.steps[s][0]
        return i, *self.eager.differentiate(yin, yout, tin, seed, self.retain)


def _kept_chain(vjp: _VJPBase, rec: Any) -> None:
    """The kept steps ``k0 = store.keep_from, ..., n - 1``, chained by the forward pass (each
    step's graph starts from the previous one's output), differentiated in one autograd call
    as backprop differentiates its graph: seeded with the adjoint ``rec.a`` at the last state
    and the output gradients at the output times among them. Leaves in ``rec`` (a
    ``_loops._Recursion``) the adjoint at state ``k0`` (its output gradient injected) and
    the steps' parameter and time gradients; the kept graphs are freed as autograd walks
    them."""
    store, n = vjp.store, rec.n_steps
    k0 = store.keep_from
    if any(s not in store.graphs for s in range(k0, n)):
        raise RuntimeError(_FREED)
    graphs = [store.graphs.pop(s) for s in range(k0, n)]
    outs, seeds = [], []
    for s, (_, yout, _) in zip(range(k0, n), graphs):
        for o, g in zip(yout, rec.a if s == n - 1 else rec.output_grad(s + 1)):
            if g is not None and o.requires_grad:
                outs.append(o)
                seeds.append(g)
    yin, last = graphs[0][0], graphs[-1]
    tins = [x for _, _, tin in graphs for x in tin]
    del graphs  # (the graphs' tensors are freed as the VJP walks them)
    live = vjp.live
    ys = [y for y in yin if y.requires_grad]  # (the first step's: those y0 leaves that need it)
    nl = len(ys)
    with torch.enable_grad():
        vjp.check_once(last[1], [*last[0], *live, *last[2]])
        del last
        inputs = [*ys, *live, *tins]
        g = [None] * len(inputs)
        if outs:
            # seeded through the scalar Σ <out, seed> (its backward hands each output exactly
            # its seed): torch.autograd.grad with grad_outputs imports sympy on its first call,
            # some 1 s, and allocating in the middle of that slowed every later call by ~8 %
            # on a CPU (a fragmented heap)
            total = sum((o * w).sum() for o, w in zip(outs, seeds))
            g = list(torch.autograd.grad(total, inputs, allow_unused=True))
    del outs, seeds
    gy = iter(g[:nl])
    a = [(next(gy) if y.requires_grad else None) for y in yin]
    rec.a = rec.inject([torch.zeros_like(y) if x is None else x for x, y in zip(a, yin)], k0)
    rec.accumulate(g[nl : nl + len(live)])
    if rec.need_t:
        z = torch.zeros_like(vjp.td[0])
        gt = [z if x is None else x for x in g[nl + len(live) :]]
        for s in range(n - 1, k0 - 1, -1):
            q = 2 * (s - k0)
            rec.accumulate_t(vjp.steps[s][0], gt[q : q + 2])
