"""Bad input gets a clear error naming the problem."""

import pytest
import torch
from torch import nn

from odeflow.nn import (
    AntisymmetricLayer,
    Connector,
    ExplicitBlock,
    HamiltonianBlock,
    IMEXLayer,
    LeanConvOperator,
    LeapfrogBlock,
    Legendre,
    MultigridChannelOperator,
    ParabolicLayer,
    StandardLayer,
    VectorFieldLayer,
    build_network,
    get_basis,
    kinetic_energy,
)


def test_wrong_channel_counts():
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\)"):
        StandardLayer(3, operator="conv")(0.0, torch.zeros(1, 4, 5, 5))
    with pytest.raises(ValueError, match=r"\(batch, 3\) features"):
        ExplicitBlock(StandardLayer(3), 2)(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="6 channels"):
        HamiltonianBlock(ParabolicLayer(3, sign=1), ParabolicLayer(3), 4)(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="same width"):
        HamiltonianBlock(ParabolicLayer(3, sign=1), ParabolicLayer(2), 4)
    with pytest.raises(ValueError, match=r"IMEXLayer: expected .*\(batch, 2, height"):
        IMEXLayer(2)(torch.zeros(1, 3, 6, 6))
    with pytest.raises(ValueError, match="Connector: expected"):
        Connector(2, 4)(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="must equal out_width"):
        LeanConvOperator(3, 4)
    with pytest.raises(ValueError, match="multiple of group_size"):
        MultigridChannelOperator(6, group_size=4)
    with pytest.raises(ValueError, match="even"):
        build_network("hamiltonian", 1, 10, widths=(5,))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs(bad):
    x = torch.zeros(2, 4)
    x[0, 1] = bad
    for block in (
        ExplicitBlock(StandardLayer(4), 2),
        LeapfrogBlock(ParabolicLayer(4), 2),
        HamiltonianBlock(ParabolicLayer(2, sign=1), ParabolicLayer(2), 2),
    ):
        with pytest.raises(ValueError, match="NaN or Inf"):
            block(x)
    img = torch.zeros(1, 2, 4, 4)
    img[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        IMEXLayer(2)(img)
    with pytest.raises(ValueError, match="NaN or Inf"):
        kinetic_energy(torch.stack([x, x]), 0.1)


def test_basis_larger_than_steps():
    layer = StandardLayer(3, basis="legendre", basis_size=5)
    with pytest.raises(ValueError, match="at least 5 steps"):
        ExplicitBlock(layer, 4)
    block = ExplicitBlock(layer, 8)
    with pytest.raises(ValueError, match="at least 5 steps"):
        block.n_steps = 3  # depth continuation to too few steps
    with pytest.raises(ValueError, match="at least 4 steps"):
        LeapfrogBlock(ParabolicLayer(3, basis="constant", basis_size=4), 2)
    with pytest.raises(ValueError, match="unknown basis"):
        get_basis("fourier", 3)
    with pytest.raises(ValueError, match="degree"):
        Legendre(-1)


class _Noisy(VectorFieldLayer):
    reversible = False


def test_reversible_blocks_refuse_non_reversible_layers():
    with pytest.raises(TypeError, match=r"odeflow\.nn layer"):
        LeapfrogBlock(nn.Linear(3, 3), 4)
    dropout = ParabolicLayer(3)
    dropout.drop = nn.Dropout(0.1)
    with pytest.raises(TypeError, match="not reversible"):
        LeapfrogBlock(dropout, 4)
    with pytest.raises(TypeError, match="not reversible"):
        HamiltonianBlock(ParabolicLayer(3, sign=1), _Noisy(ParabolicLayer(3).operator, 3), 4)
    with pytest.raises(TypeError, match=r"odeflow\.nn layer"):
        HamiltonianBlock(IMEXLayer(2), ParabolicLayer(2), 4)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="unknown operator"):
        StandardLayer(3, operator="fft")
    with pytest.raises(ValueError, match="unknown activation"):
        StandardLayer(3, activation="gelu2")
    with pytest.raises(ValueError, match="gamma"):
        AntisymmetricLayer(3, gamma=-1.0)
    with pytest.raises(ValueError, match="sign"):
        ParabolicLayer(3, sign=2)
    with pytest.raises(ValueError, match="n_steps"):
        ExplicitBlock(StandardLayer(3), 0)
    with pytest.raises(ValueError, match="drift_tol"):
        LeapfrogBlock(ParabolicLayer(3), 4, drift_tol=-1.0)
    with pytest.raises(ValueError, match="boundary"):
        IMEXLayer(2, boundary="reflect")
    with pytest.raises(ValueError, match="unknown network kind"):
        build_network("resnext", 1, 10)
    with pytest.raises(TypeError, match="floating point"):
        ExplicitBlock(StandardLayer(3), 2)(torch.zeros(2, 3, dtype=torch.long))


def test_inputs_not_modified_in_place():
    x = torch.randn(2, 4)
    x0 = x.clone()
    HamiltonianBlock(ParabolicLayer(2, sign=1), ParabolicLayer(2), 3)(x)
    LeapfrogBlock(ParabolicLayer(4), 3)(x)
    assert torch.equal(x, x0)
