"""odeflow: continuous-time deep learning and scientific machine learning on PyTorch.

Mixed-precision neural ODEs with an exact discrete adjoint, exact network derivatives
(gradient, Hessian, Laplacian), OT-Flow normalizing flows and
EPI susceptibility distortion correction.
"""

from . import derivatives, flows, imaging, ode, optim, testing
from ._version import __version__
from .ode import (
    AdjointScaler,
    Backprop,
    ButcherTableau,
    DiscreteAdjoint,
    PerformanceWarning,
    PrecisionPolicy,
    Solution,
    odeint,
    solve,
)

__all__ = [
    "AdjointScaler",
    "Backprop",
    "ButcherTableau",
    "DiscreteAdjoint",
    "PerformanceWarning",
    "PrecisionPolicy",
    "Solution",
    "__version__",
    "derivatives",
    "flows",
    "imaging",
    "ode",
    "odeint",
    "optim",
    "solve",
    "testing",
]
