"""Residual layers u_{i+1} = u_i + h·σ(u_i K_iᵀ + b_i), with all of their sweeps."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..._utils import check_finite_real, check_positive_int
from .._activations import Activation, Tanh
from .._laplacian import Jac, lap_unit, lap_unit_term
from .._sweep import (
    Kind,
    check_act,
    input_second_by_record,
    lin_L,
    lmul,
    plus,
    rows_add,
    sq_rows,
    uniform_,
    unit_data,
    unit_term,
)
from ._base import Block

__all__ = ["ResNet"]


class ResNet(Block):
    r"""Residual layers u_{i+1} = u_i + h·σ(u_i K_iᵀ + b_i), i = 0 … depth−1 (width → width).

    Parameters ``K: (depth, width, width)`` and ``b: (depth, width)``.

    Args:
        width: the state width.
        depth: number of residual layers.
        h: the step size.
        act: the activation (default :class:`Tanh`).

    Reference: OT-Flow (Onken et al., arXiv:2006.00104), hessQuik's resnetNN.

    Example:
        >>> from odeflow.derivatives import LogCosh
        >>> net = ResNet(8, depth=2, h=0.5, act=LogCosh())
        >>> net(torch.randn(3, 8)).shape
        torch.Size([3, 8])
    """

    def __init__(
        self,
        width: int,
        depth: int = 1,
        h: float = 1.0,
        act: Activation | None = None,
        *,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.in_features = self.out_features = check_positive_int("width", width)
        self.depth = check_positive_int("depth", depth)
        self.h = check_finite_real("h", h)
        self.act = check_act(act if act is not None else Tanh())
        fk = {"device": device, "dtype": dtype}
        self.K = nn.Parameter(uniform_(torch.empty(depth, width, width, **fk), width))
        self.b = nn.Parameter(uniform_(torch.empty(depth, width, **fk), width))

    def extra_repr(self) -> str:
        return f"width={self.in_features}, depth={self.depth}, h={self.h}"

    def forward(self, u):
        for i in range(self.depth):
            u = u + self.h * self.act(F.linear(u, self.K[i], self.b[i]))
        return u

    def _jet(self, u, J, L, ctx):
        h = self.h
        for i in range(self.depth):
            K = self.K[i]
            s, d1, d2 = self.act.derivatives(F.linear(u, K, self.b[i]))
            Jz = lmul(K, J)
            if ctx.kind is Kind.LAP:
                hd1 = h * d1
                dL = (h * d2).to(ctx.acc) * sq_rows(Jz, ctx)
                Lz = lin_L(L, K, ctx)
                if Lz is not None:
                    dL = torch.addcmul(dL, hd1.to(ctx.acc), Lz)
                L = dL if L is None else L + dL
            J = rows_add(J, h * d1, Jz)
            u = torch.add(u, s, alpha=h)
        return u, J, L

    def _record(self, u, J, ctx):
        h = self.h
        tape = []
        for i in range(self.depth):
            K = self.K[i]
            s, d1, d2 = self.act.derivatives(F.linear(u, K, self.b[i]))
            if J is None:
                tape.append((d1, d2, None))
            else:
                Jz = lmul(K, J)
                tape.append((d1, d2, unit_data(Jz, ctx)))
                J = rows_add(J, h * d1, Jz)
            u = torch.add(u, s, alpha=h)
        return u, J, tape

    def _reverse(self, tape, g, ctx):
        acc = None
        for i in reversed(range(self.depth)):
            d1, d2, data = tape[i]
            if data is not None:
                acc = plus(acc, unit_term(data, g * (self.h * d2).unsqueeze(-2), ctx))
            g = g + (g * (self.h * d1).unsqueeze(-2)) @ self.K[i]
        return g, acc

    def _input_second(self, u, seed, G, H, ctx):
        return input_second_by_record(self, u, seed, G, H, ctx)

    def _entry_width(self) -> float:
        return float("inf")

    def _lap_supported(self) -> bool:
        return True

    def _lap_uses_jacobian(self) -> bool:
        return True

    def _lap_record(self, u, J, need, acc):
        h, tape = self.h, []
        for i in range(self.depth):
            K = self.K[i]
            s, d1, d2 = self.act.derivatives(F.linear(u, K, self.b[i]))
            last = i == self.depth - 1 and not need
            unit, P = lap_unit(J, K, not last, acc)
            if not last:  # J ← J + h σ′ ⊙ P (a shared J broadcasts to the batch here)
                J = Jac(full=torch.addcmul(J.tensor(), (h * d1).unsqueeze(-2), P))
            tape.append((d1, d2, unit))
            u = torch.add(u, s, alpha=h)
        return u, (J if need else None), tape

    def _lap_reverse(self, tape, g, acc):
        lap = None
        for i in reversed(range(self.depth)):
            d1, d2, unit = tape[i]
            lap = plus(lap, lap_unit_term(unit, g * (self.h * d2).unsqueeze(-2), acc))
            g = g + (g * (self.h * d1).unsqueeze(-2)) @ self.K[i]
        return g, lap
