"""odeflow: continuous-time deep learning and scientific machine learning on PyTorch.

Mixed-precision neural ODEs with an exact discrete adjoint, exact network derivatives
(gradient, Hessian, Laplacian), OT-Flow normalizing flows and
EPI susceptibility distortion correction.
"""

from . import control, derivatives, flows, imaging, nn, ode, optim, testing
from ._version import __version__
from .ode import (
    AdjointScaler,
    Backprop,
    BacksolveAdjoint,
    BrownianPath,
    ButcherTableau,
    DiscreteAdjoint,
    EmbeddedTableau,
    PerformanceWarning,
    PIController,
    PrecisionPolicy,
    Solution,
    odeint,
    sdeint,
    sdesolve,
    solve,
)

__all__ = [
    "AdjointScaler",
    "Backprop",
    "BacksolveAdjoint",
    "BrownianPath",
    "ButcherTableau",
    "DiscreteAdjoint",
    "EmbeddedTableau",
    "PIController",
    "PerformanceWarning",
    "PrecisionPolicy",
    "Solution",
    "__version__",
    "control",
    "derivatives",
    "flows",
    "imaging",
    "nn",
    "ode",
    "odeint",
    "optim",
    "sdeint",
    "sdesolve",
    "solve",
    "testing",
]
