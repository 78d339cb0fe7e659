"""The ODE engine: fixed-grid explicit Runge–Kutta solves with an exact discrete adjoint,
mixed precision (bf16/fp16 stages, fp32 accumulation, 16-bit storage) and sync-free
dynamic adjoint scaling for fp16."""

from ._fit import AutonomousField, FitResult, fit_trajectory, spiral_data
from ._gradient import Backprop, DiscreteAdjoint
from ._graphs import clear_cuda_graphs, graph_memory_bytes
from ._odeint import odeint, solve
from ._precision import AdjointScaler, PerformanceWarning, PrecisionPolicy, get_precision
from ._solution import AdjointStats, Solution, SolveStatus
from ._tableaus import TABLEAUS, ButcherTableau, get_tableau

__all__ = [
    "TABLEAUS",
    "AdjointScaler",
    "AdjointStats",
    "AutonomousField",
    "Backprop",
    "ButcherTableau",
    "DiscreteAdjoint",
    "FitResult",
    "PerformanceWarning",
    "PrecisionPolicy",
    "Solution",
    "SolveStatus",
    "clear_cuda_graphs",
    "fit_trajectory",
    "get_precision",
    "get_tableau",
    "graph_memory_bytes",
    "odeint",
    "solve",
    "spiral_data",
]
