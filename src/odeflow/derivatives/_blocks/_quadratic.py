"""The scalar quadratic u ↦ ½‖Au‖² + bᵀu + c, with all of its sweeps."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..._utils import check_positive_int
from .._laplacian import Jac, lap_unit, lap_unit_term
from .._sweep import (
    Kind,
    input_second_by_record,
    lmul,
    no_autocast,
    scalar_jac,
    sq_rows,
    unit_data,
    unit_term,
)
from ._base import Block

__all__ = ["Quadratic"]


class Quadratic(Block):
    r"""The scalar quadratic u ↦ ½‖Au‖² + bᵀu + c (low rank: A is (rank, in_features)).

    Its gradient is AᵀAu + b and its Hessian the constant AᵀA. Parameters ``A: (rank, in)``
    (Xavier-uniform initialisation, as OT-Flow), ``b: (in,)`` and ``c: (1,)`` (both zero at
    initialisation).

    Reference: OT-Flow's potential Φ(s) = wᵀN(s) + ½sᵀAᵀAs + bᵀs + c (arXiv:2006.00104).

    Example:
        >>> q = Quadratic(3, rank=2)
        >>> q(torch.randn(4, 3)).shape
        torch.Size([4, 1])
    """

    def __init__(self, in_features: int, rank: int | None = None, *, device=None, dtype=None):
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = 1
        self.rank = check_positive_int("rank", rank if rank is not None else in_features)
        fk = {"device": device, "dtype": dtype}
        A = torch.empty(self.rank, in_features, **fk)
        bound = math.sqrt(6.0 / (self.rank + in_features))
        with torch.no_grad():
            A.uniform_(-bound, bound)
        self.A = nn.Parameter(A)
        self.b = nn.Parameter(torch.zeros(in_features, **fk))
        self.c = nn.Parameter(torch.zeros(1, **fk))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, rank={self.rank}"

    def forward(self, u):
        Au = F.linear(u, self.A)
        return 0.5 * (Au * Au).sum(-1, keepdim=True) + (u @ self.b).unsqueeze(-1) + self.c

    def _value_grad(self, u):
        Au = F.linear(u, self.A)
        v = 0.5 * (Au * Au).sum(-1, keepdim=True) + (u @ self.b).unsqueeze(-1) + self.c
        return v, Au @ self.A + self.b

    def _jet(self, u, J, L, ctx):
        v, gu = self._value_grad(u)
        Jv = scalar_jac(J, gu)  # (n, c, 1)
        if ctx.kind is not Kind.LAP:
            return v, Jv, None
        AJ = lmul(self.A, J)
        Lv = sq_rows(AJ, ctx).sum(-1)  # () or (n,)
        Lv = Lv.unsqueeze(-1).expand(u.shape[0], 1)
        if L is not None:
            with no_autocast(L):
                Lv = Lv + (gu.to(ctx.acc) * L.to(ctx.acc)).sum(-1, keepdim=True)
        return v, Jv, Lv

    def _record(self, u, J, ctx):
        v, gu = self._value_grad(u)
        if J is None:
            return v, None, (gu, None)
        return v, scalar_jac(J, gu), (gu, unit_data(lmul(self.A, J), ctx))

    def _reverse(self, tape, g, ctx):
        gu, data = tape
        coef = g.expand(*g.shape[:-1], self.rank)  # σ = ½z² on z = Au: σ″ = 1, λ = g
        return g * gu.unsqueeze(-2), unit_term(data, coef, ctx)

    def _input_second(self, u, seed, G, H, ctx):
        return input_second_by_record(self, u, seed, G, H, ctx)

    def _entry_width(self) -> float:
        return 0  # adds no path through a narrowing map (its cost is rank × c, not width × c)

    def _lap_supported(self) -> bool:
        return True

    def _lap_uses_jacobian(self) -> bool:
        return True

    def _lap_record(self, u, J, need, acc):
        v, gu = self._value_grad(u)
        unit, _ = lap_unit(J, self.A, False, acc)
        Jo = None
        if need:
            Jt = J.tensor()  # (p, in) or (n, p, in)
            Jo = Jac(full=(gu @ Jt.transpose(0, 1)).unsqueeze(-1) if Jt.ndim == 2
                     else Jt @ gu.unsqueeze(-1))  # fmt: skip
        return v, Jo, (gu, unit)

    def _lap_reverse(self, tape, g, acc):
        gu, unit = tape
        coef = g.expand(*g.shape[:-1], self.rank)  # σ = ½z² on z = Au: σ″ = 1, λ = g
        return g * gu.unsqueeze(-2), lap_unit_term(unit, coef, acc)
