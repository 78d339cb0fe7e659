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


def taylor_input(fn, x, seed=0):
    """Taylor test of ``x ↦ ⟨fn(x), w⟩`` with the gradient from ``backward`` (random w, v)."""
    from odeflow.testing import taylor_test

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(fn(x).shape, generator=g, dtype=x.dtype)
    v = torch.randn(x.shape, generator=g, dtype=x.dtype)

    def grad(z):
        z = z.detach().requires_grad_(True)
        return torch.autograd.grad((fn(z) * w).sum(), z)[0]

    return taylor_test(lambda z: (fn(z) * w).sum(), x, v, grad=grad, second=False, n=10, h0=0.1)


def taylor_param(fn, p, seed=0):
    """Taylor test of ``p ↦ ⟨fn(), w⟩`` in the parameter ``p`` (restored afterwards)."""
    from odeflow.testing import taylor_test

    g = torch.Generator().manual_seed(seed)
    base = p.detach().clone()
    w = torch.randn(fn().shape, generator=g, dtype=base.dtype)
    v = torch.randn(base.shape, generator=g, dtype=base.dtype)

    def f(c):
        with torch.no_grad():
            p.copy_(c)
        return (fn() * w).sum()

    def grad(c):
        with torch.no_grad():
            p.copy_(c)
        return torch.autograd.grad((fn() * w).sum(), p)[0]

    try:
        return taylor_test(f, base, v, grad=grad, second=False, n=10, h0=0.1)
    finally:
        with torch.no_grad():
            p.copy_(base)
