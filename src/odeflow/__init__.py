"""odeflow: continuous-time deep learning and scientific machine learning on PyTorch.

Mixed-precision neural ODEs with an exact discrete adjoint, exact network derivatives
(gradient, Hessian, Laplacian), OT-Flow normalizing flows and
EPI susceptibility distortion correction.
"""

from . import control, derivatives, flows, imaging, ode, optim, testing
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

__version__ = "0.1.0"

__all__ = [
    "AdjointScaler",
    "Backprop",
    "ButcherTableau",
    "DiscreteAdjoint",
    "PerformanceWarning",
    "PrecisionPolicy",
    "Solution",
    "__version__",
    "control",
    "derivatives",
    "flows",
    "imaging",
    "ode",
    "odeint",
    "optim",
    "solve",
    "testing",
]
