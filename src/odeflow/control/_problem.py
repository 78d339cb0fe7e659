"""The problem protocol: dynamics, costs, Hamiltonian and feedback of an optimal control or
mean-field game problem, as plain classes a user subclasses."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

__all__ = ["ControlProblem", "QuadraticControlProblem"]


def _check_positive(name: str, value, meaning: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number ({meaning}), got {value!r}") from None
    if not (math.isfinite(out) and out > 0):
        raise ValueError(f"{name} must be a positive, finite number ({meaning}), got {value!r}")
    return out


def _check_dim(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"dim must be an integer >= 1 (the state dimension), got {value!r}")
    return value


class ControlProblem:
    r"""Base class of an optimal control / potential mean-field game problem.

    The problem is

    .. math::
        \min_u\ \mathbb{E}_{x\sim\rho_0}\Big[\int_0^T L(z, u, t) + Q(z, t) + F_\rho(z, t)\,dt
        + G(z_T)\Big],\quad dz = f(z, u, t)\,dt + \sigma\,dW,\ z_0 = x,

    with Hamiltonian :math:`H(x, p, t) = \sup_u\{-p\cdot f(x, u, t) - L(x, u, t)\}`, optimal
    feedback :math:`u^*(x, p) = \arg\max_u\{\dots\}` evaluated at :math:`p = \nabla_x\Phi`,
    and value function :math:`\Phi` solving the HJB equation

    .. math::
        -\partial_t\Phi - \tfrac12\operatorname{tr}(\sigma\sigma^\top\nabla^2\Phi)
        + H(x, \nabla\Phi, t) = Q + \frac{\delta F}{\delta\rho},\qquad
        \Phi(\cdot, T) = \frac{\delta G}{\delta\rho}.

    Subclass it and override :meth:`dynamics`, :meth:`running_cost`, :meth:`terminal_cost`
    and :meth:`sample_initial`; optionally :meth:`obstacle`, :meth:`interaction` (with
    :meth:`interaction_derivative`), :meth:`terminal_derivative` (the variational derivative
    δG/δρ of a density-dependent terminal cost), :meth:`initial_log_density`, and, where a
    closed form exists, :meth:`hamiltonian` and :meth:`feedback`. The defaults of the last
    two maximise ``−p·f − L`` over u by a few batched Newton steps (differentiable), fine for
    small control dimensions and costs strictly convex in u.

    Per-particle conventions (n particles, shapes ``(n, d)`` states, ``(n, m)`` controls,
    ``(n,)`` costs, ``t`` a 0-d tensor): the interaction F(ρ) = E_ρ[interaction(x, log ρ(x))]
    and the terminal cost G(ρ_T) = E_{ρ_T}[terminal_cost(x, log ρ_T(x))]; problems whose
    costs read the density set ``uses_density = True`` and provide
    :meth:`initial_log_density`, and are solved with the log-determinant tracked.

    Attributes:
        name: the preset name written into checkpoints.
        dim: state dimension d.
        control_dim: control dimension m.
        horizon: T > 0.
        diffusion: ``None`` (deterministic), a number s (σ = s·I) or a tensor σ of shape
            ``(d, k)``.
        uses_density: whether the costs depend on the density ρ.
        fit_defaults: training settings :func:`odeflow.control.fit` uses where its caller
            leaves them out (keys among ``optimizer, iterations, batch, lr, lr_drops,
            lr_factor, resample_every``); empty here, a preset's tested recipe.

    Reference: Ruthotto, Osher, Li, Nurbekyan, Wu Fung, "A machine learning framework for
    solving high-dimensional mean field game and mean field control problems", PNAS 117
    (2020), arXiv 1912.01825; Onken, Nurbekyan, Li, Wu Fung, Osher, Ruthotto, "A neural
    network approach for high-dimensional optimal control applied to multi-agent path
    finding", IEEE TCST (2022), arXiv 2104.03270.

    Example:
        >>> import torch
        >>> class Steer(ControlProblem):       # ż = u, L = ½|u|², G = ½|x|²
        ...     def __init__(self):
        ...         super().__init__(dim=2, control_dim=2, horizon=1.0)
        ...     def dynamics(self, x, u, t): return u
        ...     def running_cost(self, x, u, t): return 0.5 * (u * u).sum(-1)
        ...     def terminal_cost(self, x, log_rho=None): return 0.5 * (x * x).sum(-1)
        ...     def sample_initial(self, n, *, generator=None, dtype=None, device=None):
        ...         return torch.randn(n, 2, generator=generator, dtype=dtype, device=device)
        >>> p = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
        >>> Steer().feedback(torch.zeros_like(p), p, torch.tensor(0.0))  # −p by a Newton solve
        tensor([[-1.,  2.]], dtype=torch.float64)
    """

    name: str = "custom"
    uses_density: bool = False
    fit_defaults: Mapping[str, Any] = MappingProxyType({})

    def __init__(
        self,
        dim: int,
        control_dim: int | None = None,
        horizon: float = 1.0,
        diffusion: float | Tensor | None = None,
    ):
        self.dim = _check_dim(dim)
        self.control_dim = self.dim if control_dim is None else _check_dim(control_dim)
        self.horizon = _check_positive("horizon", horizon, "the final time T > 0")
        self.diffusion = self._check_diffusion(diffusion)

    def _check_diffusion(self, sigma):
        if sigma is None:
            return None
        if isinstance(sigma, Tensor):
            if sigma.ndim != 2 or sigma.shape[0] != self.dim:
                raise ValueError(
                    f"diffusion must be a number or a tensor σ of shape ({self.dim}, k), got "
                    f"shape {tuple(sigma.shape)}"
                )
            if not bool(torch.isfinite(sigma).all()):
                raise ValueError("diffusion contains NaN or inf; pass a finite σ")
            return sigma.detach().clone()
        return _check_positive("diffusion", sigma, "the noise level σ of σ·I")

    # ------------------------------------------------------------------ to override
    def dynamics(self, x: Tensor, u: Tensor, t: Tensor) -> Tensor:
        """Drift f(x, u, t): ``(n, d), (n, m) -> (n, d)``."""
        raise NotImplementedError(f"{type(self).__name__} must define dynamics(x, u, t)")

    def running_cost(self, x: Tensor, u: Tensor, t: Tensor) -> Tensor:
        """Running cost L(x, u, t): ``(n, d), (n, m) -> (n,)``."""
        raise NotImplementedError(f"{type(self).__name__} must define running_cost(x, u, t)")

    def terminal_cost(self, x: Tensor, log_rho: Tensor | None = None) -> Tensor:
        """Terminal cost per particle G: ``(n, d) -> (n,)`` (``log_rho``: log ρ_T at x)."""
        raise NotImplementedError(f"{type(self).__name__} must define terminal_cost(x)")

    def sample_initial(self, n: int, *, generator=None, dtype=None, device=None) -> Tensor:
        """``n`` draws from ρ₀, ``(n, d)``."""
        raise NotImplementedError(f"{type(self).__name__} must define sample_initial(n)")

    def initial_log_density(self, x: Tensor) -> Tensor:
        """log ρ₀(x), ``(n, d) -> (n,)``; needed when ``uses_density``."""
        raise NotImplementedError(
            f"{type(self).__name__} reads densities but defines no initial_log_density(x)"
        )

    def terminal_derivative(self, x: Tensor, log_rho: Tensor | None = None) -> Tensor:
        """δG/δρ at x (the terminal value Φ(·, T)); default: :meth:`terminal_cost`."""
        return self.terminal_cost(x, log_rho)

    def terminal_gradient(self, x: Tensor) -> Tensor:
        """∇ₓ of :meth:`terminal_derivative` (autograd; density-free terminal costs only)."""
        if self.uses_density:
            raise ValueError(
                f"{type(self).__name__}: the terminal gradient of a density-dependent cost is "
                "not available; set the terminal_gradient weight to 0"
            )
        with torch.enable_grad():
            keep = x.requires_grad
            xg = x if keep else x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.terminal_derivative(xg).sum(), xg, create_graph=keep)
        return g

    def obstacle(self, x: Tensor, t: Tensor) -> Tensor | None:
        """State cost Q(x, t) ``(n,)``, or None (no obstacle)."""
        return None

    def interaction(self, x: Tensor, log_rho: Tensor, t: Tensor) -> Tensor | None:
        """Per-particle integrand of F(ρ) (F(ρ) = E_ρ[interaction]), or None."""
        return None

    def interaction_derivative(self, x: Tensor, log_rho: Tensor, t: Tensor) -> Tensor | None:
        """δF/δρ at x, or None."""
        return None

    # ------------------------------------------------------------------ Hamiltonian
    def hamiltonian(self, x: Tensor, p: Tensor, t: Tensor) -> Tensor:
        """H(x, p, t) = −p·f(x, u*, t) − L(x, u*, t), ``(n,)``."""
        u = self.feedback(x, p, t)
        return -(p * self.dynamics(x, u, t)).sum(-1) - self.running_cost(x, u, t)

    def feedback(self, x: Tensor, p: Tensor, t: Tensor, iterations: int = 8) -> Tensor:
        """u*(x, p) = argmin_u p·f(x, u, t) + L(x, u, t) by batched Newton steps from u = 0.

        Override with the closed form where one exists. The steps are differentiable (the
        Newton iterates are plain tensor operations), so gradients flow to p.
        """
        from torch.func import grad, hessian, vmap

        def obj(u, xi, pi):
            return (pi * self.dynamics(xi[None], u[None], t)[0]).sum() + self.running_cost(
                xi[None], u[None], t
            )[0]

        g_fn, h_fn = vmap(grad(obj)), vmap(hessian(obj))
        u = x.new_zeros(x.shape[0], self.control_dim)
        for _ in range(iterations):
            u = u - torch.linalg.solve(h_fn(u, x, p), g_fn(u, x, p)[..., None])[..., 0]
        return u

    def check_steps(self, nt: int, method: str = "rk4") -> None:
        """Raise ValueError if ``nt`` steps of ``method`` over [0, T] are unstable (stiff
        problems override it; the solvers call it). Default: every count is accepted."""

    # ------------------------------------------------------------------ density helpers
    def log_det_rate(self, x: Tensor, t: Tensor, grad: Tensor, hess_trace) -> Tensor:
        """tr(∂f(x, u*(x, ∇Φ))/∂x), the rate of the log-determinant ℓ̇ (``(n,)``).

        ``hess_trace(M)`` returns tr(M ∇²Φ) per particle. Only control-affine problems with
        quadratic control cost (:class:`QuadraticControlProblem`) define it.
        """
        raise NotImplementedError(
            f"{type(self).__name__} defines no log_det_rate; densities are available for "
            "QuadraticControlProblem subclasses"
        )

    def control_gain(self) -> float | Tensor | None:
        """The matrix M with tr(∂f/∂x) = div a − tr(M∇²Φ), if the problem has one (None)."""
        return None

    def noise_matrix(self) -> float | Tensor | None:
        """σσᵀ as a number s² (for σ = s·I) or a ``(d, d)`` tensor; None if deterministic."""
        s = self.diffusion
        if s is None:
            return None
        if isinstance(s, Tensor):
            return s @ s.mT
        return s * s

    def spec(self) -> dict:
        """Name and constructor arguments written into checkpoints (override in presets)."""
        return {"name": self.name, "dim": self.dim}


class QuadraticControlProblem(ControlProblem):
    r"""Control-affine dynamics with a quadratic control cost, where H and u* are closed forms.

    .. math::
        f(x, u, t) = a(x, t) + B u,\qquad L(x, u, t) = \tfrac12 u^\top R u + q(x, t),

        H(x, p, t) = -p^\top a + \tfrac12 p^\top B R^{-1} B^\top p - q,\qquad
        u^* = -R^{-1} B^\top p.

    ``B`` is None (identity, m = d) or a ``(d, m)`` tensor; ``R`` a positive number (R·I) or
    an SPD ``(m, m)`` tensor. Override :meth:`drift` (default 0) with
    :meth:`drift_divergence`, and :meth:`state_cost` (default 0).

    Reference: Fleming & Soner, *Controlled Markov Processes and Viscosity Solutions*,
    Springer 2006, ch. I; Onken et al., arXiv 2104.03270.

    Example:
        >>> import torch
        >>> pb = QuadraticControlProblem(dim=2, control_weight=2.0)
        >>> p = torch.tensor([[2.0, 4.0]])
        >>> pb.feedback(None, p, None), pb.hamiltonian(None, p, None)
        (tensor([[-1., -2.]]), tensor([5.]))
    """

    def __init__(
        self,
        dim: int,
        control_matrix: Tensor | None = None,
        control_weight: float | Tensor = 1.0,
        horizon: float = 1.0,
        diffusion: float | Tensor | None = None,
    ):
        m = dim if control_matrix is None else int(control_matrix.shape[-1])
        super().__init__(dim, m, horizon, diffusion)
        if control_matrix is not None and tuple(control_matrix.shape) != (self.dim, m):
            raise ValueError(f"control_matrix must have shape ({self.dim}, m)")
        self.B = None if control_matrix is None else control_matrix.detach().clone()
        if isinstance(control_weight, Tensor):
            if tuple(control_weight.shape) != (m, m):
                raise ValueError(f"control_weight must be a number or an ({m}, {m}) SPD tensor")
            self.R = control_weight.detach().clone()
            self.R_inv = torch.linalg.inv(self.R)
        else:
            self.R = _check_positive("control_weight", control_weight, "R = r·I")
            self.R_inv = 1.0 / self.R

    def drift(self, x: Tensor, t: Tensor) -> Tensor | None:
        """a(x, t) ``(n, d)``, or None for a(x, t) = 0."""
        return None

    def drift_divergence(self, x: Tensor, t: Tensor) -> Tensor | None:
        """div a(x, t) ``(n,)``, or None for 0; must be overridden with :meth:`drift`."""
        return None

    def state_cost(self, x: Tensor, t: Tensor) -> Tensor | None:
        """q(x, t) ``(n,)``, or None for 0."""
        return None

    def _Rinv(self, v: Tensor) -> Tensor:
        return v * self.R_inv if not isinstance(self.R_inv, Tensor) else v @ self.R_inv.to(v).mT

    def _Bt(self, p: Tensor) -> Tensor:
        return p if self.B is None else p @ self.B.to(p)

    def dynamics(self, x, u, t):
        bu = u if self.B is None else u @ self.B.to(u).mT
        a = self.drift(x, t)
        return bu if a is None else a + bu

    def running_cost(self, x, u, t):
        Ru = u * self.R if not isinstance(self.R, Tensor) else u @ self.R.to(u).mT
        out = 0.5 * (u * Ru).sum(-1)
        q = self.state_cost(x, t)
        return out if q is None else out + q

    def feedback(self, x, p, t, iterations: int = 0):
        return -self._Rinv(self._Bt(p))

    def hamiltonian(self, x, p, t):
        bp = self._Bt(p)
        out = 0.5 * (bp * self._Rinv(bp)).sum(-1)
        a = self.drift(x, t)
        if a is not None:
            out = out - (p * a).sum(-1)
        q = self.state_cost(x, t)
        return out if q is None else out - q

    def control_gain(self) -> float | Tensor:
        """G = B R⁻¹ Bᵀ, a number g (G = g·I) or a ``(d, d)`` tensor."""
        if self.B is None:
            return self.R_inv
        Rinv = (
            self.R_inv
            if isinstance(self.R_inv, Tensor)
            else self.R_inv * torch.eye(self.control_dim, dtype=self.B.dtype)
        )
        return self.B @ Rinv @ self.B.mT

    def log_det_rate(self, x, t, grad, hess_trace):
        out = -hess_trace(self.control_gain())
        div = self.drift_divergence(x, t)
        return out if div is None else out + div
