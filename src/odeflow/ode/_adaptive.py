"""The adaptive Runge–Kutta loop: embedded error estimate, step-size control, dense output.

The loop works on a state given as a list of tensors (the leaves of ``y0``) and a field
``f(t: float, leaves) -> leaves``; step sizes and times are host floats (float64), so that
they are constants for every gradient (the accepted steps are differentiated, not the
controller), as in diffrax."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._controller import PIController, Tol, error_ratio, initial_step
from ._embedded import EmbeddedTableau
from ._interp import combine, interpolate
from ._tableaus import ButcherTableau

__all__: list[str] = []

Field = Callable[[float, list[Tensor]], list[Tensor]]

SUCCESS, MAX_STEPS, STEP_TOO_SMALL = "success", "max_steps_reached", "step_size_too_small"


def rk_stages(
    f: Field,
    tab: ButcherTableau,
    t: float,
    h: float,
    y: list[Tensor],
    k1: list[Tensor] | None = None,
) -> tuple[list[list[Tensor]], list[Tensor]]:
    """The stages ``k_i = f(t + c_i h, y + h Σ_j a_ij k_j)`` of one step (``k1`` reused when
    given: FSAL) and the new state ``y + h Σ_i b_i k_i``. For an FSAL pair the new state *is*
    the last stage's input (the same operations), so the next step's reused first stage is
    bitwise ``f(t + h, y_new)``."""
    ks: list[list[Tensor]] = []
    last = None
    for i in range(tab.stages):
        if i == 0 and k1 is not None:
            ks.append(k1)
            continue
        yi = y if i == 0 else combine(y, ks, h, tab.a[i][:i])
        if i == tab.stages - 1:
            last = yi
        ks.append(f(t + tab.c[i] * h, yi))
    fsal = isinstance(tab, EmbeddedTableau) and tab.fsal
    y1 = last if fsal and last is not None else combine(y, ks, h, tab.b)
    return ks, y1


@dataclass
class Step:
    """One accepted step: start ``t``, size ``h`` (signed) and the outputs it produced as
    ``(index into t_out, θ)`` with ``t_out[index] = t + θ h``."""

    t: float
    h: float
    outputs: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Run:
    """What one forward solve produced."""

    outs: list[list[Tensor] | None]  # per output time: the state's leaves (None: unreached)
    steps: list[Step]
    states: list[list[Tensor]]  # the state at each accepted step's start (if stored)
    nfe: int = 0
    accepted: int = 0
    rejected: int = 0
    status: str = SUCCESS


@dataclass(frozen=True)
class StepOptions:
    """The step-size rule of one adaptive solve (checked by the caller)."""

    rtol: list[Tol]
    atol: list[Tol]
    controller: PIController = field(default_factory=PIController)
    first_step: float | None = None
    max_step: float = math.inf
    max_steps: int = 10_000


class _Counted:
    def __init__(self, f: Field):
        self.f, self.nfe = f, 0

    def __call__(self, t: float, y: list[Tensor]) -> list[Tensor]:
        self.nfe += 1
        return self.f(t, y)


def _end_slope(f: Field, tab: ButcherTableau, ks, t: float, h: float, y1) -> list[Tensor]:
    """``f(t + h, y1)``: an FSAL pair's last stage, else one evaluation."""
    if isinstance(tab, EmbeddedTableau) and tab.fsal:
        return ks[-1]
    return f(t + h, y1)


def dense_output(
    f: Field,
    tab: ButcherTableau,
    t: float,
    h: float,
    y: list[Tensor],
    y1: list[Tensor],
    ks: list[list[Tensor]],
    theta: float,
    slope: list,
) -> list[Tensor]:
    """The state at ``t + θh`` inside an accepted step ``y → y1`` with stages ``ks``:
    ``y1`` at ``θ = 1``; else the pair's own interpolant; else, for a method of order ≤ 3,
    the cubic Hermite interpolant (its end slope cached in ``slope``); else a partial step
    of the method of size ``θh`` from ``y`` (``s − 1`` evaluations, the method's order: a
    cubic would cap a high-order method's outputs at ``O(h⁴)``). The step sizes are never
    shortened for an output."""
    if theta == 1.0:
        return y1
    if getattr(tab, "dense", None) is not None or tab.order <= 3:
        if not slope and getattr(tab, "dense", None) is None:
            slope.append(_end_slope(f, tab, ks, t, h, y1))
        return interpolate(tab, y, y1, ks, slope[0] if slope else None, h, theta)
    return rk_stages(f, tab, t, theta * h, y, ks[0])[1]


def integrate_adaptive(
    f: Field,
    tab: EmbeddedTableau,
    t_out: Sequence[float],
    y0: list[Tensor],
    opts: StepOptions,
    store: bool = False,
) -> Run:
    """Solve from ``t_out[0]`` to ``t_out[-1]`` with error-controlled steps, recording the
    state at every ``t_out`` by dense output (outputs never shorten a step). ``store`` keeps
    each accepted step's start state (for the discrete adjoint's rebuild)."""
    fc = _Counted(f)
    n_out = len(t_out)
    t0, t_end = float(t_out[0]), float(t_out[-1])
    d = 1.0 if t_end > t0 else -1.0
    run = Run(outs=[list(y0)] + [None] * (n_out - 1), steps=[], states=[])
    k = tab.error_order
    ew = tab.error_weights
    ctrl = opts.controller
    y = list(y0)
    f0 = fc(t0, y)
    if opts.first_step is not None:
        h = min(opts.first_step, abs(t_end - t0))
    else:
        h = initial_step(fc, t0, y, f0, d, tab.order, opts.rtol, opts.atol)
    h = min(h, opts.max_step, abs(t_end - t0))
    t, j, prev, grow, attempts = t0, 1, 1.0, True, 0
    while j < n_out:
        if attempts >= opts.max_steps:
            run.status = MAX_STEPS
            break
        if abs(h) <= 16 * math.ulp(max(abs(t), 1e-300)):
            run.status = STEP_TOO_SMALL
            break
        attempts += 1
        last = (t + 1.01 * d * h - t_end) * d >= 0  # (a sliver left over would cost a step)
        hs = (t_end - t) if last else d * h
        ks, y1 = rk_stages(fc, tab, t, hs, y, f0)
        with torch.no_grad():
            err = combine([torch.zeros_like(v) for v in y], ks, hs, ew)
            r = float(error_ratio(err, y, y1, opts.rtol, opts.atol))
        if r <= 1.0:  # (NaN compares false: rejected)
            t1 = t_end if last else t + hs
            step = Step(t, hs)
            slope: list = []
            while j < n_out and (t_out[j] - t1) * d <= 0:
                theta = 1.0 if t_out[j] == t1 else (t_out[j] - t) / hs
                run.outs[j] = dense_output(fc, tab, t, hs, y, y1, ks, theta, slope)
                step.outputs.append((j, theta))
                j += 1
            if store:
                run.states.append(y)
            run.steps.append(step)
            run.accepted += 1
            f0 = slope[0] if slope else _end_slope(fc, tab, ks, t, hs, y1)
            fac = ctrl.factor(r, prev, k, accepted=True, grow=grow)
            prev, grow = r, True
            t, y = t1, y1
        else:
            run.rejected += 1
            fac = ctrl.factor(r, prev, k, accepted=False)
            grow = False
        h = min(abs(hs) * fac, opts.max_step)
    run.nfe = fc.nfe
    return run


def integrate_fixed(
    f: Field,
    tab: ButcherTableau,
    t_out: Sequence[float],
    ms: Sequence[int],
    y0: list[Tensor],
    store: bool = False,
) -> Run:
    """``ms[i]`` equal steps on each interval ``[t_out[i], t_out[i+1]]`` (the same grid as
    :func:`odeflow.odeint`'s fixed steps), recorded as :class:`Step` s like an adaptive run."""
    fc = _Counted(f)
    run = Run(outs=[list(y0)] + [None] * (len(t_out) - 1), steps=[], states=[])
    y = list(y0)
    for i, m in enumerate(ms):
        ta, tb = float(t_out[i]), float(t_out[i + 1])
        h = (tb - ta) / m
        for s in range(m):
            t = ta + s * h
            _, y1 = rk_stages(fc, tab, t, h, y)
            if store:
                run.states.append(y)
            run.steps.append(Step(t, h, [(i + 1, 1.0)] if s == m - 1 else []))
            y = y1
            run.accepted += 1
        run.outs[i + 1] = y
    run.nfe = fc.nfe
    return run


def rebuild_step(
    f: Field, tab: ButcherTableau, step: Step, y: list[Tensor]
) -> tuple[list[Tensor], list[list[Tensor]]]:
    """Recompute one accepted step from its start state (under the caller's grad mode):
    the end state and the outputs it produced, in ``step.outputs`` order."""
    ks, y1 = rk_stages(f, tab, step.t, step.h, y)
    slope: list = []
    outs = [dense_output(f, tab, step.t, step.h, y, y1, ks, th, slope) for _, th in step.outputs]
    return y1, outs
