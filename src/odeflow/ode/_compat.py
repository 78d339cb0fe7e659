"""Every private or version-dependent torch API the ODE engine uses, in one place.

Each helper says what it stands in for and why, so that a torch upgrade is checked here."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge

__all__ = [
    "NORM_LAYERS",
    "edge_outputs",
    "flat",
    "foreach_add_",
    "functorch_active",
    "get_gradient_edge",
    "host",
    "version",
    "versions",
]

# batch/instance norm layers with running statistics (their kernels update them in place
# without bumping the buffers' version counters)
NORM_LAYERS = getattr(nn.modules.batchnorm, "_NormBase", ())


def version(x: Tensor) -> int:
    """``x``'s version counter (bumped by every in-place update)."""
    return x._version


def versions(leaves: list[Tensor]) -> list[int] | None:
    """Version counters of ``leaves`` (None for inference tensors, which have none)."""
    try:
        return [x._version for x in leaves]
    except RuntimeError:  # "Inference tensors do not track version counter"
        return None


def foreach_add_(accs: list[Tensor], adds: list[Tensor]) -> None:
    """``acc += add`` for every pair, one multi-tensor kernel on a GPU."""
    torch._foreach_add_(accs, adds)


@functools.cache
def edge_outputs() -> bool:
    """Whether ``torch.autograd.grad`` takes gradient edges as outputs (torch >= 2.5)."""
    x = torch.ones((), requires_grad=True)
    with torch.enable_grad():
        y = x * 2.0
    try:
        torch.autograd.grad([get_gradient_edge(y)], [x], grad_outputs=[torch.ones(())])
    except (AttributeError, TypeError, RuntimeError):
        return False
    return True


def functorch_active() -> bool:
    """Whether a torch.func transform (vmap, grad, jacrev, ...) is tracing this call."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


def host(x: Tensor) -> Any:
    """``x.tolist()`` (a Python number for a 0-d tensor), also inside torch.func transforms:
    torch < 2.5 refuses ``.tolist()``/``.item()`` under ``grad``, ``vjp`` or ``jacrev``, even
    for a tensor the transform does not track, and ``vmap`` refuses it for a batched tensor,
    which here gives the values of its whole batch (one more list level per ``vmap``)."""
    x = x.detach()
    if not functorch_active():
        return x.tolist()
    ft = torch._C._functorch
    while ft.is_gradtrackingtensor(x) or ft.is_batchedtensor(x):
        x = ft.get_unwrapped(x)
    with torch._C._DisableFuncTorch():
        return x.tolist()


def flat(v: Any) -> list:
    """The scalars of a nested list (:func:`host` of a batched tensor), or ``[v]``."""
    return [w for u in v for w in flat(u)] if isinstance(v, list) else [v]
