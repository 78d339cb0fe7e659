"""The input-convex network (ICNN), with all of its sweeps.

A later partially input-convex block (PICNN: convex in x, any function of a context c) is a
file like this one: it implements the sweeps of :class:`~._base.Block` on its own parameters,
and the Laplacian sweep can delegate to the generic record/reverse (as here) until a
specialised one pays off.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..._utils import check_positive_int
from .._activations import Activation, Softplus
from .._laplacian import lap_record_generic, lap_reverse_generic
from .._sweep import (
    Kind,
    check_act,
    input_second_by_record,
    lin_L,
    lmul,
    plus,
    rows,
    sq_rows,
    uniform_,
    unit_data,
    unit_term,
)
from ._base import Block

__all__ = ["ICNN"]


class ICNN(Block):
    r"""Input-convex network (Amos, Xu & Kolter, arXiv:1609.07152), scalar or vector output.

    y_1 = σ(uK_0ᵀ + b_0); y_{i+1} = σ(y_i L_i⁺ᵀ + uK_iᵀ + b_i) for i = 1 … depth−1;
    output y_depth L_out⁺ᵀ + uK_outᵀ + b_out, with L⁺ = softplus(L) ≥ 0 (reparametrisation, so
    any optimizer keeps the weights non-negative). Every output is convex in u when σ is convex
    and nondecreasing (the default :class:`Softplus`).

    Parameters: ``K0 (width, in)``, ``b0 (width,)``, ``L (depth−1, width, width)`` (raw, before
    softplus), ``K (depth−1, width, in)``, ``b (depth−1, width)``, ``L_out (out, width)`` (raw),
    ``K_out (out, in)``, ``b_out (out,)``.

    Example:
        >>> f = ICNN(2, width=8, depth=3)
        >>> f(torch.randn(4, 2)).shape
        torch.Size([4, 1])
    """

    def __init__(
        self,
        in_features: int,
        width: int,
        out_features: int = 1,
        depth: int = 2,
        act: Activation | None = None,
        *,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.width = check_positive_int("width", width)
        self.depth = check_positive_int("depth", depth)
        self.act = check_act(act if act is not None else Softplus())
        fk = {"device": device, "dtype": dtype}
        d, w, m, k = in_features, width, out_features, depth - 1
        self.K0 = nn.Parameter(uniform_(torch.empty(w, d, **fk), d))
        self.b0 = nn.Parameter(uniform_(torch.empty(w, **fk), d))
        # raw weights near softplus⁻¹(1/w): L⁺ ≈ 1/w keeps the hidden scale ~1
        raw = math.log(math.expm1(1.0 / w))
        self.L = nn.Parameter(raw + 0.1 * torch.randn(k, w, w, **fk))
        self.K = nn.Parameter(uniform_(torch.empty(k, w, d, **fk), d))
        self.b = nn.Parameter(uniform_(torch.empty(k, w, **fk), d))
        self.L_out = nn.Parameter(raw + 0.1 * torch.randn(m, w, **fk))
        self.K_out = nn.Parameter(uniform_(torch.empty(m, d, **fk), d))
        self.b_out = nn.Parameter(torch.zeros(m, **fk))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, width={self.width}, "
            f"out_features={self.out_features}, depth={self.depth}"
        )

    def forward(self, u):
        y = self.act(F.linear(u, self.K0, self.b0))
        Lp = F.softplus(self.L)
        for i in range(self.depth - 1):
            y = self.act(F.linear(y, Lp[i]) + F.linear(u, self.K[i], self.b[i]))
        return F.linear(y, F.softplus(self.L_out)) + F.linear(u, self.K_out, self.b_out)

    def _jet(self, u, J, L, ctx):
        lap = ctx.kind is Kind.LAP
        Lp = F.softplus(self.L)
        s, d1, d2 = self.act.derivatives(F.linear(u, self.K0, self.b0))
        Jz = lmul(self.K0, J)
        Ly = None
        if lap:
            Ly = d2.to(ctx.acc) * sq_rows(Jz, ctx)
            Lz = lin_L(L, self.K0, ctx)
            Ly = Ly if Lz is None else Ly + d1.to(ctx.acc) * Lz
        y, Jy = s, rows(d1, Jz)
        for i in range(self.depth - 1):
            s, d1, d2 = self.act.derivatives(F.linear(y, Lp[i]) + F.linear(u, self.K[i], self.b[i]))
            Jz = lmul(Lp[i], Jy) + lmul(self.K[i], J)
            if lap:
                Lz = plus(lin_L(Ly, Lp[i], ctx), lin_L(L, self.K[i], ctx))
                Ly = d2.to(ctx.acc) * sq_rows(Jz, ctx) + d1.to(ctx.acc) * Lz
            y, Jy = s, rows(d1, Jz)
        Lo = F.softplus(self.L_out)
        v = F.linear(y, Lo) + F.linear(u, self.K_out, self.b_out)
        Jv = lmul(Lo, Jy) + lmul(self.K_out, J)
        Lv = plus(lin_L(Ly, Lo, ctx), lin_L(L, self.K_out, ctx)) if lap else None
        return v, Jv, Lv

    def _record(self, u, J, ctx):
        Lp = F.softplus(self.L)
        tape = []
        s, d1, d2 = self.act.derivatives(F.linear(u, self.K0, self.b0))
        Jz = None if J is None else lmul(self.K0, J)
        tape.append((d1, d2, unit_data(Jz, ctx)))
        y = s
        Jy = None if J is None else rows(d1, Jz)
        for i in range(self.depth - 1):
            s, d1, d2 = self.act.derivatives(F.linear(y, Lp[i]) + F.linear(u, self.K[i], self.b[i]))
            Jz = None if J is None else lmul(Lp[i], Jy) + lmul(self.K[i], J)
            tape.append((d1, d2, unit_data(Jz, ctx)))
            y = s
            Jy = None if J is None else rows(d1, Jz)
        Lo = F.softplus(self.L_out)
        v = F.linear(y, Lo) + F.linear(u, self.K_out, self.b_out)
        Jv = None if J is None else lmul(Lo, Jy) + lmul(self.K_out, J)
        return v, Jv, (tape, Lp, Lo)

    def _reverse(self, tape, g, ctx):
        units, Lp, Lo = tape
        gy = g @ Lo
        gu = g @ self.K_out
        acc = None
        for i in reversed(range(self.depth - 1)):
            d1, d2, data = units[i + 1]
            acc = plus(acc, unit_term(data, gy * d2.unsqueeze(-2), ctx))
            gz = gy * d1.unsqueeze(-2)
            gy = gz @ Lp[i]
            gu = gu + gz @ self.K[i]
        d1, d2, data = units[0]
        acc = plus(acc, unit_term(data, gy * d2.unsqueeze(-2), ctx))
        return gu + (gy * d1.unsqueeze(-2)) @ self.K0, acc

    def _input_second(self, u, seed, G, H, ctx):
        return input_second_by_record(self, u, seed, G, H, ctx)

    def _entry_width(self) -> float:
        return float("inf")  # the skip maps uK_iᵀ reach every layer: nothing narrows

    def _lap_supported(self) -> bool:
        return False  # the forward jet needs no reverse sweep and wins for ICNNs

    def _lap_uses_jacobian(self) -> bool:
        return True

    def _lap_record(self, u, J, need, acc):
        return lap_record_generic(self, u, J, need, acc)

    def _lap_reverse(self, tape, g, acc):
        return lap_reverse_generic(self, tape, g, acc)
