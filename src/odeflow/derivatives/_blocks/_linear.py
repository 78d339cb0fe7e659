"""The affine layer u ↦ uKᵀ + b, with all of its sweeps."""

from __future__ import annotations

from torch.nn import functional as F

from ..._utils import check_positive_int
from .._laplacian import wrap
from .._sweep import Kind, affine_parameters, affine_second, lin_L, lmul
from ._base import Block

__all__ = ["Linear"]


class Linear(Block):
    r"""An affine output layer u ↦ uKᵀ + b (identity activation, no second-order term).

    Parameters ``K: (out_features, in_features)`` and ``b: (out_features,)``. For OT-Flow's
    ``wᵀN(s)`` use ``Linear(m, 1, bias=False)`` and set ``K`` to ``wᵀ`` (OT-Flow starts from w = 1).

    Example:
        >>> import torch
        >>> lin = Linear(4, 1)
        >>> lin(torch.randn(2, 4)).shape
        torch.Size([2, 1])
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, device=None, dtype=None
    ):
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        fk = {"device": device, "dtype": dtype}
        affine_parameters(self, out_features, in_features, bias, fk)

    def forward(self, u):
        return F.linear(u, self.K, self.b)

    def _jet(self, u, J, L, ctx):
        Lv = lin_L(L, self.K, ctx) if ctx.kind is Kind.LAP else None
        return self.forward(u), lmul(self.K, J), Lv

    def _record(self, u, J, ctx):
        return self.forward(u), (None if J is None else lmul(self.K, J)), None

    def _reverse(self, tape, g, ctx):
        return g @ self.K, None

    def _input_second(self, u, seed, G, H, ctx):
        """Fused first block of backward mode: Ktᵀ H Kt with Kt = K·seed."""
        v = self.forward(u)
        if ctx.kind is Kind.GRAD or H is None:
            return v, G @ self.K, None
        return v, G @ self.K, affine_second(H, lmul(self.K, seed).mT, ctx)

    def _entry_width(self) -> float:
        return float("inf")

    def _lap_supported(self) -> bool:
        return True

    def _lap_uses_jacobian(self) -> bool:
        return False  # affine: no second-order term, the input Jacobian is not read

    def _lap_record(self, u, J, need, acc):
        return self.forward(u), (wrap(J.times_kt(self.K)) if need else None), None

    def _lap_reverse(self, tape, g, acc):
        return g @ self.K, None
