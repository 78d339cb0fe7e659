"""The forward-Laplacian rule of ``nn.MultiheadAttention`` (batch_first, no masks/dropout)."""

from __future__ import annotations

import torch
from torch import nn

from . import _fl_jet as fj
from ._fl_jet import FLCtx, Jet, UnsupportedOpError

__all__ = ["mha_rule"]


def _heads(x, n: int, L: int, h: int) -> Jet:
    """(n, L, h·e) → (n, h, L, e)."""
    out = fj.val(x).reshape(n, L, h, -1)
    y = fj.reshape_to(x, out, "reshape") if isinstance(x, Jet) else fj.const(out)
    return fj.transpose(y, 1, 2)


def mha_rule(mod: nn.MultiheadAttention):
    """softmax(Q Kᵀ/√e) V per head, then the output projection; Q, K, V = in-projections."""
    if not mod.batch_first:
        return None
    if not mod._qkv_same_embed_dim or mod.bias_k is not None or mod.add_zero_attn:
        return None

    def rule(
        ctx: FLCtx,
        query,
        key,
        value,
        key_padding_mask=None,
        need_weights=True,
        attn_mask=None,
        average_attn_weights=True,
        is_causal=False,
    ):
        if key_padding_mask is not None or (mod.training and mod.dropout > 0):
            raise UnsupportedOpError(
                "forward Laplacian: nn.MultiheadAttention with key_padding_mask or training "
                "dropout; pass attn_mask instead / call eval()."
            )
        E, h = mod.embed_dim, mod.num_heads
        Wq, Wk, Wv = mod.in_proj_weight.chunk(3)
        bq = bk = bv = None
        if mod.in_proj_bias is not None:
            bq, bk, bv = mod.in_proj_bias.chunk(3)

        def proj(t, W, b):
            if isinstance(t, Jet):
                return fj.affine(t, W, b, ctx)
            return fj.const(torch.nn.functional.linear(t, W, b))

        n, Lq = fj.val(query).shape[:2]
        Lk = fj.val(key).shape[1]
        q = _heads(proj(query, Wq, bq), n, Lq, h)
        k = _heads(proj(key, Wk, bk), n, Lk, h)
        v = _heads(proj(value, Wv, bv), n, Lk, h)
        kt = fj.transpose(k, -2, -1)
        s = fj.mul(fj.matmul(q, kt, ctx), 1.0 / float(E // h) ** 0.5, ctx)
        mask = attn_mask
        if is_causal and mask is None:
            mask = torch.ones(Lq, Lk, dtype=torch.bool, device=s.v.device).triu(1)
        if mask is not None:
            if mask.dtype == torch.bool:  # True = not allowed (nn.MultiheadAttention's rule)
                s = fj.masked_fill(s, mask, float("-inf"))
            else:
                s = fj.add(s, mask, ctx)
        P = fj.softmax(s, -1, ctx)
        o = fj.transpose(fj.matmul(P, v, ctx), 1, 2)
        o = fj.reshape_to(o, o.v.reshape(n, Lq, E), "reshape")
        out = fj.affine(o, mod.out_proj.weight, mod.out_proj.bias, ctx)
        if not need_weights:
            return (out, None)
        W = fj.jsum(P, 1, False, ctx, mean=True) if average_attn_weights else P
        return (out, W)

    return rule
