"""The ODE engine: explicit Runge–Kutta solves on fixed grids or with adaptive steps
(embedded pairs, PI control, dense output) with an exact discrete adjoint or the continuous
adjoint, mixed precision (bf16/fp16 stages, fp32 accumulation, 16-bit storage) and sync-free
dynamic adjoint scaling for fp16."""

from ._brownian import BrownianPath
from ._controller import PIController
from ._embedded import EMBEDDED_TABLEAUS, EmbeddedTableau
from ._fit import AutonomousField, FitResult, fit_trajectory, spiral_data
from ._gradient import Backprop, BacksolveAdjoint, DiscreteAdjoint, MemoryBudget
from ._graphs import clear_cuda_graphs, graph_memory_bytes
from ._methods import get_tableau
from ._odeint import odeint, solve
from ._precision import AdjointScaler, PerformanceWarning, PrecisionPolicy, get_precision
from ._sde import SDE, SDESolution, sdeint, sdesolve
from ._solution import AdjointStats, Solution, SolveStatus
from ._tableaus import TABLEAUS, ButcherTableau

__all__ = [
    "EMBEDDED_TABLEAUS",
    "SDE",
    "TABLEAUS",
    "AdjointScaler",
    "AdjointStats",
    "AutonomousField",
    "Backprop",
    "BacksolveAdjoint",
    "BrownianPath",
    "ButcherTableau",
    "DiscreteAdjoint",
    "EmbeddedTableau",
    "FitResult",
    "MemoryBudget",
    "PIController",
    "PerformanceWarning",
    "PrecisionPolicy",
    "SDESolution",
    "Solution",
    "SolveStatus",
    "clear_cuda_graphs",
    "fit_trajectory",
    "get_precision",
    "get_tableau",
    "graph_memory_bytes",
    "odeint",
    "sdeint",
    "sdesolve",
    "solve",
    "spiral_data",
]
