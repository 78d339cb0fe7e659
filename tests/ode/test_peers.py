"""Oracles: torchdiffeq's fixed-grid solvers (skipped when torchdiffeq is not installed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import odeflow

torchdiffeq = pytest.importorskip("torchdiffeq")
D64 = torch.float64


class Field(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, t, y):
        return torch.tanh(self.lin(y)) * torch.cos(t)


@pytest.mark.parametrize("ours, theirs", [("euler", "euler"), ("midpoint", "midpoint"),
                                          ("rk38", "rk4")])  # fmt: skip
def test_matches_torchdiffeq_fixed_grid(ours, theirs):
    """torchdiffeq's "rk4" is the 3/8 rule: it must equal our rk38, values and gradients."""
    torch.manual_seed(0)
    f = Field().to(D64)
    y0 = torch.randn(4, 3, dtype=D64, requires_grad=True)
    t = torch.linspace(0, 1, 5, dtype=D64)
    a = odeflow.odeint(f, y0, t, method=ours, steps_per_interval=4)
    b = torchdiffeq.odeint(f, y0, t, method=theirs, options=dict(step_size=1 / 16))
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    ga = torch.autograd.grad((a**2).sum(), [y0, *f.parameters()])
    gb = torch.autograd.grad((b**2).sum(), [y0, *f.parameters()])
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, rtol=1e-10, atol=1e-12)
