r"""Jet arithmetic of the forward Laplacian: (value, directional derivatives, Laplacian).

A :class:`Jet` carries, for a tensor ``v`` of shape ``(n, *s)`` that depends on the input
``x: (n, d)`` through seed directions ``e_1 … e_c`` (columns of the identity, or σ e_i for a
weighted trace), the triple

* ``v``: the value, ``(n, *s)``;
* ``J``: the directional derivatives ``J[:, a] = ∂v/∂x · e_a``, ``(n, c, *s)``, or ``(1, c, *s)``
  while they are shared by the batch (before the first nonlinearity), or ``None`` for a
  tensor that does not depend on ``x``;
* ``L``: the Laplacian over the first ``p`` seeds, ``Σ_{a<p} ∂²v/∂t_a²`` along ``x + t_a e_a``,
  ``(n, *s)`` in the accumulation dtype, or ``None`` for zero.

The rules are the chain rule to second order (Li et al., "Forward Laplacian", arXiv:2307.08214;
the "collapsed" Taylor mode of Dangel et al., arXiv:2505.13644, propagates the same triple):

* linear ops ``y = A(v)`` (Linear, convolution, reshapes, sums): ``J_y = A(J)``, ``L_y = A(L)``;
* elementwise ``y = g(v)``: ``J_y = g′(v) J``, ``L_y = g′(v) L + g″(v) Σ_{a<p} J_a²``;
* products ``y = u·w`` (also ``@``): ``J_y = J_u w + u J_w``,
  ``L_y = L_u w + u L_w + 2 Σ_{a<p} J_{u,a} J_{w,a}``.

The direction axis sits right after the batch axis, so an op that acts per sample on dim ≥ 1
acts on ``J`` with the batch and direction axes merged (``(n·c, *s)``), and a Linear layer is
one GEMM ``(n·c, in) × (in, out)``.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["FLCtx", "Jet", "UnsupportedOpError"]


class UnsupportedOpError(TypeError):
    """An op the forward Laplacian has no propagation rule for (the message names it)."""


class FLCtx:
    """What a propagation needs besides the jets: ``p`` trace columns and ``acc`` (the dtype of
    Laplacian sums: float32 for bf16/fp16 values, else the value dtype)."""

    def __init__(self, p: int, acc: torch.dtype):
        self.p, self.acc = p, acc


class Jet:
    """(value, directional derivatives, Laplacian) of one tensor; see the module docstring."""

    # (no __slots__: dynamo reads attributes of objects created inside compiled regions)

    def __init__(self, v: torch.Tensor, J: torch.Tensor | None, L: torch.Tensor | None):
        self.v, self.J, self.L = v, J, L

    @property
    def ndim(self) -> int:
        return self.v.ndim

    @property
    def shape(self):
        return self.v.shape


def plus(a, b):
    """``a + b`` with None standing for zero."""
    if a is None:
        return b
    return a if b is None else a + b


def val(a):
    """The value of a jet, or the constant itself."""
    return a.v if isinstance(a, Jet) else a


def jdim(dim: int) -> int:
    """A value dim (≥ 1 or negative) as a dim of J (direction axis inserted at 1)."""
    return dim + 1 if dim >= 0 else dim


def check_dim(dim, ndim: int, op: str) -> None:
    """Reject ops over the batch axis (dim 0): the batch is the sample index, not data."""
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    for k in dims:
        if k is None or k % ndim == 0:
            raise UnsupportedOpError(
                f"forward Laplacian: {op} over the batch dimension (dim={dim!r}) mixes samples; "
                "keep dim 0 the batch (n, ...) throughout the network."
            )


def lift(c, out_ndim: int):
    """A coefficient shaped like a value (or broadcastable to it) as one for J."""
    if not isinstance(c, torch.Tensor) or c.ndim < out_ndim:
        return c
    if c.ndim == out_ndim:
        return c.unsqueeze(1)
    raise UnsupportedOpError(
        f"forward Laplacian: a constant of shape {tuple(c.shape)} broadcasts a value of "
        f"{out_ndim} dims to more dims (over the batch); reshape it to at most {out_ndim} dims."
    )


def sq(J: torch.Tensor, ctx: FLCtx) -> torch.Tensor:
    """Σ_{a<p} J_a² in ctx.acc: (nJ, c, *s) ↦ (nJ, *s)."""
    Jp = J[:, : ctx.p] if J.shape[1] != ctx.p else J
    Jp = Jp.to(ctx.acc)
    return torch.linalg.vecdot(Jp, Jp, dim=1)


def cross(Ja: torch.Tensor, Jb: torch.Tensor, ctx: FLCtx) -> torch.Tensor:
    """Σ_{a<p} Ja_a Jb_a in ctx.acc (broadcasting)."""
    A = (Ja[:, : ctx.p] if Ja.shape[1] != ctx.p else Ja).to(ctx.acc)
    B = (Jb[:, : ctx.p] if Jb.shape[1] != ctx.p else Jb).to(ctx.acc)
    if A.shape != B.shape:
        return (A * B).sum(1)
    return torch.linalg.vecdot(A, B, dim=1)


def fit(J: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """J broadcast (a free view) to the value's shape ``(nJ, c, *out.shape[1:])``."""
    if J.ndim != out.ndim + 1:
        raise UnsupportedOpError(
            f"forward Laplacian: an x-dependent operand of {J.ndim - 1} dims broadcasts to "
            f"{out.ndim} dims (over the batch); give both operands the batch dimension first."
        )
    shape = (J.shape[0], J.shape[1], *out.shape[1:])
    return J if J.shape == shape else J.expand(shape)


def fitL(L, out: torch.Tensor):
    """L broadcast (a free view) to the value's shape (None stays None)."""
    if L is None or L.shape == out.shape:
        return L
    return L.expand(out.shape)


def const(v) -> Jet:
    return Jet(v, None, None)


# ------------------------------------------------------------------ elementwise and products
def unary(x: Jet, f0, f1, f2, ctx: FLCtx) -> Jet:
    """y = g(x) elementwise with g(x) = f0, g′(x) = f1, g″(x) = f2 (tensors shaped like x)."""
    if x.J is None:
        return const(f0)
    J = f1.unsqueeze(1) * x.J
    L = None
    if f2 is not None:
        L = f2.to(ctx.acc) * sq(x.J, ctx)
    if x.L is not None:
        L = plus(L, f1.to(ctx.acc) * x.L)
    return Jet(f0, J, L)


def add(a, b, ctx: FLCtx, alpha=1) -> Jet:
    """a + alpha·b for jets or constants."""
    out = torch.add(val(a), val(b), alpha=alpha) if alpha != 1 else val(a) + val(b)
    Ja = a.J if isinstance(a, Jet) else None
    Jb = b.J if isinstance(b, Jet) else None
    La = a.L if isinstance(a, Jet) else None
    Lb = b.L if isinstance(b, Jet) else None
    if alpha != 1:
        Jb = None if Jb is None else alpha * Jb
        Lb = None if Lb is None else alpha * Lb
    if Ja is not None and Jb is not None:
        Ja, Jb = fit(Ja, out), fit(Jb, out)
    J = plus(Ja, Jb)
    J = None if J is None else fit(J, out)
    return Jet(out, J, fitL(plus(La, Lb), out))


def neg(a: Jet) -> Jet:
    return Jet(-a.v, -a.J, None if a.L is None else -a.L)


def _bshape(x, y):
    return torch.broadcast_shapes(x.shape, y.shape)


def mul(a, b, ctx: FLCtx) -> Jet:
    """a·b elementwise (broadcasting) for jets or constants."""
    out = val(a) * val(b)
    if not any(isinstance(t, Jet) and t.J is not None for t in (a, b)):
        return const(out)
    if not isinstance(b, Jet) or b.J is None:
        a, b = b, a
    # now b is a jet with J; a may be a constant
    if not isinstance(a, Jet) or a.J is None:
        c = val(a)
        J = fit(lift(c, out.ndim) * b.J, out)
        L = None if b.L is None else fitL(b.L * c, out)
        return Jet(out, J, L)
    Jb = fit(lift(a.v, out.ndim) * b.J, out)
    Ja_c = lift(b.v, out.ndim)
    if _bshape(Ja_c, a.J) == Jb.shape:
        J = torch.addcmul(Jb, Ja_c, a.J)
    else:
        J = Jb + fit(Ja_c * a.J, out)
    L = 2.0 * cross(fit(a.J, out), fit(b.J, out), ctx)
    if a.L is not None:
        L = L + a.L * b.v
    if b.L is not None:
        L = L + b.L * a.v
    return Jet(out, J, fitL(L, out))


def reciprocal(x: Jet, ctx: FLCtx) -> Jet:
    r = torch.reciprocal(x.v)
    return unary(x, r, -r * r, 2.0 * r * r * r, ctx)


def div(a, b, ctx: FLCtx) -> Jet:
    if isinstance(b, Jet) and b.J is not None:
        return mul(a, reciprocal(b, ctx), ctx)
    return mul(a, torch.reciprocal(val(b)) if isinstance(val(b), torch.Tensor) else 1.0 / b, ctx)


def power(a, e, ctx: FLCtx) -> Jet:
    """a ** e: a jet to a constant power, a constant to a jet power, or both jets."""
    ea, ee = isinstance(a, Jet) and a.J is not None, isinstance(e, Jet) and e.J is not None
    if ea and not ee:
        e = val(e)
        if isinstance(e, (int, float)) and e == 2:
            return unary(a, a.v * a.v, 2.0 * a.v, torch.full_like(a.v, 2.0), ctx)
        y = torch.pow(a.v, e)
        d1 = e * torch.pow(a.v, e - 1)
        return unary(a, y, d1, e * (e - 1) * torch.pow(a.v, e - 2), ctx)
    if ee and not ea:
        base = val(a)
        y = torch.pow(base, e.v)
        lg = torch.log(torch.as_tensor(base, dtype=e.v.dtype, device=e.v.device))
        return unary(e, y, lg * y, lg * lg * y, ctx)
    # a^e = exp(e log a)
    la = unary(a, torch.log(a.v), torch.reciprocal(a.v), -torch.reciprocal(a.v * a.v), ctx)
    z = mul(e, la, ctx)
    ez = torch.exp(z.v)
    return unary(z, ez, ez, ez, ctx)


# ------------------------------------------------------------------ linear maps
def linear_map(x: Jet, fn, out: torch.Tensor, op: str, fn_L=None) -> Jet:
    """y = A(x) for a map A linear in x that acts per sample on dims ≥ 1.

    ``fn`` is applied to J with the batch and direction axes merged, and to L (``fn_L``, if
    given, for L: e.g. with weights cast to the accumulation dtype).
    """
    if x.J is None:
        return const(out)
    nJ, c = x.J.shape[:2]
    Jm = fn(x.J.reshape(nJ * c, *x.J.shape[2:]))
    if not isinstance(Jm, torch.Tensor) or Jm.ndim != out.ndim or Jm.shape[1:] != out.shape[1:]:
        raise UnsupportedOpError(
            f"forward Laplacian: {op} does not act per sample (it changes the batch dimension: "
            f"{tuple(x.v.shape)} → {tuple(out.shape)}); keep dim 0 the batch."
        )
    J = Jm.reshape(nJ, c, *out.shape[1:])
    L = None if x.L is None else (fn_L or fn)(x.L)
    return Jet(out, J, L)


def reshape_to(x: Jet, out: torch.Tensor, op: str) -> Jet:
    """Any op that only re-views the data of each sample (view, reshape, flatten, squeeze)."""
    if out.ndim == 0 or out.shape[0] != x.v.shape[0]:
        raise UnsupportedOpError(
            f"forward Laplacian: {op} reshapes {tuple(x.v.shape)} to {tuple(out.shape)}, changing "
            "the batch dimension; keep dim 0 the batch (e.g. x.reshape(x.shape[0], ...))."
        )
    if x.J is None:
        return const(out)
    nJ, c = x.J.shape[:2]
    J = x.J.reshape(nJ, c, *out.shape[1:])
    L = None if x.L is None else x.L.reshape(out.shape)
    return Jet(out, J, L)


def affine(x: Jet, W: torch.Tensor, b, ctx: FLCtx) -> Jet:
    """y = x Wᵀ + b (nn.Linear / F.linear): one GEMM on the merged (n·c) rows."""
    out = F.linear(x.v, W, b)
    if x.J is None:
        return const(out)
    J = F.linear(x.J, W)
    L = None if x.L is None else F.linear(x.L, W.to(ctx.acc))
    return Jet(out, J, L)


def jmm(J: torch.Tensor, B: torch.Tensor, right: bool) -> torch.Tensor:
    """J @ B (``right``) or B @ J for J (nJ, c, *batch, ·, ·) and a batched B (n, *batch, ·, ·),
    as one einsum (no copy of B per direction, which broadcasting ``B.unsqueeze(1)`` makes)."""
    r = B.ndim
    n = max(J.shape[0], B.shape[0])
    J = J.expand(n, *J.shape[1:])
    B = B.expand(n, *B.shape[1:])
    bd = "".join(chr(ord("d") + k) for k in range(r - 3))
    if right:
        return torch.einsum(f"ac{bd}xy,a{bd}yz->ac{bd}xz", J, B)
    return torch.einsum(f"a{bd}xy,ac{bd}yz->ac{bd}xz", B, J)


def matmul(a, b, ctx: FLCtx) -> Jet:
    """a @ b for jets or constants (bilinear: the product rule with the cross term)."""
    out = torch.matmul(val(a), val(b))
    ja = isinstance(a, Jet) and a.J is not None
    jb = isinstance(b, Jet) and b.J is not None
    if ja and jb:
        if a.ndim != b.ndim or a.ndim < 3:
            raise UnsupportedOpError(
                "forward Laplacian: matmul of two x-dependent tensors needs both batched with "
                f"the same number of dims ≥ 3, got {tuple(a.shape)} @ {tuple(b.shape)}."
            )
        J = fit(jmm(a.J, b.v, True), out) + fit(jmm(b.J, a.v, False), out)
        A = (a.J[:, : ctx.p] if a.J.shape[1] != ctx.p else a.J).to(ctx.acc)
        B = (b.J[:, : ctx.p] if b.J.shape[1] != ctx.p else b.J).to(ctx.acc)
        L = 2.0 * (A @ B).sum(1)
        if a.L is not None:
            L = L + a.L @ b.v.to(ctx.acc)
        if b.L is not None:
            L = L + a.v.to(ctx.acc) @ b.L
        return Jet(out, J, fitL(L, out))
    if ja:
        c = val(b)
        if c.ndim == 1 or c.ndim < a.ndim:
            return linear_map(a, lambda t: t @ c, out, "matmul", lambda t: t @ c.to(ctx.acc))
        J = fit(jmm(a.J, c, True) if c.ndim == out.ndim else a.J @ c, out)
        L = None if a.L is None else a.L @ c.to(ctx.acc)
        return Jet(out, J, fitL(L, out))
    if jb:
        c = val(a)
        if c.ndim == 1:
            raise UnsupportedOpError(
                "forward Laplacian: vector @ batched tensor contracts the batch; use a 2-D vector."
            )
        J = fit(jmm(b.J, c, False) if c.ndim == out.ndim else c @ b.J, out)
        L = None if b.L is None else c.to(ctx.acc) @ b.L
        return Jet(out, J, fitL(L, out))
    return const(out)


def jsum(x: Jet, dim, keepdim: bool, ctx: FLCtx, mean: bool = False) -> Jet:
    """Sum (or mean) over dims ≥ 1."""
    check_dim(dim, x.ndim, "sum/mean")
    dims = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
    red = torch.mean if mean else torch.sum
    out = red(x.v, dims, keepdim=keepdim)
    if x.J is None:
        return const(out)
    J = red(x.J, tuple(jdim(k) for k in dims), keepdim=keepdim)
    L = None if x.L is None else red(x.L, dims, keepdim=keepdim)
    return Jet(out, J, L)


def softmax(x: Jet, dim: int, ctx: FLCtx, log: bool = False) -> Jet:
    """softmax(x) = e / Σe with e = exp(x − max x) (the shift is exact as a constant: softmax is
    shift-invariant along ``dim``); log_softmax = x − max − log Σe."""
    check_dim(dim, x.ndim, "softmax")
    shifted = x.v - x.v.detach().amax(dim, keepdim=True)
    e = torch.exp(shifted)
    ej = unary(x, e, e, e, ctx)
    S = jsum(ej, dim, True, ctx)
    if log:
        lS = torch.log(S.v)
        r = torch.reciprocal(S.v)
        logS = unary(S, lS, r, -r * r, ctx)
        return add(x, add(logS, x.v.detach().amax(dim, keepdim=True), ctx), ctx, alpha=-1)
    return mul(ej, reciprocal(S, ctx), ctx)


def layer_norm(x: Jet, shape, w, b, eps: float, ctx: FLCtx) -> Jet:
    """(x − μ)/√(var + ε) · w + b over the trailing ``shape``.

    With xc = x − μ, s = var + ε, r = s^{−½}, y = xc·r (means over the normalised dims):
    J_xc = J − mean J, J_s = 2 mean(xc J_xc), J_r = −½ r³ J_s, J_y = r J_xc + xc J_r;
    L_s = 2 mean(xc L_xc) + 2 mean(Σ_a J_xc,a²), L_r = −½ r³ L_s + ¾ r⁵ Σ_a J_s,a²,
    L_y = r L_xc + xc L_r + 2 Σ_a J_xc,a J_r,a.
    """
    dims = tuple(range(-len(shape), 0))
    check_dim(dims, x.ndim, "layer_norm")
    v = x.v
    xc = v - v.mean(dims, keepdim=True)
    s = (xc * xc).mean(dims, keepdim=True) + eps
    r = torch.rsqrt(s)
    y = xc * r
    if x.J is not None:
        J = x.J
        Jxc = J - J.mean(dims, keepdim=True)
        xc1, r1 = xc.unsqueeze(1), r.unsqueeze(1)
        Js = 2.0 * (xc1 * Jxc).mean(dims, keepdim=True)  # (n, c, ..., 1)
        r3 = r * r * r
        Jr = -0.5 * r3.unsqueeze(1) * Js
        Jy = torch.addcmul(Jxc * r1, xc1, Jr)
        Lxc = None if x.L is None else x.L - x.L.mean(dims, keepdim=True)
        acc = ctx.acc
        Ls = 2.0 * sq(Jxc, ctx).mean(dims, keepdim=True)
        if Lxc is not None:
            Ls = Ls + 2.0 * (xc.to(acc) * Lxc).mean(dims, keepdim=True)
        Lr = (-0.5 * r3).to(acc) * Ls + (0.75 * r3 * r * r).to(acc) * sq(Js, ctx)
        Ly = xc.to(acc) * Lr + 2.0 * cross(Jxc, Jr, ctx)
        if Lxc is not None:
            Ly = Ly + r.to(acc) * Lxc
        out = Jet(y, Jy, Ly)
    else:
        out = const(y)
    if w is not None:
        out = mul(out, w, ctx)
    if b is not None:
        out = add(out, b, ctx)
    return out


def attention(q, k, v, mask, causal: bool, scale, ctx: FLCtx) -> Jet:
    """softmax(q kᵀ · scale + mask) v (scaled dot-product attention, no dropout)."""
    kt = transpose(k, -2, -1) if isinstance(k, Jet) else k.transpose(-2, -1)
    scale = 1.0 / float(val(q).shape[-1]) ** 0.5 if scale is None else scale
    s = mul(matmul(q, kt, ctx), scale, ctx)
    if causal:
        Lq, Lk = val(q).shape[-2], val(k).shape[-2]
        keep = torch.ones(Lq, Lk, dtype=torch.bool, device=s.v.device).tril()
        mask = keep if mask is None else mask & keep
    if mask is not None:
        if mask.dtype == torch.bool:
            s = masked_fill(s, ~mask, float("-inf"))
        else:
            s = add(s, mask, ctx)
    return matmul(softmax(s, -1, ctx), v, ctx)


def transpose(x: Jet, d0: int, d1: int) -> Jet:
    check_dim((d0, d1), x.ndim, "transpose")
    out = x.v.transpose(d0, d1)
    if x.J is None:
        return const(out)
    L = None if x.L is None else x.L.transpose(d0, d1)
    return Jet(out, x.J.transpose(jdim(d0), jdim(d1)), L)


def masked_fill(x: Jet, mask: torch.Tensor, value) -> Jet:
    """x with the entries under a constant ``mask`` set to a constant (their derivatives 0)."""
    out = x.v.masked_fill(mask, value)
    if x.J is None:
        return const(out)
    J = fit(x.J, out).masked_fill(lift(mask, out.ndim), 0.0)
    L = None if x.L is None else fitL(x.L, out).masked_fill(mask, 0.0)
    return Jet(out, J, L)


def cat(parts, dim: int, ctx: FLCtx, stack: bool = False) -> Jet:
    """torch.cat / torch.stack of jets and constants along a non-batch dim."""
    vals = [val(p) for p in parts]
    out = torch.stack(vals, dim) if stack else torch.cat(vals, dim)
    check_dim(dim, out.ndim, "stack" if stack else "cat")
    jets = [p for p in parts if isinstance(p, Jet) and p.J is not None]
    if not jets:
        return const(out)
    nJ = max(p.J.shape[0] for p in jets)
    c = jets[0].J.shape[1]
    Js, Ls = [], []
    any_L = any(p.L is not None for p in jets)
    for p, v in zip(parts, vals, strict=True):
        if isinstance(p, Jet) and p.J is not None:
            Js.append(p.J.expand(nJ, *p.J.shape[1:]))
            Ls.append(
                p.L if p.L is not None else torch.zeros(v.shape, dtype=ctx.acc, device=v.device)
            )
        else:
            Js.append(torch.zeros(nJ, c, *v.shape[1:], dtype=jets[0].J.dtype, device=v.device))
            Ls.append(torch.zeros(v.shape, dtype=ctx.acc, device=v.device))
        Ls[-1] = Ls[-1].expand(v.shape)
    op = torch.stack if stack else torch.cat
    J = op(Js, jdim(dim))
    L = op(Ls, dim) if any_L else None
    return Jet(out, J, L)
