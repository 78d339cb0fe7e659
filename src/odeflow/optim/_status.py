"""Why an iterative method stopped: :class:`CGStatus` for linear solves, :class:`MinimizeStatus`
for minimization (:data:`Status` is kept as an alias of the latter)."""

from __future__ import annotations

import enum

__all__ = ["CGStatus", "MinimizeStatus", "Status"]


class CGStatus(enum.Enum):
    """Why :func:`~odeflow.optim.cg` stopped.

    * ``CONVERGED``: every system met the stopping rule ``‖r_k‖ ≤ max(rtol·‖b‖, atol)``;
    * ``MAX_ITERATIONS``: ``maxiter`` iterations ran first;
    * ``BREAKDOWN``: a curvature ``pᵀAp ≤ 0`` (the operator is not positive definite).

    >>> CGStatus.CONVERGED.ok
    True
    """

    CONVERGED = "converged"
    MAX_ITERATIONS = "max_iterations"
    BREAKDOWN = "breakdown"

    @property
    def ok(self) -> bool:
        """True for ``CONVERGED``."""
        return self is CGStatus.CONVERGED


class MinimizeStatus(enum.Enum):
    """Why :func:`~odeflow.optim.minimize` (and :func:`~odeflow.optim.gauss_newton`,
    :func:`~odeflow.optim.lbfgs`) stopped.

    * ``CONVERGED``: a tolerance (``gtol``, ``ftol`` or ``xtol``) was met;
    * ``MAX_ITERATIONS``: ``maxiter`` iterations ran first;
    * ``LINE_SEARCH_FAILED``: no step decreased the objective enough;
    * ``STAGNATED``: a step no longer changed the objective at the working precision.

    >>> MinimizeStatus.STAGNATED.ok
    False
    """

    CONVERGED = "converged"
    MAX_ITERATIONS = "max_iterations"
    LINE_SEARCH_FAILED = "line_search_failed"
    STAGNATED = "stagnated"

    @property
    def ok(self) -> bool:
        """True for ``CONVERGED``."""
        return self is MinimizeStatus.CONVERGED


#: Backward-compatible name of :class:`MinimizeStatus` (before CG got :class:`CGStatus`, one
#: ``Status`` enum served both; linear solves now report a :class:`CGStatus`).
Status = MinimizeStatus
