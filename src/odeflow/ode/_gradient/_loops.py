"""The discrete adjoint's backward recursion over the steps, in reverse: plain
(:class:`_PlainLoop`), or with fp16's sync-free dynamic adjoint scaling
(:class:`_ScaledLoop`). Both call a step VJP (``_vjp``/``_stage``) per step."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .._compat import foreach_add_
from .._precision import AdjointScaler
from .._problem import _Problem

__all__ = ["_PlainLoop", "_Recursion", "_ScaledLoop"]


class _Recursion:
    """The adjoint and the gradient accumulators of one backward pass.

    ``a``: the state adjoint (in H), starting from the output gradient at the last state;
    ``p_acc``: parameter gradients (at least fp32); ``g_t``: per-time 0-d accumulators
    (updating them needs no index tensor: no host->device copy)."""

    def __init__(self, pb: _Problem, shapes, t: Tensor, live: list[Tensor], gouts, need_t):
        self.pb, self.t, self.gouts, self.need_t = pb, t, gouts, need_t
        self.pos, acc = {0: 0}, 0  # state index of each output time
        for k, m in enumerate(pb.ms):
            acc += m
            self.pos[acc] = k + 1
        self.n_steps = acc
        self.live = live
        self.p_acc = [
            torch.zeros_like(p, dtype=p.dtype if p.dtype.itemsize >= 4 else torch.float32)
            for p in live
        ]
        self.reached = [False] * len(live)  # a parameter no step reaches gets None (backprop)
        self.g_t = [torch.zeros_like(t[0]) for _ in range(t.shape[0])] if need_t else None
        dev = pb.fld.device
        a = [torch.zeros(s, dtype=pb.hdt, device=dev) for s in shapes]
        self.a = self.inject(a, self.n_steps)

    def inject(self, a_list: list[Tensor], state_idx: int) -> list[Tensor]:
        """Add the output gradient at state ``state_idx`` (if it is an output time)."""
        k = self.pos.get(state_idx)
        if k is None:
            return a_list
        hdt = self.pb.hdt
        return [al if g is None else al + g[k].to(hdt) for al, g in zip(a_list, self.gouts)]

    def output_grad(self, state_idx: int) -> list[Tensor | None]:
        """The output gradient at state ``state_idx`` per leaf (in H; ``None`` where none)."""
        k = self.pos.get(state_idx)
        hdt = self.pb.hdt
        return [None if k is None or g is None else g[k].to(hdt) for g in self.gouts]

    def accumulate(self, gp: Sequence[Tensor | None]) -> None:
        """Add one VJP's parameter gradients (in place, one multi-tensor kernel on a GPU)."""
        accs, adds = [], []
        for q, x in enumerate(gp):
            if x is not None:
                self.reached[q] = True
                accs.append(self.p_acc[q])
                adds.append(x if x.dtype == self.p_acc[q].dtype else x.to(self.p_acc[q].dtype))
        if accs:
            foreach_add_(accs, adds)

    def accumulate_t(self, i: int, gt: Sequence[Tensor]) -> None:
        """Add a step's gradients for the ends ``t_i``, ``t_{i+1}`` of its interval."""
        dt = self.t.dtype
        self.g_t[i] = self.g_t[i] + gt[0].to(dt)
        self.g_t[i + 1] = self.g_t[i + 1] + gt[1].to(dt)

    def result(self) -> tuple:
        """``(None, ∂t, ∂y0 leaves, ∂θ)`` as ``_AdjointFunction.backward`` returns them."""
        g_t = torch.stack(self.g_t) if self.need_t else None
        gps = [p.to(q.dtype) if r else None
               for p, q, r in zip(self.p_acc, self.live, self.reached)]  # fmt: skip
        return (None, g_t, *self.a, *gps)


StepVJP = Callable[[int, list[Tensor]], tuple]


class _PlainLoop:
    """``a_s = (∂Φ_s/∂y)^T a_{s+1} + (output gradient at s)``, parameter and time gradients
    summed, for ``s = n-1..0``."""

    redoes_steps = False  # each step's VJP is taken once

    def solve(self, rec: _Recursion, vjp: StepVJP, start: int | None = None) -> None:
        """Steps ``start - 1, ..., 0`` (all by default; ``rec.a``: the adjoint at state
        ``start``)."""
        for s in range((rec.n_steps if start is None else start) - 1, -1, -1):
            i, gy, gp, gt = vjp(s, rec.a)
            rec.a = rec.inject(gy, s)
            rec.accumulate(gp)
            if rec.need_t:
                rec.accumulate_t(i, gt)


class _ScaledLoop:
    """The recursion with fp16 dynamic adjoint scaling (see :class:`AdjointScaler`): each
    step's VJP is seeded with ``S_s a`` (``S_s`` a power of two chosen on the device), its
    finiteness noted as a device flag; a failed step and every later one are frozen with
    ``torch.where``; every ``ceil(n / checks)`` steps the host reads the flag and, on a
    failure, lowers the scaler's headroom and resumes at the failed step."""

    redoes_steps = True  # a failed stretch of steps is taken again

    def __init__(self, scaler: AdjointScaler):
        self.sc = scaler

    def solve(self, rec: _Recursion, vjp: StepVJP) -> None:
        stats = rec.pb.stats
        # a non-finite incoming gradient (a NaN loss) is not an fp16 overflow: no retries and
        # no change to the scaler; the NaN/inf reach the caller as with backprop (one sync)
        seeds = [g for g in rec.gouts if g is not None]
        stats.syncs += 1
        if seeds and not bool(torch.stack([torch.isfinite(g).all() for g in seeds]).all()):
            _PlainLoop().solve(rec, vjp)
            return
        saved = self.sc.state_dict()  # restored if the backward pass fails
        try:
            retries = self._run(rec, vjp)
        except FloatingPointError:  # a failed call leaves the scaler as it found it
            self.sc.load_state_dict(saved)
            raise
        self.sc.end_of_backward(retries)
        stats.retries += retries

    def _run(self, rec: _Recursion, vjp: StepVJP) -> int:
        sc, stats, n = self.sc, rec.pb.stats, rec.n_steps
        dev = rec.pb.fld.device
        scales = torch.zeros(n, dtype=torch.float32, device=dev)
        self._reset(dev)
        every = max(1, math.ceil(n / sc.checks))
        retries, s, since = 0, n - 1, 0
        while s >= 0:
            scales[s] = self._step(rec, vjp, s)
            s -= 1
            since += 1
            if since >= every or s < 0:
                since = 0
                stats.syncs += 1
                if not bool(self.ok):
                    retries += 1
                    if retries > sc.max_retries:
                        raise FloatingPointError(
                            f"fp16 adjoint still overflows after {sc.max_retries} halvings "
                            "of the scale; use precision='bf16' or 'fp32'"
                        )
                    sc.overflow()
                    s = int(self.fail_at)
                    stats.syncs += 1
                    self._reset(dev)
        stats.scales = scales
        return retries

    def _reset(self, dev: torch.device) -> None:
        self.ok = torch.ones((), dtype=torch.bool, device=dev)
        self.fail_at = torch.full((), -1, dtype=torch.long, device=dev)

    def _step(self, rec: _Recursion, vjp: StepVJP, s: int) -> Tensor:
        """Step ``s`` seeded with ``S a``; applied only while every step so far was finite."""
        hdt, t, a = rec.pb.hdt, rec.t, rec.a
        # (an empty leaf, e.g. a zero-size batch, has no maximum: it counts as 0)
        amax = torch.stack([al.abs().amax() if al.numel() else al.new_zeros(()) for al in a])
        S = self.sc.scale_for(amax.amax())
        i, gy, gp, gt = vjp(s, [al * S.to(hdt) for al in a])
        inv = (1.0 / S).to(hdt)
        flags = [torch.isfinite(x).all() for x in _present([*gy, *gp, *gt])]
        fin = torch.stack(flags).all()
        ok = self.ok
        self.fail_at = torch.where(ok & ~fin, torch.full_like(self.fail_at, s), self.fail_at)
        self.ok = ok = ok & fin
        cand = rec.inject([x * inv for x in gy], s)
        rec.a = [torch.where(ok, c, al) for c, al in zip(cand, a)]
        for q, x in enumerate(gp):
            if x is not None:
                rec.reached[q] = True
                dq = rec.p_acc[q].dtype
                rec.p_acc[q].add_(torch.where(ok, x.to(dq) * inv.to(dq), 0.0))
        if rec.need_t:
            for k, x in ((i, gt[0]), (i + 1, gt[1])):
                g = rec.g_t[k]
                rec.g_t[k] = torch.where(ok, g + x.to(t.dtype) * inv.to(t.dtype), g)
        return S


def _present(xs: Sequence[Tensor | None]) -> list[Tensor]:
    return [x for x in xs if x is not None]
