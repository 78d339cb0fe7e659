"""Operators, regularizers, model zoo, data and the memory measure."""

import pytest
import torch

import odeflow
from odeflow.nn import (
    KINDS,
    ConvOperator,
    DenseOperator,
    ExplicitBlock,
    HamiltonianBlock,
    LeanConvOperator,
    MultigridChannelOperator,
    ParabolicLayer,
    StandardLayer,
    build_network,
    digits_data,
    kinetic_energy,
    peaks_data,
    saved_tensor_bytes,
    swiss_roll_data,
    weight_smoothness,
    weight_total_variation,
)

from ._helpers import F64


@pytest.mark.parametrize(
    "op,shape",
    [
        (DenseOperator(4, 6), (3, 4)),
        (ConvOperator(2, 3), (2, 2, 5, 4)),
        (LeanConvOperator(3), (2, 3, 5, 4)),
    ],
)
def test_operator_adjoints(op, shape):
    torch.manual_seed(0)
    w = {k: v.double() for k, v in op.init().items()}
    x = torch.randn(shape, dtype=F64)
    kx = op.apply(x, w)
    y = torch.randn(kx.shape, dtype=F64)
    assert torch.allclose((kx * y).sum(), (x * op.adjoint(y, w)).sum(), rtol=1e-12)


def test_lean_convolution_is_stencil_plus_pointwise_with_few_weights():
    c = 16
    op = LeanConvOperator(c)
    assert sum(torch.Size(s).numel() for s in op.shapes().values()) == 5 * c + c * c
    w = op.init()
    x = torch.zeros(1, c, 5, 5)
    x[0, 0, 2, 2] = 1.0  # an impulse: the stencil touches exactly the 5-point cross
    out = op.apply(x, {"stencil": w["stencil"], "point": torch.zeros(c, c)})
    assert int((out[0, 0] != 0).sum()) == 5 and int((out[0, 1:] != 0).sum()) == 0


def test_mgic_weights_grow_linearly_in_channels():
    counts = [
        sum(torch.Size(s).numel() for s in MultigridChannelOperator(c, 4).shapes().values())
        for c in (16, 32, 64, 128)
    ]
    ratios = [counts[i + 1] / counts[i] for i in range(len(counts) - 1)]
    assert all(1.8 <= r <= 2.2 for r in ratios)  # O(c), a full 3×3 conv is O(c²)
    assert counts[-1] < 0.1 * 9 * 128 * 128  # 6 % of a full convolution at 128 channels
    with pytest.raises(TypeError, match="adjoint"):
        ParabolicLayer(16, operator=MultigridChannelOperator(16, 4))(0.0, torch.zeros(1, 16, 3, 3))


def test_regularizers_closed_forms():
    layer = StandardLayer(2, basis="linear", basis_size=3, horizon=2.0).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
        layer.bias[2] += 1.0  # bias(t) = 0, 0, 1 at t = 0, 1, 2
    # smoothness: Σ‖Δθ‖²/Δt = 2·1²/1; TV: Σ|Δθ| = 2·1
    assert float(weight_smoothness(layer).detach()) == pytest.approx(2.0)
    assert float(weight_total_variation(layer).detach()) == pytest.approx(2.0)
    # the regularizers are differentiable in the coefficients
    (g,) = torch.autograd.grad(weight_smoothness(layer), layer.bias)
    assert float(g.abs().sum()) > 0
    # kinetic energy of a straight line at unit speed over T = 1: ½
    ys = torch.linspace(0, 1, 11, dtype=F64)[:, None, None] * torch.tensor([[1.0]], dtype=F64)
    assert float(kinetic_energy(ys, 0.1)) == pytest.approx(0.5)
    block = ExplicitBlock(StandardLayer(3).double(), 5)
    assert (
        float(kinetic_energy(block.trajectory(torch.ones(2, 3, dtype=F64)), block.h).detach()) > 0
    )


@pytest.mark.parametrize("kind", KINDS)
def test_zoo_builds_and_trains_one_step(kind):
    torch.manual_seed(0)
    net = build_network(kind, 1, 10, widths=(8, 8), n_steps=2, image_size=8)
    x = torch.randn(4, 1, 8, 8)
    out = net(x)
    assert out.shape == (4, 10)
    out.square().sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_dense_zoo_and_lean_parameter_ratio():
    net = odeflow.nn.hamiltonian_resnet(64, 10, image=False, widths=(16,), n_steps=4)
    assert isinstance(net[1], HamiltonianBlock) and net(torch.zeros(2, 64)).shape == (2, 10)
    blk = lambda net: sum(p.numel() for p in net[1].parameters())  # noqa: E731
    plain = build_network("plain", 1, 10, widths=(32,))
    lean = build_network("lean", 1, 10, widths=(32,))
    assert blk(lean) <= 0.3 * blk(plain)


def test_layers_are_vector_fields_for_odeint():
    layer = StandardLayer(3, basis="legendre", basis_size=2).double()
    t = torch.linspace(0, 1, 5, dtype=F64)
    y0 = torch.randn(2, 3, dtype=F64)
    ys = odeflow.odeint(layer, y0, t, method="euler", precision="fp64")
    assert torch.allclose(ys[-1], ExplicitBlock(layer, 4)(y0))


def test_data_generators():
    xtr, ytr, _, yte = digits_data(16, test_fraction=0.2)
    assert xtr.shape[1:] == (1, 16, 16) and len(ytr) + len(yte) == 1797
    assert 0 <= float(xtr.min()) and float(xtr.max()) <= 1
    x, y = peaks_data(500, classes=4)
    assert x.shape == (500, 2) and sorted(set(y.tolist())) == [0, 1, 2, 3]
    x, y = swiss_roll_data(100)
    assert x.shape == (100, 2) and float(y.float().mean()) == 0.5


def test_saved_tensor_bytes_counts_activations_not_parameters():
    w = torch.randn(10, 10, requires_grad=True)
    x = torch.randn(4, 10)
    one = saved_tensor_bytes(lambda: torch.tanh(x @ w).sum())
    two = saved_tensor_bytes(lambda: torch.tanh(torch.tanh(x @ w) @ w).sum())
    assert one == 2 * 4 * 10 * 4  # x (for w's gradient) and tanh's output
    assert two == one + 4 * 10 * 4  # + the second tanh output (the first is shared)
