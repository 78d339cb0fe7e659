"""Matrix-free linear algebra and optimization: operators, (P)CG, one minimization loop.

Generic building blocks (no application knowledge) shared by odeflow's solvers, e.g. the
EPI distortion correction in :mod:`odeflow.imaging.epi`.

* Linear solves: :func:`cg` on a :class:`LinearOperator` (or a dense matrix / callable),
  returning a :class:`CGResult`.
* Minimization: :func:`minimize` is one loop over an objective ``fn(x) -> Evaluation``,
  parameterized by a descent (:class:`NewtonCG` — Gauss–Newton with a model Hessian —,
  :class:`LBFGS`, the trust-region :class:`SteihaugCG`) and a line search (:class:`Armijo`,
  :class:`FixedStep`), as optimistix splits them. :func:`gauss_newton` and :func:`lbfgs` are
  that loop with a fixed pair, for objectives that return tuples.
* Ill-posed least squares: :func:`hybrid_lsqr` (Golub–Kahan :func:`golub_kahan` +
  Tikhonov on the projected problem, λ by GCV, weighted GCV or the discrepancy principle)
  and :func:`solve_tikhonov` (``min ‖Ax − b‖² + λ²‖Lx‖²``).
* Separable models: :class:`VarPro` (a feature extractor + a last layer solved for,
  :func:`solve_last_layer`) and :func:`gnvpro` (Gauss–Newton on the reduced objective);
  :class:`RandomFeatures` (ReLU random features fitted by :func:`hybrid_lsqr` or min-norm);
  :class:`SlimTrain` (the last layer by sampled limited-memory Tikhonov, :func:`slimtik_update`,
  λ by sampled GCV, inside any torch optimizer's mini-batch loop).
* Bounds: :func:`minimize_bounded` (projected Newton–Krylov, PNKH-B style).
* Linear solves report a :class:`CGStatus` (CONVERGED, MAX_ITERATIONS, BREAKDOWN),
  minimization a :class:`MinimizeStatus` (CONVERGED, MAX_ITERATIONS, LINE_SEARCH_FAILED,
  STAGNATED). :data:`Status` is kept as an alias of :class:`MinimizeStatus` (one enum used to
  serve both).
"""

from ._bidiag import Bidiagonalization, Reorthogonalization, golub_kahan
from ._bounds import minimize_bounded
from ._cg import CGResult, cg
from ._descents import LBFGS, AbstractDescent, DescentStep, NewtonCG
from ._gnvpro import gnvpro, varpro_objective
from ._hybrid import HybridResult, HybridStatus, hybrid_lsqr
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
from ._random_features import RandomFeatures, RandomFeaturesFit
from ._slimtrain import SlimTikStep, SlimTrain, SlimTrainStep, slimtik_update
from ._solvers import gauss_newton, lbfgs
from ._status import CGStatus, MinimizeStatus, Status
from ._tikhonov import TikhonovResult, solve_tikhonov
from ._trust_region import SteihaugCG, steihaug_cg
from ._varpro import LastLayer, VarPro, VarProLoss, solve_last_layer

__all__ = [
    "LBFGS",
    "AbstractDescent",
    "AbstractLineSearch",
    "Armijo",
    "Bidiagonalization",
    "CGResult",
    "CGStatus",
    "DescentStep",
    "DiagonalOperator",
    "Evaluation",
    "FixedStep",
    "HybridResult",
    "HybridStatus",
    "IdentityOperator",
    "LastLayer",
    "LineSearchResult",
    "LinearOperator",
    "MatrixOperator",
    "MinimizeStatus",
    "NewtonCG",
    "OptimizeResult",
    "RandomFeatures",
    "RandomFeaturesFit",
    "Reorthogonalization",
    "SlimTikStep",
    "SlimTrain",
    "SlimTrainStep",
    "Status",
    "SteihaugCG",
    "TikhonovResult",
    "VarPro",
    "VarProLoss",
    "armijo",
    "cg",
    "gauss_newton",
    "gnvpro",
    "golub_kahan",
    "hybrid_lsqr",
    "jacobi_preconditioner",
    "lbfgs",
    "minimize",
    "minimize_bounded",
    "slimtik_update",
    "solve_last_layer",
    "solve_tikhonov",
    "steihaug_cg",
    "varpro_objective",
]
