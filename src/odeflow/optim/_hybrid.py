r"""Hybrid Krylov–Tikhonov regularization: Golub–Kahan + Tikhonov on the projected problem.

After ``k`` bidiagonalization steps (``A V_k = U_{k+1} B_k``, ``β₁U_{k+1}e₁ = b``) the
Tikhonov problem ``min ‖Ax − b‖² + λ²‖x‖²`` restricted to ``x = V_k y`` is the small problem
``min ‖B_k y − β₁e₁‖² + λ²‖y‖²``. With the SVD ``B_k = P diag(s) Qᵀ`` and ``ũ = β₁Pᵀe₁``
(length ``k+1``) everything is explicit:

.. math::
    y_λ = Q\,\mathrm{diag}\Big(\frac{s_i}{s_i^2+λ^2}\Big) ũ_{1:k},\qquad
    ‖r_λ‖^2 = \sum_{i\le k}\Big(\frac{λ^2 ũ_i}{s_i^2+λ^2}\Big)^2 + ũ_{k+1}^2,\qquad
    T(λ) = \sum_i \frac{s_i^2}{s_i^2+λ^2},

``T`` being the trace of the influence matrix. λ is chosen at every iteration, so the
iteration no longer semi-converges: it stops once the Tikhonov problem at the chosen λ is
solved (the normal-equation residual ``‖Aᵀ(b − Ax) − λ²x‖ = α_{k+1}|e_{k+1}ᵀ(β₁e₁ − B_k y)|``
is small) and λ has settled.

GCV evaluates the full problem's ``G(λ) = ‖b − Ax_λ‖² / (m − T(λ))²`` through the projection
(Chung–Nagy–O'Leary's ``Ĝ``). It is trustworthy only where the Krylov space has resolved the
spectrum: the Ritz values interlace, ``s_i² ≤ σ_i²``, so the projected trace never exceeds the
full one, and near the bottom of the λ range (``λ ≈ s_min(B_k)``) it falls short by the
singular values not yet found, which biases ``Ĝ`` low there. A minimum at that floor is not
a stationary point, and on a slowly decaying spectrum (the inverse heat problem) it is this
artefact at every ``k`` and drags λ to 0; λ is therefore the lowest *interior* local minimum
of ``Ĝ``, the floor only while there is none (the floor then moves on with ``k``). These
``λ_k`` converge to a local minimizer of ``G``, slowly where the spectrum decays slowly, so λ
counts as settled when the last step, extrapolated geometrically, leaves at most ``lam_rtol``
to go.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch

from .._utils import check_finite_real, check_positive_int
from ._bidiag import _as_operator, _check_rhs, _GolubKahan, lower_bidiagonal

__all__ = ["HybridResult", "HybridStatus", "hybrid_lsqr"]

_GRID_PER_DECADE = 20
_ZOOMS = 6


class HybridStatus(enum.Enum):
    """Why :func:`hybrid_lsqr` stopped."""

    CONVERGED = "converged"
    BREAKDOWN = "breakdown"
    MAX_ITERATIONS = "max_iterations"

    @property
    def ok(self) -> bool:
        """True for CONVERGED and BREAKDOWN (an invariant subspace: the solve is exact)."""
        return self is not HybridStatus.MAX_ITERATIONS


@dataclass
class HybridResult:
    """Result of :func:`hybrid_lsqr`.

    Attributes:
        x: the regularized solution, ``(*batch, *A.in_shape)``.
        lam: the chosen λ per right-hand side, shape ``batch`` (0-d if unbatched).
        status: :class:`HybridStatus`; ``reason`` says which test stopped the iteration.
        iterations: bidiagonalization steps ``k``.
        lam_history: λ after each iteration, ``(iterations, *batch)``.
        residual_norms: ``‖b − A x_k‖`` after each iteration, ``(iterations, *batch)``.
        gcv_lambdas, gcv_values: the criterion's curve at the last iteration (GCV, weighted
            GCV, or the residual norm for the discrepancy principle), ``(*batch, n_grid)``;
            None for a fixed λ.
        omega: the weight of weighted GCV per right-hand side (None for other rules).
        reorthogonalizations: vectors reorthogonalized.
    """

    x: torch.Tensor
    lam: torch.Tensor
    status: HybridStatus
    reason: str
    iterations: int
    lam_history: torch.Tensor
    residual_norms: torch.Tensor
    gcv_lambdas: torch.Tensor | None = None
    gcv_values: torch.Tensor | None = None
    omega: torch.Tensor | None = None
    reorthogonalizations: int = 0


@dataclass
class _Projected:
    """The SVD of ``B_k`` and ``ũ = β₁Pᵀe₁`` for ``nb`` problems (float64)."""

    s: torch.Tensor  # (nb, k)
    ut: torch.Tensor  # (nb, k+1)
    Qh: torch.Tensor  # (nb, k, k)
    B: torch.Tensor  # (nb, k+1, k)

    @classmethod
    def of(cls, alphas, betas, beta1):
        B = lower_bidiagonal(alphas, betas)
        P, s, Qh = torch.linalg.svd(B)
        return cls(s=s, ut=beta1[:, None] * P[:, 0, :], Qh=Qh, B=B)

    def parts(self, lam):
        """``(‖r_λ‖², T(λ))`` for λ of shape ``(nb, L)``, each ``(nb, L)``."""
        s2, l2 = self.s[:, None, :] ** 2, lam[..., None] ** 2
        k = self.s.shape[1]
        den = s2 + l2
        den = torch.where(den > 0, den, 1.0)
        r2 = ((l2 / den * self.ut[:, None, :k]) ** 2).sum(-1) + self.ut[:, None, k] ** 2
        return r2, (s2 / den).sum(-1)

    def residual2(self, lam):
        """``‖r_λ‖²`` for λ of shape ``(nb, L)`` → ``(nb, L)``."""
        return self.parts(lam)[0]

    def trace(self, lam):
        """``T(λ)`` for λ of shape ``(nb, L)`` → ``(nb, L)``."""
        return self.parts(lam)[1]

    def solve(self, lam):
        """``y_λ`` for λ of shape ``(nb,)`` → ``(nb, k)``."""
        s, k = self.s, self.s.shape[1]
        den = s**2 + lam[:, None] ** 2
        coef = torch.where(den > 0, s / torch.where(den > 0, den, 1.0), 0.0) * self.ut[:, :k]
        return torch.einsum("bji,bj->bi", self.Qh, coef)

    def omega(self, k):
        """The WGCV weight that puts the minimum of the k-th projected WGCV at ``λ = s_min``."""
        lam = self.s[:, -1:].clamp_min(1e-300)
        s2, l2 = self.s**2, lam**2
        f = l2 / (s2 + l2)
        dfl = 2 * lam * s2 / (s2 + l2) ** 2  # d f / dλ (and −d/dλ of s²/(s²+λ²))
        n_val = self.residual2(lam)[:, 0]
        dn = (2 * f * dfl * self.ut[:, :k] ** 2).sum(-1)
        t_val = self.trace(lam)[:, 0]
        dt = -dfl.sum(-1)
        den = dn * t_val - 2 * n_val * dt
        w = torch.where(den > 0, dn * (k + 1) / torch.where(den > 0, den, 1.0), 1.0)
        return w.clamp(1e-6, 1.0)


def _criterion(rule, proj: _Projected, lam, m, k, omega):
    r2, tr = proj.parts(lam)
    if rule == "gcv":  # the full problem's GCV, evaluated through the projection
        return r2 / (m - tr).clamp_min(1e-300) ** 2
    if rule == "wgcv":  # weighted GCV of the projected problem
        return k * r2 / ((k + 1) - omega[:, None] * tr).clamp_min(1e-300) ** 2
    return r2.sqrt()  # discrepancy: the residual norm


def _grid(proj: _Projected, eps: float, floor_at_smin: bool):
    """Log grid for λ per row: from ``max(s_min, 16ε·s_max)`` (GCV, weighted GCV: Hansen's
    range; below ``s_min(B_k)`` the projected trace is stuck near ``k``) or
    ``max(100ε, 1e-12)·s_max`` (discrepancy) up to ``10·s_max``. GCV's values near the floor
    are still biased low (module docstring): it takes an interior minimum."""
    smax = proj.s[:, 0].clamp_min(1e-300)
    lo = smax * max(100 * eps, 1e-12)
    if floor_at_smin:
        lo = torch.maximum(smax * 16 * eps, proj.s[:, -1].clamp_max(smax))
    hi = 10 * smax
    decades = float((hi / lo).log10().max())
    points = max(int(decades * _GRID_PER_DECADE), 20) + 1
    t = torch.linspace(0.0, 1.0, points, dtype=smax.dtype, device=smax.device)
    return (lo.log()[:, None] + t[None, :] * (hi / lo).log()[:, None]).exp()


def _interior_argmin(vals):
    """Per row: the lowest interior local minimum of ``vals`` (a grid point below its left
    neighbour and not above its right one); the global argmin where there is none."""
    inner = (vals[:, 1:-1] < vals[:, :-2]) & (vals[:, 1:-1] <= vals[:, 2:])
    masked = torch.where(inner, vals[:, 1:-1], torch.inf)
    j = masked.argmin(dim=1, keepdim=True) + 1
    return torch.where(inner.any(dim=1, keepdim=True), j, vals.argmin(dim=1, keepdim=True))


def _minimize_on_grid(f, grid, interior: bool = False):
    """Argmin of ``f`` (vectorized over rows) on the grid, refined by ``_ZOOMS`` zooms: each
    evaluates 33 points across the two grid cells around the current best (λ to ~1e-8,
    relative). With ``interior``, the best is the lowest interior local minimum."""
    vals = f(grid)
    i = _interior_argmin(vals) if interior else vals.argmin(dim=1, keepdim=True)
    L = grid.shape[1]
    lo = torch.gather(grid, 1, (i - 1).clamp(0, L - 1)).log()
    hi = torch.gather(grid, 1, (i + 1).clamp(0, L - 1)).log()
    t = torch.linspace(0.0, 1.0, 33, dtype=grid.dtype, device=grid.device)[None, :]
    for _ in range(_ZOOMS):
        pts = lo + t * (hi - lo)
        j = f(pts.exp()).argmin(dim=1, keepdim=True)
        lo = torch.gather(pts, 1, (j - 1).clamp(0, 32))
        hi = torch.gather(pts, 1, (j + 1).clamp(0, 32))
    return ((lo + hi) / 2).exp()[:, 0], vals


def _discrepancy(proj: _Projected, grid, target):
    """λ with ``‖r_λ‖ = target`` (bisection in log λ; ‖r_λ‖ increases with λ)."""
    lo, hi = grid[:, :1].log(), grid[:, -1:].log()
    r_lo = proj.residual2(lo.exp())[:, 0].sqrt()
    r_hi = proj.residual2(hi.exp())[:, 0].sqrt()
    t = torch.linspace(0.0, 1.0, 33, dtype=lo.dtype, device=lo.device)[None, :]
    for _ in range(8):  # multisection: 32 subintervals per pass
        pts = lo + t * (hi - lo)
        below = (proj.residual2(pts.exp()) <= target[:, None] ** 2).sum(1, keepdim=True)
        j = (below - 1).clamp(0, 31)  # residual increases with λ: the last point below
        lo, hi = torch.gather(pts, 1, j), torch.gather(pts, 1, j + 1)
    lam = ((lo + hi) / 2).exp()[:, 0]
    lam = torch.where(r_lo > target, grid[:, 0], lam)
    lam = torch.where(r_hi < target, grid[:, -1], lam)
    return lam, r_lo <= target


def _settled(history, lam_rtol, converging: bool) -> torch.Tensor:
    """Per right-hand side: λ has settled. ``converging`` (GCV, discrepancy: λ_k tends
    to the full problem's λ): the last step in log λ, extrapolated geometrically with the
    ratio ρ of the last two steps, leaves at most ``lam_rtol`` to go (``|Δ_k|/(1 − ρ) ≤
    lam_rtol``, or ``|Δ_k| ≤ lam_rtol/1000``). Otherwise (weighted GCV, whose adaptive ω
    pulls λ_k toward ``s_min(B_k)``): the last step alone is at most ``lam_rtol``."""
    if len(history) < 3 - (not converging):
        return torch.zeros_like(history[-1], dtype=torch.bool)
    if not converging:
        return (history[-1] - history[-2]).abs() <= lam_rtol * history[-2]
    l0, l1, l2 = (h.clamp_min(1e-300).log() for h in history[-3:])
    d1, d2 = (l1 - l0).abs(), (l2 - l1).abs()
    rho = d2 / d1.clamp_min(1e-300)
    rest = torch.where(rho < 1, d2 / (1 - rho).clamp_min(1e-300), torch.inf)
    return (d2 <= 1e-3 * lam_rtol) | (rest <= lam_rtol)


def _check_rule(regularization, noise_level, who):
    if isinstance(regularization, str):
        if regularization not in ("gcv", "wgcv", "discrepancy"):
            raise ValueError(
                f"{who}: regularization must be 'gcv', 'wgcv', 'discrepancy' or a fixed λ >= 0, "
                f"got {regularization!r}."
            )
        if regularization == "discrepancy":
            if noise_level is None:
                raise ValueError(
                    f"{who}: the discrepancy principle needs noise_level (‖noise‖/‖b‖, ≥ 0)."
                )
            check_finite_real("noise_level", noise_level, nonnegative=True, who=who)
        return regularization, None
    lam = check_finite_real("regularization (a fixed λ)", regularization, nonnegative=True, who=who)
    return "fixed", lam


def _choose(rule, proj, k, m, state, fixed_lam, target, eps):
    """λ per right-hand side at iteration k, and the curve (or None)."""
    if rule == "fixed":
        lam = torch.full_like(proj.s[:, 0], fixed_lam)
        return lam, None, None, torch.ones_like(lam, dtype=torch.bool)
    grid = _grid(proj, eps, floor_at_smin=rule != "discrepancy")
    if rule == "discrepancy":
        lam, ok = _discrepancy(proj, grid, target)
        return lam, grid, _criterion(rule, proj, grid, m, k, None), ok
    omega = None
    if rule == "wgcv":
        w = proj.omega(k)
        state["omega_sum"] = state.get("omega_sum", 0.0) + w
        omega = state["omega_sum"] / k
        state["omega"] = omega
    # GCV: a minimum at the floor of the range is an artefact (see _grid): prefer a
    # stationary point inside the range
    crit = lambda lg: _criterion(rule, proj, lg, m, k, omega)  # noqa: E731
    lam, vals = _minimize_on_grid(crit, grid, interior=rule == "gcv")
    return lam, grid, vals, torch.ones_like(lam, dtype=torch.bool)


@dataclass
class _Iteration:
    """What the iteration leaves: λ and residual norms per step, status, the curve."""

    lams: list
    res_norms: list
    status: HybridStatus
    reason: str
    Y: torch.Tensor | None = None  # (nb, maxiter): coefficients of x in V, zero-padded
    grid: torch.Tensor | None = None
    vals: torch.Tensor | None = None
    omega: torch.Tensor | None = None


def _iterate(gk, rule, m, choice, tols, beta1, atb) -> _Iteration:
    """Bidiagonalize and choose λ until every right-hand side is done (module docstring).

    Each right-hand side stops on its own: once done, its λ, its coefficients (zero-padded)
    and its ω are frozen, so a batched solve equals the separate ones."""
    fixed_lam, target, eps = choice
    rtol, lam_rtol, maxiter = tols
    nb, f64, dev = gk.nb, torch.float64, beta1.device
    out = _Iteration([], [], HybridStatus.MAX_ITERATIONS, f"reached maxiter={maxiter}")
    out.Y = torch.zeros(nb, maxiter, dtype=f64, device=dev)
    done = torch.zeros(nb, dtype=torch.bool, device=dev)
    broke = torch.zeros_like(done)
    lam, res, state = torch.zeros(nb, dtype=f64, device=dev), beta1, {}
    while gk.k < maxiter and out.status is HybridStatus.MAX_ITERATIONS:
        gk.step()
        k = gk.k
        proj = _Projected.of(gk.alphas[:, :k].to(f64), gk.betas[:, 1 : k + 1].to(f64), beta1)
        lam_k, out.grid, out.vals, attainable = _choose(
            rule, proj, k, m, state, fixed_lam, target, eps
        )
        lam = torch.where(done, lam, lam_k)
        if rule == "wgcv":
            w = state["omega"]
            out.omega = w if out.omega is None else torch.where(done, out.omega, w)
        out.Y[:, :k] = torch.where(done[:, None], out.Y[:, :k], proj.solve(lam))
        e1 = beta1[:, None] * (torch.arange(k + 1, device=dev) == 0)
        rt = e1 - torch.einsum("bij,bj->bi", proj.B, out.Y[:, :k])
        res = torch.where(done, res, torch.linalg.vector_norm(rt, dim=1))
        out.lams.append(lam)
        out.res_norms.append(res)
        ne = gk.alphas[:, k].to(f64) * rt[:, k].abs()
        small = (gk.alphas[:, k] <= 10 * eps * gk.anorm) | (gk.betas[:, k] <= 10 * eps * gk.anorm)
        settled = _settled(out.lams, lam_rtol, converging=rule != "wgcv") | (rule == "fixed")
        broke = broke | (small & ~done)
        done = done | small | ((ne <= rtol * atb) & attainable & settled)
        if bool(broke.all()):
            out.status, out.reason = HybridStatus.BREAKDOWN, f"invariant Krylov subspace at k={k}"
        elif bool(done.all()):
            out.status = HybridStatus.CONVERGED
            out.reason = f"normal-equation residual ≤ rtol·‖Aᵀb‖ and λ settled at k={k}"
    return out


def hybrid_lsqr(
    A,
    b: torch.Tensor,
    *,
    regularization: str | float = "gcv",
    noise_level: float | None = None,
    safety: float = 1.01,
    reorth: str = "full",
    maxiter: int = 200,
    rtol: float = 1e-6,
    lam_rtol: float | None = None,
    batch_dims: int = 0,
) -> HybridResult:
    r"""Hybrid LSQR: Golub–Kahan bidiagonalization with Tikhonov regularization of the
    projected problem and an automatic regularization parameter.

    Solves ``min_x ‖Ax − b‖² + λ²‖x‖²`` over the Krylov space ``span(V_k)``, choosing λ at
    every iteration from the projected problem (formulas in the module docstring):

    * ``"gcv"``: minimizes the GCV function of the full problem,
      ``G(λ) = ‖b − Ax_λ‖² / (m − T(λ))²``, with the residual and the trace ``T`` computed
      through the projection (exact once the Krylov space holds the singular vectors with
      ``s_i ≳ λ``; Chung–Nagy–O'Leary's ``Ĝ``): its lowest interior local minimum, since
      near the floor of the λ range ``Ĝ`` is biased low (module docstring);
    * ``"wgcv"``: weighted GCV of the projected problem,
      ``G_ω(λ) = k‖r_λ‖² / (k + 1 − ω T(λ))²``, with ω chosen adaptively (the weight that
      places the minimum of the k-th projected WGCV at the smallest singular value of
      ``B_k``, clipped to at most 1 and averaged over the iterations: the adaptive ω of
      Chung, Nagy & O'Leary);
    * ``"discrepancy"``: ``‖b − Ax_λ‖ = safety · noise_level · ‖b‖`` (λ at the bottom of its
      range while the discrepancy is not yet attainable);
    * a number: that fixed λ.

    Which rule (measured: 1-D Gaussian deblurring, and Shaw's and the inverse heat problem as
    defined in Hansen's Regularization Tools (``tests/optim/_illposed.py``), n = 256, noise 1 %
    and 5 %, 50 noise draws each; ``python benchmarks/optim_peers.py --parts rules
    rule_frequencies``): the hybrid's GCV λ is the textbook dense GCV minimizer (within 5 %)
    on 297 of the 300 draws, so it inherits GCV's behaviour; the others are draws where the
    dense GCV function has a second minimum far to the left, which the textbook takes and the
    hybrid, taking the interior minimum it resolves first, does not (deblur, 1 %, draw 1:
    λ ≈ 4·10⁻⁴ λ_opt, error 519×, against the hybrid's 0.46 λ_opt, 1.07×). Against "λ
    within a factor 3 of the error-optimal λ and error within 10 % of the optimum", GCV misses
    on 10 % and 32 % of the deblurring draws, 50 % and 60 % on Shaw (sometimes by far: on
    draw 2 its λ is 0.14 and 0.045 λ_opt, errors 5.6× and 18×), and 88 % and 72 % on heat,
    which it undersmooths (median λ ≈ 0.6 λ_opt, median error 1.25× and 1.16×; the dense GCV
    alike): GCV's known finite-sample variability and bias, not the projection's. Weighted
    GCV misses on 6 % and 4 % (deblur), 14 % and 8 % (heat), but 70 % and 34 % on Shaw, where
    it oversmooths (median λ ≈ 1.9 λ_opt at 1 %); the discrepancy principle with the true
    noise level on 14 % and 0 %, 18 % and 44 %, 98 % and 48 %. No rule meets the criterion on
    every draw; with an unknown noise level, ``"wgcv"`` is the more robust choice.

    Stopping rule: a right-hand side is done when the normal-equation residual
    ``‖Aᵀ(b − Ax) − λ²x‖ ≤ rtol·‖Aᵀb‖`` at the chosen λ and λ has settled (and, for the
    discrepancy principle, the discrepancy is attainable), or when its Krylov space became
    invariant (``α`` or ``β`` at round-off: the projected solution is exact); from then on
    its λ and ``x`` are frozen, so a batched solve equals the separate ones. λ has settled,
    for GCV and the discrepancy principle (whose ``λ_k`` converge to the full problem's λ),
    when the last relative step, extrapolated geometrically with the ratio ρ of the last two,
    leaves at most ``lam_rtol`` to go (``|Δ_k|/(1 − ρ) ≤ lam_rtol``); for weighted GCV, whose
    adaptive ω keeps pulling ``λ_k`` toward ``s_min(B_k)``, when the last step alone is at
    most ``lam_rtol`` (a flatness test). Status CONVERGED when every right-hand side is done
    (BREAKDOWN when all by an invariant subspace), else MAX_ITERATIONS.

    Args:
        A: ``R^{in_shape} → R^{out_shape}``: a :class:`LinearOperator` with ``rmatvec``
            (matrix-free) or a 2-D tensor.
        b: ``(*batch, *A.out_shape)``; each of the ``batch`` right-hand sides gets its own
            Krylov space and λ (``A`` is applied with ``torch.vmap`` when batched).
        regularization: ``"gcv"``, ``"wgcv"``, ``"discrepancy"`` or a fixed λ ≥ 0.
        noise_level: relative noise ``‖e‖/‖b‖ ≥ 0`` (discrepancy principle only).
        safety: the discrepancy principle's factor τ ≥ 1.
        reorth: ``"full"`` (default), ``"partial"`` or ``"none"`` (see :func:`golub_kahan`).
        maxiter: at most this many bidiagonalization steps.
        rtol, lam_rtol: tolerances of the stopping rule; ``lam_rtol=None``: 1e-3 for GCV and
            the discrepancy principle, 1e-2 for weighted GCV.
        batch_dims: number of leading batch dimensions of ``b``.

    Returns:
        :class:`HybridResult` (``x`` in the dtype and on the device of ``b``).

    Raises:
        ValueError: ``b`` does not match ``A.out_shape`` or is not finite; an unknown rule;
            a negative or missing noise level; a setting out of range.
        TypeError: ``A`` or ``b`` of the wrong kind.

    Reference:
        Chung, Nagy & O'Leary, "A weighted-GCV method for Lanczos-hybrid regularization",
        ETNA 28 (2008); Kilmer & O'Leary, "Choosing regularization parameters in iterative
        methods for ill-posed problems", SIAM J. Matrix Anal. Appl. 22 (2001); Golub, Heath
        & Wahba, "Generalized cross-validation…", Technometrics 21 (1979); Lukas, "Robust
        generalized cross-validation for choosing the regularization parameter", Inverse
        Problems 22 (2006); Hansen, *Discrete Inverse Problems* (SIAM 2010), ch. 5.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> t = torch.linspace(0, 1, 64, dtype=torch.float64)
        >>> A = torch.exp(-((t[:, None] - t[None, :]) ** 2) / 0.01) / 64
        >>> x_true = torch.sin(3 * t)
        >>> b = A @ x_true + 1e-3 * torch.randn(64, generator=g, dtype=torch.float64)
        >>> res = hybrid_lsqr(A, b)
        >>> res.status.ok, bool((res.x - x_true).norm() < 0.1 * x_true.norm())
        (True, True)
    """
    who = "hybrid_lsqr"
    op = _as_operator(A, who)
    batch = _check_rhs(op, b, batch_dims, who)
    rule, fixed_lam = _check_rule(regularization, noise_level, who)
    if noise_level is not None and rule != "discrepancy":
        raise ValueError(
            f"{who}: noise_level is used only by regularization='discrepancy' (got "
            f"regularization={regularization!r}); drop it or switch rules."
        )
    check_finite_real("safety", safety, positive=True, who=who)
    maxiter = check_positive_int("maxiter", maxiter, who=who)
    check_finite_real("rtol", rtol, nonnegative=True, who=who)
    if lam_rtol is None:
        lam_rtol = 1e-2 if rule == "wgcv" else 1e-3
    check_finite_real("lam_rtol", lam_rtol, nonnegative=True, who=who)
    m, n = math.prod(op.out_shape), math.prod(op.in_shape)
    maxiter = min(maxiter, m, n)
    gk = _GolubKahan(op, b, batch_dims, reorth, maxiter)
    beta1 = gk.betas[:, 0].to(torch.float64)
    atb = (gk.alphas[:, 0].to(torch.float64) * beta1).clamp_min(1e-300)
    target = None
    if rule == "discrepancy":
        target = safety * float(noise_level) * beta1
    eps = torch.finfo(b.dtype).eps
    shape_out = (*batch, *op.in_shape)
    if float(beta1.max()) == 0.0 or float(atb.max()) <= 1e-300:
        it = _Iteration(
            [torch.zeros_like(beta1)],
            [beta1],
            HybridStatus.BREAKDOWN,
            "b = 0 or Aᵀb = 0: the solution is x = 0",
        )
        x = torch.zeros(shape_out, dtype=b.dtype, device=b.device)
    else:
        it = _iterate(gk, rule, m, (fixed_lam, target, eps), (rtol, lam_rtol, maxiter), beta1, atb)
        x = torch.einsum("bi,bid->bd", it.Y[:, : gk.k].to(b.dtype), gk.V[:, : gk.k])
        x = x.reshape(shape_out)
    grid, vals, omega = it.grid, it.vals, it.omega
    return HybridResult(
        x=x,
        lam=it.lams[-1].to(b.dtype).reshape(batch),
        status=it.status,
        reason=it.reason,
        iterations=gk.k,
        lam_history=torch.stack(it.lams).to(b.dtype).reshape(-1, *batch),
        residual_norms=torch.stack(it.res_norms).to(b.dtype).reshape(-1, *batch),
        gcv_lambdas=None if grid is None else grid.to(b.dtype).reshape(*batch, -1),
        gcv_values=None if vals is None else vals.to(b.dtype).reshape(*batch, -1),
        omega=None if omega is None else omega.to(b.dtype).reshape(batch),
        reorthogonalizations=gk.count,
    )
