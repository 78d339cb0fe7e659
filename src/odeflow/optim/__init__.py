"""Matrix-free linear algebra and optimization: operators, (P)CG, one minimization loop.

Generic building blocks (no application knowledge) shared by odeflow's solvers, e.g. the
EPI distortion correction in :mod:`odeflow.imaging.epi`.

* Linear solves: :func:`cg` on a :class:`LinearOperator` (or a dense matrix / callable),
  returning a :class:`CGResult`.
* Minimization: :func:`minimize` is one loop over an objective ``fn(x) -> Evaluation``,
  parameterized by a descent (:class:`NewtonCG` — Gauss–Newton with a model Hessian —,
  :class:`LBFGS`) and a line search (:class:`Armijo`, :class:`FixedStep`), as optimistix
  splits them. :func:`gauss_newton` and :func:`lbfgs` are that loop with a fixed pair, for
  objectives that return tuples.
* Linear solves report a :class:`CGStatus` (CONVERGED, MAX_ITERATIONS, BREAKDOWN),
  minimization a :class:`MinimizeStatus` (CONVERGED, MAX_ITERATIONS, LINE_SEARCH_FAILED,
  STAGNATED). :data:`Status` is kept as an alias of :class:`MinimizeStatus` (one enum used to
  serve both).
"""

from ._cg import CGResult, cg
from ._descents import LBFGS, AbstractDescent, DescentStep, NewtonCG
from ._line_search import AbstractLineSearch, Armijo, FixedStep, LineSearchResult, armijo
from ._minimize import OptimizeResult, minimize
from ._objective import Evaluation
from ._operators import (
    DiagonalOperator,
    IdentityOperator,
    LinearOperator,
    MatrixOperator,
    jacobi_preconditioner,
)
from ._solvers import gauss_newton, lbfgs
from ._status import CGStatus, MinimizeStatus, Status

__all__ = [
    "LBFGS",
    "AbstractDescent",
    "AbstractLineSearch",
    "Armijo",
    "CGResult",
    "CGStatus",
    "DescentStep",
    "DiagonalOperator",
    "Evaluation",
    "FixedStep",
    "IdentityOperator",
    "LineSearchResult",
    "LinearOperator",
    "MatrixOperator",
    "MinimizeStatus",
    "NewtonCG",
    "OptimizeResult",
    "Status",
    "armijo",
    "cg",
    "gauss_newton",
    "jacobi_preconditioner",
    "lbfgs",
    "minimize",
]
