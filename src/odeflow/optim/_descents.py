r"""Descent directions: Newton–CG (Gauss–Newton with a model Hessian) and L-BFGS.

A descent turns the objective's :class:`~odeflow.optim.Evaluation` at ``x_k`` into a
direction ``p_k`` with ``∇fᵀp_k < 0``; :func:`~odeflow.optim.minimize` then asks a line
search for the step. Descents carry explicit state (L-BFGS's memory) from :meth:`init`
through :meth:`step` and :meth:`update`; the objects themselves hold only settings.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import torch

from .._utils import check_finite_real, check_positive_int
from ._cg import cg
from ._objective import Evaluation
from ._operators import jacobi_preconditioner

__all__ = ["LBFGS", "AbstractDescent", "DescentStep", "NewtonCG"]


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u * v).sum()


def _norm(u: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(u))


@dataclass
class DescentStep:
    """One direction: ``direction`` (shaped like ``x``), the descent's new ``state`` and
    ``info`` (numbers logged in the history, e.g. ``cg_iterations``)."""

    direction: torch.Tensor
    state: Any
    info: dict[str, Any] = field(default_factory=dict)


class AbstractDescent(abc.ABC):
    """A descent method for :func:`~odeflow.optim.minimize`: three methods, explicit state."""

    @abc.abstractmethod
    def init(self, x: torch.Tensor, ev: Evaluation) -> tuple[Any, dict[str, Any]]:
        """The initial state and the history entries of the starting point."""

    @abc.abstractmethod
    def step(self, state: Any, x: torch.Tensor, ev: Evaluation) -> DescentStep:
        """A descent direction at ``x`` (``ev.grad ᵀ direction < 0``)."""

    @abc.abstractmethod
    def update(
        self, state: Any, x: torch.Tensor, ev: Evaluation, x_new: torch.Tensor, ev_new: Evaluation
    ) -> Any:
        """The state after the accepted step ``x → x_new``."""


@dataclass(frozen=True)
class NewtonCG(AbstractDescent):
    r"""Inexact Newton: solve ``H p = −∇f`` by (Jacobi-preconditioned) CG.

    ``H`` is the objective's model Hessian (``Evaluation.hessian``): with ``H = JᵀJ`` (plus
    regularizer Hessians) this is the Gauss–Newton direction. CG stops at relative residual
    ``rtol`` or after ``maxiter`` iterations; when it made no progress (``∇fᵀp ≥ 0``, e.g. a
    breakdown) the direction is steepest descent ``−∇f``. Logs ``cg_iterations``.

    Attributes:
        rtol: CG's relative residual tolerance.
        maxiter: CG iteration cap.
        precondition: use ``jacobi_preconditioner(H)`` when ``H`` knows its diagonal.

    Reference: Nocedal & Wright, *Numerical Optimization* (2006), §7.1 and §10.3.

    Example:
        >>> from odeflow.optim import LinearOperator
        >>> H = LinearOperator(lambda v: 2 * v, (2,), psd=True)
        >>> x = torch.tensor([1.0, -1.0])
        >>> ev = Evaluation(value=float(x @ x), grad=2 * x, hessian=H)
        >>> NewtonCG().step(None, x, ev).direction
        tensor([-1.,  1.])
    """

    rtol: float = 0.1
    maxiter: int = 10
    precondition: bool = True

    def __post_init__(self):
        check_finite_real("rtol", self.rtol, nonnegative=True, who="NewtonCG")
        check_positive_int("maxiter", self.maxiter, who="NewtonCG")

    def init(self, x, ev):
        return None, {"cg_iterations": 0}

    def step(self, state, x, ev):
        H, g = ev.hessian, ev.grad
        if H is None:
            raise TypeError(
                "NewtonCG needs the objective's model Hessian: return "
                "Evaluation(value, grad, hessian=LinearOperator(...)), or use LBFGS()."
            )
        M = jacobi_preconditioner(H) if self.precondition and H.has_diagonal() else None
        sol = cg(H, -g, rtol=self.rtol, maxiter=self.maxiter, M=M)
        p = sol.x
        if not float(_dot(g, p)) < 0:  # CG made no progress (e.g. breakdown): steepest descent
            p = -g
        return DescentStep(p, None, {"cg_iterations": sol.iterations})

    def update(self, state, x, ev, x_new, ev_new):
        return None


@dataclass
class _Memory:
    """L-BFGS pairs, oldest first: s = x_{k+1} − x_k, y = g_{k+1} − g_k, ρ = 1/sᵀy."""

    S: list[torch.Tensor] = field(default_factory=list)
    Y: list[torch.Tensor] = field(default_factory=list)
    RHO: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class LBFGS(AbstractDescent):
    r"""Limited-memory BFGS direction ``p = −H_k ∇f`` by the two-loop recursion.

    ``H_k`` is the inverse-Hessian approximation from the last ``memory`` pairs
    ``s = x_{k+1} − x_k``, ``y = ∇f_{k+1} − ∇f_k`` (pairs with ``sᵀy ≤ 1e−10‖s‖‖y‖`` are
    skipped, keeping ``H_k`` positive definite) and initial scaling ``γ = sᵀy / yᵀy``; the
    first step (empty memory) is ``−∇f/‖∇f‖``, of unit length. If the recursion gives no
    descent the memory is cleared and that unit steepest-descent step is taken.

    Attributes:
        memory: number of stored pairs (≥ 1).

    Reference: Nocedal, "Updating quasi-Newton matrices with limited storage", Math. Comp. 35
    (1980); Nocedal & Wright (2006), Alg. 7.4.

    Example:
        >>> x = torch.tensor([3.0, 4.0])
        >>> d = LBFGS(memory=5)
        >>> state, _ = d.init(x, Evaluation(25.0, 2 * x))
        >>> d.step(state, x, Evaluation(25.0, 2 * x)).direction
        tensor([-0.6000, -0.8000])
    """

    memory: int = 10

    def __post_init__(self):
        check_positive_int("memory", self.memory, who="lbfgs")

    def init(self, x, ev):
        return _Memory(), {}

    def step(self, state: _Memory, x, ev):
        g = ev.grad
        gn = _norm(g)
        S, Y, RHO = state.S, state.Y, state.RHO
        q = g.clone()
        alphas = []
        for s, y, rho in zip(reversed(S), reversed(Y), reversed(RHO)):
            a = rho * float(_dot(s, q))
            alphas.append(a)
            q = q - a * y
        if S:
            gamma = float(_dot(S[-1], Y[-1]) / _dot(Y[-1], Y[-1]))
        else:
            gamma = 1.0 / max(gn, 1e-300)  # first step of unit length
        r = gamma * q
        for (s, y, rho), a in zip(zip(S, Y, RHO), reversed(alphas)):
            bcoef = rho * float(_dot(y, r))
            r = r + (a - bcoef) * s
        p = -r
        if not float(_dot(g, p)) < 0:
            return DescentStep(-g / max(gn, 1e-300), _Memory(), {})
        return DescentStep(p, state, {})

    def update(self, state: _Memory, x, ev, x_new, ev_new):
        s, y = x_new - x, ev_new.grad - ev.grad
        sy = float(_dot(s, y))
        if not sy > 1e-10 * _norm(s) * _norm(y):
            return state
        keep = slice(-self.memory, None)
        return _Memory([*state.S, s][keep], [*state.Y, y][keep], [*state.RHO, 1.0 / sy][keep])
