"""PDE-motivated network architectures: stable, reversible and time-continuous ResNets.

Layers are vector fields ``f(t, y; θ(t))`` with time-parameterized weights (a
:class:`TimeBasis`); blocks integrate them on their own state grid (explicit Runge–Kutta via
:func:`odeflow.odeint`, leapfrog, Verlet) with memory-free reversible training; IMEX and
low-cost convolutions, regularizers, and model-zoo constructors complete the kit.
"""

from ._basis import Legendre, Monomial, PiecewiseConstant, PiecewiseLinear, TimeBasis, get_basis
from ._blocks import ExplicitBlock, HamiltonianBlock, LeapfrogBlock
from ._imex import IMEXLayer
from ._layers import (
    AntisymmetricLayer,
    ParabolicLayer,
    StandardLayer,
    VectorFieldLayer,
    normalize,
)
from ._lowcost import MultigridChannelOperator
from ._operators import ConvOperator, DenseOperator, LeanConvOperator, Operator
from ._regularizers import kinetic_energy, weight_smoothness, weight_total_variation
from ._train import (
    TrainResult,
    accuracy,
    digits_data,
    peaks_data,
    saved_tensor_bytes,
    swiss_roll_data,
    train_classifier,
)
from ._zoo import (
    KINDS,
    Classifier,
    Connector,
    antisymmetric_resnet,
    build_network,
    hamiltonian_resnet,
    hyperbolic_resnet,
    lean_resnet,
    mgic_resnet,
    parabolic_resnet,
    plain_resnet,
)

__all__ = [
    "KINDS",
    "AntisymmetricLayer",
    "Classifier",
    "Connector",
    "ConvOperator",
    "DenseOperator",
    "ExplicitBlock",
    "HamiltonianBlock",
    "IMEXLayer",
    "LeanConvOperator",
    "LeapfrogBlock",
    "Legendre",
    "Monomial",
    "MultigridChannelOperator",
    "Operator",
    "ParabolicLayer",
    "PiecewiseConstant",
    "PiecewiseLinear",
    "StandardLayer",
    "TimeBasis",
    "TrainResult",
    "VectorFieldLayer",
    "accuracy",
    "antisymmetric_resnet",
    "build_network",
    "digits_data",
    "get_basis",
    "hamiltonian_resnet",
    "hyperbolic_resnet",
    "kinetic_energy",
    "lean_resnet",
    "mgic_resnet",
    "normalize",
    "parabolic_resnet",
    "peaks_data",
    "plain_resnet",
    "saved_tensor_bytes",
    "swiss_roll_data",
    "train_classifier",
    "weight_smoothness",
    "weight_total_variation",
]
