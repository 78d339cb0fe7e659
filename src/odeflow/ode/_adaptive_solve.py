"""Adaptive solves behind :func:`odeflow.odeint`: arguments, torchdiffeq's options, dispatch
to the gradient of the accepted steps."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from . import _tree
from ._adaptive import Run, StepOptions
from ._adaptive_grad import (
    DiscreteAdjointOfSteps,
    backprop_run,
    check_no_time_grad,
    make_field,
)
from ._backsolve import BacksolveAdjoint, BacksolveFunction
from ._controller import PIController, check_tolerance
from ._tableaus import ButcherTableau

__all__: list[str] = []

DEFAULT_MAX_STEPS = 10_000

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
) -> StepOptions:
    """Validated :class:`StepOptions` from odeint's ``rtol, atol, max_steps, options``
    (``options`` takes odeflow's ``controller``, ``first_step``, ``max_step`` and the names of
    torchdiffeq's options listed in :data:`TORCHDIFFEQ_OPTIONS`)."""
    rt = check_tolerance("rtol", rtol, len(leaves), keys)
    at = check_tolerance("atol", atol, len(leaves), keys)
    opts = dict(options or {})
    if not isinstance(options, dict | None):
        raise TypeError(f"options must be a dict, got {type(options).__name__}")
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
    first = _length(opts.pop("first_step", None), "first_step", allow_none=True)
    max_step = _length(opts.pop("max_step", math.inf), "max_step")
    for k in list(opts):
        why = TORCHDIFFEQ_OPTIONS.get(k, "")
        raise ValueError(
            f"unknown option {k!r} for an adaptive solve"
            + (" (torchdiffeq's, not supported by odeflow)" if why is None else "")
            + "; valid: controller, first_step, max_step, and torchdiffeq's first_step, "
            "safety, ifactor, dfactor, max_num_steps, dtype (see docs/ode-torchdiffeq.md)"
        )
    return StepOptions(rt, at, ctrl, first, max_step, max_steps)


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


def run_steps(
    func: Callable,
    leaves: list[Tensor],
    spec: _tree.Spec,
    t: Tensor,
    host: Sequence[float],
    tab: ButcherTableau,
    gradient: Any,
    plist: list[Tensor],
    opts: StepOptions | None,
    ms: Sequence[int] | None = None,
) -> tuple[list[Tensor], Run]:
    """Solve on the accepted steps of an adaptive run (``opts``) or on a fixed grid (``ms``
    steps per interval) and attach the gradient ``gradient`` asks for: the discrete adjoint
    of the accepted steps (:class:`~odeflow.DiscreteAdjoint`), backprop through them
    (:class:`~odeflow.Backprop`) or the continuous adjoint (:class:`BacksolveAdjoint`).
    Returns the stacked outputs per leaf and the :class:`Run` (steps, NFE, status)."""
    f = make_field(func, spec, t.dtype, t.device)
    needs = torch.is_grad_enabled() and (any(y.requires_grad for y in leaves) or bool(plist))
    if needs:
        check_no_time_grad(t, f"gradient={type(gradient).__name__}() on steps chosen by "
                              "the solver" if opts is not None else "BacksolveAdjoint")  # fmt: skip
    info = {"f": f, "tab": tab, "t_out": list(host), "opts": opts, "ms": ms,
            "n_leaf": len(leaves), "policy": gradient}  # fmt: skip
    kind = type(gradient).__name__
    if kind == "Backprop" or not needs:
        run, outs = backprop_run(f, tab, host, list(leaves), opts, ms)
        return outs, run
    if isinstance(gradient, BacksolveAdjoint):
        outs = list(BacksolveFunction.apply(info, *leaves, *plist))
    else:
        outs = list(DiscreteAdjointOfSteps.apply(info, *leaves, *plist))
    return outs, info["run"]
