"""The value of a control-affine problem linearised along a closed loop (iLQR): a time-varying
Riccati model with state-dependent control matrix, refined along its own nonlinear feedback."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ._problem import ControlProblem
from ._tracking_lqr import _AffineLQTable, _backward_rk4, _hermite
from ._value import ValueFunction

__all__ = ["ILQRValue"]


class ILQRValue(_AffineLQTable, ValueFunction):
    r"""The value of a control-affine problem linearised along a closed loop (iLQR).

    For ż = a(z, t) + B(z, t)v and the cost ∫ ℓ(z, t) + ½vᵀRv dt + G(z_T) (``running_cost``
    plus ``obstacle``; ℓ = L(z, 0), R = ∂²L/∂v², both checked), and a path z̄(t) with controls
    v̄(t) (the closed loop of a nominal value's feedback from x₀), the offset δ = z − z̄ obeys
    δ̇ ≈ A(t)δ + B̄(t)v + w(t) with A = ∂f/∂z(z̄, v̄) (which holds ∂B/∂z·v̄), B̄ = B(z̄) and
    w = a(z̄) − ż̄, all exact (:func:`torch.func.jacfwd`); ℓ and G are expanded to second
    order (gradients q, q_T, Hessians Q, Q_T). The value of this affine LQ problem is

    .. math::
        \Phi(z, t) = \tfrac12\delta^\top P\delta + s^\top\delta + c,\qquad
        -\dot P = A^\top P + PA - PG_cP + Q,

        -\dot s = (A - G_cP)^\top s + Pw + q,\qquad
        -\dot c = -\tfrac12 s^\top G_c s + s^\top w + \ell(\bar z),

    G_c(t) = B̄R⁻¹B̄ᵀ, with P(T) = Q_T, s(T) = q_T, c(T) = G(z̄_T), integrated backward by RK4
    on ``steps`` uniform steps (the coefficients exact at the nodes and midpoints) and read
    between the nodes by cubic Hermite interpolation with the right-hand sides as slopes (z̄
    likewise, with slopes ż̄). The jet is exact for this interpolant: ∇ₓΦ = Pδ + s,
    ∇²ₓΦ = P, ΔₓΦ = tr P, ∂ₜΦ = ½δᵀṖδ + ṡᵀδ + ċ − (Pδ + s)ᵀż̄, so the HJB residual of the
    linearised problem vanishes at the nodes to round-off. On a linear-quadratic problem it
    is the exact value (:class:`LQRValue`) whatever the path. Its feedback is the problem's
    own, u*(z, ∇Φ) (for the quadcopter the thrust direction follows the attitude).

    **Refinement.** With the previous value as ``nominal``, the path z̄ is that value's closed
    loop from x₀ (RK4 on the same grid, v̄ = u*(z̄, ∇Φ_prev)); at a fixed point δ = 0 along
    z̄, v̄ = −R⁻¹B̄ᵀs and −ṡ = Aᵀs + q: Pontryagin's conditions from x₀, Φ(x₀, 0) the cost of
    that local optimum and the Riccati part its neighbouring-optimal feedback. This is iLQR
    (Gauss–Newton on the open-loop problem, the dynamics' curvature dropped) with the update
    taken through the closed loop of the problem's nonlinear feedback. Like any Newton method it
    finds the local optimum near its start: for the quadcopter from hover it stalls near 3600,
    while from the open-loop controls of IPOPT's 50-interval solution (2179.06) one refinement
    reaches the continuous optimum, 2174.18 (``benchmarks/_apps_dynamics.py``).

    Args:
        problem: a deterministic :class:`ControlProblem` without densities, control-affine in
            v with a running cost quadratic in v (functions :func:`torch.func.vmap` can
            differentiate).
        start: x₀, the start of the nominal closed loop (d finite numbers).
        nominal: a value function of dimension d whose feedback u*(z, ∇Φ₀) flies the nominal
            path; a function t ↦ v̄(t) returning m numbers, an open-loop control flown from
            x₀ (e.g. a direct method's solution); or None (Φ₀ = 0: u*(z, 0)).
        steps: RK4 steps over [0, T] of both the nominal closed loop and the backward
            Riccati solve. Near T the Riccati rates reach 2ρ(G_c Q_T), and RK4 needs
            h·rate ≤ 2.785 (the quadcopter at α₀ = 5000: 2ρ = 5000, so ``steps`` ≥ 1800).
            None (default): 1000, or 1.25× the least stable count when that is more (the
            linearisation is then redone on the finer grid).
        damping: μ ≥ 0 added to the LQ model's state Hessian Q, (μ/2)|δ|² (Levenberg–
            Marquardt: the next closed loop stays nearer z̄). The fixed point does not depend
            on μ; raise it when a refinement raises the closed-loop cost, and build the final
            value with μ = 0 (its P is then the true Riccati matrix).

    Raises:
        TypeError: ``problem`` is not a :class:`ControlProblem`.
        ValueError: ``steps`` not a positive integer, a stochastic or density-dependent
            problem, dynamics not affine or a running cost not quadratic in the control,
            ``start`` not d finite numbers, a nominal of another dimension, or a closed loop
            or Riccati solve that overflows (too few steps).

    Reference: Li & Todorov, "Iterative linear quadratic regulator design for nonlinear
    biological movement systems", ICINCO 2004; Anderson & Moore, *Optimal Control: Linear
    Quadratic Methods* (1990), ch. 2; Onken et al., arXiv 2104.03270 (the quadcopter).

    Example:
        >>> import torch
        >>> from odeflow.control import HoverLQRValue, Quadcopter, rollout
        >>> pb = Quadcopter(terminal_weight=50.0)
        >>> phi = ILQRValue(pb, pb.start, nominal=HoverLQRValue(pb), steps=100)
        >>> phi = ILQRValue(pb, pb.start, nominal=phi, steps=100)     # one refinement
        >>> phi.jet(pb.start[None], 0.0, "hessian").hessian.shape
        torch.Size([1, 12, 12])
    """

    def __init__(self, problem: ControlProblem, start, *, nominal: ValueFunction | None = None,
                 steps: int | None = None, damping: float = 0.0):  # fmt: skip
        super().__init__()
        if not isinstance(problem, ControlProblem):
            raise TypeError(f"ILQRValue needs a ControlProblem, got {type(problem).__name__}")
        if problem.diffusion is not None or problem.uses_density:
            raise ValueError(
                "ILQRValue is for deterministic problems whose costs do not read the density; "
                f"{type(problem).__name__} has diffusion or uses_density"
            )
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                                  or steps < 1):  # fmt: skip
            raise ValueError(f"steps must be None or an integer >= 1, got {steps!r}")
        damping = float(damping)
        if not (np.isfinite(damping) and damping >= 0):
            raise ValueError(f"damping must be a finite number >= 0, got {damping!r}")
        self.problem, self.dim, self.steps = problem, problem.dim, steps or 1000
        self.damping = damping
        self.horizon = float(problem.horizon)
        x0 = torch.as_tensor(start, dtype=torch.float64).reshape(1, -1)
        if x0.shape[1] != self.dim or not bool(torch.isfinite(x0).all()):
            raise ValueError(f"start must be {self.dim} finite numbers, got {start!r}")
        if callable(getattr(nominal, "jet", None)):
            if getattr(nominal, "dim", None) != self.dim:
                raise ValueError(f"nominal must be a ValueFunction of dimension {self.dim}")
        elif nominal is not None and not callable(nominal):
            raise ValueError(
                "nominal must be None, a ValueFunction or a function t -> v̄(t) of the control "
                f"({problem.control_dim} numbers), got {type(nominal).__name__}"
            )
        self.start = x0[0]
        zb, vb, ub, lin = self._linear_model(nominal, x0)
        if steps is None:  # RK4 is stable on the terminal rate 2ρ(G_c Q_T) for h·rate ≤ 2.785
            rate = 2 * float(np.abs(np.linalg.eigvals(lin[1][-1] @ lin[6][0])).max())
            need = math.ceil(1.25 * self.horizon * rate / 2.785)
            if need > self.steps:
                self.steps = need
                zb, vb, ub, lin = self._linear_model(nominal, x0)
        steps = self.steps
        P, s, c = self._riccati(lin)
        rates = [self._rhs(P[k], s[k], *(v[2 * k] for v in lin[:6])) for k in range(steps + 1)]
        dP, ds, dc = (np.stack(r) for r in zip(*rates, strict=True))
        flat = lambda *v: np.concatenate([u.reshape(steps + 1, -1) for u in v], 1)  # noqa: E731
        self._y = torch.as_tensor(flat(P, s, c, zb[::2].numpy()))
        self._f = torch.as_tensor(flat(dP, ds, dc, vb[::2].numpy()))
        #: the nominal path z̄ ``(steps + 1, d)`` and its controls v̄ ``(steps + 1, m)``
        self.path, self.controls = zb[::2].clone(), ub[::2].clone()

    def _linear_model(self, nominal, x0):
        """The nominal path on the half-grid of ``self.steps`` RK4 steps and the linearisation
        along it."""
        t = torch.linspace(0.0, self.horizon, 2 * self.steps + 1, dtype=torch.float64)
        zb, vb, ub = self._nominal(t, nominal, x0)
        return zb, vb, ub, self._linearise(t, zb, vb, ub)

    def _field(self, nominal):
        pb = self.problem

        if nominal is not None and not callable(getattr(nominal, "jet", None)):
            m = pb.control_dim

            def control(y, s):  # an open-loop control signal t -> v̄(t)
                v = torch.as_tensor(nominal(float(s)), dtype=y.dtype).reshape(-1)
                if v.numel() != m or not bool(torch.isfinite(v).all()):
                    raise ValueError(f"nominal(t) must return {m} finite numbers, got {v}")
                return v.expand(y.shape[0], m)
        else:

            def control(y, s):
                p = torch.zeros_like(y) if nominal is None else nominal.jet(y, s).grad
                return pb.feedback(y, p, s)

        return control, lambda y, s: pb.dynamics(y, control(y, s), s)

    def _nominal(self, t: Tensor, nominal, z: Tensor):
        """z̄, ż̄ and v̄ at the times ``t`` (2N + 1 uniform): the closed loop of ``nominal``
        from ``z`` by RK4 on the N steps, Hermite at the midpoints."""
        control, f = self._field(nominal)
        h, nodes, slopes = self.horizon / self.steps, [z], []
        tt = [torch.tensor(k * h / 2, dtype=torch.float64) for k in range(2 * self.steps + 1)]
        with torch.no_grad():
            for k in range(self.steps):
                t0, tm, t1 = tt[2 * k], tt[2 * k + 1], tt[2 * k + 2]
                k1 = f(z, t0)
                k2 = f(z + 0.5 * h * k1, tm)
                k3 = f(z + 0.5 * h * k2, tm)
                z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + f(z + h * k3, t1))
                nodes.append(z)
                slopes.append(k1)
            slopes.append(f(z, tt[-1]))
            Z, F = torch.cat(nodes), torch.cat(slopes)
            if not bool(torch.isfinite(Z).all()):
                raise ValueError("the nominal closed loop overflowed; pass more steps")
            zb, vb = _hermite(Z, F, h, t)
            ub = torch.cat([control(zb[j : j + 1], tt[j]) for j in range(len(tt))])
        return zb, vb, ub

    def _linearise(self, t: Tensor, zb: Tensor, vb: Tensor, ub: Tensor):
        """A, G_c, w, q, Q, ℓ at the times ``t`` and the terminal (Q_T, q_T, G(z̄_T)), as
        NumPy arrays; checks that f is affine and L quadratic in the control."""
        from torch.func import hessian, jacfwd, vmap

        pb = self.problem

        def f(y, v, s):
            return pb.dynamics(y[None], v[None], s)[0]

        def ell(y, v, s):
            q = pb.obstacle(y[None], s)
            run = pb.running_cost(y[None], v[None], s)[0]
            return run if q is None else run + q[0]

        with torch.no_grad():
            A = vmap(jacfwd(f, 0))(zb, ub, t)
            B = vmap(jacfwd(f, 1))(zb, ub, t)
            a = vmap(f)(zb, torch.zeros_like(ub), t)
            fu = vmap(f)(zb, ub, t)
            v0 = torch.zeros_like(ub)
            l0 = vmap(ell)(zb, v0, t)
            R = vmap(hessian(ell, 1))(zb, v0, t)
            r = vmap(jacfwd(ell, 1))(zb, v0, t)
            lu = vmap(ell)(zb, ub, t)
            q = vmap(jacfwd(ell, 0))(zb, v0, t)
            Q = vmap(hessian(ell, 0))(zb, v0, t)
            GT = lambda y: pb.terminal_cost(y[None])[0]  # noqa: E731
            zT = zb[-1]
            term = (hessian(GT)(zT).numpy(), jacfwd(GT)(zT).numpy(), float(GT(zT)))
        quad = l0 + 0.5 * (ub[:, None, :] @ R @ ub[..., None])[:, 0, 0]
        scale = 1 + fu.abs().amax() + lu.abs().amax()
        if float((fu - a - (B @ ub[..., None])[..., 0]).abs().amax()) > 1e-9 * scale:
            raise ValueError(
                "ILQRValue needs dynamics affine in the control, f = a(z) + B(z)v; "
                f"{type(pb).__name__}.dynamics is not"
            )
        if float(r.abs().amax()) > 1e-9 * scale or float((lu - quad).abs().amax()) > 1e-9 * scale:
            raise ValueError(
                "ILQRValue needs a running cost ℓ(z) + ½vᵀRv (quadratic in the control, no "
                f"linear term); {type(pb).__name__}.running_cost is not"
            )
        Gc = B @ torch.linalg.solve(R, B.mT)
        w = a - vb
        Q = Q + self.damping * torch.eye(self.dim, dtype=Q.dtype)
        return A.numpy(), Gc.numpy(), w.numpy(), q.numpy(), Q.numpy(), l0.numpy(), term

    @staticmethod
    def _rhs(P, s, A, Gc, w, q, Q, ell):
        """d/dt of (P, s, c) of the affine LQ problem."""
        GP = Gc @ P
        dP = -(A.T @ P + P @ A - P @ GP + Q)
        ds = -((A - GP).T @ s + P @ w + q)
        dc = 0.5 * s @ Gc @ s - s @ w - ell
        return dP, ds, dc

    def _riccati(self, lin):
        """Backward RK4 from (Q_T, q_T, G(z̄_T)) at T: P ``(N + 1, d, d)``, s ``(N + 1, d)``,
        c ``(N + 1,)``."""
        coef, (QT, qT, GT) = lin[:6], lin[6]
        terminal = (0.5 * (QT + QT.T), qT, GT)
        return _backward_rk4(
            self._rhs, lambda j: tuple(v[j] for v in coef), terminal, self.steps, self.horizon
        )

    def gradient_table(self, t) -> tuple[Tensor, Tensor, Tensor]:
        """P, s and z̄ at the times ``t`` (a number or ``(n,)``), float64 ``(n, d, d)``,
        ``(n, d)``, ``(n, d)``: ∇ₓΦ(z, t) = P(t)(z − z̄(t)) + s(t). Tabulate them once at a
        closed loop's stage times for online use (the feedback is then u*(z, P(z − z̄) + s)).

        Example:
            >>> import torch
            >>> from odeflow.control import Quadcopter
            >>> pb = Quadcopter(terminal_weight=50.0)
            >>> P, s, zb = ILQRValue(pb, pb.start, steps=20).gradient_table([0.0, 0.5])
            >>> P.shape, s.shape, bool((zb[0] == pb.start).all())
            (torch.Size([2, 12, 12]), torch.Size([2, 12]), True)
        """
        tt = torch.as_tensor(t, dtype=torch.float64).reshape(-1).clamp(0.0, self.horizon)
        P, s, _, zb, *_ = self._table(tt)
        return P, s, zb
