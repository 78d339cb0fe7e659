"""Reference solutions: the Riccati value of linear–quadratic problems, the Cole–Hopf value
of the HJB benchmark by Monte Carlo, and Gaussian optimal transport with a KL penalty."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ._value import ValueFunction, ValueJet, _time_column

__all__ = [
    "GaussianOTReference",
    "LQRValue",
    "MonteCarloEstimate",
    "cole_hopf_value",
    "gaussian_ot_reference",
]


def _as_matrix(M, d: int, name: str) -> np.ndarray:
    if M is None:
        return np.zeros((d, d))
    if isinstance(M, int | float):
        return float(M) * np.eye(d)
    out = np.asarray(M.detach().cpu() if isinstance(M, Tensor) else M, dtype=np.float64)
    if out.shape != (d, d):
        raise ValueError(f"{name} must be a number or a ({d}, {d}) matrix, got {out.shape}")
    return out


class LQRValue(ValueFunction):
    r"""The exact value Φ(x, t) = ½xᵀP(t)x + q(t)ᵀx + c(t) of a linear–quadratic problem.

    For ż = Ax + Bu (+ σdW), L = ½uᵀRu + ½xᵀQx, G = ½(x − y)ᵀQ_f(x − y), with
    G_c = BR⁻¹Bᵀ, the Riccati equations (backward from T)

    .. math::
        -\dot P = A^\top P + PA - PG_cP + Q,\quad -\dot q = (A - G_cP)^\top q,\quad
        -\dot c = -\tfrac12 q^\top G_c q + \tfrac12\operatorname{tr}(\sigma\sigma^\top P),

    with P(T) = Q_f, q(T) = −Q_f y, c(T) = ½yᵀQ_f y, are integrated by scipy's DOP853
    (rtol 1e-12) with dense output; ∂ₜΦ is evaluated from the right-hand sides, so the HJB
    residual of this Φ vanishes to round-off. The coefficients at a time are evaluated once
    and kept (per dtype and device; the RK4 solvers ask for the same few times again), and a
    batch at one time costs one product x·P(t), no per-sample copy of P.

    Args:
        A, Q, Qf: ``(d, d)`` arrays or numbers (number·I; None = 0); gain: G_c as a number
            or ``(d, d)``; noise: σσᵀ as a number or ``(d, d)`` (None = 0); target: y ``(d,)``.
        horizon: T.

    Reference: Anderson & Moore, *Optimal Control: Linear Quadratic Methods* (1990), ch. 2.

    Example:
        >>> import torch
        >>> v = LQRValue(dim=1, gain=1.0, Qf=2.0, horizon=1.0)   # P(t) = 2/(1 + 2(1 − t))
        >>> round(float(v(torch.ones(1, 1, dtype=torch.float64), 0.0)), 12)
        0.333333333333
    """

    def __init__(
        self,
        dim: int,
        *,
        gain=1.0,
        A=None,
        Q=None,
        Qf=None,
        noise=None,
        target=None,
        horizon: float = 1.0,
    ):
        super().__init__()
        from scipy.integrate import solve_ivp

        d = self.dim = int(dim)
        self.horizon = float(horizon)
        self.A, self.Q, self.Qf = (_as_matrix(M, d, n) for M, n in ((A, "A"), (Q, "Q"), (Qf, "Qf")))
        self.Gc = _as_matrix(gain, d, "gain")
        self.S = _as_matrix(noise, d, "noise")
        y = np.zeros(d) if target is None else np.asarray(target, dtype=np.float64).reshape(d)
        yT = np.concatenate([self.Qf.ravel(), -self.Qf @ y, [0.5 * y @ self.Qf @ y]])
        # integrate in τ = T − t (forward), d/dτ = −d/dt
        self._sol = solve_ivp(
            lambda tau, v: -self._rhs(v),
            (0.0, self.horizon),
            yT,
            method="DOP853",
            rtol=1e-12,
            atol=1e-14,
            dense_output=True,
        )
        self._cache: dict = {}  # (t, dtype, device) -> the coefficients and their rates at t

    def _unpack(self, v: np.ndarray):
        d = self.dim
        return v[: d * d].reshape(d, d), v[d * d : d * d + d], v[-1]

    def _rhs(self, v: np.ndarray) -> np.ndarray:
        """d/dt of (P, q, c)."""
        P, q, _ = self._unpack(v)
        P = 0.5 * (P + P.T)
        dP = -(self.A.T @ P + P @ self.A - P @ self.Gc @ P + self.Q)
        dq = -(self.A - self.Gc @ P).T @ q
        dc = 0.5 * q @ self.Gc @ q - 0.5 * np.trace(self.S @ P)
        return np.concatenate([dP.ravel(), dq, [dc]])

    def coefficients(self, t: float):
        """(P(t), q(t), c(t)) as NumPy arrays."""
        return self._unpack(self._sol.sol(self.horizon - float(t)))

    def jet(self, x: Tensor, t, second: str | None = None) -> ValueJet:
        tc = _time_column(t, x)[:, 0].detach().cpu().numpy().astype(np.float64)
        uniq, inv = np.unique(tc, return_inverse=True)
        d = self.dim
        key = (float(uniq[0]), x.dtype, x.device)
        if len(uniq) == 1 and key in self._cache:
            P, q, c, dP, dq, dc = self._cache[key]
        else:
            vals = self._sol.sol(self.horizon - uniq)  # (k, len(uniq))
            rates = np.stack([self._rhs(vals[:, i]) for i in range(len(uniq))], axis=1)

            def split(v):  # the coefficients at the distinct times, (k, d, d), (k, d), (k,)
                v = torch.as_tensor(v.T, dtype=x.dtype, device=x.device)
                P = v[:, : d * d].reshape(-1, d, d)
                return 0.5 * (P + P.mT), v[:, d * d : d * d + d], v[:, -1]

            (P, q, c), (dP, dq, dc) = split(vals), split(rates)
            if len(uniq) == 1:  # the RK4 solvers ask for the same few times again and again
                if len(self._cache) >= max(8, 2**23 // (2 * d * d)):
                    self._cache.clear()
                self._cache[key] = (P, q, c, dP, dq, dc)
        if len(uniq) == 1:  # one time (the solvers' case): x @ P, no (n, d, d) copy of P
            Px, dPx = x @ P[0], x @ dP[0]
        else:
            idx = torch.as_tensor(inv.reshape(-1), device=x.device)
            P, q, c, dP, dq, dc = (v[idx] for v in (P, q, c, dP, dq, dc))
            Px, dPx = (P @ x[..., None])[..., 0], (dP @ x[..., None])[..., 0]
        value = 0.5 * (x * Px).sum(-1) + (q * x).sum(-1) + c
        dt = 0.5 * (x * dPx).sum(-1) + (dq * x).sum(-1) + dc
        lap = P.diagonal(dim1=-2, dim2=-1).sum(-1) if second == "laplacian" else None
        if lap is not None and len(uniq) == 1:
            lap = lap.expand(x.shape[0])
        hess = P.expand(x.shape[0], d, d) if second == "hessian" else None
        return ValueJet(value, Px + q, dt, lap, hess)


class MonteCarloEstimate(NamedTuple):
    """A Monte-Carlo estimate and its standard error."""

    value: float
    stderr: float
    samples: int


def cole_hopf_value(
    terminal: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    t: float = 0.0,
    horizon: float = 1.0,
    sigma: float = math.sqrt(2.0),
    samples: int = 10**6,
    chunk: int = 50_000,
    seed: int = 0,
) -> MonteCarloEstimate:
    r"""The value of the HJB benchmark by the Cole–Hopf transform and Monte Carlo.

    For dX = 2u dt + σdW with L = |u|² (the 100-D problem of Han, Jentzen and E has
    σ = √2) the HJB ∂ₜΦ + (σ²/2)ΔΦ − |∇Φ|² = 0 linearises under Φ = −(σ²/2) log w, so

    .. math::
        \Phi(x, t) = -\tfrac{\sigma^2}{2}\log\mathbb{E}\exp\big(-\tfrac{2}{\sigma^2}
        g(x + \sigma W_{T - t})\big),

    estimated with ``samples`` Gaussian draws; the standard error is the delta method's,
    (σ²/2)·sd(e)/(√N·mean(e)) with e the exponentials.

    Args:
        terminal: g, ``(n, d) -> (n,)``.
        x: the point ``(d,)``.
        t, horizon, sigma: time, T, σ.
        samples, chunk, seed: number of draws, draws per batch, seed of the generator.

    Returns:
        :class:`MonteCarloEstimate` (value, standard error, samples).

    Raises:
        ValueError: t ≥ T, samples < 2 or non-finite terminal values.

    Reference: Han, Jentzen, E, "Solving high-dimensional partial differential equations
    using deep learning", PNAS 115 (2018), arXiv 1707.02568, section "HJB equation".

    Example:
        >>> import torch
        >>> g = lambda x: (x * x).sum(-1)    # in 1-D: Φ(0, 0) = ½ log(1 + 2σ²T) = ½ log 5
        >>> est = cole_hopf_value(g, torch.zeros(1, dtype=torch.float64), samples=200_000)
        >>> abs(est.value - math.log(5) / 2) < 4 * est.stderr
        True
    """
    tau = float(horizon) - float(t)
    if not tau > 0:
        raise ValueError(f"t must be below the horizon T (got t={t}, T={horizon})")
    if samples < 2:
        raise ValueError(f"samples must be >= 2, got {samples}")
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    gen = torch.Generator().manual_seed(int(seed))
    lam = 2.0 / sigma**2
    vals = []
    left = int(samples)
    while left > 0:
        k = min(chunk, left)
        w = torch.randn(k, x.numel(), generator=gen, dtype=torch.float64)
        vals.append(-lam * terminal(x + sigma * math.sqrt(tau) * w))
        left -= k
    a = torch.cat(vals)
    if not bool(torch.isfinite(a).all()):
        raise ValueError("the terminal cost returned NaN or inf on the Monte-Carlo samples")
    shift = a.max()
    e = torch.exp(a - shift)
    mean, sd = float(e.mean()), float(e.std())
    value = -(math.log(mean) + float(shift)) / lam
    return MonteCarloEstimate(value, sd / (math.sqrt(a.numel()) * mean) / lam, a.numel())


class GaussianOTReference(NamedTuple):
    """Closed form of OT between N(m₀, s₀²I) and N(m₁, s₁²I) with a λ·KL terminal cost."""

    mean: np.ndarray
    std: float
    transport: float
    kl: float
    cost: float


def gaussian_ot_reference(m0, s0: float, m1, s1: float, lam: float) -> GaussianOTReference:
    r"""Optimal terminal law and cost of min ½∫₀¹E|ż|² + λ·KL(ρ₁' ‖ N(m₁, s₁²I)).

    The terminal law is N(m*, s*²I) with m* = (s₁²m₀ + λm₁)/(s₁² + λ) and s* the positive
    root of (1 + λ/s₁²)s² − s₀s − λ = 0; the cost is ½(|m₀ − m*|² + d(s₀ − s*)²) + λ·KL,
    KL = d/2(s*²/s₁² − 1 − 2 log(s*/s₁)) + |m* − m₁|²/(2s₁²); paths are straight lines and
    the log-determinant is ℓ(t) = d·log(1 − t + t·s*/s₀).

    Reference: Ruthotto et al., arXiv 1912.01825 (the MFC formulation); Peyré & Cuturi,
    *Computational Optimal Transport* (2019), remark 2.31 (Gaussian W₂).

    Example:
        >>> ref = gaussian_ot_reference([0.0, 0.0], 1.0, [2.0, 0.0], 1.0, lam=1.0)
        >>> ref.mean.tolist(), round(ref.std, 6)
        ([1.0, 0.0], 1.0)
    """
    m0, m1 = np.asarray(m0, dtype=np.float64), np.asarray(m1, dtype=np.float64)
    d = m0.size
    ms = (s1**2 * m0 + lam * m1) / (s1**2 + lam)
    a, b, c = 1.0 + lam / s1**2, -s0, -lam
    ss = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    transport = 0.5 * (float(((m0 - ms) ** 2).sum()) + d * (s0 - ss) ** 2)
    kl = 0.5 * d * (ss**2 / s1**2 - 1 - 2 * math.log(ss / s1)) + float(((ms - m1) ** 2).sum()) / (
        2 * s1**2
    )
    return GaussianOTReference(ms, ss, transport, kl, transport + lam * kl)
