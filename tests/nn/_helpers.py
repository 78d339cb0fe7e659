"""Small builders shared by the nn tests (float64 unless said otherwise)."""

from __future__ import annotations

import torch

from odeflow.nn import HamiltonianBlock, LeapfrogBlock, ParabolicLayer

F64 = torch.float64


def leapfrog(n_steps=100, width=6, dtype=F64, basis="legendre", basis_size=2, horizon=2.0, **kw):
    layer = ParabolicLayer(width, basis=basis, basis_size=basis_size, horizon=horizon)
    return LeapfrogBlock(layer.to(dtype), n_steps, **kw)


def hamiltonian(n_steps=100, width=3, dtype=F64, basis="linear", basis_size=4, horizon=2.0, **kw):
    ly = ParabolicLayer(width, sign=1.0, basis=basis, basis_size=basis_size, horizon=horizon)
    lz = ParabolicLayer(width, basis=basis, basis_size=basis_size, horizon=horizon)
    return HamiltonianBlock(ly.to(dtype), lz.to(dtype), n_steps, **kw)


def grads(block, x, w):
    """Gradients of ⟨block(x), w⟩ in x and every parameter."""
    x = x.detach().requires_grad_(True)
    return torch.autograd.grad((block(x) * w).sum(), [x, *block.parameters()])


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))
