"""Stability: imaginary spectra, non-expansive parabolic steps, 1000-layer propagation."""

import pytest
import torch

from odeflow.nn import (
    AntisymmetricLayer,
    ExplicitBlock,
    HamiltonianBlock,
    LeapfrogBlock,
    ParabolicLayer,
    StandardLayer,
)

from ._helpers import F64


@pytest.mark.parametrize(
    "operator,shape", [("dense", (7,)), ("conv", (2, 4, 4)), ("lean", (2, 4, 4))]
)
def test_antisymmetric_jacobian_spectrum_is_imaginary(operator, shape):
    torch.manual_seed(0)
    layer = AntisymmetricLayer(shape[0], operator=operator).double()
    with torch.no_grad():
        layer.bias.normal_()  # σ' varies over the entries
    y = torch.randn(1, *shape, dtype=F64)
    n = y.numel()
    jac = torch.autograd.functional.jacobian(lambda z: layer(0.0, z), y).reshape(n, n)
    eig = torch.linalg.eigvals(jac)
    assert eig.imag.abs().max() > 0.1  # a genuinely oscillatory spectrum
    assert eig.real.abs().max() <= 1e-12 * torch.linalg.matrix_norm(jac, 2)


def test_antisymmetric_damping_moves_spectrum_left():
    torch.manual_seed(1)
    layer = AntisymmetricLayer(6, gamma=0.5).double()
    y = torch.randn(1, 6, dtype=F64)
    jac = torch.autograd.functional.jacobian(lambda z: layer(0.0, z), y).reshape(6, 6)
    assert torch.linalg.eigvals(jac).real.max() < 0


def _euler_step(layer, h):
    return lambda y: y + h * layer(0.0, y)


@torch.no_grad()
def test_parabolic_euler_step_is_non_expansive():
    torch.manual_seed(2)
    layer = ParabolicLayer(8, hidden=12).double()
    layer.bias.normal_()
    knorm2 = float(torch.linalg.matrix_norm(layer.weight[0].detach(), 2)) ** 2
    x = torch.randn(10_000, 8, dtype=F64)
    y = x + torch.randn(10_000, 8, dtype=F64) * torch.rand(10_000, 1, dtype=F64)
    base = (x - y).norm(dim=1)
    for h in (0.1 / knorm2, 1.0 / knorm2, 2.0 / knorm2):
        step = _euler_step(layer, h)
        ratio = (step(x) - step(y)).norm(dim=1) / base
        assert float(ratio.max()) <= 1 + 1e-12
    # the bound is sharp: at h = 3/‖K‖², near the origin along K's top singular vector, it expands
    v = torch.linalg.svd(layer.weight[0].detach())[2][0]
    layer.bias.zero_()
    step = _euler_step(layer, 3.0 / knorm2)
    a, b = 1e-4 * v[None], -1e-4 * v[None]
    assert float((step(a) - step(b)).norm() / (a - b).norm()) > 1.5


def test_1000_layers_neither_explode_nor_vanish():
    """h = 0.1, T = 100: the plain ResNet's norm ratio leaves [0.1, 10], the antisymmetric,
    Hamiltonian and hyperbolic networks of the same width keep it inside."""
    torch.manual_seed(1)
    w, n, T = 16, 1000, 100.0
    x = torch.randn(32, w, dtype=F64)
    blocks = {
        "plain": ExplicitBlock(StandardLayer(w, horizon=T).double(), n),
        "antisymmetric": ExplicitBlock(AntisymmetricLayer(w, horizon=T).double(), n),
        "hamiltonian": HamiltonianBlock(
            ParabolicLayer(w // 2, sign=1.0, horizon=T).double(),
            ParabolicLayer(w // 2, horizon=T).double(),
            n,
        ),
        "hyperbolic": LeapfrogBlock(ParabolicLayer(w, horizon=T).double(), n),
    }
    ratios = {}
    with torch.no_grad():
        for name, block in blocks.items():
            r = block(x).norm(dim=1) / x.norm(dim=1)
            ratios[name] = (float(r.min()), float(r.max()))
    assert ratios["plain"][1] > 10
    for name in ("antisymmetric", "hamiltonian", "hyperbolic"):
        lo, hi = ratios[name]
        assert 0.1 <= lo and hi <= 10, (name, ratios[name])
