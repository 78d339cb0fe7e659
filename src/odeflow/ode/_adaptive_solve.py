"""Adaptive solves behind :func:`odeflow.odeint`: arguments, torchdiffeq's options, dispatch
to the gradient of the accepted steps."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._adaptive import MAX_STEPS, SUCCESS, Field, Run, StepOptions
from ._adaptive_grad import DiscreteAdjointOfSteps, backprop_run, check_no_time_grad
from ._compat import functorch_active
from ._continuous import BacksolveFunction
from ._controller import PIController, check_tolerance
from ._embedded import EmbeddedTableau, get_embedded
from ._field import _rng_state
from ._per_sample import PerSampleAdjoint, integrate_per_sample
from ._tableaus import ButcherTableau
from ._walk import _attribute_check, _closure_check

__all__: list[str] = []

DEFAULT_MAX_STEPS = 10_000
DEFAULT_RTOL, DEFAULT_ATOL = 1e-7, 1e-9  # torchdiffeq's

# torchdiffeq's `options` for its adaptive solvers -> odeflow (None: refused, with a reason)
TORCHDIFFEQ_OPTIONS: dict[str, str | None] = {
    "first_step": "first_step",
    "safety": "controller=PIController(safety=...)",
    "ifactor": "controller=PIController(factor_max=...)",
    "dfactor": "controller=PIController(factor_min=...)",
    "max_num_steps": "max_steps",
    "dtype": "times are float64 on the host in every adaptive solve",
    "norm": None,
    "step_t": None,
    "jump_t": None,
}


def check_max_steps(max_steps: Any) -> int:
    if isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral):
        raise TypeError(f"max_steps must be an int >= 1, got {max_steps!r}")
    if max_steps < 1:
        raise ValueError(
            f"max_steps must be at least 1, got {max_steps}; it bounds the attempted steps "
            f"of an adaptive solve (default {DEFAULT_MAX_STEPS})"
        )
    return int(max_steps)


def step_options(
    rtol: Any,
    atol: Any,
    max_steps: Any,
    options: dict | None,
    leaves: list[Tensor],
    keys: Sequence[Any] | None,
) -> tuple[StepOptions, bool]:
    """Validated :class:`StepOptions` from odeint's ``rtol, atol, max_steps, options``
    (``options`` takes odeflow's ``controller``, ``first_step``, ``max_step``,
    ``per_sample_steps`` and the names of torchdiffeq's options listed in
    :data:`TORCHDIFFEQ_OPTIONS`), and whether steps are chosen per sample."""
    rt = _on_leaves("rtol", check_tolerance("rtol", rtol, len(leaves), keys), leaves)
    at = _on_leaves("atol", check_tolerance("atol", atol, len(leaves), keys), leaves)
    if not isinstance(options, dict | None):
        raise TypeError(f"options must be a dict, got {type(options).__name__}")
    opts = dict(options or {})
    ctrl = opts.pop("controller", PIController())
    if not isinstance(ctrl, PIController):
        raise TypeError(f"options['controller'] must be an odeflow.PIController, got {ctrl!r}")
    gains = {k: opts.pop(o) for o, k in
             (("safety", "safety"), ("ifactor", "factor_max"), ("dfactor", "factor_min"))
             if o in opts}  # fmt: skip
    if gains:
        ctrl = PIController(ctrl.pcoeff, ctrl.icoeff, **{
            "safety": ctrl.safety, "factor_min": ctrl.factor_min,
            "factor_max": ctrl.factor_max, **gains})  # fmt: skip
    if "max_num_steps" in opts:
        max_steps = opts.pop("max_num_steps")
    max_steps = check_max_steps(max_steps)
    opts.pop("dtype", None)
    per_sample = opts.pop("per_sample_steps", False)
    if not isinstance(per_sample, bool):
        raise TypeError(f"options['per_sample_steps'] must be True or False, got {per_sample!r}")
    if per_sample:
        shapes = [tuple(y.shape[:1]) for y in leaves]
        if any(len(s) == 0 for s in shapes) or len(set(shapes)) != 1:
            raise ValueError(
                "options['per_sample_steps'] needs every leaf of y0 batched along dim 0 with "
                f"one batch size, got leading shapes {shapes}"
            )
    first = _length(opts.pop("first_step", None), "first_step", allow_none=True)
    max_step = _length(opts.pop("max_step", math.inf), "max_step")
    for k in list(opts):
        why = TORCHDIFFEQ_OPTIONS.get(k, "")
        raise ValueError(
            f"unknown option {k!r} for an adaptive solve"
            + (" (torchdiffeq's, not supported by odeflow)" if why is None else "")
            + "; valid: controller, first_step, max_step, per_sample_steps, and torchdiffeq's "
            "first_step, safety, ifactor, dfactor, max_num_steps, dtype (see "
            "docs/ode-torchdiffeq.md)"
        )
    return StepOptions(rt, at, ctrl, first, max_step, max_steps), per_sample


def _on_leaves(name: str, tols: list, leaves: list[Tensor]) -> list:
    """Tensor tolerances on their leaf's device and dtype, checked to broadcast to it."""
    out = []
    for i, (v, y) in enumerate(zip(tols, leaves)):
        if isinstance(v, Tensor):
            try:
                ok = torch.broadcast_shapes(v.shape, y.shape) == y.shape
            except RuntimeError:
                ok = False
            if not ok:
                raise ValueError(
                    f"{name} for leaf {i} has shape {tuple(v.shape)}, which does not broadcast "
                    f"to the leaf's shape {tuple(y.shape)}"
                )
            v = v.to(y.device, torch.float32 if y.dtype.itemsize < 4 else y.dtype)
        out.append(v)
    return out


def _length(x: Any, name: str, allow_none: bool = False) -> Any:
    if x is None and allow_none:
        return None
    if isinstance(x, Tensor) and x.numel() == 1:
        x = float(x)
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not x > 0 or math.isnan(x):
        raise ValueError(f"options[{name!r}] must be a positive number, got {x!r}")
    if name == "first_step" and not math.isfinite(x):
        raise ValueError(f"options['first_step'] must be finite, got {x!r}")
    return float(x)


def _setup(pb: Any, t: Tensor, leaves: list[Tensor]) -> tuple[Field, list[float], list[Tensor]]:
    """The loop's field (``pb``'s bound field under its precision context), the output times
    as host floats and the state in the solve's precision ``H``."""
    fld, pol, dev = pb.fld, pb.pol, pb.fld.device

    def f(tt: float | Tensor, ys: list[Tensor]) -> list[Tensor]:
        if not isinstance(tt, Tensor):
            tt = torch.tensor(tt, dtype=t.dtype, device=dev)
        elif tt.dtype != t.dtype:
            tt = tt.to(t.dtype)
        with pol.context(dev):
            return fld(tt, ys)

    host = [float(x) for x in t.detach().to("cpu", torch.float64).tolist()]
    return f, host, [y.to(pb.hdt) for y in leaves]


def _needs(t: Tensor, leaves: list[Tensor], plist: list[Tensor]) -> bool:
    return torch.is_grad_enabled() and (any(y.requires_grad for y in leaves) or bool(plist))


def _per_sample(pb: Any, f: Field, host: list[float], y: list[Tensor]) -> list[Tensor]:
    run = integrate_per_sample(f, pb.tab, host, y, pb.adaptive)
    pb.run = run
    return [torch.stack([o[i] for o in run.outs]) for i in range(len(y))]


def _refuse_per_sample(pb: Any, needs: bool, who: str) -> None:
    if needs and pb.per_sample:
        raise ValueError(
            f"{who} does not differentiate per-sample steps (options={{'per_sample_steps': "
            "True}); pass gradient='adjoint' (the exact adjoint of the masked steps) or "
            "'backprop', or solve the batch as one system"
        )


def _refuse_draws(pb: Any, before: Any, who: str) -> None:
    """These adjoints re-evaluate ``func`` without replaying its random draws: a field that
    draws (dropout in training mode) would get the gradient of another function."""
    if _rng_state(pb.fld.device) != before:
        raise ValueError(
            f"func drew random numbers (e.g. dropout in training mode), but {who} re-evaluates "
            "it without replaying them and would differentiate another function: use "
            "gradient='backprop', func.eval(), or fixed steps (whose discrete adjoint replays "
            "the draws)"
        )


def _guard(pb: Any, t: Tensor, leaves: list[Tensor], plist: list[Tensor], who: str) -> bool:
    """Checks shared by the adjoints; whether a gradient is needed."""
    needs = _needs(t, leaves, plist)
    if needs and functorch_active():
        raise ValueError(
            f"{who} does not run under torch.func transforms (adaptive step sizes are host "
            "decisions); use gradient='adjoint' on fixed steps (step_size=), or call odeint "
            "outside the transform"
        )
    check_no_time_grad(t, who)
    if torch.is_grad_enabled():
        _attribute_check(pb, t, leaves, plist)
        if pb.closure_risk:
            _closure_check(pb, t, leaves)
    return needs


def steps_backprop(pb: Any, t: Tensor, leaves: list[Tensor]) -> list[Tensor]:
    """An adaptive solve (``pb.adaptive``) differentiated by autograd through the accepted
    steps (the controller's decisions carry no graph)."""
    check_no_time_grad(t, "gradient='backprop' on steps chosen by the solver")
    f, host, y = _setup(pb, t, leaves)
    if pb.per_sample:
        return pb.outputs(_per_sample(pb, f, host, y))
    run, outs = backprop_run(f, pb.tab, host, y, pb.adaptive, None)
    pb.run = run
    return pb.outputs(outs)


def steps_adjoint(pb: Any, t: Tensor, leaves: list[Tensor], plist: list[Tensor]) -> list[Tensor]:
    """An adaptive solve differentiated by the exact discrete adjoint of its accepted steps."""
    needs = _guard(pb, t, leaves, plist, "the discrete adjoint on steps chosen by the solver")
    f, host, y = _setup(pb, t, leaves)
    if pb.per_sample and needs:
        info = {"f": f, "tab": pb.tab, "t_out": host, "opts": pb.adaptive, "n_leaf": len(y),
                "fld": pb.fld, "stats": pb.stats}  # fmt: skip
        rng = _rng_state(pb.fld.device)
        outs = list(PerSampleAdjoint.apply(info, *y, *plist))
        _refuse_draws(pb, rng, "the discrete adjoint of an adaptive solve")
        pb.run = info["run"]
        return pb.outputs(outs)
    if pb.per_sample:
        with torch.no_grad():
            return pb.outputs(_per_sample(pb, f, host, y))
    if not needs:
        with torch.no_grad():
            run, outs = backprop_run(f, pb.tab, host, y, pb.adaptive, None)
        pb.run = run
        return pb.outputs(outs)
    info = {"f": f, "tab": pb.tab, "t_out": host, "opts": pb.adaptive, "ms": None,
            "n_leaf": len(y), "policy": None, "fld": pb.fld, "stats": pb.stats}  # fmt: skip
    rng = _rng_state(pb.fld.device)
    outs = list(DiscreteAdjointOfSteps.apply(info, *y, *plist))
    _refuse_draws(pb, rng, "the discrete adjoint of an adaptive solve")
    pb.run = info["run"]
    return pb.outputs(outs)


def steps_backsolve(
    pb: Any, t: Tensor, leaves: list[Tensor], plist: list[Tensor], policy: Any, adaptive: bool
) -> list[Tensor]:
    """A solve (adaptive, or on ``pb``'s fixed grid) differentiated by the continuous
    adjoint ``policy`` (a :class:`~odeflow.ode.BacksolveAdjoint`)."""
    needs = _guard(pb, t, leaves, plist, "BacksolveAdjoint")  # (also on fixed grids)
    _refuse_per_sample(pb, needs, "BacksolveAdjoint")
    f, host, y = _setup(pb, t, leaves)
    opts, ms = (pb.adaptive, None) if adaptive else (None, pb.ms)
    if pb.per_sample:
        with torch.no_grad():
            return pb.outputs(_per_sample(pb, f, host, y))
    if not needs:
        with torch.no_grad():
            run, outs = backprop_run(f, pb.tab, host, y, opts, ms)
        pb.run = run
        return pb.outputs(outs)
    info = {"f": f, "tab": pb.tab, "t_out": host, "opts": opts, "ms": ms,
            "n_leaf": len(y), "policy": policy, "fld": pb.fld, "stats": pb.stats}  # fmt: skip
    rng = _rng_state(pb.fld.device)
    outs = list(BacksolveFunction.apply(info, *y, *plist))
    _refuse_draws(pb, rng, "BacksolveAdjoint")
    pb.run = info["run"]
    return pb.outputs(outs)


def choose_steps(
    method: Any,
    tab: ButcherTableau,
    rtol: Any,
    atol: Any,
    max_steps: Any,
    options: Any,
    steps_per_interval: Any,
    step_size: Any,
    leaves: list[Tensor],
    spec: Any,
    fp16: bool,
) -> tuple[StepOptions | None, bool, Any]:
    """Fixed or adaptive steps from :func:`odeflow.odeint`'s arguments: the step-size rule
    (``None``: the fixed grid), per-sample steps, and ``step_size`` (torchdiffeq's
    ``options={"step_size": h}`` moved to the keyword)."""
    if not isinstance(options, dict | None):
        raise TypeError(f"options must be a dict, got {type(options).__name__}")
    options = dict(options or {})
    if "step_size" in options:
        if step_size is not None:
            raise ValueError("give step_size once: as the keyword or in options, not both")
        step_size = options.pop("step_size")
    fixed = step_size is not None or steps_per_interval != 1
    asked = any(x is not None for x in (rtol, atol, max_steps)) or bool(options)
    if asked and fixed:
        raise ValueError(
            "rtol/atol/max_steps/options ask for adaptive steps but step_size or "
            "steps_per_interval ask for fixed ones; give one or the other"
        )
    if asked:
        tab = get_embedded(method if isinstance(method, str) else tab)
    if fixed or not isinstance(tab, EmbeddedTableau):
        return None, False, step_size
    if fp16:
        raise ValueError(
            "precision='fp16' is not available with adaptive steps (its dynamic adjoint "
            "scaling works on fixed grids); use precision='bf16' or 'fp32', or fixed steps"
        )
    keys = spec[1] if spec[0] == "dict" else None
    opts, per_sample = step_options(
        DEFAULT_RTOL if rtol is None else rtol,
        DEFAULT_ATOL if atol is None else atol,
        DEFAULT_MAX_STEPS if max_steps is None else max_steps,
        options,
        leaves,
        keys,
    )
    return opts, per_sample, step_size


def run_status(pb: Any) -> tuple[str, int, int]:
    """``(status, accepted steps, rejected steps)`` of the adaptive run a solve left in
    ``pb.run`` (per-sample runs: the largest count of one sample)."""
    run = pb.run
    if isinstance(run, Run):
        return run.status, run.accepted, run.rejected
    done = bool(run.done.all())
    return ((SUCCESS if done else MAX_STEPS), int(run.accepted.max()), int(run.rejected.max()))


def raise_unfinished(pb: Any) -> None:
    """:func:`odeflow.odeint` has no status to report: an adaptive solve that stopped early
    raises, naming the fix."""
    status, accepted, rejected = run_status(pb)
    if status == SUCCESS:
        return
    where = ""
    if isinstance(pb.run, Run) and pb.run.steps:
        last = pb.run.steps[-1]
        where = f" at t = {last.t + last.h:.6g}"
    if status == MAX_STEPS:
        raise RuntimeError(
            f"the adaptive solve stopped after max_steps={pb.adaptive.max_steps} attempted "
            f"steps ({accepted} accepted, {rejected} rejected){where}; raise max_steps, loosen "
            "rtol/atol, or call odeflow.solve for the partial trajectory (status "
            "MAX_STEPS_REACHED)"
        )
    raise RuntimeError(
        f"the adaptive solve's step size fell to the round-off of t{where} (a blow-up or a "
        "stiff region?); check func, loosen rtol/atol, or call odeflow.solve for the partial "
        "trajectory (status STEP_SIZE_TOO_SMALL)"
    )
