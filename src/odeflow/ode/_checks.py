"""Input checks of :func:`odeflow.odeint`: the times, the initial state, the step grid and
the tensors the gradient is taken for."""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import _tree
from ._compat import functorch_active as _functorch_active
from ._compat import host as _host

__all__ = ["_check_params", "_check_t", "_check_y0", "_steps_per_interval"]

_MAX_STEPS = 10_000_000  # a larger grid is almost surely a mistake in step_size's units


def _check_t(t: Any, device: torch.device, hdt: torch.dtype) -> tuple[Tensor, list[float]]:
    if not isinstance(t, Tensor):
        try:
            t = torch.as_tensor(t, dtype=hdt, device=device)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"t must be a 1-D tensor of times, got {type(t).__name__}") from e
    if t.ndim != 1:
        raise ValueError(
            f"t must be 1-D, got shape {tuple(t.shape)}; pass a grid like torch.linspace(0, 1, 11)"
        )
    if t.numel() < 2:
        raise ValueError(f"t needs at least two points (start and end), got {t.numel()}")
    if not _tree.is_float(t):
        raise TypeError(f"t must be a real floating tensor, got {t.dtype}; use t.to(y0.dtype)")
    if t.device != device:
        raise ValueError(f"t is on {t.device} but y0 is on {device}; move them to one device")
    given = t.dtype
    if t.dtype != hdt:
        # step sizes and stage times are formed from t in the state's precision, and func
        # receives them so (as torchdiffeq does): a 16-bit t is widened, a float64 t for a
        # float32 state narrowed (a differentiable cast: time gradients reach the caller's t)
        t = t.to(hdt)
    host = _host(t.detach().to("cpu", torch.float64))  # the one sync of the setup
    if any(isinstance(x, list) for x in host):
        raise ValueError(
            "t is batched by torch.func.vmap; all samples share one time grid: vmap over y0 "
            "or the parameters, or make one call per grid"
        )
    if not all(math.isfinite(x) for x in host):
        raise ValueError("t contains inf or NaN; all times must be finite")
    d = [b - a for a, b in itertools.pairwise(host)]
    if not (all(x > 0 for x in d) or all(x < 0 for x in d)):
        hint = ""
        if given.itemsize > t.dtype.itemsize:
            hint = f" in {t.dtype}, the state's precision (give y0 as {given} to resolve them)"
        raise ValueError(f"t must be strictly increasing or strictly decreasing (no repeats){hint}")
    return t, host


def _check_y0(leaves: list[Tensor]) -> torch.device:
    dev = leaves[0].device
    for i, y in enumerate(leaves):
        name = "y0" if len(leaves) == 1 else f"y0 leaf {i}"
        if not _tree.is_float(y):
            raise TypeError(
                f"{name} has dtype {y.dtype}; the state must be a real floating "
                "tensor, e.g. y0.float()"
            )
        if y.device != dev:
            raise ValueError(f"{name} is on {y.device} but y0 leaf 0 is on {dev}")
    if _functorch_active():  # (vmap: no data-dependent host check possible)
        return dev
    fin = torch.stack([torch.isfinite(y.detach()).all() for y in leaves]).all()
    if not bool(fin):
        raise ValueError("y0 contains inf or NaN; the initial state must be finite")
    return dev


def _steps_per_interval(
    host: list[float], spi: int, step_size: Any, eps: float = 2.0**-52
) -> list[int]:
    """Steps per interval of ``host``; ``eps`` is the machine epsilon of the times' dtype."""
    n = len(host) - 1
    if isinstance(spi, bool) or not isinstance(spi, numbers.Integral) or spi < 1:
        raise ValueError(f"steps_per_interval must be a positive int, got {spi!r}")
    if step_size is None:
        ms = [int(spi)] * n
    else:
        if spi != 1:
            raise ValueError("give either steps_per_interval or step_size, not both")
        if isinstance(step_size, Tensor) and step_size.numel() == 1 and _tree.is_float(step_size):
            step_size = float(step_size)  # (a 0-d tensor; the setup reads t to the host anyway)
        if (
            isinstance(step_size, bool)
            or not isinstance(step_size, numbers.Real)
            or not (math.isfinite(step_size) and step_size > 0)
        ):
            raise ValueError(f"step_size must be a positive finite number, got {step_size!r}")
        # |b − a| carries the rounding of the times (float32 0.1 is 0.1000000015): a ratio
        # within that rounding (or 1e-9) of an integer is that integer, not one step more
        ms = []
        for a, b in itertools.pairwise(host):
            tol = max(1e-9, 4 * eps * max(abs(a), abs(b)) / step_size)
            ms.append(max(1, math.ceil(abs(b - a) / step_size - tol)))
    if sum(ms) > _MAX_STEPS:
        raise ValueError(
            f"this grid needs {sum(ms):,} RK steps (more than {_MAX_STEPS:,}); check "
            "step_size / steps_per_interval against the length of t"
        )
    return ms


def _check_params(func: Callable, params: Sequence[Tensor] | None) -> list[Tensor]:
    """The tensors the gradient is taken for: ``params`` (each once, those requiring grad),
    or by default the parameters of an ``nn.Module`` func that require grad."""
    if params is None:
        if isinstance(func, nn.Module):
            return [p for p in func.parameters() if p.requires_grad]
        return []
    plist = list(params)
    for p in plist:
        if not isinstance(p, Tensor):
            raise TypeError(f"params must be tensors, got {type(p).__name__}")
    seen: set[int] = set()  # a tensor listed twice gets its gradient once
    return [p for p in plist if p.requires_grad and not (id(p) in seen or seen.add(id(p)))]


def _check_output_dtype(output_dtype: Any) -> None:
    if output_dtype is not None and not (
        isinstance(output_dtype, torch.dtype) and output_dtype.is_floating_point
    ):
        raise TypeError(
            f"output_dtype must be a floating torch.dtype (e.g. torch.float64), got "
            f"{output_dtype!r}"
        )
