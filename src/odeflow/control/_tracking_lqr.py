"""The value of a tracking problem linearised along its reference: a time-varying Riccati
baseline with the affine terms of the drift mismatch."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ._problem import QuadraticControlProblem, _check_positive
from ._value import ValueFunction, ValueJet, _time_column

__all__ = ["TrackingLQRValue"]


def _hermite(y: Tensor, f: Tensor, h: float, t: Tensor) -> tuple[Tensor, Tensor]:
    """Cubic Hermite interpolation of nodes ``y (N + 1, ...)`` with slopes ``f`` on the grid
    kh, at times ``t (n,)``: the value and its t-derivative, ``(n, ...)`` each."""
    N = y.shape[0] - 1
    s = t / h
    k = s.floor().long().clamp(0, N - 1)
    a = (s - k).reshape(-1, *([1] * (y.ndim - 1)))
    y0, y1, f0, f1 = y[k], y[k + 1], h * f[k], h * f[k + 1]
    val = ((1 + 2 * a) * (1 - a) ** 2 * y0 + a * (1 - a) ** 2 * f0 + a * a * (3 - 2 * a) * y1
           + a * a * (a - 1) * f1)  # fmt: skip
    der = (
        6 * a * (a - 1) * (y0 - y1) + (3 * a * a - 4 * a + 1) * f0 + (3 * a * a - 2 * a) * f1
    ) / h
    return val, der


def _backward_rk4(rhs, stage, terminal, steps: int, horizon: float):
    """Backward RK4 of the Riccati, affine and constant equations from ``terminal`` = (P, s, c)
    at T: ``rhs(P, s, *stage(j))`` gives their t-derivatives with the coefficients at the
    half-grid node j (2k: t_k, 2k + 1: the midpoint). Returns P ``(N + 1, d, d)``,
    s ``(N + 1, d)``, c ``(N + 1,)``; raises ValueError when the solve overflows."""
    N, d = steps, len(terminal[1])
    h = -horizon / N
    P, s, c = np.zeros((N + 1, d, d)), np.zeros((N + 1, d)), np.zeros(N + 1)
    P[N], s[N], c[N] = terminal
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(N - 1, -1, -1):
            y = (P[k + 1], s[k + 1], c[k + 1])
            st = [stage(j) for j in (2 * k + 2, 2 * k + 1, 2 * k)]
            k1 = rhs(*y[:2], *st[0])
            k2 = rhs(*(u + 0.5 * h * v for u, v in zip(y[:2], k1, strict=False)), *st[1])
            k3 = rhs(*(u + 0.5 * h * v for u, v in zip(y[:2], k2, strict=False)), *st[1])
            k4 = rhs(*(u + h * v for u, v in zip(y[:2], k3, strict=False)), *st[2])
            P[k], s[k], c[k] = (
                u + h / 6 * (a + 2 * b + 2 * e + f)
                for u, a, b, e, f in zip(y, k1, k2, k3, k4, strict=True)
            )
            P[k] = 0.5 * (P[k] + P[k].T)
    if not (np.isfinite(P).all() and np.isfinite(s).all() and np.isfinite(c).all()):
        raise ValueError(
            f"the backward Riccati solve overflowed with {N} RK4 steps: the linearised "
            "problem is too stiff for this step; pass more steps"
        )
    return P, s, c


class _AffineLQTable:
    """The tabulated coefficients of Φ = ½δᵀPδ + sᵀδ + c, δ = z − z̄(t), shared by the
    linearised values: ``_y``/``_f`` hold (P, s, c, z̄) and their rates at the grid nodes."""

    def _table(self, t: Tensor) -> tuple[Tensor, ...]:
        """P, s, c, z̄ ``(n, d, d), (n, d), (n,), (n, d)`` at times ``t (n,)`` and their
        t-derivatives (eight tensors)."""
        d = self.dim
        val, der = _hermite(self._y, self._f, self.horizon / self.steps, t)
        cut = (d * d, d * d + d, d * d + d + 1)

        def split(v):
            P, s, c, z = v.tensor_split(cut, dim=1)
            return P.reshape(-1, d, d), s, c[:, 0], z

        return (*split(val), *split(der))

    def coefficients(self, t: float) -> tuple[np.ndarray, np.ndarray, float]:
        """(P(t), s(t), c(t)) of Φ = ½δᵀPδ + sᵀδ + c, δ = z − z̄(t), as NumPy arrays (the
        interpolant at a time t in [0, T])."""
        P, s, c, *_ = self._table(torch.tensor([float(t)], dtype=torch.float64))
        return P[0].numpy(), s[0].numpy(), float(c[0])

    def jet(self, x: Tensor, t, second: str | None = None) -> ValueJet:
        """The exact jet of Φ = ½δᵀPδ + sᵀδ + c, δ = x − z̄(t), on the interpolated coefficients."""
        if second not in (None, "laplacian", "hessian"):
            raise ValueError(f"second must be None, 'laplacian' or 'hessian', got {second!r}")
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"x must have shape (n, {self.dim}), got {tuple(getattr(x, 'shape', ()))}"
            )
        tc = _time_column(t, x)[:, 0].detach().to("cpu", torch.float64).clamp(0.0, self.horizon)
        P, s, c, zs, dP, ds, dc, vs = (v.to(x) for v in self._table(tc))
        e = x - zs
        Pe = (P @ e[..., None])[..., 0]
        grad = Pe + s
        value = 0.5 * (e * Pe).sum(-1) + (s * e).sum(-1) + c
        dt = (0.5 * (e * (dP @ e[..., None])[..., 0]).sum(-1) + (ds * e).sum(-1) + dc
              - (grad * vs).sum(-1))  # fmt: skip
        lap = P.diagonal(dim1=-2, dim2=-1).sum(-1) if second == "laplacian" else None
        return ValueJet(value, grad, dt, lap, P if second == "hessian" else None)


class TrackingLQRValue(_AffineLQTable, ValueFunction):
    r"""The value of a tracking problem linearised along a path (time-varying LQR, iLQR).

    For a control-affine tracking problem ż = a(z) + Bu, cost
    ∫ ½uᵀRu + q|z − z*(t)|² dt + (γ/2)|z_T − z*(T)|² (e.g. :class:`HodgkinHuxley`), and a
    path z̄(t) (by default the reference z*), the offset δ = z − z̄(t) obeys
    δ̇ = a(z̄ + δ) − ż̄ + Bu ≈ A(t)δ + w(t) + Bu with A(t) = ∂a/∂z(z̄(t)) (exact,
    :func:`torch.func.jacrev`) and the drift mismatch w(t) = a(z̄(t)) − ż̄(t); the state cost
    is q|δ|² + gᵀδ + ℓ with g = 2q(z̄ − z*), ℓ = q|z̄ − z*|². The value of this affine LQ
    problem is

    .. math::
        \Phi(z, t) = \tfrac12 \delta^\top P(t)\delta + s(t)^\top \delta + c(t),\qquad
        \delta = z - \bar z(t),

        -\dot P = A^\top P + PA - PG_cP + 2qI,\quad -\dot s = (A - G_cP)^\top s + Pw + g,\quad
        -\dot c = -\tfrac12 s^\top G_c s + s^\top w + \ell,

    G_c = BR⁻¹Bᵀ, with P(T) = γI, s(T) = γ(z̄ − z*)(T), c(T) = (γ/2)|z̄ − z*|²(T),
    integrated backward by RK4 on ``steps`` uniform steps (A, w, g, ℓ exact at the nodes and
    midpoints) and read between the nodes by cubic Hermite interpolation with the right-hand
    sides as slopes (z̄ likewise, with slopes ż̄; for z̄ = z* and ``steps`` a multiple of the
    problem's ``reference_steps`` this reproduces the problem's own interpolant of z*). The
    jet is exact for this interpolant: ∇ₓΦ = Pδ + s, ∇²ₓΦ = P, ΔₓΦ = tr P and
    ∂ₜΦ = ½δᵀṖδ + ṡᵀδ + ċ − (Pδ + s)ᵀż̄(t), so the HJB residual of the linearised problem
    vanishes to the accuracy of the Riccati solve. With a linear drift it is the exact LQR
    value (:class:`LQRValue`) whatever the path. On a nonlinear problem it is a baseline:
    its feedback u* = −R⁻¹Bᵀ(Pδ + s) is the tracking-LQR law, and a trained network can add a
    correction (:class:`ResidualValue`).

    **Refinement along a closed loop.** ``nominal=Φ₀, start=x₀`` takes for z̄ the closed loop
    of Φ₀'s feedback from x₀ (RK4 on the same grid). Repeating it, each time with the previous
    value as ``nominal``, is the iterative LQR (a Newton-type iteration on the open-loop problem
    from x₀): its closed loop converges to a local optimum from x₀ and Φ(x₀, 0) to its cost.
    The result is the LQ model of the value near that closed loop: the feedback of the
    neighbouring optimum for starts near x₀ (the plain form, z̄ = z*, treats all starts alike).
    For Hodgkin–Huxley from rest the plain form's closed loop costs 20 % above IPOPT's optimum,
    one refinement 0.7 %, two 0.04 % (``benchmarks/_apps_dynamics.py``).

    The backward solve is stiff when a is (Hodgkin–Huxley: |λ(A)| ≈ 116/ms, so the Riccati
    operator has rates near 232/ms): RK4 needs h·max|λ| ≤ 2.785, and ``steps`` defaults to
    four per reference interval (h = 5 μs for Hodgkin–Huxley).

    Args:
        problem: a :class:`QuadraticControlProblem` with a drift that :func:`torch.func.vmap`
            can differentiate, and the tracking protocol: ``reference(t)`` (z*, ``(n,)`` times
            to ``(n, d)``), ``reference_velocity(t)`` (ż*, same shapes), ``q`` (the tracking
            weight) and ``gamma`` (the terminal weight).
        steps: RK4 steps of the backward Riccati solve over [0, T] (default
            4·``problem.reference_steps``, or 1000).
        nominal: None (linearise along z*) or a value function whose closed loop from
            ``start`` is the path z̄.
        start: the start x₀ of the nominal closed loop (d numbers; only with ``nominal``).

    Raises:
        TypeError: a problem without the tracking protocol.
        ValueError: ``steps`` not a positive integer, ``start`` without ``nominal`` or
            ``nominal`` without a finite ``start`` of d numbers, a nominal of another
            dimension, or a solve that overflows (too few steps for the problem's stiffness).

    Reference: Anderson & Moore, *Optimal Control: Linear Quadratic Methods* (1990), ch. 2
    and 4 (tracking); Madondo et al., ML4H 2023 (the Hodgkin–Huxley problem).

    Example:
        >>> import torch
        >>> from odeflow.control import HodgkinHuxley
        >>> pb = HodgkinHuxley(horizon=2.0)
        >>> phi = TrackingLQRValue(pb)
        >>> z = pb.reference(torch.tensor([2.0]))        # on the reference at T: Φ = G = 0
        >>> float(phi(z, 2.0)), phi.jet(z, 0.5, "hessian").hessian.shape
        (0.0, torch.Size([1, 4, 4]))
        >>> better = TrackingLQRValue(pb, nominal=phi, start=pb.start)   # one iLQR pass
        >>> better.jet(pb.start[None], 0.0).grad.shape
        torch.Size([1, 4])
    """

    def __init__(self, problem: QuadraticControlProblem, *, steps: int | None = None,
                 nominal: ValueFunction | None = None, start=None):  # fmt: skip
        super().__init__()
        need = ("reference", "reference_velocity", "q", "gamma")
        if not isinstance(problem, QuadraticControlProblem) or not all(
            hasattr(problem, n) for n in need
        ):
            raise TypeError(
                "TrackingLQRValue needs a QuadraticControlProblem with reference(t), "
                "reference_velocity(t), q and gamma (e.g. HodgkinHuxley); got "
                f"{type(problem).__name__}"
            )
        if steps is None:
            steps = 4 * int(getattr(problem, "reference_steps", 250))
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        self.dim, self.horizon, self.steps = problem.dim, float(problem.horizon), steps
        self.problem = problem
        self._q = _check_positive("problem.q", problem.q, "the tracking weight")
        self._gamma = _check_positive("problem.gamma", problem.gamma, "the terminal weight")
        G = problem.control_gain()
        G = G * torch.eye(self.dim) if not isinstance(G, Tensor) else G
        self._G = G.detach().to(torch.float64).cpu().numpy()
        t = torch.linspace(0.0, self.horizon, 2 * steps + 1, dtype=torch.float64)
        zb, vb = self._nominal(t, nominal, start)
        lin = self._linearise(t, zb, vb)
        P, s, c = self._riccati(*lin)
        A, w, g = (v[::2] for v in lin[:3])
        rates = [self._rhs(P[k], s[k], A[k], w[k], g[k], lin[3][2 * k]) for k in range(steps + 1)]
        dP, ds, dc = (np.stack(r) for r in zip(*rates, strict=True))
        # one packed Hermite table (P, s, c, z̄) with slopes (Ṗ, ṡ, ċ, ż̄): one lookup per jet
        flat = lambda *v: np.concatenate([u.reshape(steps + 1, -1) for u in v], 1)  # noqa: E731
        self._y = torch.as_tensor(flat(P, s, c, zb[::2].numpy()))
        self._f = torch.as_tensor(flat(dP, ds, dc, vb[::2].numpy()))

    def _nominal(self, t: Tensor, nominal, start) -> tuple[Tensor, Tensor]:
        """z̄ and ż̄ at the times ``t`` (2N + 1 uniform): the reference, or the closed loop of
        ``nominal`` from ``start`` (RK4 on the N steps, Hermite at the midpoints)."""
        pb = self.problem
        if nominal is None:
            if start is not None:
                raise ValueError("start is the nominal closed loop's start: pass nominal too")
            return pb.reference(t), pb.reference_velocity(t)
        if getattr(nominal, "dim", None) != self.dim or not callable(getattr(nominal, "jet", None)):
            raise ValueError(f"nominal must be a ValueFunction of dimension {self.dim}")
        z = (
            torch.as_tensor(start, dtype=torch.float64).reshape(1, -1)
            if start is not None
            else None
        )
        if z is None or z.shape[1] != self.dim or not bool(torch.isfinite(z).all()):
            raise ValueError(f"start must be {self.dim} finite numbers with nominal, got {start!r}")

        def f(y, s):
            s = torch.as_tensor(s, dtype=torch.float64)
            return pb.dynamics(y, pb.feedback(y, nominal.jet(y, s).grad, s), s)

        h, nodes, slopes = self.horizon / self.steps, [z], []
        with torch.no_grad():
            for k in range(self.steps):
                tk = k * h
                k1 = f(z, tk)
                k2 = f(z + 0.5 * h * k1, tk + 0.5 * h)
                k3 = f(z + 0.5 * h * k2, tk + 0.5 * h)
                z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + f(z + h * k3, tk + h))
                nodes.append(z)
                slopes.append(k1)
            slopes.append(f(z, self.horizon))
        Z, F = torch.cat(nodes), torch.cat(slopes)
        if not bool(torch.isfinite(Z).all()):
            raise ValueError("the nominal closed loop overflowed; pass more steps")
        return _hermite(Z, F, h, t)

    def _linearise(self, t: Tensor, zb: Tensor, vb: Tensor):
        """A = ∂a/∂z(z̄), w = a(z̄) − ż̄, the state cost's gradient g = 2q(z̄ − z*) and value
        ℓ = q|z̄ − z*|² at the times ``t``, and (z̄ − z*)(T) (NumPy arrays); the drift is
        called per point with a 0-d time, as the solvers do."""
        from torch.func import jacrev, vmap

        pb = self.problem

        def a(y, s):
            return pb.drift(y[None], s)[0]

        with torch.no_grad():
            A = vmap(jacrev(a))(zb, t)
            w = vmap(a)(zb, t) - vb
            dz = zb - pb.reference(t)
        ell = self._q * (dz * dz).sum(-1)
        return A.numpy(), w.numpy(), (2 * self._q * dz).numpy(), ell.numpy(), dz[-1].numpy()

    def _rhs(self, P, s, A, w, g, ell):
        """d/dt of (P, s, c) of the affine LQ problem."""
        G = self._G
        GP = G @ P
        dP = -(A.T @ P + P @ A - P @ GP + 2 * self._q * np.eye(len(s)))
        ds = -((A - GP).T @ s + P @ w + g)
        dc = 0.5 * s @ G @ s - s @ w - ell
        return dP, ds, dc

    def _riccati(self, A, w, g, ell, dT):
        """Backward RK4 from (γI, γ(z̄ − z*), (γ/2)|z̄ − z*|²) at T: P ``(N + 1, d, d)``,
        s ``(N + 1, d)``, c ``(N + 1,)``."""
        gam = self._gamma
        terminal = (gam * np.eye(self.dim), gam * dT, 0.5 * gam * dT @ dT)
        return _backward_rk4(
            self._rhs, lambda j: (A[j], w[j], g[j], ell[j]), terminal, self.steps, self.horizon
        )

    def feedback_gains(self, t) -> tuple[Tensor, Tensor]:
        """The feedback as an affine law u*(z, t) = K(t)z + k(t) for online use:
        K = −R⁻¹BᵀP, k = −R⁻¹Bᵀ(s − Pz̄), at the times ``t`` (a number or ``(n,)``), as float64
        ``K (n, m, d)`` and ``k (n, m)``; tabulate them once at a closed loop's stage times.

        Example:
            >>> import torch
            >>> from odeflow.control import HodgkinHuxley
            >>> pb = HodgkinHuxley(horizon=2.0)
            >>> K, k = TrackingLQRValue(pb).feedback_gains([0.0, 0.5])
            >>> K.shape, k.shape
            (torch.Size([2, 1, 4]), torch.Size([2, 1]))
        """
        tt = torch.as_tensor(t, dtype=torch.float64).reshape(-1).clamp(0.0, self.horizon)
        P, s, _, zb, *_ = self._table(tt)
        pb = self.problem
        F = pb._Rinv(pb._Bt(torch.eye(self.dim, dtype=torch.float64)))  # (d, m): −u = pF
        K = -(P @ F).mT
        k = -((s - (P @ zb[..., None])[..., 0]) @ F)
        return K, k
