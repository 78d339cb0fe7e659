"""Taylor tests of every layer and block in the input and in the weights (float64)."""

import pytest
import torch

from odeflow.nn import (
    AntisymmetricLayer,
    Connector,
    ExplicitBlock,
    HamiltonianBlock,
    LeapfrogBlock,
    MultigridChannelOperator,
    ParabolicLayer,
    StandardLayer,
)

from ._helpers import F64, taylor_input, taylor_param

KW = {"basis": "legendre", "basis_size": 2}
LAYERS = {
    "standard-dense": (lambda: StandardLayer(4, **KW), (3, 4)),
    "standard-dense-norm": (lambda: StandardLayer(4, norm=True, **KW), (3, 4)),
    "standard-conv": (lambda: StandardLayer(2, operator="conv", **KW), (2, 2, 4, 4)),
    "standard-lean": (lambda: StandardLayer(3, operator="lean", **KW), (2, 3, 4, 4)),
    "standard-mgic": (
        lambda: StandardLayer(8, operator=MultigridChannelOperator(8, 2)),
        (1, 8, 3, 3),
    ),
    "antisymmetric-dense": (lambda: AntisymmetricLayer(4, gamma=0.1, **KW), (3, 4)),
    "antisymmetric-conv": (lambda: AntisymmetricLayer(2, operator="conv", **KW), (2, 2, 4, 4)),
    "parabolic-dense": (lambda: ParabolicLayer(4, hidden=5, **KW), (3, 4)),
    "parabolic-conv-norm": (lambda: ParabolicLayer(2, 3, operator="conv", norm=True), (2, 2, 4, 4)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_taylor(name):
    torch.manual_seed(0)
    make, shape = LAYERS[name]
    layer = make().double()
    with torch.no_grad():
        for p in layer.parameters():  # time-varying, nonzero bias
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(shape, dtype=F64)
    t = torch.tensor(0.3, dtype=F64)
    assert taylor_input(lambda z: layer(t, z), x).passed()
    for p in layer.parameters():
        assert taylor_param(lambda: layer(t, x), p).passed()


def _leapfrog():
    return LeapfrogBlock(ParabolicLayer(4, **KW), 20)


def _hamiltonian():
    return HamiltonianBlock(ParabolicLayer(2, sign=1.0, **KW), ParabolicLayer(2, **KW), 20)


BLOCKS = {
    "explicit-euler-adjoint": (lambda: ExplicitBlock(StandardLayer(4, **KW), 10), (3, 4)),
    "explicit-rk4-adjoint": (
        lambda: ExplicitBlock(AntisymmetricLayer(2, operator="conv", **KW), 4, method="rk4"),
        (2, 2, 4, 4),
    ),
    "leapfrog-memory-free": (_leapfrog, (3, 4)),
    "hamiltonian-memory-free": (_hamiltonian, (3, 4)),
    "connector": (lambda: Connector(2, 3, pool=True, norm=False, activation="tanh"), (2, 2, 4, 4)),
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_taylor(name):
    torch.manual_seed(1)
    make, shape = BLOCKS[name]
    block = make().double()
    x = torch.randn(shape, dtype=F64)
    assert taylor_input(block, x).passed()
    for p in list(block.parameters())[:2]:
        assert taylor_param(lambda: block(x), p).passed()
