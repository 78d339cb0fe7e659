r"""Propagation rules of the forward Laplacian: torch functions, tensor methods and modules.

Each rule takes the :class:`~._fl_jet.FLCtx` and the op's arguments (with :class:`~._fl_jet.Jet`
in place of x-dependent tensors) and returns a jet (or a tuple holding jets). Elementwise
functions are declared once by their (g, g′, g″) in :data:`ELEMENTWISE`; linear ops reuse
:func:`~._fl_jet.linear_map`. odeflow's own activations (:class:`~._activations.Activation`)
use their ``derivatives()`` and odeflow blocks (:class:`~._blocks.Block`) their hand-written
forward jet ``_jet``, so a traced op and a block share one set of rules.
"""

from __future__ import annotations

import operator

import torch
from torch import nn
from torch.nn import functional as F

from . import _fl_jet as fj
from ._activations import Activation
from ._blocks import Block
from ._fl_elementwise import ELEMENTWISE, gelu, softplus
from ._fl_jet import FLCtx, Jet, UnsupportedOpError
from ._sweep import Ctx, Kind

__all__ = ["ELEMENTWISE", "FUNCTIONS", "METHODS", "MODULES"]


def _elementwise(name):
    g = ELEMENTWISE[name]

    def rule(ctx, x, *args, inplace=False, **kwargs):
        f0, f1, f2 = g(x.v, *args, **kwargs)
        return fj.unary(x, f0, f1, f2, ctx)

    return rule


def _reciprocal(ctx, x):
    return fj.reciprocal(x, ctx)


# ------------------------------------------------------------------ arithmetic
def _add(ctx, a, b, *, alpha=1):
    return fj.add(a, b, ctx, alpha)


def _sub(ctx, a, b, *, alpha=1):
    return fj.add(a, b, ctx, -alpha)


def _rsub(ctx, a, b, *, alpha=1):
    return fj.add(b, a, ctx, -alpha)


def _mul(ctx, a, b):
    return fj.mul(a, b, ctx)


def _div(ctx, a, b, *, rounding_mode=None):
    if rounding_mode is not None:
        raise UnsupportedOpError(f"forward Laplacian: div(rounding_mode={rounding_mode!r})")
    return fj.div(a, b, ctx)


def _pow(ctx, a, e):
    return fj.power(a, e, ctx)


def _neg(ctx, a):
    return fj.neg(a)


def _pos(ctx, a):
    return a


def _matmul(ctx, a, b):
    return fj.matmul(a, b, ctx)


def _linear(ctx, x, weight, bias=None):
    if isinstance(weight, Jet) or isinstance(bias, Jet):
        y = fj.matmul(
            x, fj.transpose(weight, -2, -1) if isinstance(weight, Jet) else weight.mT, ctx
        )
        return y if bias is None else fj.add(y, bias, ctx)
    return fj.affine(x, weight, bias, ctx)


def _conv(fn):
    def rule(ctx, x, weight, bias=None, *args, **kwargs):
        if isinstance(weight, Jet) or isinstance(bias, Jet):
            raise UnsupportedOpError("forward Laplacian: convolution with x-dependent weights")
        out = fn(x.v, weight, bias, *args, **kwargs)
        wa = weight.to(ctx.acc)
        return fj.linear_map(
            x,
            lambda t: fn(t, weight, None, *args, **kwargs),
            out,
            fn.__name__,
            lambda t: fn(t, wa, None, *args, **kwargs),
        )

    return rule


def _sum(ctx, x, dim=None, keepdim=False, *, dtype=None):
    if dim is None:
        fj.check_dim(None, x.ndim, "sum")
    return fj.jsum(x, dim, keepdim, ctx)


def _mean(ctx, x, dim=None, keepdim=False, *, dtype=None):
    if dim is None:
        fj.check_dim(None, x.ndim, "mean")
    return fj.jsum(x, dim, keepdim, ctx, mean=True)


def _softmax(ctx, x, dim=None, *args, dtype=None, _stacklevel=3, **kw):
    return fj.softmax(x, dim, ctx)


def _log_softmax(ctx, x, dim=None, *args, dtype=None, _stacklevel=3, **kw):
    return fj.softmax(x, dim, ctx, log=True)


def _layer_norm(ctx, x, normalized_shape, weight=None, bias=None, eps=1e-5):
    if isinstance(weight, Jet) or isinstance(bias, Jet):
        raise UnsupportedOpError("forward Laplacian: layer_norm with x-dependent weights")
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    return fj.layer_norm(x, shape, weight, bias, eps, ctx)


def _sdpa(ctx, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
    if dropout_p:
        raise UnsupportedOpError("forward Laplacian: scaled_dot_product_attention with dropout_p>0")
    if kw.get("enable_gqa"):
        raise UnsupportedOpError("forward Laplacian: scaled_dot_product_attention(enable_gqa=True)")
    return fj.attention(q, k, v, attn_mask, is_causal, scale, ctx)


# ------------------------------------------------------------------ shape ops
def _reshape_rule(name):
    def rule(ctx, x, *args, **kwargs):
        out = getattr(torch.Tensor, name)(x.v, *args, **kwargs)
        return fj.reshape_to(x, out, name)

    return rule


def _flatten(ctx, x, start_dim=0, end_dim=-1):
    return fj.reshape_to(x, torch.flatten(x.v, start_dim, end_dim), "flatten")


def _transpose(ctx, x, d0, d1):
    return fj.transpose(x, d0, d1)


def _t_attr(ctx, x):  # x.mT / x.T on a batch of matrices: the last two dims
    return fj.transpose(x, -2, -1)


def _permute(ctx, x, *dims):
    dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
    if dims[0] % x.ndim != 0:
        raise UnsupportedOpError(f"forward Laplacian: permute{dims} moves the batch dimension.")
    out = x.v.permute(dims)
    if x.J is None:
        return fj.const(out)
    jd = (0, 1, *(d % x.ndim + 1 for d in dims[1:]))
    L = None if x.L is None else x.L.permute(dims)
    return Jet(out, x.J.permute(jd), L)


def _per_sample(name, fn):
    """An op linear in x acting on dims ≥ 1 (indexing, narrow, ...): applied to merged J."""

    def rule(ctx, x, *args, **kwargs):
        out = fn(x.v, *args, **kwargs)
        return fj.linear_map(x, lambda t: fn(t, *args, **kwargs), out, name)

    return rule


def _getitem(ctx, x, idx):
    if not isinstance(x, Jet):  # a tuple holding jets (attention's outputs)
        return x[idx]
    first = idx[0] if isinstance(idx, tuple) and idx else idx
    if not (first is Ellipsis or first == slice(None)):
        raise UnsupportedOpError(
            f"forward Laplacian: indexing {idx!r} indexes the batch dimension; index dims ≥ 1 "
            "(x[:, ...] or x[..., k])."
        )
    return _per_sample("getitem", operator.getitem)(ctx, x, idx)


def _split_rule(fn):
    """chunk/split along a dim ≥ 1: a tuple of narrowed jets."""

    def rule(ctx, x, arg, dim=0):
        fj.check_dim(dim, x.ndim, fn.__name__)
        pieces = fn(x.v, arg, dim)
        out, start = [], 0
        for pc in pieces:
            size = pc.shape[dim]
            out.append(_per_sample("narrow", torch.narrow)(ctx, x, dim, start, size))
            start += size
        return tuple(out)

    return rule


def _cat(ctx, tensors, dim=0):
    return fj.cat(list(tensors), dim, ctx)


def _stack(ctx, tensors, dim=0):
    return fj.cat(list(tensors), dim, ctx, stack=True)


def _masked_fill(ctx, x, mask, value):
    if isinstance(mask, Jet) or isinstance(value, Jet):
        raise UnsupportedOpError("forward Laplacian: masked_fill with an x-dependent mask/value")
    return fj.masked_fill(x, mask, value)


def _expand(ctx, x, *sizes):
    out = x.v.expand(*sizes)
    if out.shape[0] != x.v.shape[0]:
        raise UnsupportedOpError("forward Laplacian: expand changes the batch dimension.")
    if x.J is None:
        return fj.const(out)
    return Jet(out, fj.fit(x.J, out), fj.fitL(x.L, out))


def _identity(ctx, x, *args, **kwargs):
    return x


def _to(ctx, x, *args, **kwargs):
    out = x.v.to(*args, **kwargs)
    if out.dtype == x.v.dtype:
        return Jet(out, x.J, x.L)
    raise UnsupportedOpError(
        f"forward Laplacian: a dtype cast inside the network ({x.v.dtype} → {out.dtype}); "
        "cast x and the network once outside instead."
    )


def _getattr(ctx, x, name):
    if not isinstance(x, Jet):  # a named tuple holding jets (an op's (values, indices))
        return getattr(x, name)
    if name in ("shape", "dtype", "device", "ndim", "is_cuda", "requires_grad"):
        return getattr(x.v, name)
    if name in ("mT", "T"):
        return fj.transpose(x, -2, -1) if name == "mT" or x.ndim == 2 else _no_T()
    raise UnsupportedOpError(f"forward Laplacian: attribute .{name} of an x-dependent tensor")


def _no_T():
    raise UnsupportedOpError("forward Laplacian: .T of a tensor with more than 2 dims")


def _size(ctx, x, *args):
    return x.v.size(*args)


def _dim(ctx, x):
    return x.v.dim()


# ------------------------------------------------------------------ tables
def _both(table, names, rule):
    for nm in names:
        table[nm] = rule


FUNCTIONS: dict = {
    operator.add: _add,
    operator.sub: _sub,
    operator.mul: _mul,
    operator.truediv: _div,
    operator.neg: _neg,
    operator.pos: _pos,
    operator.pow: _pow,
    operator.matmul: _matmul,
    operator.getitem: _getitem,
    getattr: _getattr,
    torch.add: _add,
    torch.sub: _sub,
    torch.subtract: _sub,
    torch.rsub: _rsub,
    torch.mul: _mul,
    torch.multiply: _mul,
    torch.div: _div,
    torch.true_divide: _div,
    torch.neg: _neg,
    torch.pow: _pow,
    torch.reciprocal: _reciprocal,
    torch.matmul: _matmul,
    torch.mm: _matmul,
    torch.bmm: _matmul,
    F.linear: _linear,
    F.conv1d: _conv(F.conv1d),
    F.conv2d: _conv(F.conv2d),
    F.conv3d: _conv(F.conv3d),
    torch.sum: _sum,
    torch.mean: _mean,
    torch.softmax: _softmax,
    F.softmax: _softmax,
    torch.log_softmax: _log_softmax,
    F.log_softmax: _log_softmax,
    F.layer_norm: _layer_norm,
    F.scaled_dot_product_attention: _sdpa,
    torch.reshape: _reshape_rule("reshape"),
    torch.flatten: _flatten,
    torch.squeeze: _reshape_rule("squeeze"),
    torch.unsqueeze: _reshape_rule("unsqueeze"),
    torch.transpose: _transpose,
    torch.swapaxes: _transpose,
    torch.permute: _permute,
    torch.cat: _cat,
    torch.concat: _cat,
    torch.concatenate: _cat,
    torch.stack: _stack,
    torch.narrow: _per_sample("narrow", torch.narrow),
    torch.chunk: _split_rule(torch.chunk),
    torch.split: _split_rule(torch.split),
    torch.masked_fill: _masked_fill,
    F.dropout: lambda ctx, x, p=0.5, training=True, inplace=False: (
        x if not training or p == 0 else _no_dropout()
    ),
}

METHODS: dict = {
    "add": _add,
    "sub": _sub,
    "mul": _mul,
    "div": _div,
    "neg": _neg,
    "pow": _pow,
    "reciprocal": _reciprocal,
    "matmul": _matmul,
    "sum": _sum,
    "mean": _mean,
    "softmax": _softmax,
    "log_softmax": _log_softmax,
    "flatten": _flatten,
    "transpose": _transpose,
    "swapaxes": _transpose,
    "permute": _permute,
    "narrow": _per_sample("narrow", torch.narrow),
    "chunk": _split_rule(torch.chunk),
    "split": _split_rule(torch.split),
    "masked_fill": _masked_fill,
    "expand": _expand,
    "expand_as": lambda ctx, x, other: _expand(ctx, x, *fj.val(other).shape),
    "contiguous": _identity,
    "clone": _identity,
    "to": _to,
    "type_as": lambda ctx, x, other: _to(ctx, x, fj.val(other).dtype),
    "size": _size,
    "dim": _dim,
}
for _nm in ("view", "reshape", "squeeze", "unsqueeze", "unflatten", "view_as", "reshape_as"):
    if _nm in ("view_as", "reshape_as"):
        METHODS[_nm] = (
            lambda nm: lambda ctx, x, o: fj.reshape_to(x, x.v.reshape(fj.val(o).shape), nm)
        )(_nm)
    else:
        METHODS[_nm] = _reshape_rule(_nm)
FUNCTIONS[torch.unflatten] = _reshape_rule("unflatten")

for _name in ELEMENTWISE:
    _rule = _elementwise(_name)
    METHODS[_name] = _rule
    for _mod in (torch, F, torch.special):
        _fn = getattr(_mod, _name, None)
        if callable(_fn):
            FUNCTIONS[_fn] = _rule


def _no_dropout():
    raise UnsupportedOpError(
        "forward Laplacian: dropout in training mode is random; call net.eval() first."
    )


# ------------------------------------------------------------------ modules
_MODULE_ELEMENTWISE = {
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.ReLU: "relu",
    nn.SiLU: "silu",
    nn.ELU: "elu",
    nn.LeakyReLU: "leaky_relu",
}


def _module_rule(mod: nn.Module):
    """The rule for a leaf module, or None."""
    t = type(mod)
    if t in _MODULE_ELEMENTWISE:
        g = ELEMENTWISE[_MODULE_ELEMENTWISE[t]]
        kw = {}
        if t is nn.ELU:
            kw = {"alpha": mod.alpha}
        elif t is nn.LeakyReLU:
            kw = {"negative_slope": mod.negative_slope}
        return lambda ctx, x: fj.unary(x, *g(x.v, **kw), ctx)
    if t is nn.GELU:
        return lambda ctx, x: fj.unary(x, *gelu(x.v, mod.approximate), ctx)
    if t is nn.Softplus:
        return lambda ctx, x: fj.unary(x, *softplus(x.v, mod.beta, mod.threshold), ctx)
    if t is nn.Linear:
        return lambda ctx, x: fj.affine(x, mod.weight, mod.bias, ctx)
    if t in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        if mod.padding_mode != "zeros":
            return None
        fn = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}[t]
        rule = _conv(fn)
        args = (mod.stride, mod.padding, mod.dilation, mod.groups)
        return lambda ctx, x: rule(ctx, x, mod.weight, mod.bias, *args)
    if t is nn.LayerNorm:
        return lambda ctx, x: fj.layer_norm(
            x, tuple(mod.normalized_shape), mod.weight, mod.bias, mod.eps, ctx
        )
    if t is nn.Softmax:
        return lambda ctx, x: fj.softmax(x, mod.dim, ctx)
    if t is nn.LogSoftmax:
        return lambda ctx, x: fj.softmax(x, mod.dim, ctx, log=True)
    if t is nn.Flatten:
        return lambda ctx, x: _flatten(ctx, x, mod.start_dim, mod.end_dim)
    if t is nn.Identity:
        return lambda ctx, x, *a, **k: x
    if t in (nn.Dropout, nn.Dropout1d, nn.Dropout2d):
        return lambda ctx, x: x if not mod.training or mod.p == 0 else _no_dropout()
    if t is nn.MultiheadAttention:
        from ._fl_mha import mha_rule

        return mha_rule(mod)
    if isinstance(mod, Activation):
        return lambda ctx, x: fj.unary(x, *mod.derivatives(x.v), ctx)
    if isinstance(mod, Block):
        return lambda ctx, x: _block_jet(mod, x, ctx)
    return None


MODULES = _module_rule


def _block_jet(block: Block, x: Jet, ctx: FLCtx) -> Jet:
    """An odeflow block inside a plain module: its hand-written forward jet."""
    if x.J is None:
        return fj.const(block(x.v))
    J = x.J[0] if x.J.shape[0] == 1 else x.J
    v, Jo, Lo = block._jet(x.v, J, x.L, Ctx(Kind.LAP, ctx.p, ctx.acc))
    if Jo.ndim == 2:
        Jo = Jo.unsqueeze(0)
    return Jet(v, Jo, Lo)
