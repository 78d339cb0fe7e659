"""Closed-loop rollouts under the feedback u*(x, ∇Φ), with optional mid-horizon shocks."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ._problem import ControlProblem
from ._solver import _check_pair, _check_steps, _check_x, _ref_tensor

__all__ = ["Rollout", "rollout"]


class Rollout(NamedTuple):
    """Closed-loop paths ``(nt + 1, n, d)`` and their costs ``(n,)``: ∫(L + Q) dt + G
    (from the shock on when a shock is given: the cost-to-go of the kicked state)."""

    paths: Tensor
    cost: Tensor


def rollout(problem: ControlProblem, value, x: Tensor, *, nt: int = 16,
            generator: torch.Generator | None = None, shock: tuple[int, Tensor] | None = None
            ) -> Rollout:  # fmt: skip
    r"""Run the feedback u*(z, ∇Φ(z, t)) from new initial states, without gradients.

    Deterministic problems take RK4 steps of ż = f(z, u*, t); stochastic ones
    Euler–Maruyama steps with σ ΔW. ``shock=(k, kick)`` adds ``kick`` (``(d,)`` or
    ``(n, d)``) to the state after step k (0 < k < nt), as in NeuralOC's corridor shocks;
    the cost is then accumulated from step k on, so that it can be compared with the value
    Φ(z_k + kick, t_k) of the kicked state. Mean-field problems (``uses_density``) run the
    characteristics of :func:`solve_characteristics` (their cost reads the density).

    Args:
        problem: a :class:`ControlProblem` (densities are not tracked).
        value: a value function of the same dimension.
        x: ``(n, d)`` initial states. nt: steps. generator: for the Brownian increments.
        shock: optional ``(k, kick)``.

    Returns:
        :class:`Rollout`.

    Raises:
        ValueError: dimension mismatch, non-finite x, nt < 1 or below the problem's stable
            count (``check_steps``), a shock step outside 1…nt − 1 or a kick of the wrong shape.

    Reference: Onken et al., arXiv 2104.03270 (shock experiments).

    Example:
        >>> import torch
        >>> from odeflow.control import LQR
        >>> pb = LQR(dim=2)
        >>> out = rollout(pb, pb.exact_value(), torch.ones(1, 2, dtype=torch.float64), nt=20)
        >>> round(float(out.cost[0]), 6)   # the value |x|²/(2(1 + T)) = 0.5
        0.5
    """
    _check_pair(problem, value)
    x = _check_x(problem, x, _ref_tensor(value))
    nt = _check_steps(nt)
    problem.check_steps(nt, "euler" if problem.diffusion is not None else "rk4")
    k_shock, kick = _check_shock(shock, nt, x)
    if problem.uses_density:
        return _density_rollout(problem, value, x, nt, kick)
    h = problem.horizon / nt
    noise = problem.diffusion is not None

    def field(z, t):
        u = problem.feedback(z, value.jet(z, t).grad, t)
        run = problem.running_cost(z, u, t)
        q = problem.obstacle(z, t)
        return problem.dynamics(z, u, t), run if q is None else run + q

    z, paths, cost = x, [x], x.new_zeros(x.shape[0])
    with torch.no_grad():
        for k in range(nt):
            if k == k_shock:
                z = z + kick
                paths[-1] = z
                cost = torch.zeros_like(cost)
            t = torch.tensor(k * h, dtype=x.dtype, device=x.device)
            if noise:
                from ._stochastic import _noise, _noise_dim

                f, c = field(z, t)
                dW = math.sqrt(h) * torch.randn(z.shape[0], _noise_dim(problem),
                                                generator=generator, dtype=z.dtype)  # fmt: skip
                z = z + h * f + _noise(problem, dW.to(z.device))
                cost = cost + h * c
            else:
                z, c = _rk4(field, z, t, h)
                cost = cost + c
            paths.append(z)
        cost = cost + problem.terminal_cost(z)
    return Rollout(torch.stack(paths), cost)


def _density_rollout(problem, value, x, nt, kick) -> Rollout:
    """Mean-field problems: the characteristics with their densities (the cost includes the
    interaction and the density-dependent terminal cost); no shocks (a kick would change ρ)."""
    from ._solver import solve_characteristics

    if kick is not None:
        raise ValueError("shocks are not available for problems whose costs read the density")
    with torch.no_grad():
        ch = solve_characteristics(problem, value, x, nt=nt, gradient="backprop", trajectory=True)
        log_rho = ch.log_density0[-1] - ch.log_det[-1]
        G = problem.terminal_cost(ch.z[-1], log_rho)
    return Rollout(ch.z, ch.running[-1] + ch.interaction[-1] + G)


def _rk4(field, z, t, h):
    """One RK4 step of (ż, ċ) = field(z, t); returns (z_next, ∫c over the step)."""
    f1, c1 = field(z, t)
    f2, c2 = field(z + 0.5 * h * f1, t + 0.5 * h)
    f3, c3 = field(z + 0.5 * h * f2, t + 0.5 * h)
    f4, c4 = field(z + h * f3, t + h)
    return z + h / 6 * (f1 + 2 * f2 + 2 * f3 + f4), h / 6 * (c1 + 2 * c2 + 2 * c3 + c4)


def _check_shock(shock, nt: int, x: Tensor):
    if shock is None:
        return -1, None
    try:
        k, kick = shock
    except (TypeError, ValueError):
        raise ValueError("shock must be a pair (step k, kick tensor)") from None
    if isinstance(k, bool) or not isinstance(k, int) or not 0 < k < nt:
        raise ValueError(f"the shock step must be an integer in 1..{nt - 1}, got {k!r}")
    kick = torch.as_tensor(kick, dtype=x.dtype, device=x.device)
    if kick.shape not in ((x.shape[1],), tuple(x.shape)):
        raise ValueError(f"the kick must have shape ({x.shape[1]},) or {tuple(x.shape)}")
    if not bool(torch.isfinite(kick).all()):
        raise ValueError("the kick contains NaN or inf")
    return k, kick
