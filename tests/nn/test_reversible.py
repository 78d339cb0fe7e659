"""Reversible blocks: exact inverses, memory-free gradients = backprop, memory flat in depth."""

import pytest
import torch

from odeflow.nn import ExplicitBlock, ParabolicLayer, StandardLayer, saved_tensor_bytes

from ._helpers import F64, grads, hamiltonian, leapfrog, rel


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_leapfrog_100_steps_inverts(dtype, tol):
    torch.manual_seed(0)
    block = leapfrog(100, dtype=dtype)
    x = torch.randn(8, 6, dtype=dtype)
    y_prev = x + 0.01 * torch.randn_like(x)  # a small initial velocity
    with torch.no_grad():
        u, v = block.forward_pair(y_prev, x)
        a, b = block.inverse_pair(u, v)
    assert rel(v, x) > 0.1  # the block did move the state
    assert rel(a, y_prev) <= tol and rel(b, x) <= tol


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_verlet_100_steps_inverts(dtype, tol):
    torch.manual_seed(1)
    block = hamiltonian(100, dtype=dtype)
    x = torch.randn(8, 6, dtype=dtype)
    with torch.no_grad():
        out = block(x)
        back = block.inverse(out)
    assert rel(out, x) > 0.1
    assert rel(back, x) <= tol


@pytest.mark.parametrize("make", [leapfrog, hamiltonian], ids=["leapfrog", "verlet"])
@pytest.mark.parametrize("every", [None, 7])
def test_memory_free_gradients_equal_backprop(make, every):
    torch.manual_seed(2)
    block = make(60, checkpoint_every=every)
    x = torch.randn(5, 6, dtype=F64)
    w = torch.randn(5, 6, dtype=F64)
    block.memory_free = False
    ref = grads(block, x, w)
    block.memory_free = True
    got = grads(block, x, w)
    assert len(ref) == len(got) == 1 + len(list(block.parameters()))
    for r, g in zip(ref, got):
        assert rel(g, r) <= 1e-10


def test_drift_check_falls_back_to_the_checkpoint():
    """Large h‖K‖: the reconstruction drifts (3e-6 here) and the gradient by reconstruction
    alone is off; the drift check catches it and recomputes from the stored input."""
    torch.manual_seed(0)
    layer = ParabolicLayer(6, horizon=20.0).double()
    with torch.no_grad():
        layer.weight.mul_(8.0)
    from odeflow.nn import LeapfrogBlock

    x = torch.randn(4, 6, dtype=F64)
    w = torch.randn(4, 6, dtype=F64)
    block = LeapfrogBlock(layer, 100, memory_free=False)
    ref = grads(block, x, w)
    block.memory_free, block.drift_tol = True, float("inf")  # check off
    unchecked = grads(block, x, w)
    block.drift_tol = 1e-10
    checked = grads(block, x, w)
    assert max(rel(g, r) for g, r in zip(unchecked, ref)) > 1e-7
    assert max(rel(g, r) for g, r in zip(checked, ref)) <= 1e-10


def test_memory_flat_in_depth():
    """Bytes autograd holds: 64 vs 512 Verlet steps differ by less than one layer's
    activations when memory-free; the backprop version grows with depth."""
    torch.manual_seed(3)
    x = torch.randn(16, 6, dtype=F64, requires_grad=True)
    layer_bytes = x.numel() * x.element_size()

    def held(n, memory_free):
        block = hamiltonian(n, basis="legendre", basis_size=2, memory_free=memory_free)
        return saved_tensor_bytes(lambda: block(x).sum())

    free64, free512 = held(64, True), held(512, True)
    assert abs(free512 - free64) < layer_bytes
    assert held(512, False) > 100 * layer_bytes  # the contrast: stored activations


def test_memory_free_ignores_no_grad_and_matches_trajectory():
    torch.manual_seed(4)
    block = leapfrog(20)
    x = torch.randn(3, 6, dtype=F64)
    with torch.no_grad():
        out = block(x)
    assert torch.equal(block.trajectory(x)[-1].detach(), out)
    assert block.trajectory(x).shape == (21, 3, 6)


def test_explicit_block_adjoint_equals_backprop():
    torch.manual_seed(5)
    layer = StandardLayer(4, basis="legendre", basis_size=3).double()
    x = torch.randn(3, 4, dtype=F64)
    w = torch.randn(3, 4, dtype=F64)
    ref = grads(ExplicitBlock(layer, 12, method="rk4", gradient="backprop"), x, w)
    got = grads(ExplicitBlock(layer, 12, method="rk4", gradient="adjoint"), x, w)
    for r, g in zip(ref, got):
        assert rel(g, r) <= 1e-10


@pytest.mark.parametrize("activation", ["tanh", "relu", "softplus", "sigmoid", "identity"])
@pytest.mark.parametrize("operator,shape", [("dense", (3, 4)), ("conv", (2, 4, 5, 5))])
def test_hand_written_vjp_equals_autograd(activation, operator, shape):
    torch.manual_seed(6)
    layer = ParabolicLayer(shape[1], hidden=3, operator=operator, activation=activation).double()
    with torch.no_grad():
        layer.bias.normal_()
    w = {k: v.detach() for k, v in layer.weights(0.0).items()}
    y = torch.randn(shape, dtype=F64)
    a = torch.randn(shape, dtype=F64)
    f, gy, gw = layer.field_vjp(y, w, a)
    wg = {k: v.clone().requires_grad_(True) for k, v in w.items()}
    yg = y.clone().requires_grad_(True)
    ref = layer.field(yg, wg)
    grads = torch.autograd.grad(ref, [yg, *wg.values()], a)
    assert rel(f, ref.detach()) <= 1e-14
    assert rel(gy, grads[0]) <= 1e-13
    for name, g in zip(wg, grads[1:]):
        assert rel(gw[name], g) <= 1e-13


def test_autograd_fallback_layers_match_backprop():
    """Layers without a hand-written VJP (normalization, lean operator) use autograd."""
    torch.manual_seed(7)
    from odeflow.nn import HamiltonianBlock

    ly = ParabolicLayer(2, sign=1.0, operator="lean", basis="linear", basis_size=3).double()
    lz = ParabolicLayer(2, operator="conv", norm=True, basis="linear", basis_size=3).double()
    block = HamiltonianBlock(ly, lz, 30, memory_free=False)
    x = torch.randn(2, 4, 4, 4, dtype=F64)
    w = torch.randn(2, 4, 4, 4, dtype=F64)
    ref = grads(block, x, w)
    block.memory_free = True
    for r, g in zip(ref, grads(block, x, w)):  # (the normalized layer's bias gradient is 0)
        assert torch.allclose(g, r, rtol=1e-10, atol=1e-13)
