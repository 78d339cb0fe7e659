"""Input checks of ``sdeint``: the SDE, names, ``y0``, ``ts``, ``dt``, the Brownian path."""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ._brownian import BrownianPath
from ._gradient._checkpoint import _check_checkpoints
from ._sde_schemes import METHODS

__all__: list[str] = []

MAX_STEPS = 10**7


def split_sde(sde: Any) -> tuple[Callable, Callable]:
    if isinstance(sde, (tuple, list)):
        if len(sde) != 2 or not all(callable(x) for x in sde):
            raise TypeError("sde as a sequence must be a pair (f, g) of callables f(t, y), g(t, y)")
        return sde[0], sde[1]
    f, g = getattr(sde, "f", None), getattr(sde, "g", None)
    if not (callable(f) and callable(g)):
        raise TypeError(
            f"sde must have methods f(t, y) (drift) and g(t, y) (diffusion), or be a pair "
            f"(f, g); got {type(sde).__name__}"
        )
    return f, g


def choice(given: str | None, attr: Any, valid: tuple[str, ...], what: str, default: str):
    for v in (given, attr):
        if v is not None and v not in valid:
            raise ValueError(f"unknown {what} {v!r}; valid: {', '.join(map(repr, valid))}")
    if given is not None and attr is not None and given != attr:
        raise ValueError(f"{what}={given!r} contradicts the sde's {what} {attr!r}; drop one")
    return given or attr or default


def check_method(method: str | None, sde_type: str, noise_type: str) -> str:
    if method is None:
        return "euler" if sde_type == "ito" else "heun"
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(map(repr, METHODS))}")
    if sde_type not in METHODS[method]:
        other = "heun' or 'milstein" if sde_type == "stratonovich" else "euler' or 'milstein"
        raise ValueError(
            f"method {method!r} solves {METHODS[method][0]} SDEs and converges to the wrong "
            f"solution of a {sde_type} SDE; use '{other}', or convert the SDE (the Itô drift "
            "is f + ½ (∂g/∂y) g for a Stratonovich drift f)"
        )
    if method == "milstein" and noise_type == "general":
        raise ValueError(
            "method 'milstein' needs diagonal or scalar noise (it has no Lévy areas); for "
            "general noise use 'euler' (Itô) or 'heun' (Stratonovich)"
        )
    return method


def check_y0(y0: Any) -> None:
    if not isinstance(y0, Tensor):
        raise TypeError(f"y0 must be a torch.Tensor, got {type(y0).__name__}")
    if not y0.is_floating_point():
        raise TypeError(f"y0 has dtype {y0.dtype}; the state must be floating, e.g. y0.float()")
    if y0.ndim == 0:
        raise ValueError("y0 must be (*batch, d), at least one dimension; e.g. y0[None]")
    if not bool(torch.isfinite(y0.detach()).all()):
        raise ValueError("y0 contains inf or NaN; the initial state must be finite")


def check_ts(ts: Any, y0: Tensor) -> tuple[Tensor, list[float]]:
    if not isinstance(ts, Tensor):
        try:
            ts = torch.as_tensor(ts, dtype=torch.float64, device=y0.device)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"ts must be a 1-D tensor of times, got {type(ts).__name__}") from e
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(
            f"ts must be 1-D with at least two times, got shape {tuple(ts.shape)}; e.g. "
            "torch.linspace(0, 1, 11)"
        )
    if not ts.is_floating_point():
        raise TypeError(f"ts must be floating, got {ts.dtype}")
    if ts.device != y0.device:
        raise ValueError(f"ts is on {ts.device} but y0 is on {y0.device}; use one device")
    if ts.requires_grad:
        raise ValueError("sdeint does not differentiate with respect to ts; pass ts.detach()")
    host = ts.detach().to("cpu", torch.float64).tolist()
    if not all(math.isfinite(x) for x in host):
        raise ValueError("ts contains inf or NaN; all times must be finite")
    if not all(b > a for a, b in itertools.pairwise(host)):
        raise ValueError("ts must be strictly increasing (SDEs are solved forward in time)")
    return ts, host


def step_grid(host: list[float], dt: float | None, eps: float) -> tuple[list[float], list[int]]:
    """Step times ``t0 + k·dt`` with every output time inserted (an output time within
    rounding of a step time is that step time); the grid index of each output."""
    if dt is None:
        return list(host), list(range(len(host)))
    t0 = host[0]
    if (host[-1] - t0) / dt > MAX_STEPS:
        raise ValueError(
            f"dt={dt} needs more than {MAX_STEPS:,} steps over [{t0}, {host[-1]}]; use a larger dt"
        )
    snap = min(dt / 8, max(1e-9 * dt, 8 * eps * max(abs(t0), abs(host[-1]))))
    grid: list[float] = []
    outs: list[int] = []
    k = 0
    for tau in host:
        while t0 + k * dt < tau - snap:
            grid.append(t0 + k * dt)
            k += 1
        node = t0 + k * dt
        if abs(node - tau) <= snap:
            grid.append(node)
            k += 1
        else:
            grid.append(tau)
        outs.append(len(grid) - 1)
    return grid, outs


def check_dt(dt: Any) -> float | None:
    if dt is None:
        return None
    if isinstance(dt, Tensor) and dt.numel() == 1 and dt.is_floating_point():
        dt = float(dt)
    if isinstance(dt, bool) or not isinstance(dt, numbers.Real) or not math.isfinite(dt):
        raise ValueError(f"dt must be a positive finite number, got {dt!r}")
    if dt <= 0:
        raise ValueError(f"dt must be positive (the step size), got {dt}")
    return float(dt)


def check_bm(bm: Any, y0: Tensor, shape: tuple[int, ...], grid: list[float]) -> None:
    if not isinstance(bm, BrownianPath):
        raise TypeError(f"bm must be an odeflow.ode.BrownianPath, got {type(bm).__name__}")
    if bm.device != y0.device:
        raise ValueError(
            f"the Brownian path is on {bm.device} but y0 is on {y0.device}; create it with "
            f"device={y0.device!s}"
        )
    if bm.dtype != y0.dtype:
        raise ValueError(
            f"the Brownian path has dtype {bm.dtype} but y0 has {y0.dtype}; create it with "
            f"dtype={y0.dtype}"
        )
    if bm.shape != shape:
        raise ValueError(f"the Brownian path has shape {bm.shape}; this SDE's noise needs {shape}")
    slack = 1e-12 * (bm.t1 - bm.t0)
    if bm.t0 > grid[0] + slack or bm.t1 < grid[-1] - slack:
        raise ValueError(
            f"the Brownian path covers [{bm.t0}, {bm.t1}] but ts spans [{grid[0]}, "
            f"{grid[-1]}]; create it over (at least) the span of ts"
        )


def uniform(host: list[float]) -> float | None:
    d = [b - a for a, b in itertools.pairwise(host)]
    return d[0] if max(d) - min(d) <= 1e-9 * d[0] else None


def check_every(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(
            f"checkpoint_every must be a positive int (1: store every state), got {k!r}"
        )
    return int(k)


def check_checkpoints(c: Any, every: int) -> Any:
    """The normalised ``checkpoints`` option (the ODE engine's rule); not with ``every > 1``."""
    try:
        c = _check_checkpoints(c)
    except ValueError as err:
        raise ValueError(str(err).replace("for DiscreteAdjoint", "for sdeint")) from None
    if every > 1 and c != "steps":
        raise ValueError(
            f"checkpoint_every={every} and checkpoints={c!r} both choose what the adjoint "
            "stores; give one (checkpoints=K keeps at most K states whatever the number of "
            "steps)"
        )
    return c
