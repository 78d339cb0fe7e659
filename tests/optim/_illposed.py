"""Standard discrete ill-posed test problems (written from their definitions) and oracles.

* ``deblur``: 1-D Gaussian blur (symmetric Toeplitz) of a piecewise smooth signal; our own
  problem, discretized with the conventions of Regularization Tools' ``gravity`` (collocation
  at the midpoints ``t_i = (i − ½)/n``, midpoint rule with weight ``h = 1/n``).
* ``shaw``: Shaw's 1-D image restoration problem, as in Regularization Tools' ``shaw``
  (kernel, points ``s_i = −π/2 + (i − ½)π/n``, weight ``π/n``, and exact solution).
* ``heat``: the inverse heat equation, a Volterra kernel, as in Regularization Tools' ``heat``
  (κ = 1; kernel, midpoint collocation, and Hansen's piecewise exact solution on the first
  half of [0, 1], zero on the second half).

Reference: P. C. Hansen, "Regularization Tools version 4.0 for Matlab 7.3", Numer. Algorithms
46 (2007) 189–194, and its manual (IMM, DTU), sections on ``shaw``, ``heat`` and ``gravity``.

Each returns ``(A, x_true)`` in float64; :func:`noisy` adds white noise of a relative level;
:func:`tikhonov_dense` and :func:`optimal_lambda` are the SVD-based oracles.
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64


def deblur(n: int, width: float = 0.03):
    t = (torch.arange(n, dtype=F64) + 0.5) / n
    A = torch.exp(-((t[:, None] - t[None, :]) ** 2) / (2 * width**2)) / (
        n * width * math.sqrt(2 * math.pi)
    )
    x = torch.where((t > 0.2) & (t < 0.4), 1.0, 0.0) + torch.sin(2 * math.pi * t) ** 2 * (t > 0.5)
    return A, x + 0.5 * torch.exp(-((t - 0.75) ** 2) / 0.002)


def shaw(n: int):
    h = math.pi / n
    s = -math.pi / 2 + (torch.arange(n, dtype=F64) + 0.5) * h
    cs, ct = torch.cos(s)[:, None], torch.cos(s)[None, :]
    u = math.pi * (torch.sin(s)[:, None] + torch.sin(s)[None, :])
    sinc = torch.where(u == 0, 1.0, torch.sin(u) / torch.where(u == 0, 1.0, u))
    A = h * (cs + ct) ** 2 * sinc**2
    x = 2 * torch.exp(-6 * (s - 0.8) ** 2) + torch.exp(-2 * (s + 0.5) ** 2)
    return A, x


def heat(n: int, kappa: float = 1.0):
    h = 1.0 / n
    t = (torch.arange(n, dtype=F64) + 0.5) * h
    d = t[:, None] - t[None, :] + h / 2  # kernel at the gap, lower triangular
    dd = d.clamp_min(1e-300)
    k = dd ** (-1.5) / (2 * kappa * math.sqrt(math.pi)) * torch.exp(-1 / (4 * kappa**2 * dd))
    A = h * torch.where(d > 0, k, 0.0)
    return A, heat_solution(n)


def heat_solution(n: int):
    """Hansen's exact solution of ``heat`` (n even): with ``τ_i = 20 i/n``, ``i = 1 … n/2``,
    ``x_i = 0.75 τ²/4`` (τ < 2), ``0.75 + (τ − 2)(3 − τ)`` (2 ≤ τ < 3), ``0.75 e^{−2(τ−3)}``
    (τ ≥ 3); ``x_i = 0`` for ``i > n/2``."""
    tau = 20 * torch.arange(1, n + 1, dtype=F64) / n
    x = torch.where(tau < 2, 0.75 * tau**2 / 4, 0.75 + (tau - 2) * (3 - tau))
    x = torch.where(tau >= 3, 0.75 * torch.exp(-2 * (tau - 3)), x)
    return torch.where(torch.arange(n) < n // 2, x, 0.0)


PROBLEMS = {"deblur": deblur, "shaw": shaw, "heat": heat}


def noisy(A, x, level: float, seed: int = 0, batch: int | None = None):
    b = A @ x
    shape = (b.shape[0],) if batch is None else (batch, b.shape[0])
    e = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=b.dtype)
    e = e / torch.linalg.vector_norm(e, dim=-1, keepdim=True)
    return b + level * torch.linalg.vector_norm(b) * e


def tikhonov_dense(A, b, lam):
    """``argmin ‖Ax − b‖² + λ²‖x‖²`` by the SVD."""
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    return Vh.T @ (s / (s**2 + lam**2) * (U.T @ b))


def optimal_lambda(A, b, x_true, points: int = 400):
    """The error-optimal λ on a fine log grid (a sweep: the oracle) and its error."""
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    beta = U.T @ b
    lams = s[0] * torch.logspace(-10, 0, points, dtype=F64)
    X = (s / (s**2 + lams[:, None] ** 2) * beta) @ Vh
    err = torch.linalg.vector_norm(X - x_true, dim=1)
    i = int(err.argmin())
    return float(lams[i]), float(err[i])
