"""The single layer u ↦ σ(uKᵀ + b), with all of its sweeps."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..._utils import check_positive_int
from .._activations import Activation, Tanh
from .._laplacian import Jac, lap_unit, lap_unit_term
from .._sweep import (
    Kind,
    affine_parameters,
    affine_second,
    check_act,
    lin_L,
    lmul,
    rows,
    sq_rows,
    unit_data,
    unit_term,
)
from ._base import Block

__all__ = ["Single"]


class Single(Block):
    r"""A single layer u ↦ σ(uKᵀ + b).

    Parameters: ``K: (out_features, in_features)``, ``b: (out_features,)`` (uniform
    ±1/√in initialisation, as ``nn.Linear``).

    Args:
        in_features, out_features: sizes.
        act: the activation (default :class:`Tanh`).
        bias: whether to learn ``b`` (otherwise it is a zero buffer).

    Reference: Ruthotto & Haber-style layer jets as in hessQuik (Newman, Ruthotto, Nagy, JOSS
    2022, doi:10.21105/joss.04171) and OT-Flow (arXiv:2006.00104).

    Example:
        >>> from odeflow.derivatives import LogCosh
        >>> f = Single(3, 4, act=LogCosh())
        >>> f(torch.randn(5, 3)).shape
        torch.Size([5, 4])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        act: Activation | None = None,
        bias: bool = True,
        *,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.act = check_act(act if act is not None else Tanh())
        fk = {"device": device, "dtype": dtype}
        affine_parameters(self, out_features, in_features, bias, fk)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.act(F.linear(u, self.K, self.b))

    def _jet(self, u, J, L, ctx):
        s, d1, d2 = self.act.derivatives(F.linear(u, self.K, self.b))
        Jz = lmul(self.K, J)
        Jv = rows(d1, Jz)
        if ctx.kind is not Kind.LAP:
            return s, Jv, None
        Lz = lin_L(L, self.K, ctx)
        Lv = d2.to(ctx.acc) * sq_rows(Jz, ctx)
        if Lz is not None:
            Lv = Lv + d1.to(ctx.acc) * Lz
        return s, Jv, Lv

    def _record(self, u, J, ctx):
        s, d1, d2 = self.act.derivatives(F.linear(u, self.K, self.b))
        if J is None:
            return s, None, (d1, d2, None)
        Jz = lmul(self.K, J)
        return s, rows(d1, Jz), (d1, d2, unit_data(Jz, ctx))

    def _reverse(self, tape, g, ctx):
        d1, d2, data = tape
        gz = g * d1.unsqueeze(-2)
        return gz @ self.K, unit_term(data, g * d2.unsqueeze(-2), ctx)

    def _input_second(self, u, seed, G, H, ctx):
        """Fused first block of backward mode: Ktᵀ[diag(σ″⊙G) + σ′Hσ′]Kt with Kt = K·seed."""
        s, d1, d2 = self.act.derivatives(F.linear(u, self.K, self.b))
        g_in = (G * d1.unsqueeze(-2)) @ self.K
        if ctx.kind is Kind.GRAD:
            return s, g_in, None
        M = torch.diag_embed(G * d2.unsqueeze(-2))
        if H is not None:
            M = M + d1[:, None, :, None] * H * d1[:, None, None, :]
        return s, g_in, affine_second(M, lmul(self.K, seed).mT, ctx)

    def _entry_width(self) -> float:
        return float("inf")

    def _lap_supported(self) -> bool:
        return True

    def _lap_uses_jacobian(self) -> bool:
        return True

    def _lap_record(self, u, J, need, acc):
        s, d1, d2 = self.act.derivatives(F.linear(u, self.K, self.b))
        unit, P = lap_unit(J, self.K, need, acc)
        Jo = None
        if need:
            Jo = Jac(rows=P, scale=d1) if P.ndim == 2 else Jac(full=d1.unsqueeze(-2) * P)
        return s, Jo, (d1, d2, unit)

    def _lap_reverse(self, tape, g, acc):
        d1, d2, unit = tape
        lap = lap_unit_term(unit, g * d2.unsqueeze(-2), acc)
        return (g * d1.unsqueeze(-2)) @ self.K, lap
