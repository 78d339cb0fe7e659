"""Argument checks at the public boundary: the message names the argument and the fix."""

from __future__ import annotations

import math
import numbers

import torch

__all__ = ["check_device", "check_finite_real", "check_int", "check_positive_int"]


def _prefix(who: str | None) -> str:
    return f"{who}: " if who else ""


def check_int(name: str, value, *, minimum: int = 0, who: str | None = None) -> int:
    """``int(value)`` if it is an integer ≥ ``minimum`` (not a bool), else ``ValueError``.

    >>> check_int("maxiter", 0)
    0
    """
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum
    if not ok:
        need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{_prefix(who)}{name} must be {need}, got {value!r}.")
    return int(value)


def check_positive_int(name: str, value, *, who: str | None = None) -> int:
    """``int(value)`` if it is an integer ≥ 1 (not a bool), else ``ValueError`` naming ``name``.

    >>> check_positive_int("depth", 3)
    3
    """
    return check_int(name, value, minimum=1, who=who)


def check_finite_real(
    name: str,
    value,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    who: str | None = None,
) -> float:
    """``float(value)`` if it is a finite real number (optionally > 0 or ≥ 0), else ValueError.

    Bools, complex numbers and strings are refused.

    >>> check_finite_real("h", 0.5, positive=True)
    0.5
    """
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
    if ok and positive:
        ok = float(value) > 0
    if ok and nonnegative:
        ok = float(value) >= 0
    if not ok:
        need = "a finite number" + (" > 0" if positive else " >= 0" if nonnegative else "")
        raise ValueError(f"{_prefix(who)}{name} must be {need}, got {value!r}.")
    return float(value)


def check_device(device, what: str | None = None) -> torch.device:
    """``device`` as a ``torch.device`` this process can use, else a ``ValueError``.

    ``what`` names the argument in the message (default ``device=...``). ``"cuda"`` without an
    index becomes the current GPU (what ``.to("cuda")`` means).

    >>> check_device("cpu")
    device(type='cpu')
    """
    what = what if what is not None else f"device={device!r}"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"{what}: not a torch device; use e.g. 'cpu', 'cuda' or 'cuda:1'"
        ) from None
    if dev.type == "cuda":
        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n_gpus == 0:
            raise ValueError(
                f"{what} asks for CUDA, but CUDA is not available (this PyTorch build: CUDA "
                f"{torch.version.cuda or 'not compiled in'}; no GPU visible); use the CPU "
                "('cpu'), or a CUDA build of PyTorch on a machine with a GPU"
            )
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        elif dev.index >= n_gpus:
            raise ValueError(
                f"{what}: only {n_gpus} GPU(s) are visible (cuda:0 to cuda:{n_gpus - 1})"
            )
    return dev
