"""Adaptive steps chosen per sample of a batch (torchode's idea), as masked tensor ops.

Every sample ``b`` (index 0 of every leaf) has its own time ``t_b``, step ``h_b``, error
ratio and accept/reject decision; one loop iteration evaluates the field once per stage on
the whole batch (finished samples take zero steps). ``func`` receives the times as a
``(batch,)`` tensor."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._adaptive import StepOptions
from ._adaptive_grad import vjp_step
from ._controller import PIController
from ._embedded import EmbeddedTableau

__all__: list[str] = []

BField = Callable[[Tensor, list[Tensor]], list[Tensor]]


@dataclass
class BatchRun:
    outs: list[list[Tensor]]  # per output time: leaves (batch, ...); NaN where unreached
    nfe: int
    accepted: Tensor  # (batch,) accepted steps per sample
    rejected: Tensor  # (batch,)
    done: Tensor  # (batch,) bool: reached the end


@dataclass
class Iteration:
    """One pass of the per-sample loop: per-sample start times and (signed) steps, which
    samples accepted, the outputs it set as ``(index, mask, θ)``, and its start state."""

    t: Tensor
    hs: Tensor
    acc: Tensor
    outputs: list[tuple[int, Tensor, Tensor]]
    y: list[Tensor]


def rebuild_iteration(f: BField, tab, it: Iteration, y: list[Tensor]):
    """The iteration's map from its start state (the first stage recomputed: it equals the
    reused one), as ``(new state, [output values])``."""
    ks, y1 = _stages(f, tab, it.t, it.hs, y)
    outs = [_output(f, tab, it.t, it.hs, y, y1, ks, theta) for _, _, theta in it.outputs]
    return [torch.where(_col(it.acc, a).bool(), b, a) for a, b in zip(y, y1)], outs


class PerSampleAdjoint(torch.autograd.Function):
    """The exact adjoint of the per-sample iterations (masked steps, step sizes constant):
    the forward pass keeps each iteration's start state, the backward pass rebuilds the
    iterations in reverse and applies their VJPs, output cotangents entering at the
    iteration (and samples) that set them."""

    @staticmethod
    def forward(ctx, info: dict, *tensors: Tensor):  # type: ignore[override]
        n = info["n_leaf"]
        y0 = [v.detach() for v in tensors[:n]]
        iters: list[Iteration] = []
        with torch.no_grad():
            run = integrate_per_sample(info["f"], info["tab"], info["t_out"], y0, info["opts"],
                                       record=iters)  # fmt: skip
        info["run"], info["iters"] = run, iters
        ctx.info = info
        ctx.save_for_backward(*tensors[n:])
        return tuple(torch.stack([o[i] for o in run.outs]) for i in range(n))

    @staticmethod
    def backward(ctx, *gouts: Tensor | None):  # type: ignore[override]
        info = ctx.info
        params = list(ctx.saved_tensors)
        nfe0 = info["fld"].nfe
        first = info["run"].outs[0]
        n_out = len(info["t_out"])
        g = [v.new_zeros((n_out, *v.shape)) if go is None else go for go, v in zip(gouts, first)]
        lam = [torch.zeros_like(v) for v in first]
        pg: list[Tensor | None] = [None] * len(params)
        for it in reversed(info["iters"]):
            with torch.enable_grad():
                yv = [v.detach().requires_grad_() for v in it.y]
                y_new, outs = rebuild_iteration(info["f"], info["tab"], it, yv)
                outputs, seeds = list(y_new), list(lam)
                for (j, hit, _), o in zip(it.outputs, outs):
                    outputs += o
                    seeds += [gl[j] * _col(hit, gl[j]) for gl in g]
            lam = vjp_step(outputs, seeds, yv, params, pg)
        lam = [a + gl[0] for a, gl in zip(lam, g)]
        info["stats"].nfe += info["fld"].nfe - nfe0
        return (None, *lam, *pg)


def _col(x: Tensor, like: Tensor) -> Tensor:
    """A ``(batch,)`` tensor shaped to broadcast against a leaf ``(batch, ...)``."""
    return x.reshape(x.shape[0], *([1] * (like.ndim - 1))).to(like.dtype)


def _combine(y: list[Tensor], ks: Sequence[list[Tensor]], h: Tensor, w: Sequence) -> list[Tensor]:
    """``y + Σ_j (h w_j) k_j`` with a per-sample ``h`` (and ``w_j`` floats or ``(batch,)``)."""
    out = []
    for leaf, yl in enumerate(y):
        acc = yl
        for j, wj in enumerate(w):
            if j < len(ks) and not (isinstance(wj, float) and wj == 0.0):
                acc = acc + _col(h * wj, yl) * ks[j][leaf]
        out.append(acc)
    return out


def _stages(f: BField, tab, t: Tensor, h: Tensor, y: list[Tensor], k1=None):
    ks: list[list[Tensor]] = []
    for i in range(tab.stages):
        if i == 0 and k1 is not None:
            ks.append(k1)
            continue
        yi = y if i == 0 else _combine(y, ks, h, tab.a[i][:i])
        ks.append(f(t + tab.c[i] * h, yi))
    return ks, _combine(y, ks, h, tab.b)


def _rms(x: list[Tensor], scale: list[Tensor]) -> Tensor:
    """Per-sample RMS of ``x / scale`` over all non-batch elements of all leaves."""
    tot = sum((u / s).square().reshape(u.shape[0], -1).sum(1) for u, s in zip(x, scale))
    n = sum(u[0].numel() for u in x)
    return (tot / max(n, 1)).sqrt()


def _scale(y0, y1, rtol, atol):
    return [torch.maximum(a.abs(), b.abs()) * rt + at for a, b, rt, at in zip(y0, y1, rtol, atol)]


def _first_step(f, tab, t0, y, f0, d, opts) -> Tensor:
    """Hairer's first step (see :func:`odeflow.ode._controller.initial_step`) per sample."""
    sc = _scale(y, y, opts.rtol, opts.atol)
    d0, d1 = _rms(y, sc), _rms(f0, sc)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    y1 = [a + _col(d * h0, a) * k for a, k in zip(y, f0)]
    f1 = f(t0 + d * h0, y1)
    d2 = _rms([a - b for a, b in zip(f1, f0)], sc) / h0
    m = torch.maximum(d1, d2)
    h1 = torch.where(m <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6),
                     (0.01 / m.clamp(min=1e-300)) ** (1.0 / tab.order))  # fmt: skip
    return torch.minimum(100 * h0, h1)


def _factor(c: PIController, r: Tensor, prev: Tensor, k: int, acc: Tensor, grow: Tensor):
    ok = torch.isfinite(r)
    rr = torch.where(ok, r, torch.ones_like(r)).clamp(min=1e-300)
    fa = c.safety * rr ** (-(c.icoeff + c.pcoeff) / k) * prev.clamp(min=1e-4) ** (c.pcoeff / k)
    fa = torch.where(r == 0, torch.full_like(r, c.factor_max), fa)
    fa = fa.clamp(c.factor_min, c.factor_max)
    fa = torch.where(grow, fa, fa.clamp(max=1.0))
    fr = (c.safety * rr ** (-1.0 / k)).clamp(c.factor_min, 1.0)
    return torch.where(ok, torch.where(acc, fa, fr), torch.full_like(r, c.factor_min))


def _output(f, tab, t, h, y, y1, ks, theta):
    """Per-sample dense output at ``θ`` (a ``(batch,)`` tensor)."""
    if tab.dense is not None:
        w = [sum(cf * theta ** (q + 1) for q, cf in enumerate(row)) for row in tab.dense]
        return _combine(y, ks, h, w)
    if tab.order <= 3:  # cubic Hermite with the FSAL end slope (or one evaluation)
        f1 = ks[-1] if tab.fsal else f(t + h, y1)
        th = theta
        c = [2 * th**3 - 3 * th**2 + 1, (th**3 - 2 * th**2 + th) * h, 3 * th**2 - 2 * th**3,
             (th**3 - th**2) * h]  # fmt: skip
        return [_col(c[0], a) * a + _col(c[1], a) * fa + _col(c[2], a) * b + _col(c[3], a) * fb
                for a, b, fa, fb in zip(y, y1, ks[0], f1)]  # fmt: skip
    return _stages(f, tab, t, theta * h, y, ks[0])[1]


def integrate_per_sample(
    f: BField,
    tab: EmbeddedTableau,
    t_out: Sequence[float],
    y0: list[Tensor],
    opts: StepOptions,
    record: list | None = None,
) -> BatchRun:
    """Solve every sample with its own steps; outputs by dense output at the shared ``t_out``.
    One host sync per iteration (whether all samples are done). ``record`` receives each
    iteration's :class:`Iteration` (for the discrete adjoint)."""
    B, dev = y0[0].shape[0], y0[0].device
    tdt = y0[0].dtype
    T = torch.tensor(list(t_out), dtype=torch.float64, device=dev)
    t0, t_end = float(t_out[0]), float(t_out[-1])
    d = 1.0 if t_end > t0 else -1.0
    rtol = [r if isinstance(r, float) else r.to(dev) for r in opts.rtol]
    atol = [a if isinstance(a, float) else a.to(dev) for a in opts.atol]
    opts = StepOptions(rtol, atol, opts.controller, opts.first_step, opts.max_step,
                       opts.max_steps)  # fmt: skip
    nfe = [0]

    def fb(t: Tensor, y: list[Tensor]) -> list[Tensor]:
        nfe[0] += 1
        return f(t.to(tdt), y)

    t = torch.full((B,), t0, dtype=torch.float64, device=dev)
    y = list(y0)
    f0 = fb(t, y)
    if opts.first_step is not None:
        h = torch.full_like(t, min(opts.first_step, abs(t_end - t0)))
    else:
        with torch.no_grad():  # (step sizes are constants for the gradient)
            h = _first_step(fb, tab, t, y, f0, d, opts)
    h = h.clamp(max=min(opts.max_step, abs(t_end - t0)))
    outs = [list(y0)] + [[torch.full_like(v, float("nan")) for v in y0] for _ in t_out[1:]]
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    grow = torch.ones_like(done)
    prev = torch.ones_like(t)
    acc_n = torch.zeros(B, dtype=torch.long, device=dev)
    rej_n = torch.zeros_like(acc_n)
    k, ew = tab.error_order, tab.error_weights
    for _ in range(opts.max_steps):
        if bool(done.all()):
            break
        rem = (t_end - t) * d
        last = 1.01 * h >= rem
        hs = torch.where(done, torch.zeros_like(h), d * torch.where(last, rem, h))
        ks, y1 = _stages(fb, tab, t, hs, y, f0)
        with torch.no_grad():
            err = _combine([torch.zeros_like(v) for v in y], ks, hs, ew)
            r = _rms(err, _scale(y, y1, opts.rtol, opts.atol))
        acc = (r <= 1.0) & ~done
        t1 = torch.where(last, torch.full_like(t, t_end), t + hs)
        it = Iteration(t, hs, acc, [], y)
        for j in range(1, len(t_out)):
            hit = acc & ((T[j] - t1) * d <= 0) & ((T[j] - t) * d > 0)
            if bool(hit.any()):
                theta = torch.where(hit, (T[j] - t) / torch.where(hit, hs, torch.ones_like(hs)),
                                    torch.ones_like(hs))  # fmt: skip
                theta = torch.where(T[j] == t1, torch.ones_like(theta), theta)
                val = _output(fb, tab, t, hs, y, y1, ks, theta)
                outs[j] = [torch.where(_col(hit, o).bool(), v, o) for v, o in zip(val, outs[j])]
                it.outputs.append((j, hit, theta))
        if record is not None:
            record.append(it)
        y = [torch.where(_col(acc, a).bool(), b, a) for a, b in zip(y, y1)]
        nxt = ks[-1] if tab.fsal else None
        t = torch.where(acc, t1, t)
        f0 = (fb(t, y) if nxt is None else
              [torch.where(_col(acc, a).bool(), b, a) for a, b in zip(f0, nxt)])  # fmt: skip
        fac = _factor(opts.controller, r, prev, k, acc, grow)
        prev = torch.where(acc, r, prev)
        grow = acc | done
        h = torch.where(done, h, (hs.abs() * fac).clamp(max=opts.max_step))
        acc_n += acc.long()
        rej_n += (~acc & ~done).long()
        done = done | (acc & last)
    return BatchRun(outs, nfe[0], acc_n, rej_n, done)
