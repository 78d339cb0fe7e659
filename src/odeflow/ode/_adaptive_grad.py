"""Gradients of an adaptive solve: the exact discrete adjoint of the accepted steps, and
backprop through them. Step sizes are constants of the solve (chosen without a graph)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._adaptive import Field, Run, StepOptions, integrate_adaptive, integrate_fixed, rebuild_step
from ._tableaus import ButcherTableau

__all__: list[str] = []


def forward_run(
    f: Field,
    tab: ButcherTableau,
    t_out: Sequence[float],
    y0: list[Tensor],
    opts: StepOptions | None,
    ms: Sequence[int] | None,
    store: bool,
) -> Run:
    """An adaptive run (``opts``) or a fixed-grid run (``ms`` steps per interval)."""
    if opts is not None:
        return integrate_adaptive(f, tab, t_out, y0, opts, store=store)  # type: ignore[arg-type]
    assert ms is not None
    return integrate_fixed(f, tab, t_out, ms, y0, store=store)


def stack_outputs(run: Run, like: list[Tensor]) -> list[Tensor]:
    """Per leaf ``(n, *shape)``; outputs the solve did not reach (max_steps) are NaN."""
    out = []
    for leaf, y in enumerate(like):
        rows = [o[leaf] if o is not None else torch.full_like(y, float("nan")) for o in run.outs]
        out.append(torch.stack(rows))
    return out


def vjp_step(
    outputs: list[Tensor],
    seeds: list[Tensor],
    yv: list[Tensor],
    params: list[Tensor],
    pg: list[Tensor | None],
) -> list[Tensor]:
    """One step of the adjoint recursion: the VJP of a rebuilt step's ``outputs`` (its new
    state, then any requested outputs inside it), seeded by ``seeds`` (the adjoint, then the
    outputs' gradients), with respect to the step's start ``yv`` and ``params``. Parameter
    gradients accumulate into ``pg`` in place; returns the adjoint at the step's start."""
    keep = [i for i, o in enumerate(outputs) if o.requires_grad]
    grads = torch.autograd.grad(
        [outputs[i] for i in keep], [*yv, *params], [seeds[i] for i in keep], allow_unused=True
    )
    for i, gp in enumerate(grads[len(yv) :]):
        if gp is not None:
            pg[i] = gp if pg[i] is None else pg[i] + gp
    return [torch.zeros_like(v) if gr is None else gr for gr, v in zip(grads, yv)]


class DiscreteAdjointOfSteps(torch.autograd.Function):
    r"""The exact adjoint of the accepted steps: the forward pass keeps each accepted step's
    start state (no graph); the backward pass rebuilds the steps in reverse, one at a time,
    and applies their VJPs,

    .. math::
        λ_n = (∂Φ_n/∂y_n)^T λ_{n+1} + \sum_{j ∈ n} (∂u_j/∂y_n)^T \bar y_j,\qquad
        \bar θ \mathrel{+}= (∂Φ_n/∂θ)^T λ_{n+1} + \sum_{j ∈ n} (∂u_j/∂θ)^T \bar y_j,

    ``Φ_n`` the step map, ``u_j`` the dense outputs at the requested times inside step ``n``
    and ``\bar y_j`` their cotangents. Step sizes and times are constants, so this equals
    backpropagation through the same accepted steps (tested to 1e-10 in float64)."""

    @staticmethod
    def forward(ctx, info: dict, *tensors: Tensor):  # type: ignore[override]
        n_leaf = info["n_leaf"]
        y0 = [y.detach() for y in tensors[:n_leaf]]
        with torch.no_grad():
            run = forward_run(info["f"], info["tab"], info["t_out"], y0, info["opts"],
                              info["ms"], store=True)  # fmt: skip
        info["run"] = run
        ctx.info = info
        ctx.n_params = len(tensors) - n_leaf
        ctx.save_for_backward(*tensors[n_leaf:])
        return tuple(stack_outputs(run, y0))

    @staticmethod
    def backward(ctx, *gouts: Tensor | None):  # type: ignore[override]
        info = ctx.info
        run: Run = info["run"]
        f, tab = info["f"], info["tab"]
        params = list(ctx.saved_tensors)
        nfe0 = info["fld"].nfe
        first = run.outs[0]
        g = [torch.zeros_like(y) if go is None else go for go, y in zip(gouts, first)]
        lam = [torch.zeros_like(y) for y in first]
        pg: list[Tensor | None] = [None] * len(params)
        for step, y in zip(reversed(run.steps), reversed(run.states)):
            with torch.enable_grad():
                yv = [v.detach().requires_grad_() for v in y]
                y1, outs = rebuild_step(f, tab, step, yv)
                outputs = list(y1)
                seeds = list(lam)
                for (jdx, _), o in zip(step.outputs, outs):
                    outputs += o
                    seeds += [gl[jdx] for gl in g]
            lam = vjp_step(outputs, seeds, yv, params, pg)
        lam = [a + gl[0] for a, gl in zip(lam, g)]
        info["stats"].nfe += info["fld"].nfe - nfe0
        return (None, *lam, *pg)


def backprop_run(
    f: Field,
    tab: ButcherTableau,
    t_out: Sequence[float],
    y0: list[Tensor],
    opts: StepOptions | None,
    ms: Sequence[int] | None,
) -> tuple[Run, list[Tensor]]:
    """Autograd through every stage of every accepted step (the controller's decisions are
    made without a graph, so the step sizes are constants here too)."""
    run = forward_run(f, tab, t_out, y0, opts, ms, store=False)
    return run, stack_outputs(run, y0)


def check_no_time_grad(t: Any, what: str) -> None:
    if isinstance(t, Tensor) and t.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"{what} does not differentiate with respect to the output times t; pass "
            "t.detach(), or use gradient='adjoint' (or 'backprop') on fixed steps "
            "(step_size= or steps_per_interval=), which differentiates in t"
        )
