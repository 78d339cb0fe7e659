r"""The forward Laplacian of any supported ``nn.Module``: value, gradient and Laplacian in one pass.

The module is traced once with ``torch.fx`` (the graph is cached per module); every node is
then interpreted on :class:`~._fl_jet.Jet` triples (value, directional derivatives, Laplacian)
with the rules of ``_fl_rules.py``. Parameters and submodules are read from the live module at
every call, so training updates are seen.
"""

from __future__ import annotations

import warnings
import weakref

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate, map_arg

from .._utils import outside_stacklevel
from . import _fl_rules as R
from ._activations import Activation
from ._blocks import Block
from ._fl_fallback import fallback
from ._fl_jet import FLCtx, Jet, UnsupportedOpError
from ._result import _finish

__all__ = ["UnsupportedOpError", "fl_compute", "fl_propagate", "fl_supported", "forward_laplacian"]

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # net → (training, graph)
_FAILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # net → training when it failed
_WARNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # net → ops it warned about


class _Tracer(fx.Tracer):
    """torch.nn modules and odeflow activations/blocks are leaves (they have rules or get a
    clear error); user modules are traced through."""

    def __init__(self, lenient: bool = False):
        super().__init__()
        self.consts: dict = {}
        self.lenient, self.forced = lenient, set()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (Activation, Block)) or id(m) in self.forced:
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        # lenient (unsupported="torch.func"): a submodule that fx cannot trace through (Python
        # control flow on shapes or values) becomes a leaf, propagated by the torch.func rule
        if not self.lenient or self.is_leaf_module(m, self.path_of_module(m)):
            return super().call_module(m, forward, args, kwargs)
        nodes, stack, calls = len(self.graph.nodes), self.module_stack.copy(), dict(self.num_calls)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            for nd in reversed(list(self.graph.nodes)[nodes:]):  # the partial trace
                self.graph.erase_node(nd)
            self.module_stack, self.num_calls = stack, calls
            self.forced.add(id(m))
            return super().call_module(m, forward, args, kwargs)

    def create_arg(self, a):
        # A tensor held by the module (also a parameter replaced by a plain tensor, as
        # functional calls do) is read by name at every call; any other tensor constant is
        # kept beside the graph instead of being set as an attribute on the user's module.
        if isinstance(a, torch.Tensor):
            for name, t in (*self.root.named_parameters(), *self.root.named_buffers()):
                if a is t:
                    return self.create_node("get_attr", name, (), {})
            if not isinstance(a, nn.Parameter):
                key = f"<constant {len(self.consts)}>"
                self.consts[key] = a
                return self.create_node("get_attr", key, (), {})
        return super().create_arg(a)


def _graph(net: nn.Module, lenient: bool = False):
    """The traced graph of ``net`` and its tensor constants (cached per module and mode);
    ``lenient``: submodules that fx cannot trace through are leaves."""
    key = (net.training, lenient)
    hit = _CACHE.get(net)
    if hit is not None and hit[0] == key:
        return hit[1]
    tracer = _Tracer(lenient)
    try:
        graph = tracer.trace(net)
    except Exception as exc:
        raise UnsupportedOpError(
            f"forward Laplacian: torch.fx cannot trace {type(net).__name__} ({type(exc).__name__}: "
            f"{exc}); data-dependent Python control flow is not traceable. Pass "
            "unsupported='torch.func' (a submodule fx cannot trace is then propagated by "
            "torch.func) or use odeflow.derivatives(net, x, want='laplacian', mode='func')."
        ) from exc
    placeholders = [nd for nd in graph.nodes if nd.op == "placeholder"]
    if len(placeholders) < 1 or any(not nd.args for nd in placeholders[1:]):
        raise UnsupportedOpError(
            f"forward Laplacian: {type(net).__name__}.forward must take one tensor x of shape "
            "(n, d) (other arguments need defaults); concatenate several inputs into x."
        )
    _CACHE[net] = (key, (graph, tracer.consts))
    return graph, tracer.consts


def _fetch(net: nn.Module, target: str):
    obj = net
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _has_jet(args, kwargs) -> bool:
    found = []
    map_aggregate((args, kwargs), lambda a: found.append(a) if isinstance(a, Jet) else None)
    return bool(found)


def _name(node: fx.Node, net: nn.Module) -> str:
    if node.op == "call_module":
        m = net.get_submodule(node.target)
        return f"module {node.target!r} ({type(m).__module__}.{type(m).__qualname__})"
    if node.op == "call_method":
        return f"tensor method .{node.target}()"
    t = node.target
    return f"function {getattr(t, '__module__', None) or ''}.{getattr(t, '__name__', repr(t))}"


def _unsupported(node, net):
    return UnsupportedOpError(
        f"forward Laplacian: no propagation rule for {_name(node, net)} (node {node.name!r}); "
        "pass unsupported='torch.func' to propagate this op by torch.func, use "
        "odeflow.derivatives(net, x, want='laplacian', mode='func') for the whole network, or "
        "write it from supported ops (see odeflow.derivatives.forward_laplacian)."
    )


def _const_jets(args, kwargs):
    """Constant jets (no x-dependence) become plain values; returns (args, kwargs, has_jet)."""

    def f(a):
        if isinstance(a, Jet) and a.J is None:
            return a.v
        return a

    args, kwargs = map_aggregate((args, kwargs), f)
    return args, kwargs, _has_jet(args, kwargs)


def _op(node: fx.Node, net: nn.Module):
    """The callable a call_function / call_method / call_module node runs."""
    if node.op == "call_module":
        return net.get_submodule(node.target)
    if node.op == "call_method":
        name = node.target
        if name.endswith("_") and not name.endswith("__"):
            raise UnsupportedOpError(
                f"forward Laplacian: the in-place tensor method .{name}() (node {node.name!r}) "
                "writes into an x-dependent tensor; use its out-of-place form."
            )
        return lambda self, *a, **k: getattr(self, name)(*a, **k)
    return node.target


def _interpret(net: nn.Module, traced, x: Jet, ctx: FLCtx, fell: list | None = None):
    """Run the graph on jets; ``fell`` (a list: unsupported="torch.func") collects the names
    of the ops without a rule that the torch.func rule propagated (None: they raise)."""
    graph, consts = traced
    env: dict = {}
    first = True
    for node in graph.nodes:
        if node.op == "placeholder":
            env[node] = x if first else node.args[0]
            first = False
            continue
        if node.op == "get_attr":
            t = node.target
            env[node] = consts[t] if t in consts else _fetch(net, t)
            continue
        if node.op == "output":
            return map_arg(node.args[0], lambda nd: env[nd])
        args = map_arg(node.args, lambda nd: env[nd])
        kwargs = map_arg(node.kwargs, lambda nd: env[nd])
        args, kwargs, jet = _const_jets(args, kwargs)
        if node.op == "call_module":
            mod = net.get_submodule(node.target)
            if not jet:
                env[node] = mod(*args, **kwargs)
                continue
            rule = R.MODULES(mod)
        elif node.op == "call_method":
            if not jet:
                env[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
                continue
            rule = R.METHODS.get(node.target)
        else:
            if not jet:
                env[node] = node.target(*args, **kwargs)
                continue
            rule = R.FUNCTIONS.get(node.target)
        if rule is None:
            if fell is None:
                raise _unsupported(node, net)
            name = _name(node, net)
            fell.append(name)
            op = _op(node, net)
            rule = lambda ctx, *a, op=op, name=name, **k: fallback(op, name, ctx, a, k)  # noqa: E731
        try:
            env[node] = rule(ctx, *args, **kwargs)
        except UnsupportedOpError as exc:
            raise UnsupportedOpError(f"{exc} (at {_name(node, net)}, node {node.name!r})") from None
    raise UnsupportedOpError("forward Laplacian: the traced graph has no output.")


def fl_supported(net: nn.Module) -> bool:
    """Whether ``net`` traces with torch.fx (the per-op check happens while propagating)."""
    try:
        _graph(net)
    except UnsupportedOpError:
        return False
    return True


UNSUPPORTED = ("error", "torch.func")


def check_unsupported(unsupported, who: str) -> None:
    """A clear ValueError for an unknown ``unsupported`` option."""
    if not isinstance(unsupported, str) or unsupported not in UNSUPPORTED:
        raise ValueError(
            f"{who}: unsupported must be 'error' (an op without a forward-Laplacian rule raises "
            f"UnsupportedOpError) or 'torch.func' (it is propagated by torch.func), got "
            f"{unsupported!r}."
        )


def _warn_fallback(net: nn.Module, fell: list) -> None:
    """Warn once per network (and set of ops) that some ops went through torch.func."""
    names = frozenset(fell)
    if not names or _WARNED.get(net) == names:
        return
    _WARNED[net] = names
    warnings.warn(
        f"forward Laplacian: {len(names)} op(s) of {type(net).__name__} have no rule and are "
        f"propagated by torch.func (slower: nested jvps per seed): {', '.join(sorted(names))}.",
        UserWarning,
        stacklevel=outside_stacklevel(),
    )


def fl_propagate(
    net: nn.Module, x: torch.Tensor, seeds: torch.Tensor, p: int, unsupported: str = "error"
):
    """The forward Laplacian with seed directions ``seeds`` (1 or n, c, d), trace over the
    first ``p``: returns value (n, m), J (n, m, c) and L (n, m) (acc dtype). ``unsupported``:
    see :func:`forward_laplacian`."""
    n = x.shape[0]
    acc = torch.promote_types(x.dtype, torch.float32)
    ctx = FLCtx(p, acc)
    lenient = unsupported == "torch.func"
    fell: list | None = [] if lenient else None
    out = _interpret(net, _graph(net, lenient), Jet(x, seeds.to(x.dtype), None), ctx, fell)
    if fell:
        _warn_fallback(net, fell)
    if not isinstance(out, (Jet, torch.Tensor)):
        raise UnsupportedOpError(
            f"forward Laplacian: the network returns a {type(out).__name__}; it must return one "
            "tensor of shape (n,), (n, 1) or (n, m)."
        )
    if not isinstance(out, Jet):
        out = Jet(out, None, None)
    v = out.v
    if v.ndim not in (1, 2) or v.shape[0] != n:
        raise UnsupportedOpError(
            f"forward Laplacian: the network's output has shape {tuple(v.shape)}; it must be "
            f"(n,), (n, 1) or (n, m) with n = {n}."
        )
    value = v.reshape(n, -1)
    m = value.shape[1]
    c = seeds.shape[1]
    if out.J is None:
        J = torch.zeros(n, m, c, dtype=x.dtype, device=x.device)
    else:
        J = out.J.reshape(out.J.shape[0], c, m).expand(n, c, m).transpose(1, 2)
    L = out.L
    L = torch.zeros(n, m, dtype=acc, device=x.device) if L is None else L.reshape(n, m).to(acc)
    return value, J, L


def _seeds(x, sigma, exclude_last, gradient, num_probes, generator):
    """Seed directions (1 or n, c, d) and the number p of leading trace columns."""
    n, d = x.shape
    eye = torch.eye(d, dtype=x.dtype, device=x.device).unsqueeze(0)
    if sigma is None and num_probes is None:
        dp = d - exclude_last
        return (eye if gradient else eye[:, :dp]), dp
    if num_probes is not None:
        k = d if sigma is None else sigma.shape[-1]
        xi = torch.randint(0, 2, (n, num_probes, k), generator=generator, device="cpu")
        xi = (2.0 * xi - 1.0).to(dtype=x.dtype, device=x.device)
        if sigma is None:
            if exclude_last:
                xi[..., d - exclude_last :] = 0.0
            S = xi
        else:
            S = xi @ sigma.mT.to(x.dtype)  # (n, P, d): σξ for every probe
    else:
        S = sigma.mT.to(x.dtype)
        S = S.unsqueeze(0) if S.ndim == 2 else S
    p = S.shape[1]
    if gradient:
        nS = S.shape[0]
        S = torch.cat([S, eye.expand(nS, d, d)], 1)
    return S, p


def _check(net, x, sigma, exclude_last, num_probes):
    if not isinstance(net, nn.Module):
        raise TypeError(f"forward_laplacian: net must be an nn.Module, got {type(net).__name__}.")
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.is_floating_point():
        raise ValueError(
            "forward_laplacian: x must be a floating tensor of shape (n, d), got "
            f"{getattr(x, 'shape', type(x).__name__)}; use x.unsqueeze(0) for one point."
        )
    n, d = x.shape
    if isinstance(exclude_last, bool) or not isinstance(exclude_last, int):
        raise ValueError(f"forward_laplacian: exclude_last must be an int, got {exclude_last!r}.")
    if not 0 <= exclude_last < d:
        raise ValueError(f"forward_laplacian: exclude_last must be in [0, {d - 1}].")
    if sigma is not None:
        if not isinstance(sigma, torch.Tensor) or sigma.ndim not in (2, 3):
            raise ValueError("forward_laplacian: sigma must be a tensor (d, k) or (n, d, k).")
        if sigma.shape[-2] != d or (sigma.ndim == 3 and sigma.shape[0] != n):
            raise ValueError(
                f"forward_laplacian: sigma has shape {tuple(sigma.shape)}; need ({d}, k) or "
                f"({n}, {d}, k) for x of shape {tuple(x.shape)}."
            )
        if exclude_last:
            raise ValueError(
                "forward_laplacian: sigma already chooses the directions; set exclude_last=0 "
                "and zero the rows of sigma for the excluded inputs instead."
            )
    if num_probes is not None and (
        isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 1
    ):
        raise ValueError(f"forward_laplacian: num_probes must be an int >= 1, got {num_probes!r}.")


def forward_laplacian(
    net: nn.Module,
    x: torch.Tensor,
    *,
    sigma: torch.Tensor | None = None,
    exclude_last: int = 0,
    gradient: bool = True,
    num_probes: int | None = None,
    generator: torch.Generator | None = None,
    unsupported: str = "error",
):
    r"""Value, gradient and exact Laplacian (or weighted trace) of any supported module, one pass.

    The network is traced with ``torch.fx`` and every op propagates the triple
    (v, J, L): the value, its directional derivatives along the seeds s_1 … s_c and
    L = Σ_{a≤p} ∂²v/∂t_a² along x + t_a s_a, by the chain rule to second order
    (linear ops: J ↦ A J, L ↦ A L; elementwise g: J ↦ g′ J, L ↦ g′ L + g″ Σ_a J_a²;
    products: L_{uw} = L_u w + u L_w + 2 Σ_a J_{u,a} J_{w,a}). No Hessian is formed: the cost
    is that of a forward pass with c + 1 columns per tensor.

    * Laplacian: seeds e_1 … e_d (the trailing ``exclude_last`` left out of the trace, e.g. a
      time input), Δf = Σ_{i<d'} ∂²f/∂x_i².
    * Weighted trace: with ``sigma`` = σ (d, k) or batched (n, d, k), seeds σ e_1 … σ e_k give
      tr(σᵀ ∇²f σ) = tr(A ∇²f) for A = σσᵀ (stochastic control's generator, HJB); with
      ``gradient=True`` the columns e_1 … e_d ride along and give ∇f in the same pass.
    * Hutchinson: ``num_probes`` = P Rademacher probes ξ_p (per sample, zero on excluded
      inputs; σξ_p with ``sigma``) give the unbiased estimate (1/P) Σ_p ξ_pᵀ σᵀ∇²f σ ξ_p with
      variance (2/P)(‖B‖_F² − Σ_i B_ii²), B = σᵀ∇²f σ (∇²f itself without sigma): P columns
      instead of d, for very wide inputs.

    Supported: nn.Linear, F.linear, matmul/@/bmm (also of two x-dependent tensors),
    nn.Conv1d/2d/3d and F.conv*, elementwise tanh, sigmoid, softplus, GELU (erf and tanh
    forms), SiLU, ReLU/LeakyReLU/ELU/abs (almost everywhere), sin, cos, sinh, cosh, exp, log,
    log1p, expm1, sqrt, rsqrt, erf, powers, reciprocals; +, −, ×, ÷; sum and mean over
    dims ≥ 1; softmax/log_softmax; nn.LayerNorm/F.layer_norm; scaled-dot-product attention and
    nn.MultiheadAttention (batch_first, no key-padding mask); cat/stack, indexing of dims ≥ 1,
    view/reshape/flatten/unflatten/squeeze/unsqueeze/permute/transpose/expand; dropout in eval
    mode; odeflow activations and blocks (their own jets). Dim 0 must stay the batch.

    Other ops: ``unsupported="error"`` (the default) raises :class:`UnsupportedOpError` naming
    the op; ``unsupported="torch.func"`` propagates each op without a rule, y = g(x₁ … x_k),
    exactly by torch.func instead: J_y = Σ_i ∂_i g · J_{x_i} (one ``jvp`` per seed) and
    L_y = Σ_i ∂_i g · L_{x_i} + Σ_{a≤p} D²g[J_x s_a, J_x s_a] (a forward-over-forward ``jvp``
    of ``jvp`` per trace seed), vmapped over the seeds, the rest of the network keeping its
    rules. A submodule that torch.fx cannot trace through (Python control flow) becomes one
    such op. Cost per fallback op: p jvp-of-jvps plus c − p + 1 jvps (c seed columns, p traced),
    against one batched rule; a ``UserWarning`` names these ops once per network.

    Args:
        net: a module mapping x (n, d) to (n,), (n, 1) or (n, m), traceable by torch.fx.
        x: (n, d) inputs (float32/float64; bf16/fp16 with the Laplacian accumulated in float32).
        sigma: optional σ (d, k) or (n, d, k): the weighted trace tr(σᵀ∇²f σ) instead of Δf.
        exclude_last: trailing inputs left out of the trace (not with ``sigma``).
        gradient: also return ∇f over all d inputs (adds d seed columns when ``sigma`` or
            ``num_probes`` is given; free otherwise).
        num_probes: the Hutchinson estimator with this many Rademacher probes.
        generator: random generator for the probes (drawn on the CPU).
        unsupported: "error" or "torch.func": what an op without a rule does (see above).

    Returns:
        :class:`~odeflow.derivatives.Derivatives` (value, gradient, None, laplacian): value (n,)
        / (n, m), gradient (n, d) / (n, m, d) or None, laplacian (n,) / (n, m) in float32 for
        low-precision inputs.

    Raises:
        UnsupportedOpError (a TypeError): an op without a rule (the message names the op and
            the node), untraceable control flow, or an op mixing the batch dimension.
        ValueError: x not a floating (n, d) tensor, sigma of the wrong shape, bad exclude_last,
            num_probes or unsupported.

    Reference: Li et al., "A computational framework for neural network-based variational Monte
    Carlo with Forward Laplacian", arXiv:2307.08214; Dangel et al., "Collapsing Taylor Mode
    Automatic Differentiation", arXiv:2505.13644; Hutchinson (1990).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 8), nn.GELU(), nn.Linear(8, 1))
        >>> out = forward_laplacian(net, torch.randn(5, 3), exclude_last=1)
        >>> out.value.shape, out.gradient.shape, out.laplacian.shape
        (torch.Size([5]), torch.Size([5, 3]), torch.Size([5]))
    """
    _check(net, x, sigma, exclude_last, num_probes)
    check_unsupported(unsupported, "forward_laplacian")
    S, p = _seeds(x, sigma, exclude_last, gradient, num_probes, generator)
    value, J, L = fl_propagate(net, x, S, p, unsupported)
    grad = None
    if gradient:
        grad = J[..., J.shape[-1] - x.shape[1] :] if J.shape[-1] != x.shape[1] else J
    if num_probes is not None:
        L = L / num_probes
    out = _finish(value, grad if grad is not None else J[..., :0], None, L, "laplacian")
    return out if gradient else out._replace(gradient=None)


def fl_compute(net, x, V, exclude_last, strict: bool = True, unsupported: str = "error"):
    """``compute``'s forward-Laplacian path for a plain module: (value, gradient, lap)
    with compute's conventions (directions V (d, k): gradient Vᵀ∇f, Laplacian tr(VᵀHV)).

    With ``strict=False`` an unsupported network gives None (and is remembered, so that the
    caller's torch.func fallback does not retrace it at every call) instead of the error.
    ``unsupported``: see :func:`forward_laplacian`.
    """
    key = (net.training, unsupported)
    if not strict and _FAILED.get(net) == key:
        return None
    if V is None:
        S, p = _seeds(x, None, exclude_last, True, None, None)
    else:
        S, p = V.mT.unsqueeze(0), V.shape[1]
    try:
        return fl_propagate(net, x, S, p, unsupported)
    except UnsupportedOpError:
        if strict:
            raise
        _FAILED[net] = key
        return None
