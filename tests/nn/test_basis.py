"""Time bases: Gram conditioning, interpolation properties, depth continuation on digits."""

import pytest
import torch

from odeflow.nn import (
    ExplicitBlock,
    Legendre,
    Monomial,
    PiecewiseConstant,
    PiecewiseLinear,
    StandardLayer,
    accuracy,
    build_network,
    digits_data,
    train_classifier,
)


@pytest.mark.parametrize("degree", range(11))
def test_legendre_gram_condition_bounded(degree):
    """Continuous Gram = I (condition 1) up to degree 10; on a 32-step grid it stays ≤ 50
    (measured: 1.0 … 49.1 for degrees 0 … 10), where the monomials' reaches 5e14."""
    basis = Legendre(degree)
    assert basis.condition_number() <= 1 + 1e-12
    assert basis.condition_number(32) <= 50
    if degree == 10:
        assert Monomial(degree).condition_number() > 1e14


def test_gram_matches_closed_forms():
    # hat functions on 3 nodes: Gram = h/6 [[2,1,0],[1,4,1],[0,1,2]], h = 1/2
    g = PiecewiseLinear(3).gram()
    exact = torch.tensor([[2.0, 1, 0], [1, 4, 1], [0, 1, 2]], dtype=torch.float64) / 12
    assert torch.allclose(g, exact, atol=1e-14)
    assert torch.allclose(PiecewiseConstant(4).gram(), torch.eye(4, dtype=torch.float64) / 4)
    hilbert = torch.tensor(
        [[1 / (i + j + 1) for j in range(3)] for i in range(3)], dtype=torch.float64
    )
    assert torch.allclose(Monomial(2).gram(), hilbert, atol=1e-14)


@pytest.mark.parametrize("basis", [PiecewiseConstant(3), PiecewiseLinear(4)])
def test_piecewise_bases_are_partitions_of_unity(basis):
    s = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.allclose(basis(s).sum(1), torch.ones(101, dtype=torch.float64))


def test_piecewise_constant_equals_plain_resnet_weights():
    """With n pieces and n steps, step k uses coefficient k (one weight per layer)."""
    layer = StandardLayer(3, basis="constant", basis_size=5).double()
    for k in range(5):
        w = layer.weights(torch.tensor(k / 5, dtype=torch.float64))
        assert torch.equal(w["weight"], layer.weight[k])


def test_depth_and_parameter_count_are_independent():
    layer = StandardLayer(4, basis="legendre", basis_size=3)
    n_params = sum(p.numel() for p in layer.parameters())
    x = torch.randn(2, 4)
    outs = [ExplicitBlock(layer, n)(x) for n in (4, 64, 256)]
    assert sum(p.numel() for p in layer.parameters()) == n_params == 4 * (16 + 4)
    # Euler converges as the depth grows: successive outputs approach each other
    assert (outs[2] - outs[1]).norm() < (outs[1] - outs[0]).norm()


def _continuation(kind, image, epochs, widths, batch_size=64):
    torch.manual_seed(0)
    data = digits_data(image=image)
    net = build_network(
        kind,
        data[0].shape[1],
        10,
        image=image,
        widths=widths,
        n_steps=8,
        basis="linear",
        basis_size=3,
        image_size=8 if image else None,
    )
    res = train_classifier(net, data, epochs=epochs, batch_size=batch_size, lr=1e-2)
    for m in net.modules():
        if hasattr(m, "n_steps"):
            m.n_steps = 32
    return res.test_accuracy, accuracy(net, data[2], data[3])


def test_depth_continuation_cheap():
    """Hamiltonian network on flattened digits: trained at 8 steps, evaluated at 32."""
    acc8, acc32 = _continuation("hamiltonian", False, 2, (32,), batch_size=128)
    assert acc8 >= 0.85
    assert acc32 >= acc8 - 0.01


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hamiltonian", "parabolic", "antisymmetric", "hyperbolic"])
def test_depth_continuation_digits_conv(kind):
    acc8, acc32 = _continuation(kind, True, 6, (8,))
    assert acc8 >= 0.9
    assert acc32 >= acc8 - 0.01
