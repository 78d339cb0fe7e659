r"""Simulation-based-inference benchmark tasks, written from their published definitions.

The four tasks of sbibm (Lueckmann, Boelts, Greenberg, Gonçalves, Macke, "Benchmarking
simulation-based inference", AISTATS 2021, arXiv 2101.04653) that odeflow scores on, each a
prior over θ and a batched simulator y ~ p(y | θ):

* ``gaussian_linear``: θ ∈ R¹⁰ ~ N(0, 0.1 I), y | θ ~ N(θ, 0.1 I) (posterior
  N(y/2, 0.05 I)).
* ``two_moons``: θ ~ U(−1, 1)², a ~ U(−π/2, π/2), r ~ N(0.1, 0.01²),
  y = (r cos a + 0.25, r sin a) + (−|θ₁ + θ₂|/√2, (−θ₁ + θ₂)/√2).
* ``slcp``: θ ~ U(−3, 3)⁵, four i.i.d. draws y_j ~ N(m, S) with m = (θ₁, θ₂),
  s₁ = θ₃², s₂ = θ₄², ρ = tanh θ₅, S = [[s₁², ρs₁s₂], [ρs₁s₂, s₂²]] (+10⁻⁶ I); y ∈ R⁸.
* ``lotka_volterra``: θ = (α, β, γ, δ) log-normal with log-means (−0.125, −3, −0.125, −3)
  and scale 0.5; u̇₁ = αu₁ − βu₁u₂, u̇₂ = −γu₂ + δu₁u₂, u(0) = (30, 1), observed at
  t = 0, 2.1, …, 18.9 (10 times) with log-normal noise of scale 0.1; y ∈ R²⁰ (prey then
  predators). The whole budget is one batched RK4 solve of :func:`odeflow.odeint`;
  trajectories that overflow give rows of NaN (refused by ``fit``: drop them first).
* ``lotka_volterra_ssa``: the stochastic predator–prey jump process of the PCP-Map paper
  (exact, batched Gillespie simulation; :mod:`odeflow.flows._sbi_ssa`), θ = the four rates
  with log θ ~ U(−5, 2)⁴, y ∈ R⁹ its summary statistics. The prior is in θ's units; the
  paper infers log θ (take ``theta.log()``). Rows cut at 10⁴ reactions are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._utils import check_int

__all__ = ["SBI_TASKS", "SBITask", "sbi_task"]


@dataclass(frozen=True)
class SBITask:
    """A prior and a batched simulator (float64 on the CPU unless ``dtype`` says otherwise).

    Attributes:
        name: the sbibm task name.
        theta_dim, y_dim: dimensions of the parameters θ and the observations y.
        prior: ``prior(n, generator) -> (n, theta_dim)``.
        simulator: ``simulator(theta, generator) -> (n, y_dim)``.

    Example:
        >>> t = sbi_task("two_moons")
        >>> g = torch.Generator().manual_seed(0)
        >>> theta, y = t.simulate(5, generator=g)
        >>> theta.shape, y.shape
        (torch.Size([5, 2]), torch.Size([5, 2]))
    """

    name: str
    theta_dim: int
    y_dim: int
    prior: Callable[..., Tensor]
    simulator: Callable[..., Tensor]

    def simulate(
        self, n: int, *, generator: torch.Generator | None = None, dtype=torch.float64
    ) -> tuple[Tensor, Tensor]:
        """``n`` pairs (θ, y) with θ from the prior; returns ``(n, theta_dim), (n, y_dim)``."""
        n = check_int("n", n, minimum=1)
        theta = self.prior(n, generator).to(dtype)
        return theta, self.simulator(theta, generator)


def _gl_prior(n, g):
    return math.sqrt(0.1) * torch.randn(n, 10, generator=g, dtype=torch.float64)


def _gl_sim(theta, g):
    return theta + math.sqrt(0.1) * torch.randn(theta.shape, generator=g, dtype=theta.dtype)


def _uniform(n, d, bound, g):
    return bound * (2 * torch.rand(n, d, generator=g, dtype=torch.float64) - 1)


def _tm_sim(theta, g):
    n = theta.shape[0]
    a = math.pi * (torch.rand(n, generator=g, dtype=theta.dtype) - 0.5)
    r = 0.1 + 0.01 * torch.randn(n, generator=g, dtype=theta.dtype)
    p = torch.stack([r * torch.cos(a) + 0.25, r * torch.sin(a)], dim=1)
    s = math.sqrt(0.5)
    shift = torch.stack(
        [-(s * (theta[:, 0] + theta[:, 1])).abs(), s * (theta[:, 1] - theta[:, 0])], dim=1
    )
    return p + shift


def _slcp_sim(theta, g):
    n = theta.shape[0]
    s1, s2, rho = theta[:, 2] ** 2, theta[:, 3] ** 2, torch.tanh(theta[:, 4])
    cov = torch.stack(
        [torch.stack([s1**2 + 1e-6, rho * s1 * s2], -1),
         torch.stack([rho * s1 * s2, s2**2 + 1e-6], -1)], -2,
    )  # fmt: skip
    # the Cholesky factor of a 2×2 covariance in closed form (robust at ρ → ±1)
    l11 = cov[:, 0, 0].sqrt()
    l21 = cov[:, 1, 0] / l11
    l22 = (cov[:, 1, 1] - l21**2).clamp_min(0).sqrt()
    e = torch.randn(n, 4, 2, generator=g, dtype=theta.dtype)
    y1 = theta[:, None, 0] + l11[:, None] * e[..., 0]
    y2 = theta[:, None, 1] + l21[:, None] * e[..., 0] + l22[:, None] * e[..., 1]
    return torch.stack([y1, y2], -1).reshape(n, 8)


def _lv_prior(n, g):
    loc = torch.tensor([-0.125, -3.0, -0.125, -3.0], dtype=torch.float64)
    return torch.exp(loc + 0.5 * torch.randn(n, 4, generator=g, dtype=torch.float64))


def lotka_volterra_states(theta: Tensor, steps_per_interval: int = 84) -> Tensor:
    """Noise-free Lotka–Volterra states at t = 0, 2.1, …, 18.9: ``(n, 2, 10)``.

    One batched fixed-step RK4 solve (h = 2.1/``steps_per_interval``, default 0.025) of
    the whole batch with :func:`odeflow.odeint`.

    Args:
        theta: ``(n, 4)`` rates (α, β, γ, δ).
        steps_per_interval: RK4 steps between two observation times.

    Returns:
        ``(n, 2, 10)`` (prey, predators) at the 10 observation times; rows that overflow
        hold inf/NaN.

    Reference: Lueckmann et al., arXiv 2101.04653 (sbibm's Lotka–Volterra task).

    Example:
        >>> theta = torch.tensor([[0.9, 0.05, 0.9, 0.05]], dtype=torch.float64)
        >>> u = lotka_volterra_states(theta)
        >>> u.shape, u[0, :, 0].tolist()
        (torch.Size([1, 2, 10]), [30.0, 1.0])
    """
    from odeflow.ode import odeint

    p = theta.detach()

    def f(t, u):
        x, y = u[:, 0], u[:, 1]
        return torch.stack([p[:, 0] * x - p[:, 1] * x * y, -p[:, 2] * y + p[:, 3] * x * y], dim=1)

    u0 = torch.tensor([30.0, 1.0], dtype=p.dtype).expand(p.shape[0], 2).contiguous()
    t = 2.1 * torch.arange(10, dtype=p.dtype)
    with torch.no_grad():
        us = odeint(f, u0, t, method="rk4", steps_per_interval=steps_per_interval)
    return us.permute(1, 2, 0)


def _lv_sim(theta, g):
    us = lotka_volterra_states(theta).reshape(theta.shape[0], 20)
    bad = ~torch.isfinite(us).all(1)
    noise = 0.1 * torch.randn(us.shape, generator=g, dtype=us.dtype)
    y = torch.exp(torch.log(us.nan_to_num(1.0, 1.0, 1.0).clamp(1e-10, 1e4)) + noise)
    y[bad] = math.nan
    return y


def _ssa_prior(n, g):
    return torch.exp(-5.0 + 7.0 * torch.rand(n, 4, generator=g, dtype=torch.float64))


def _ssa_sim(theta, g):
    from ._sbi_ssa import gillespie_lotka_volterra, lotka_volterra_summaries

    series = gillespie_lotka_volterra(theta, generator=g)
    return lotka_volterra_summaries(series).to(theta.dtype)


SBI_TASKS: dict[str, SBITask] = {
    "gaussian_linear": SBITask("gaussian_linear", 10, 10, _gl_prior, _gl_sim),
    "two_moons": SBITask("two_moons", 2, 2, lambda n, g: _uniform(n, 2, 1.0, g), _tm_sim),
    "slcp": SBITask("slcp", 5, 8, lambda n, g: _uniform(n, 5, 3.0, g), _slcp_sim),
    "lotka_volterra": SBITask("lotka_volterra", 4, 20, _lv_prior, _lv_sim),
    "lotka_volterra_ssa": SBITask("lotka_volterra_ssa", 4, 9, _ssa_prior, _ssa_sim),
}


def sbi_task(name: str) -> SBITask:
    """The task ``name`` (one of :data:`SBI_TASKS`): its prior and batched simulator.

    Raises:
        ValueError: unknown name (the valid ones are named).

    Reference: Lueckmann et al., arXiv 2101.04653 (sbibm's tasks).

    Example:
        >>> t = sbi_task("slcp")
        >>> t.theta_dim, t.y_dim
        (5, 8)
    """
    if name not in SBI_TASKS:
        raise ValueError(f"unknown SBI task {name!r}; valid tasks are: {', '.join(SBI_TASKS)}")
    return SBI_TASKS[name]
