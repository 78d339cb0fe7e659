"""One walker over autograd graphs, and the checks built on it: a field must not depend on
tensors requiring grad that the discrete adjoint does not differentiate for (closed-over
tensors, tensor attributes, layers that are not submodules), which would silently get no
gradient."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._compat import functorch_active
from ._field import _owning_module

__all__ = [
    "_attribute_check",
    "_check_hidden",
    "_closure_check",
    "_refuse_transformed_closure",
    "_walk",
]


def _walk(outs: Iterable[Tensor], visit: Callable[[Any], None], stops: set | None = None) -> None:
    """Call ``visit(node)`` once for every autograd node reachable from ``outs``, depth
    first, not descending past the nodes in ``stops`` (which are not visited). ``visit``
    raises to end the walk with an error."""
    stops = stops or set()
    stack = [o.grad_fn for o in outs if o.grad_fn is not None]
    seen = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen or node in stops:
            continue
        seen.add(node)
        visit(node)
        stack.extend(n for n, _ in node.next_functions)


def _leaf(node: Any) -> Tensor | None:
    """The tensor of an ``AccumulateGrad`` node (a leaf requiring grad), else None."""
    return getattr(node, "variable", None)


def _check_hidden(outs: list[Tensor], known: list[Tensor], edges: Sequence = ()) -> None:
    """Raise if the graph of ``outs`` reaches a tensor requiring grad that is not ``known``.

    ``known``: the VJP's input tensors (leaves are matched by identity, non-leaves stop the
    walk at their ``grad_fn``); ``edges``: further inputs given as gradient edges. One walk of
    one step's graph: the backward's first VJP calls it, so a module whose field reads a
    tensor it does not register (a global layer, a tensor in a list attribute) gets an
    error instead of a silent ``None`` gradient.
    """
    leaves = {id(x) for x in known if x.is_leaf}
    stops = {x.grad_fn for x in known if not x.is_leaf} | {e.node for e in edges}

    def visit(node: Any) -> None:
        var = _leaf(node)
        if var is not None and id(var) not in leaves:
            raise ValueError(
                f"func depends on a tensor that requires grad (shape {tuple(var.shape)}, "
                f"{var.dtype}) but is not among the parameters of func: the discrete "
                "adjoint differentiates for those only and would give it no gradient. "
                "Register it on func (an nn.Parameter or a submodule), pass "
                "params=[...] including it, or use gradient='backprop'"
            )

    _walk(outs, visit, stops)


def _attribute_check(pb: Any, t: Tensor, leaves: list[Tensor], plist: list[Tensor]) -> None:
    """A module (or a module's method) that uses a tensor requiring grad held as a plain
    attribute (e.g. a conditioning input set before the solve) would lose its gradient.

    Attributes are scanned (cheap); only if one requires grad is ``func`` evaluated once
    with a graph to see whether its output depends on it (an attribute that merely keeps a
    tensor from an earlier call, e.g. for logging, is fine)."""
    module = _owning_module(pb.fld.func)
    if module is None:
        return
    declared = {id(p) for p in plist}
    found = {
        id(v): (f"{prefix}.{name}" if prefix else name, v)
        for prefix, m in module.named_modules()
        for name, v in vars(m).items()
        if isinstance(v, Tensor)
        and v.requires_grad
        and not isinstance(v, nn.Parameter)
        and id(v) not in declared
    }
    if not found:
        return
    suspects = {i: where for i, (where, _) in found.items()}
    nodes = {v.grad_fn: i for i, (_, v) in found.items() if v.grad_fn is not None}
    nfe = pb.fld.nfe
    with torch.enable_grad():
        ks = pb.fld(t[0].detach(), [y.detach().to(pb.hdt) for y in leaves])
    pb.fld.nfe = nfe

    def visit(node: Any) -> None:
        var = _leaf(node)
        hit = nodes.get(node, id(var) if var is not None and id(var) in suspects else None)
        if hit is not None:
            where = suspects[hit]
            raise ValueError(
                f"func.{where} is a tensor that requires grad but is not a parameter: the "
                "discrete adjoint differentiates only for the parameters (or params=[...]) "
                f"and would give it no gradient. Pass params=[*func.parameters(), "
                f"func.{where}], or use gradient='backprop'"
            )

    _walk(ks, visit)


def _closure_check(pb: Any, t: Tensor, leaves: list[Tensor]) -> None:
    """A plain callable that closes over tensors needing grad would lose those gradients."""
    with torch.enable_grad():
        ks = pb.fld(t[0].detach(), [y.detach().to(pb.hdt) for y in leaves])
    if any(k.requires_grad for k in ks):
        if functorch_active():
            _refuse_transformed_closure()
        raise ValueError(
            "func depends on tensors that require grad but are not visible to the discrete "
            "adjoint; pass them as params=[...], make func an nn.Module, or use "
            "gradient='backprop'"
        )


def _refuse_transformed_closure():
    raise ValueError(
        "func depends on a tensor that the torch.func transform differentiates for but that is "
        "not one of its parameters (a closed-over tensor, or a tensor attribute); the discrete "
        "adjoint would give it no gradient. Make it a parameter of an nn.Module func and pass "
        "it through torch.func.functional_call(module, params, ...), or use "
        "gradient='backprop'"
    )
