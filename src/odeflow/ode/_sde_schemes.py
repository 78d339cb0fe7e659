"""SDE problems and their one-step schemes (Euler–Maruyama, Milstein, stochastic Heun)."""

from __future__ import annotations

from collections.abc import Callable
from types import MethodType
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn

__all__: list[str] = []

NOISE_TYPES = ("diagonal", "scalar", "general")
SDE_TYPES = ("ito", "stratonovich")
# method -> the SDE types it converges for
METHODS = {"euler": ("ito",), "milstein": ("ito", "stratonovich"), "heun": ("stratonovich",)}


class Problem:
    """The drift ``f``, the diffusion ``g``, the noise and SDE types, and call counts."""

    def __init__(self, f: Callable, g: Callable, noise_type: str, sde_type: str) -> None:
        self.f_fn, self.g_fn = f, g
        self.noise_type, self.sde_type = noise_type, sde_type
        self.nfe_f = 0
        self.nfe_g = 0
        # (t, y, f(t, y), g(t, y)) of the shape check at t0, served once to the first step
        self.first: list[Any] | None = None

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        first = self.first
        if first is not None and first[2] is not None and t is first[0] and y is first[1]:
            out, first[2] = first[2], None
            return out
        self.nfe_f += 1
        return self.f_fn(t, y)

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        first = self.first
        if first is not None and first[3] is not None and t is first[0] and y is first[1]:
            out, first[3] = first[3], None
            return out
        self.nfe_g += 1
        return self.g_fn(t, y)

    def noise(self, g: Tensor, dw: Tensor) -> Tensor:
        """The product ``g(t, y)·ΔW`` for the noise type."""
        if self.noise_type == "diagonal":
            return g * dw
        if self.noise_type == "scalar":
            return g[..., 0] * dw
        return (g @ dw.unsqueeze(-1)).squeeze(-1)

    def g_dg(self, t: Tensor, y: Tensor, g: Tensor) -> Tensor:
        """``(∂g/∂y)·g`` (one forward-mode JVP of ``g`` at ``y`` in the direction ``g``), the
        Milstein correction's factor; for diagonal noise its entries are ``g_i ∂g_i/∂y_i``."""
        v = g if self.noise_type == "diagonal" else g[..., 0]
        # (forward AD is switched off inside autograd.Function.forward: switch it on)
        with fwAD._set_fwd_grad_enabled(True), fwAD.dual_level():
            out = self.g(t, fwAD.make_dual(y, v))
            tangent = fwAD.unpack_dual(out).tangent
        if tangent is None:  # g does not depend on y
            return torch.zeros_like(v)
        return tangent if self.noise_type == "diagonal" else tangent[..., 0]

    def check(self, y: Tensor, fy: Any, gy: Any) -> int:
        """Validate ``f(t0, y0)`` and ``g(t0, y0)``; return the Brownian dimension ``m``."""
        for name, v in (("drift f", fy), ("diffusion g", gy)):
            if not isinstance(v, Tensor):
                raise TypeError(f"the {name} returned a {type(v).__name__}; expected a tensor")
            if v.dtype != y.dtype:
                raise TypeError(
                    f"the {name} returned {v.dtype} for a {y.dtype} state; make f and g "
                    f"compute in the state's dtype (e.g. module.to({y.dtype}))"
                )
        if fy.shape != y.shape:
            raise ValueError(
                f"the drift f(t, y) returned shape {tuple(fy.shape)}; expected y's shape "
                f"{tuple(y.shape)}"
            )
        want = {
            "diagonal": "y.shape",
            "scalar": "(*y.shape, 1)",
            "general": "(*y.shape, m) for m Brownian motions",
        }[self.noise_type]
        ok = {
            "diagonal": gy.shape == y.shape,
            "scalar": gy.shape == (*y.shape, 1),
            "general": gy.ndim == y.ndim + 1 and gy.shape[:-1] == y.shape and gy.shape[-1] > 0,
        }[self.noise_type]
        if not ok:
            raise ValueError(
                f"the diffusion g(t, y) returned shape {tuple(gy.shape)} for y of shape "
                f"{tuple(y.shape)}; noise_type={self.noise_type!r} needs {want}. Pick the "
                "noise_type that matches g ('diagonal': y.shape, 'scalar': (*y.shape, 1), "
                "'general': (*y.shape, m))"
            )
        return y.shape[-1] if self.noise_type == "diagonal" else int(gy.shape[-1])

    def brownian_shape(self, y: Tensor, m: int) -> tuple[int, ...]:
        if self.noise_type == "diagonal":
            return tuple(y.shape)
        return (*y.shape[:-1], m)


# --------------------------------------------------------------------------- the schemes
# Each maps (problem, t, t + h, h, y, ΔW) to the next state; t's are 0-d tensors, h a float.


def euler_step(p: Problem, t: Tensor, t1: Tensor, h: float, y: Tensor, dw: Tensor) -> Tensor:
    """Euler–Maruyama: ``y + f h + g ΔW`` (Itô; strong order 0.5, 1 for additive noise)."""
    drift = torch.add(y, p.f(t, y), alpha=h)  # (fused: one kernel and one graph node each)
    if p.noise_type == "diagonal":
        return torch.addcmul(drift, p.g(t, y), dw)
    return drift + p.noise(p.g(t, y), dw)


def milstein_step(p: Problem, t: Tensor, t1: Tensor, h: float, y: Tensor, dw: Tensor) -> Tensor:
    """Milstein: ``y + f h + g ΔW + ½ (∂g/∂y) g (ΔW² − h)`` (Itô) or ``… ΔW²`` (Stratonovich);
    strong order 1 for diagonal (``g_i`` a function of ``y_i``) and scalar noise."""
    g = p.g(t, y)
    dw2 = dw * dw - h if p.sde_type == "ito" else dw * dw
    return y + p.f(t, y) * h + p.noise(g, dw) + 0.5 * p.g_dg(t, y, g) * dw2


def heun_step(p: Problem, t: Tensor, t1: Tensor, h: float, y: Tensor, dw: Tensor) -> Tensor:
    """Stochastic Heun (Stratonovich): predictor ``ỹ = y + f h + g ΔW``, then
    ``y + ½(f(t, y) + f(t + h, ỹ)) h + ½(g(t, y) + g(t + h, ỹ)) ΔW``."""
    f0, g0 = p.f(t, y), p.g(t, y)
    yp = y + f0 * h + p.noise(g0, dw)
    f1, g1 = p.f(t1, yp), p.g(t1, yp)
    return y + (0.5 * h) * (f0 + f1) + 0.5 * p.noise(g0 + g1, dw)


STEPS = {"euler": euler_step, "milstein": milstein_step, "heun": heun_step}


# --------------------------------------------------------------------------- parameters
def owning_module(fn: Any) -> nn.Module | None:
    if isinstance(fn, nn.Module):
        return fn
    if isinstance(fn, MethodType) and isinstance(fn.__self__, nn.Module):
        return fn.__self__
    return None


def default_params(*objs: Any) -> list[Tensor]:
    """The parameters requiring grad of the modules behind ``objs`` (each once)."""
    seen: set[int] = set()
    out = []
    for obj in objs:
        mod = owning_module(obj)
        if mod is None:
            continue
        for q in mod.parameters():
            if q.requires_grad and id(q) not in seen:
                seen.add(id(q))
                out.append(q)
    return out


def hidden_leaves(outs: list[Tensor], known: list[Tensor]) -> int:
    """How many leaf tensors requiring grad the graph of ``outs`` reaches beyond ``known``."""
    ids = {id(q) for q in known}
    stack = [o.grad_fn for o in outs if o.grad_fn is not None]
    seen, hidden = set(), set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        var = getattr(node, "variable", None)  # an AccumulateGrad node: a leaf tensor
        if var is not None and id(var) not in ids:
            hidden.add(id(var))
        stack.extend(n for n, _ in node.next_functions)
    return len(hidden)
