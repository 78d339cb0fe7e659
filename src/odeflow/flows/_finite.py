"""No silent NaN results: checks shared by the flow, its checkpoints and the command line.

- ``nonfinite_report``: how many entries of a tensor are NaN / +inf / −inf, in words.
- ``nonfinite_tensors``: the names of the tensors of a ``state_dict`` that are not finite.
- ``state_shapes``: the ``state_dict`` shapes a config builds, computed on the ``meta``
  device (no memory is allocated, whatever the config's width), so that a checkpoint's
  config is checked against its own tensors before the flow is built.
- ``log_prob_error``: the FloatingPointError raised for a non-finite log-density, naming
  the cause (non-finite weights, or an overflow of the ODE solution).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor


def nonfinite_report(t: Tensor) -> str:
    """``"3 of 100 values (2 NaN, 1 +inf)"`` for a tensor with non-finite entries."""
    t = t.detach()
    nan = int(torch.isnan(t).sum())
    pos = int((t == float("inf")).sum())
    neg = int((t == float("-inf")).sum())
    parts = [f"{k} {w}" for k, w in ((nan, "NaN"), (pos, "+inf"), (neg, "-inf")) if k]
    return f"{nan + pos + neg} of {t.numel()} values ({', '.join(parts)})"


def nonfinite_tensors(named: Iterable[tuple[str, Any]]) -> list[str]:
    """Names of the floating-point tensors in ``named`` holding NaN or inf (tensors on the
    ``meta`` device have no values and pass)."""
    return [
        k
        for k, v in named
        if isinstance(v, Tensor)
        and v.is_floating_point()
        and v.device.type != "meta"
        and not bool(torch.isfinite(v).all())
    ]


def state_shapes(build, config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The ``state_dict`` shapes of ``build(**config)``, built on the meta device."""
    with torch.device("meta"):
        module = build(**config)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def log_prob_error(flow, lp: Tensor, steps: int) -> FloatingPointError:
    """The error for a log-density with NaN/inf entries at finite inputs, naming why."""
    bad = nonfinite_tensors(flow.named_parameters())
    what = f"log_prob is not finite for {nonfinite_report(lp)} of finite inputs"
    if bad:
        return FloatingPointError(
            f"{what}: the flow's weights hold NaN or inf ({', '.join(bad[:4])}"
            f"{', ...' if len(bad) > 4 else ''}); retrain it or load a checkpoint with "
            "finite weights"
        )
    dtype = str(lp.dtype).removeprefix("torch.")
    return FloatingPointError(
        f"{what}: the ODE solution overflowed in {dtype} with nt={steps} RK4 steps (the "
        "flow's map is too steep at these points, e.g. weights scaled far from training); "
        "evaluate in float64 (flow.double()) or with more steps (nt=...), or retrain"
    )
