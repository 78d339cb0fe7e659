"""States as a tensor, a tuple/list of tensors, or a dict of tensors (any shapes)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__: list[str] = []

# spec: ("tensor",) | ("tuple", n) | ("list", n) | ("dict", keys)
Spec = tuple


def flatten(y: Any, what: str = "y0") -> tuple[list[Tensor], Spec]:
    if isinstance(y, Tensor):
        return [y], ("tensor",)
    if isinstance(y, (tuple, list)):
        if len(y) == 0:
            raise ValueError(f"{what} is an empty {type(y).__name__}; give at least one tensor")
        for i, v in enumerate(y):
            if not isinstance(v, Tensor):
                raise TypeError(f"{what}[{i}] is a {type(v).__name__}, expected a torch.Tensor")
        return list(y), ("tuple" if isinstance(y, tuple) else "list", len(y))
    if isinstance(y, dict):
        if len(y) == 0:
            raise ValueError(f"{what} is an empty dict; give at least one tensor")
        for k, v in y.items():
            if not isinstance(v, Tensor):
                raise TypeError(f"{what}[{k!r}] is a {type(v).__name__}, expected a torch.Tensor")
        return list(y.values()), ("dict", tuple(y.keys()))
    raise TypeError(
        f"{what} must be a torch.Tensor, a tuple/list of tensors or a dict of tensors, "
        f"got {type(y).__name__}"
    )


def unflatten(spec: Spec, leaves: list[Tensor]) -> Any:
    kind = spec[0]
    if kind == "tensor":
        return leaves[0]
    if kind == "tuple":
        return tuple(leaves)
    if kind == "list":
        return list(leaves)
    return dict(zip(spec[1], leaves))


def flatten_like(spec: Spec, out: Any, what: str) -> list[Tensor]:
    """Flatten ``out`` and check it has the structure ``spec``."""
    kind = spec[0]
    if kind == "tensor":
        if not isinstance(out, Tensor):
            raise TypeError(f"{what} returned a {type(out).__name__}; expected a torch.Tensor")
        return [out]
    if kind in ("tuple", "list"):
        if not isinstance(out, (tuple, list)) or len(out) != spec[1]:
            raise TypeError(
                f"{what} returned {type(out).__name__}"
                + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
                + f"; expected a {kind} of {spec[1]} tensors like the state"
            )
        leaves = list(out)
    else:
        if not isinstance(out, dict) or set(out.keys()) != set(spec[1]):
            got = tuple(out.keys()) if isinstance(out, dict) else type(out).__name__
            raise TypeError(f"{what} returned {got}; expected a dict with keys {spec[1]}")
        leaves = [out[k] for k in spec[1]]  # matched by key, in the state's order
    for i, v in enumerate(leaves):
        if not isinstance(v, Tensor):
            raise TypeError(f"{what} returned a {type(v).__name__} at leaf {i}; expected a tensor")
    return leaves


def is_float(x: Tensor) -> bool:
    return x.is_floating_point() and not torch.is_complex(x)
