"""The OT-Flow ODE's right-hand side and the terms of its objective."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..derivatives import compute

__all__ = ["OTFlowLoss"]


class OTFlowLoss(NamedTuple):
    """Terms of the OT-Flow objective J = α₀ L + α₁ C + α₂ R (batch means, scalars)."""

    total: Tensor
    nll: Tensor
    transport: Tensor
    hjb: Tensor


class _Dynamics(nn.Module):
    """Right-hand side of the OT-Flow ODE on the state y = (z, ℓ[, L, R]).

    ż = −∇_xΦ/α₀, ℓ̇ = −Δ_xΦ/α₀, L̇ = ½‖ż‖², Ṙ = |−∂_tΦ + ‖∇_xΦ‖²/(2α₀)|.
    """

    def __init__(self, potential: nn.Module, dim: int, alpha0: float, full: bool):
        super().__init__()
        self.potential = potential
        self.dim = dim
        self.alpha0 = float(alpha0)
        self.full = full

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        d = self.dim
        z = y[:, :d]
        s = torch.cat([z, t.to(z).expand(z.shape[0], 1)], dim=1)
        # no finiteness check per stage (a host sync each): the data are checked on entry,
        # and a state that blows up mid-solve gives a non-finite loss, which fit() reports
        out = compute(self.potential, s, want="laplacian", exclude_last=1, check_finite=False)
        grad = out.gradient
        gx, gt = grad[:, :d], grad[:, d]
        v = -gx / self.alpha0
        dl = -out.laplacian / self.alpha0
        if not self.full:
            return torch.cat([v, dl[:, None]], dim=1)
        sq = (v * v).sum(1)
        dL = 0.5 * sq
        dR = torch.abs(-gt + self.alpha0 * 0.5 * sq)
        return torch.cat([v, dl[:, None], dL[:, None], dR[:, None]], dim=1)
