"""Deterministic solver: characteristics with augmented states, HJB residual, the loss."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ._problem import ControlProblem
from ._value import ValueFunction, ValueJet, hessian_trace

__all__ = [
    "Characteristics",
    "ControlLoss",
    "LossWeights",
    "control_loss",
    "hjb_residual",
    "solve_characteristics",
]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the penalty terms of the control loss (all ≥ 0, finite).

    Attributes:
        objective: weight of the control objective J = E[∫L + Q + F dt + G] (1).
        hjb: L1 HJB residual along the paths, E∫|−∂ₜΦ − ½tr(σσᵀ∇²Φ) + H − Q − δF| dt
            (PNAS α₄, NeuralOC β₁; 1).
        terminal_value: E|Φ(z_T, T) − δG(z_T)| (PNAS α₅, NeuralOC β₂; 1).
        terminal_gradient: E‖∇Φ(z_T, T) − ∇δG(z_T)‖₁ (NeuralOC β₃; 0). For the stochastic
            solver both terminal terms are squared (FBSNN).
        bsde: stochastic solver only, the BSDE consistency
            E Σ_k |Φ(X_{k+1}) − Φ(X_k) + L_k h − ∇Φ(X_k)ᵀσΔW_k|² (1).
        value_match: stochastic solver only, E|Φ(X₀, 0) − (pathwise cost − ∑∇ΦᵀσΔW)|²
            (DeepBSDE's loss; 0).

    The weights α₁, α₂, α₃ of the PNAS paper (on L, F and G) are part of the problem's
    costs (see the presets). Reference: Ruthotto et al., arXiv 1912.01825, eq. (12);
    Onken et al., arXiv 2104.03270; Raissi, arXiv 1804.07010.

    Example:
        >>> LossWeights(hjb=3.0, terminal_value=3.0).hjb
        3.0
    """

    objective: float = 1.0
    hjb: float = 1.0
    terminal_value: float = 1.0
    terminal_gradient: float = 0.0
    bsde: float = 1.0
    value_match: float = 0.0

    def __post_init__(self):
        for k, v in self.__dict__.items():
            if (
                isinstance(v, bool)
                or not isinstance(v, int | float)
                or not math.isfinite(v)
                or v < 0
            ):
                raise ValueError(f"LossWeights.{k} must be a finite number >= 0, got {v!r}")


class ControlLoss(NamedTuple):
    """Terms of the control loss (batch means, scalars); ``total`` is the weighted sum."""

    total: Tensor
    objective: Tensor
    running: Tensor
    interaction: Tensor
    terminal: Tensor
    hjb: Tensor
    terminal_value: Tensor
    terminal_gradient: Tensor


class Characteristics(NamedTuple):
    """Result of :func:`solve_characteristics` (``n`` particles).

    ``z``: final states ``(n, d)`` (or the path ``(nt + 1, n, d)`` with ``trajectory=True``,
    then every field has the leading time axis); ``log_det`` ℓ (log ρ(z, t) = log ρ₀(x) − ℓ);
    ``running`` ∫L dt; ``interaction`` ∫(Q + F-integrand) dt; ``hjb`` ∫|HJB residual| dt;
    ``log_density0`` log ρ₀(x) (zeros when the problem needs no densities).
    """

    z: Tensor
    log_det: Tensor
    running: Tensor
    interaction: Tensor
    hjb: Tensor
    log_density0: Tensor


def _second_for(*mats) -> str | None:
    mats = [m for m in mats if m is not None]
    if not mats:
        return None
    return "hessian" if any(isinstance(m, Tensor) for m in mats) else "laplacian"


def _source(problem: ControlProblem, z, log_rho, t):
    """Q + δF/δρ and the F-integrand at (z, t) (either may be None)."""
    q = problem.obstacle(z, t)
    f_int = dF = None
    if log_rho is not None:
        f_int = problem.interaction(z, log_rho, t)
        dF = problem.interaction_derivative(z, log_rho, t)
    src = q if dF is None else (dF if q is None else q + dF)
    cost = q if f_int is None else (f_int if q is None else q + f_int)
    return src, cost


def hjb_residual(
    problem: ControlProblem, value: ValueFunction, x: Tensor, t, log_rho: Tensor | None = None
) -> Tensor:
    r"""The HJB residual r = −∂ₜΦ − ½tr(σσᵀ∇²ₓΦ) + H(x, ∇ₓΦ, t) − Q(x, t) − δF/δρ(x).

    Zero for the exact value function (tested to round-off on the Riccati solutions).

    Args:
        problem: a :class:`ControlProblem` (its ``diffusion`` adds the trace term).
        value: a :class:`ValueFunction` (e.g. :class:`ValueNetwork`, :class:`LQRValue`).
        x: ``(n, d)`` points; t: a number, a 0-d tensor or ``(n,)`` times.
        log_rho: log ρ(x, t) ``(n,)`` for problems whose interaction reads the density.

    Returns:
        ``(n,)`` residuals.

    Raises:
        ValueError: dimension mismatch between problem, value function and x.

    Reference: Ruthotto et al., arXiv 1912.01825, eq. (3); Li, Verma, Ruthotto,
    "A neural network approach for stochastic optimal control", arXiv 2209.13104.

    Example:
        >>> import torch
        >>> from odeflow.control import LQR
        >>> pb = LQR(dim=3)
        >>> x = torch.randn(4, 3, dtype=torch.float64)
        >>> bool(hjb_residual(pb, pb.exact_value(), x, 0.3).abs().max() < 1e-12)
        True
    """
    _check_pair(problem, value)
    noise = problem.noise_matrix()
    jet = value.jet(x, t, _second_for(noise))
    tt = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    r = -jet.dt + problem.hamiltonian(x, jet.grad, tt)
    if noise is not None:
        r = r - 0.5 * hessian_trace(jet, noise)
    src, _ = _source(problem, x, log_rho, tt)
    return r if src is None else r - src


def _check_pair(problem, value) -> None:
    if not isinstance(problem, ControlProblem):
        raise TypeError(f"problem must be a ControlProblem, got {type(problem).__name__}")
    if getattr(value, "dim", None) != problem.dim:
        raise ValueError(
            f"dimension mismatch: the problem has dim={problem.dim} but the value function has "
            f"dim={getattr(value, 'dim', None)}; build ValueNetwork({problem.dim}, ...)"
        )


class _Field(nn.Module):
    """ẏ for y = (z, ℓ, c_L, c_F, c_HJB, log ρ₀): characteristics with augmented states."""

    def __init__(self, problem: ControlProblem, value: ValueFunction, density: bool):
        super().__init__()
        self.problem = problem
        self.value = value
        self.density = density
        self.gain = problem.control_gain() if density else None

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        pb, d = self.problem, self.problem.dim
        z, ell, lr0 = y[:, :d], y[:, d], y[:, d + 4]
        jet: ValueJet = self.value.jet(z, t, _second_for(self.gain))
        u = pb.feedback(z, jet.grad, t)
        dz = pb.dynamics(z, u, t)
        zero = torch.zeros_like(ell)
        dL = pb.running_cost(z, u, t)
        log_rho = dell = None
        if self.density:
            dell = pb.log_det_rate(z, t, jet.grad, lambda M: hessian_trace(jet, M))
            log_rho = lr0 - ell
        src, cost = _source(pb, z, log_rho, t)
        res = -jet.dt + pb.hamiltonian(z, jet.grad, t)
        if src is not None:
            res = res - src
        cols = [
            dz,
            dell if dell is not None else zero,
            dL,
            cost if cost is not None else zero,
            res.abs(),
            zero,
        ]
        return torch.cat([c if c.ndim == 2 else c[:, None] for c in cols], dim=1)


def _check_x(problem, x: Tensor, ref: Tensor | None) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != problem.dim:
        raise ValueError(
            f"x must have shape (n, {problem.dim}) for this problem (dim={problem.dim}), "
            f"got {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x (the initial states) contains NaN or inf; pass finite samples")
    return x if ref is None else x.to(dtype=ref.dtype, device=ref.device)


def _ref_tensor(value) -> Tensor | None:
    """A parameter of the value function (its dtype/device), or None (closed forms)."""
    return next(iter(value.parameters()), None)


def _check_steps(nt) -> int:
    if isinstance(nt, bool) or not isinstance(nt, int) or nt < 1:
        raise ValueError(f"nt must be an integer >= 1 (the number of RK4 steps), got {nt!r}")
    return nt


def solve_characteristics(
    problem: ControlProblem,
    value: ValueFunction,
    x: Tensor,
    *,
    nt: int = 8,
    gradient: str = "adjoint",
    precision: str = "fp32",
    trajectory: bool = False,
) -> Characteristics:
    r"""Integrate the characteristics ż = f(z, u*(z, ∇Φ(z, t)), t) by RK4 with the augmented
    states the loss needs.

    .. math::
        \dot\ell = \operatorname{tr}\tfrac{\partial f}{\partial z}
        \ (= -\Delta\Phi/\alpha \text{ for } f = -\nabla\Phi/\alpha),\quad
        \dot c_L = L(z, u^*, t),\quad \dot c_F = Q(z, t) + F_\rho(z, t),\quad
        \dot c_{HJB} = |-\partial_t\Phi + H(z, \nabla\Phi, t) - Q - \delta F/\delta\rho|,

    with log ρ(z(t), t) = log ρ₀(x) − ℓ(t) (exact change of variables; ℓ is tracked only when
    the problem reads densities). Integrated by :func:`odeflow.odeint` (fixed-step RK4,
    exact discrete adjoint by default).

    Args:
        problem: a deterministic :class:`ControlProblem`.
        value: a :class:`ValueFunction` of the same dimension.
        x: ``(n, d)`` initial states (finite).
        nt: RK4 steps on [0, T].
        gradient, precision: passed to :func:`odeflow.odeint`.
        trajectory: return every step (leading axis nt + 1) instead of the final state.

    Returns:
        :class:`Characteristics`.

    Raises:
        ValueError: dimension mismatch, non-finite x, nt < 1, an nt the problem's
            ``check_steps`` finds unstable (stiff problems), or a problem with a diffusion
            (use :func:`odeflow.control.stochastic_loss`).

    Reference: Ruthotto et al., PNAS 2020, arXiv 1912.01825; Onken et al., arXiv 2104.03270.

    Example:
        >>> import torch
        >>> from odeflow.control import LQR
        >>> pb = LQR(dim=2, gamma=1.0)
        >>> out = solve_characteristics(pb, pb.exact_value(), torch.ones(3, 2, dtype=torch.float64))
        >>> out.z[0]   # straight path to x/(1 + γT)
        tensor([0.5000, 0.5000], dtype=torch.float64)
    """
    from odeflow.ode import odeint

    _check_pair(problem, value)
    if problem.diffusion is not None:
        raise ValueError(
            f"{type(problem).__name__} has a diffusion σ; the characteristics solver is "
            "deterministic: use odeflow.control.stochastic_loss / fit(..., solver='stochastic')"
        )
    nt = _check_steps(nt)
    problem.check_steps(nt, "rk4")
    ref = _ref_tensor(value)
    x = _check_x(problem, x, ref)
    n = x.shape[0]
    density = bool(problem.uses_density)
    lr0 = problem.initial_log_density(x) if density else x.new_zeros(n)
    y0 = torch.cat([x, x.new_zeros(n, 4), lr0[:, None]], dim=1)
    T = problem.horizon
    if trajectory:
        t = torch.linspace(0.0, T, nt + 1, dtype=x.dtype, device=x.device)
        spi = 1
    else:
        t = torch.tensor([0.0, T], dtype=x.dtype, device=x.device)
        spi = nt
    field = _Field(problem, value, density)
    ys = odeint(
        field, y0, t, method="rk4", gradient=gradient, precision=precision, steps_per_interval=spi
    )
    y = ys if trajectory else ys[-1]
    d = problem.dim
    return Characteristics(
        y[..., :d], y[..., d], y[..., d + 1], y[..., d + 2], y[..., d + 3], y[..., d + 4]
    )


def control_loss(
    problem: ControlProblem,
    value: ValueFunction,
    x: Tensor,
    weights: LossWeights | None = None,
    *,
    nt: int = 8,
    gradient: str = "adjoint",
    precision: str = "fp32",
) -> ControlLoss:
    r"""The loss of the PNAS MFG / NeuralOC papers on a batch of initial states.

    .. math::
        \mathcal{L} = w_J\,\mathbb{E}[c_L + c_F + G(z_T)] + w_{HJB}\,\mathbb{E}[c_{HJB}]
        + w_T\,\mathbb{E}|\Phi(z_T, T) - \delta G(z_T)|
        + w_{\nabla T}\,\mathbb{E}\|\nabla\Phi(z_T, T) - \nabla\delta G(z_T)\|_1

    (the α₁…α₃ of the papers are inside the problem's costs; ``weights`` holds the rest).

    Args:
        problem, value, x, nt, gradient, precision: as :func:`solve_characteristics`.
        weights: :class:`LossWeights` (default: ``problem.weights`` if the preset has one,
            else ``LossWeights()``).

    Returns:
        :class:`ControlLoss` of scalars.

    Raises:
        ValueError: as :func:`solve_characteristics`.
        FloatingPointError: a non-finite loss term (names the term).

    Reference: Ruthotto et al., arXiv 1912.01825; Onken et al., arXiv 2104.03270.

    Example:
        >>> import torch
        >>> from odeflow.control import LQR, ValueNetwork
        >>> pb = LQR(dim=2)
        >>> loss = control_loss(pb, ValueNetwork(2, width=8).double(),
        ...                     pb.sample_initial(16, dtype=torch.float64), nt=4)
        >>> loss.total.ndim
        0
    """
    w = weights if weights is not None else getattr(problem, "weights", LossWeights())
    ch = solve_characteristics(problem, value, x, nt=nt, gradient=gradient, precision=precision)
    zT = ch.z
    log_rho_T = ch.log_density0 - ch.log_det if problem.uses_density else None
    G = problem.terminal_cost(zT, log_rho_T)
    running, inter = ch.running.mean(), ch.interaction.mean()
    terminal = G.mean()
    objective = running + inter + terminal
    hjb = ch.hjb.mean()
    zero = objective.new_zeros(())
    tv = tg = zero
    if w.terminal_value or w.terminal_gradient:
        jet = value.jet(zT, problem.horizon)
        if w.terminal_value:
            tv = (jet.value - problem.terminal_derivative(zT, log_rho_T)).abs().mean()
        if w.terminal_gradient:
            tg = (jet.grad - problem.terminal_gradient(zT)).abs().sum(-1).mean()
    total = w.objective * objective + w.hjb * hjb + w.terminal_value * tv + w.terminal_gradient * tg
    out = ControlLoss(total, objective, running, inter, terminal, hjb, tv, tg)
    _check_finite_terms(out)
    return out


def _check_finite_terms(out) -> None:
    vals = torch.stack([v.detach() for v in out])
    if not bool(torch.isfinite(vals).all()):
        bad = [k for k, v in zip(out._fields, vals.tolist(), strict=True) if not math.isfinite(v)]
        raise FloatingPointError(
            f"non-finite loss terms {bad}: the costs or the paths overflowed (check the "
            "problem's costs, lower the learning rate, or use more time steps)"
        )
