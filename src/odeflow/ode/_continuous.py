"""The continuous adjoint (optimize-then-discretize): the adjoint ODE solved backward, with
the state re-integrated backward (backsolve) or from per-step checkpoints; the policy is
:class:`odeflow.ode.BacksolveAdjoint`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._adaptive import Field, Run, StepOptions, integrate_adaptive, integrate_fixed, rk_stages
from ._adaptive_grad import forward_run, stack_outputs
from ._embedded import EmbeddedTableau
from ._interp import interpolate
from ._tableaus import ButcherTableau

__all__: list[str] = []


def _vjp_field(f: Field, params: list[Tensor], n_leaf: int, with_y: bool):
    """The backward field ``(y, a, g) ↦ (f, −J_yᵀ a, −J_θᵀ a)`` (``with_y``), or
    ``(a, g) ↦ (−J_yᵀ a, −J_θᵀ a)`` with ``y`` supplied by a function of ``t``."""

    def vjps(t: float, y: list[Tensor], a: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        with torch.enable_grad():
            yv = [v.detach().requires_grad_() for v in y]
            fy = f(t, yv)
            keep = [i for i, k in enumerate(fy) if k.requires_grad]
            gr = torch.autograd.grad(
                [fy[i] for i in keep], [*yv, *params], [a[i] for i in keep], allow_unused=True
            ) if keep else [None] * (len(yv) + len(params))  # fmt: skip
        da = [torch.zeros_like(v) if g is None else -g for g, v in zip(gr[:n_leaf], y)]
        dg = [torch.zeros_like(p) if g is None else -g for g, p in zip(gr[n_leaf:], params)]
        return [k.detach() for k in fy], da + dg

    if with_y:

        def aug(t: float, z: list[Tensor]) -> list[Tensor]:
            fy, rest = vjps(t, z[:n_leaf], z[n_leaf : 2 * n_leaf])
            return fy + rest

        return aug
    return vjps


def _seed(a: list[Tensor], gouts, j: int) -> list[Tensor]:
    return [x if g is None else x + g[j] for x, g in zip(a, gouts)]


class BacksolveFunction(torch.autograd.Function):
    """Forward without a graph; backward by the continuous adjoint (``info["policy"]``: a
    :class:`~odeflow.ode.BacksolveAdjoint`)."""

    @staticmethod
    def forward(ctx, info: dict, *tensors: Tensor):  # type: ignore[override]
        n_leaf = info["n_leaf"]
        y0 = [y.detach() for y in tensors[:n_leaf]]
        with torch.no_grad():
            run = forward_run(info["f"], info["tab"], info["t_out"], y0, info["opts"],
                              info["ms"], store=info["policy"].checkpoints)  # fmt: skip
        info["run"] = run
        ctx.info = info
        ctx.save_for_backward(*tensors[n_leaf:])
        return tuple(stack_outputs(run, y0))

    @staticmethod
    def backward(ctx, *gouts: Tensor | None):  # type: ignore[override]
        info = ctx.info
        params = list(ctx.saved_tensors)
        run: Run = info["run"]
        nfe0 = info["fld"].nfe
        with torch.no_grad():
            if info["policy"].checkpoints:
                a, g = _checkpointed(info, run, params, gouts)
            else:
                a, g = _backsolve(info, run, params, gouts)
        info["stats"].nfe += info["fld"].nfe - nfe0
        return (None, *a, *[gi if p.requires_grad else None for gi, p in zip(g, params)])


def _backsolve(info: dict, run: Run, params: list[Tensor], gouts) -> tuple[list, list]:
    f, tab, n_leaf, t_out = info["f"], info["tab"], info["n_leaf"], info["t_out"]
    aug = _vjp_field(f, params, n_leaf, with_y=True)
    last = max(j for j, o in enumerate(run.outs) if o is not None)
    y = list(run.outs[last])
    a = _seed([torch.zeros_like(v) for v in y], gouts, last)
    g = [torch.zeros_like(p) for p in params]
    opts: StepOptions | None = info["opts"]
    pol = info["policy"]  # BacksolveAdjoint
    for j in range(last, 0, -1):
        z0 = y + a + g
        seg = [t_out[j], t_out[j - 1]]
        if opts is not None:
            rt = [pol.rtol] * len(z0) if pol.rtol is not None else _extend(opts.rtol, n_leaf, z0)
            at = [pol.atol] * len(z0) if pol.atol is not None else _extend(opts.atol, n_leaf, z0)
            if pol.seminorm:  # the error norm over (y, a) only: g never feeds back
                rt, at = rt[: 2 * n_leaf], at[: 2 * n_leaf]
            bo = StepOptions(rt, at, opts.controller, None, opts.max_step, opts.max_steps)
            r = integrate_adaptive(aug, tab, seg, z0, bo)  # type: ignore[arg-type]
            if r.status != "success":
                raise RuntimeError(
                    f"BacksolveAdjoint: the backward solve stopped ({r.status}) on "
                    f"[{seg[0]}, {seg[1]}]; raise max_steps or loosen the adjoint's rtol/atol"
                )
        else:
            r = integrate_fixed(aug, tab, seg, [info["ms"][j - 1]], z0)
        z = r.outs[-1]
        y, a, g = z[:n_leaf], z[n_leaf : 2 * n_leaf], z[2 * n_leaf :]
        a = _seed(a, gouts, j - 1)
    return a, g


def _extend(tol: Sequence, n_leaf: int, z: list[Tensor]) -> list:
    """Per-leaf forward tolerances for ``(y, a)``; the parameter part takes leaf 0's."""
    first = tol[0] if not isinstance(tol[0], Tensor) else float(tol[0].max())
    return [*tol, *tol, *([first] * (len(z) - 2 * n_leaf))]


def _checkpointed(info: dict, run: Run, params: list[Tensor], gouts) -> tuple[list, list]:
    """Per step, backward: re-integrate the step from its checkpoint, then take RK steps of
    the adjoint ODE across it (split at the outputs inside it) with ``y`` from the step's
    dense output at the stage times."""
    f, tab, n_leaf = info["f"], info["tab"], info["n_leaf"]
    vjps = _vjp_field(f, params, n_leaf, with_y=False)
    a = [torch.zeros_like(v) for v in run.outs[0]]
    g = [torch.zeros_like(p) for p in params]
    hermite = getattr(tab, "dense", None) is None
    for step, y in zip(reversed(run.steps), reversed(run.states)):
        ks, y1 = rk_stages(f, tab, step.t, step.h, y)
        fsal = isinstance(tab, EmbeddedTableau) and tab.fsal
        f1 = (ks[-1] if fsal else f(step.t + step.h, y1)) if hermite else None

        def adj(t: float, z: list[Tensor], st=step, y=y, y1=y1, ks=ks, f1=f1) -> list[Tensor]:
            th = (t - st.t) / st.h
            u = y if th == 0.0 else interpolate(tab, y, y1, ks, f1, st.h, th)
            return vjps(t, u, z[:n_leaf])[1]

        th_hi = 1.0
        for jdx, th in sorted(step.outputs, key=lambda o: -o[1]):  # latest output first
            if th < th_hi:
                a, g = _adjoint_piece(adj, tab, step, th_hi, th, a, g, n_leaf)
                th_hi = th
            a = _seed(a, gouts, jdx)
        a, g = _adjoint_piece(adj, tab, step, th_hi, 0.0, a, g, n_leaf)
    return _seed(a, gouts, 0), g


def _adjoint_piece(adj, tab: ButcherTableau, step, th_hi: float, th_lo: float, a, g, n_leaf):
    """One RK step of the adjoint ODE from ``t + θ_hi h`` back to ``t + θ_lo h`` (the end
    points of the step are exact: ``θ = 1`` reads the checkpointed step's end state)."""
    t_hi = step.t + step.h if th_hi == 1.0 else step.t + th_hi * step.h
    hb = (th_lo - th_hi) * step.h

    _, z = rk_stages(adj, tab, t_hi, hb, a + g)
    return z[:n_leaf], z[n_leaf:]
