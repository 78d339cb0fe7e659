"""Matrix-free linear algebra and optimization: operators, (P)CG, Gauss–Newton, L-BFGS, Armijo.

Generic building blocks (no application knowledge) shared by odeflow's solvers, e.g. the
EPI distortion correction in :mod:`odeflow.imaging.epi`.
"""

from ._cg import CGResult, Status, cg
from ._minimize import LineSearchResult, OptimizeResult, armijo, gauss_newton, lbfgs
from ._operators import (
    DiagonalOperator,
    IdentityOperator,
    LinearOperator,
    MatrixOperator,
    jacobi_preconditioner,
)

__all__ = [
    "CGResult",
    "DiagonalOperator",
    "IdentityOperator",
    "LineSearchResult",
    "LinearOperator",
    "MatrixOperator",
    "OptimizeResult",
    "Status",
    "armijo",
    "cg",
    "gauss_newton",
    "jacobi_preconditioner",
    "lbfgs",
]
