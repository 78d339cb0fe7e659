"""Argument checks shared by the OT-Flow model, its trainer and its checkpoints."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..ode import Backprop, DiscreteAdjoint, PrecisionPolicy
from ._presets import default_preset, get_preset

__all__ = [
    "PRECISIONS",
    "FitSettings",
    "check_alpha",
    "check_gradient",
    "check_int",
    "check_precision",
    "check_steps",
    "fit_settings",
    "gradient_name",
    "is_half",
    "precision_name",
]

#: the precision shorthands (names of odeflow's precision policies) an OT-Flow accepts
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


def check_alpha(alpha: Any) -> tuple[float, float, float]:
    """α as a tuple of three finite floats with α₀ > 0, α₁ ≥ 0, α₂ ≥ 0, else ValueError."""
    bad = ValueError(
        f"alpha must be a sequence of three finite numbers (α₀ > 0, α₁ ≥ 0, α₂ ≥ 0), got {alpha!r}"
    )
    if isinstance(alpha, str | bytes) or not (
        isinstance(alpha, Sequence) or hasattr(alpha, "__array__")  # (arrays, tensors)
    ):
        raise bad
    try:
        out = tuple(float(a) for a in alpha)
    except (TypeError, ValueError):
        raise bad from None
    if len(out) != 3 or not all(math.isfinite(a) for a in out) or out[0] <= 0 or min(out) < 0:
        raise bad
    return out  # type: ignore[return-value]


def check_int(name: str, value: Any, low: int, meaning: str) -> int:
    """``value`` as an ``int`` >= ``low`` (ints, NumPy integers, 0-d integer tensors; not
    bools or floats), else a ValueError naming ``name`` and what it means."""
    if not isinstance(value, bool):
        try:
            out = operator.index(value)
        except TypeError:
            out = None
        if out is not None and out >= low:
            return out
    raise ValueError(f"{name} must be an integer >= {low} ({meaning}), got {value!r}")


def check_steps(value: Any, name: str = "nt") -> int:
    """A number of RK4 steps as an ``int`` >= 1, else a ValueError naming ``name``."""
    return check_int(name, value, 1, "the number of RK4 steps from t = 0 to 1")


def check_precision(precision: Any, name: str = "precision") -> str | PrecisionPolicy:
    """A precision shorthand (:data:`PRECISIONS`) or an :class:`odeflow.PrecisionPolicy`,
    else a ValueError naming ``name``."""
    if isinstance(precision, PrecisionPolicy) or (
        isinstance(precision, str) and precision in PRECISIONS
    ):
        return precision
    raise ValueError(
        f"{name} must be one of {PRECISIONS} or an odeflow.PrecisionPolicy, got {precision!r}"
    )


def precision_name(precision: str | PrecisionPolicy) -> str:
    """A precision's name (a shorthand is its own name; a policy has ``name``)."""
    return precision if isinstance(precision, str) else precision.name


def is_half(precision: str | PrecisionPolicy) -> bool:
    """Whether the precision computes in a 16-bit float (which needs float32 parameters)."""
    if isinstance(precision, str):
        return precision in ("bf16", "fp16")
    return precision.compute in (torch.bfloat16, torch.float16)


def check_gradient(gradient: Any) -> str | Backprop | DiscreteAdjoint:
    """``"backprop"``, ``"adjoint"``, an :class:`odeflow.Backprop` or an
    :class:`odeflow.DiscreteAdjoint` (the exact gradients of the RK4 scheme), else ValueError."""
    if isinstance(gradient, (Backprop, DiscreteAdjoint)) or (
        isinstance(gradient, str) and gradient in ("backprop", "adjoint")
    ):
        return gradient
    raise ValueError(
        "gradient must be 'backprop' or 'adjoint' (or the ODE engine's policy objects "
        f"odeflow.Backprop() / odeflow.DiscreteAdjoint(...)), got {gradient!r}"
    )


def gradient_name(gradient: str | Backprop | DiscreteAdjoint) -> str:
    """``"backprop"`` or ``"adjoint"``: the shorthand of a gradient strategy."""
    if isinstance(gradient, str):
        return gradient
    return "backprop" if isinstance(gradient, Backprop) else "adjoint"


def _check_number(name: str, value: Any, ok: Callable[[Any], bool], meaning: str) -> float:
    """``value`` as a float when it is a real number (not a bool) and ``ok(value)``, else a
    ValueError naming ``name`` and what it must be."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not ok(value):
        raise ValueError(f"{name} must be {meaning}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class FitSettings:
    """:func:`odeflow.flows.fit`'s settings, resolved (the preset's, then the keyword
    arguments') and checked; ``alpha``, ``nt`` and ``val_nt`` are the preset's (None: the
    flow's own, read when training starts), used for the run without changing the flow."""

    iters: int
    batch: int
    lr: float
    clip: float | None
    lr_drop: float
    max_drops: int
    patience: int
    val_every: int
    val_nt: int | None
    val_fraction: float
    standardize: bool
    seed: int
    alpha: tuple[float, float, float] | None = None
    nt: int | None = None
    preset: str = ""


def fit_settings(dim: int, preset: Any, kw: dict[str, Any], alpha0: float) -> FitSettings:
    """Resolve and check ``fit``'s settings for a flow of dimension ``dim`` and α₀ ``alpha0``:
    ``kw`` holds its keyword arguments (``None``: the preset's, else :func:`default_preset`
    ``(dim)``'s). A preset's α₀ must be the flow's: it scales the flow's dynamics."""
    p = get_preset(preset) if preset is not None else None
    from_preset: dict[str, Any] = {}
    if p is not None:
        if p.dim is not None and p.dim != dim:
            raise ValueError(f"preset {p.name!r} is for dim={p.dim}, but the flow has dim={dim}")
        from_preset = dict(alpha=check_alpha(p.alpha), preset=p.name,
                           nt=check_steps(p.nt, f"preset {p.name!r}: nt"))  # fmt: skip
        if from_preset["alpha"][0] != alpha0:
            raise ValueError(
                f"preset {p.name!r} has α₀ = {p.alpha[0]}, but the flow has α₀ = {alpha0}: α₀ "
                "scales the flow's dynamics (ż = −∇Φ/α₀), so it belongs to the model; build "
                f"the flow with OTFlow.from_preset({p.name!r}) or set flow.alpha first"
            )
        if kw["val_nt"] is None:
            kw = {**kw, "val_nt": check_steps(p.nt_val, f"preset {p.name!r}: nt_val")}
    # without a preset the documented defaults for this dimension (default_preset)
    q = p if p is not None else default_preset(dim)
    budget = kw["iters"] is None  # no explicit iters: q's budget, early stopping on validation
    v = {k: (kw[k] if kw[k] is not None else getattr(q, k, None)) for k in kw}
    iters = check_int("iters", v["iters"], 1, "training iterations")
    batch = check_int("batch", v["batch"], 1, "rows per minibatch")
    lr = _check_number("lr", v["lr"], lambda x: 0 < x < math.inf,
                       "a finite number > 0 (Adam's learning rate)")  # fmt: skip
    val_fraction = kw["val_fraction"]
    if val_fraction is None:
        val_fraction = q.val_fraction if budget else 0.0
    if (isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real)
            or not 0 <= val_fraction < 1):  # fmt: skip
        raise ValueError(f"val_fraction must be a number in [0, 1) (the share of the training "
                         f"rows held out for validation), got {val_fraction!r}")  # fmt: skip
    if not isinstance(v["standardize"], bool):
        raise ValueError(f"standardize must be True, False or None, got {v['standardize']!r}")
    clip = v["clip"]
    if clip is not None:
        clip = _check_number("clip", clip, lambda x: x > 0, "a number > 0 (the parameters "
                             "are clamped to [-clip, clip]) or None for no clamping")  # fmt: skip
    lr_drop = _check_number("lr_drop", v["lr_drop"], lambda x: 1 < x < math.inf,
                            "a finite number > 1 (the learning rate is divided by it)")  # fmt: skip
    patience = check_int("patience", v["patience"], 1, "validations without improvement "
                         "before the learning rate drops")  # fmt: skip
    max_drops = check_int("max_drops", v["max_drops"], 0, "learning-rate drops before training "
                          "stops")  # fmt: skip
    val_every = v["val_every"]
    if val_every is not None:
        val_every = check_int("val_every", val_every, 1, "iterations between validations")
    val_nt = check_steps(kw["val_nt"], "val_nt") if kw["val_nt"] is not None else None
    seed = kw["seed"]
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer (it seeds the minibatch shuffling and "
                         f"the toy samples), got {seed!r}; e.g. seed=0")  # fmt: skip
    return FitSettings(
        iters, batch, lr, clip, lr_drop, max_drops, patience,
        val_every if val_every is not None else max(1, iters // 20), val_nt,
        val_fraction, v["standardize"], int(seed), **from_preset,
    )  # fmt: skip
