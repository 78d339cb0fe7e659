r"""A trust-region descent: Steihaug's truncated CG on the quadratic model, for :func:`minimize`.

At ``x_k`` with gradient ``g`` and model Hessian ``H`` (``Evaluation.hessian``), the step
approximately minimizes the model inside the trust region,

.. math::
    \min_p\; m(p) = gᵀp + \tfrac12 pᵀHp \quad\text{s.t.}\quad ‖p‖ ≤ Δ_k,

by CG from ``p = 0`` (Steihaug–Toint): it stops at CG's own tolerance (an interior step,
the Newton–CG direction), where an iterate would leave the region, or at a direction of
non-positive curvature ``dᵀHd ≤ 0`` (then it follows ``d`` to the boundary); either way ``m``
decreases monotonically along the CG path, so ``m(p) ≤ m(p_Cauchy) < 0``. After the line
search accepted ``s = x_{k+1} − x_k = t p``, the radius follows the ratio of the actual to
the predicted reduction, ``ρ = (f_k − f_{k+1}) / (−m(s))``: ``Δ ← ‖s‖/4`` when ``ρ < 1/4``,
``Δ ← min(2Δ, Δ_max)`` when ``ρ > 3/4`` and the step reached the boundary, else unchanged.
Paired with :class:`~odeflow.optim.Armijo` the backtracking plays the part of the rejected
step (trust region with backtracking, Nocedal & Yuan 1998), so every accepted step decreases
``f``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._utils import check_finite_real, check_positive_int
from ._descents import AbstractDescent, DescentStep

__all__ = ["SteihaugCG", "steihaug_cg"]


def _dot(u: torch.Tensor, v: torch.Tensor) -> float:
    return float((u * v).sum())


def _to_boundary(p, d, radius):
    """``τ ≥ 0`` with ``‖p + τd‖ = Δ``."""
    dd, pd, pp = _dot(d, d), _dot(p, d), _dot(p, p)
    return (-pd + math.sqrt(max(pd * pd + dd * (radius * radius - pp), 0.0))) / dd


def steihaug_cg(H, g: torch.Tensor, radius: float, *, rtol: float = 0.1, maxiter: int = 10):
    r"""Steihaug's truncated CG for ``min gᵀp + ½pᵀHp`` subject to ``‖p‖ ≤ Δ``.

    CG on ``Hp = −g`` from ``p = 0``, stopping at ``‖Hp + g‖ ≤ rtol·‖g‖`` (``"converged"``),
    at the boundary when an iterate would leave the ball (``"boundary"``), or along a
    direction of non-positive curvature, followed to the boundary (``"negative_curvature"``),
    or after ``maxiter`` iterations (``"max_iterations"``).

    Args:
        H: the model Hessian: a :class:`~odeflow.optim.LinearOperator` or a callable
            ``v ↦ Hv`` on tensors shaped like ``g`` (symmetric, possibly indefinite).
        g: the gradient (any shape).
        radius: ``Δ > 0``.
        rtol, maxiter: CG's relative residual tolerance and iteration cap.

    Returns:
        ``(p, reason, iterations)``.

    Raises:
        ValueError: ``Δ ≤ 0`` or a setting out of range.

    Reference:
        Steihaug, "The conjugate gradient method and trust regions in large scale
        optimization", SIAM J. Numer. Anal. 20 (1983); Nocedal & Wright, *Numerical
        Optimization* (2006), Alg. 7.2.

    Example:
        >>> H = lambda v: torch.tensor([1.0, -1.0], dtype=torch.float64) * v  # indefinite
        >>> p, reason, _ = steihaug_cg(H, torch.tensor([1.0, 1.0], dtype=torch.float64), 2.0)
        >>> reason, round(float(p.norm()), 12)
        ('negative_curvature', 2.0)
    """
    who = "steihaug_cg"
    radius = check_finite_real("radius", radius, positive=True, who=who)
    check_finite_real("rtol", rtol, nonnegative=True, who=who)
    maxiter = check_positive_int("maxiter", maxiter, who=who)
    hv = H.mv if hasattr(H, "mv") else H
    p = torch.zeros_like(g)
    r = g.clone()  # residual of Hp + g
    d = -r
    rr = _dot(r, r)
    tol = rtol * math.sqrt(rr)
    if math.sqrt(rr) == 0.0:
        return p, "converged", 0
    for it in range(1, maxiter + 1):
        Hd = hv(d)
        dHd = _dot(d, Hd)
        if not dHd > 0:  # non-positive curvature: to the boundary along d (m decreases)
            return p + _to_boundary(p, d, radius) * d, "negative_curvature", it
        alpha = rr / dHd
        p_next = p + alpha * d
        if _dot(p_next, p_next) >= radius * radius:
            return p + _to_boundary(p, d, radius) * d, "boundary", it
        p = p_next
        r = r + alpha * Hd
        rr_new = _dot(r, r)
        if math.sqrt(rr_new) <= tol:
            return p, "converged", it
        d = -r + (rr_new / rr) * d
        rr = rr_new
    return p, "max_iterations", maxiter


@dataclass
class _Region:
    """The radius and what :meth:`SteihaugCG.update` needs of the last step."""

    radius: float
    gp: float = 0.0  # gᵀp
    pHp: float = 0.0  # pᵀHp
    pnorm: float = 0.0
    boundary: bool = False


@dataclass(frozen=True)
class SteihaugCG(AbstractDescent):
    r"""Trust-region Newton–CG direction (Steihaug's truncated CG) for :func:`minimize`.

    The direction is :func:`steihaug_cg` on the objective's model Hessian within the current
    radius; the radius is updated from the reduction ratio of the accepted step (module
    docstring). Use it with :class:`~odeflow.optim.Armijo` (backtracking replaces a rejected
    step). Inside the region and with a positive definite ``H`` the direction is exactly
    :class:`~odeflow.optim.NewtonCG`'s (unpreconditioned, same ``rtol``/``maxiter``); near a
    saddle or far from the minimum it stays bounded and exploits negative curvature. Logs
    ``cg_iterations``, ``radius`` and ``cg_stop``.

    Attributes:
        radius: the initial radius ``Δ_0 > 0``.
        max_radius: ``Δ_max ≥ Δ_0``.
        rtol, maxiter: the inner CG's tolerance and iteration cap.

    Reference:
        Steihaug, SIAM J. Numer. Anal. 20 (1983); Nocedal & Yuan, "Combining trust region and
        line search techniques", in *Advances in Nonlinear Programming* (1998); Nocedal &
        Wright (2006), Alg. 4.1 and 7.2.

    Example:
        >>> from odeflow.optim import Evaluation, LinearOperator, minimize
        >>> c = torch.tensor([1.0, 100.0], dtype=torch.float64)
        >>> def quad(x):
        ...     H = LinearOperator(lambda v: c * v, x.shape, symmetric=True)
        ...     return Evaluation(0.5 * float((c * x * x).sum()), c * x, H)
        >>> res = minimize(quad, torch.ones(2, dtype=torch.float64), SteihaugCG(radius=0.1))
        >>> res.status.name, bool(res.x.abs().max() < 1e-6)
        ('CONVERGED', True)
    """

    radius: float = 1.0
    max_radius: float = 1e3
    rtol: float = 0.1
    maxiter: int = 10

    def __post_init__(self):
        who = "SteihaugCG"
        check_finite_real("radius", self.radius, positive=True, who=who)
        check_finite_real("max_radius", self.max_radius, positive=True, who=who)
        if self.max_radius < self.radius:
            raise ValueError(f"{who}: max_radius must be ≥ radius; raise max_radius.")
        check_finite_real("rtol", self.rtol, nonnegative=True, who=who)
        check_positive_int("maxiter", self.maxiter, who=who)

    def init(self, x, ev):
        return _Region(self.radius), {"cg_iterations": 0, "radius": self.radius}

    def step(self, state: _Region, x, ev):
        H, g = ev.hessian, ev.grad
        if H is None:
            raise TypeError(
                "SteihaugCG needs the objective's model Hessian: return "
                "Evaluation(value, grad, hessian=LinearOperator(...)), or use LBFGS()."
            )
        p, reason, its = steihaug_cg(H, g, state.radius, rtol=self.rtol, maxiter=self.maxiter)
        gp = _dot(g, p)
        if not gp < 0:  # no descent (g = 0 at round-off): steepest descent, within Δ
            p = -g * (state.radius / max(float(g.norm()), 1e-300))
            gp, reason = _dot(g, p), "steepest_descent"
        pHp = _dot(p, H.mv(p) if hasattr(H, "mv") else H(p))
        pn = float(p.norm())
        new = _Region(state.radius, gp, pHp, pn, reason in ("boundary", "negative_curvature"))
        info = {"cg_iterations": its, "radius": state.radius, "cg_stop": reason}
        return DescentStep(p, new, info)

    def update(self, state: _Region, x, ev, x_new, ev_new):
        t = float((x_new - x).norm()) / max(state.pnorm, 1e-300)  # the step length taken
        predicted = -(t * state.gp + 0.5 * t * t * state.pHp)
        actual = float(ev.value) - float(ev_new.value)
        rho = actual / predicted if predicted > 0 else 0.0
        radius = state.radius
        if rho < 0.25:
            radius = 0.25 * t * state.pnorm
        elif rho > 0.75 and state.boundary and t >= 1.0:
            radius = min(2.0 * radius, self.max_radius)
        return _Region(max(radius, 1e-12 * self.radius))
