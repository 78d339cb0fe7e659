"""The shock experiment of the NeuralOC paper for any deterministic problem: kick the state
mid-horizon and check that the feedback recovers."""

from __future__ import annotations

import math

import torch

from ._problem import ControlProblem
from ._simulate import rollout

__all__ = ["shock_experiment"]


def shock_experiment(problem: ControlProblem, value, *, time: float | None = None,
                     size: float = 0.5, samples: int = 64, nt: int | None = None,
                     seed: int = 1) -> dict:  # fmt: skip
    r"""Kick the state at time t and compare the feedback's cost-to-go with the value.

    From ``samples`` starts (an agent problem's nominal start perturbed without overlaps,
    otherwise draws from ρ₀), run the closed loop with and without a kick added at step
    k = round(t/T·nt): the problem's ``shock`` vector if it has one (the paper's corridor
    kick), else a seeded random direction of norm ``size``. If the feedback recovers
    optimally, the cost-to-go after the kick equals the value Φ(z_k + kick, t_k) of the
    kicked state; the figures report both, their relative gap, and the terminal cost with and
    without the kick (and, for agent problems, collisions and violations after the kick).

    Args:
        problem: a deterministic :class:`ControlProblem`. value: its value function.
        time: the kick time t in (0, T) (default T/2). size: norm of a random kick.
        samples: starts. nt: RK4 steps (default twice the preset's). seed: starts and kick.

    Returns:
        A dict of floats: ``time``, ``kick_norm``, ``cost_to_go``, ``value_at_kick``,
        ``relative_gap``, ``terminal_cost``, ``terminal_cost_no_shock`` (means), and for agent
        problems ``collisions``, ``violations`` (rollouts affected) and ``terminal_error``.

    Raises:
        ValueError: a stochastic or mean-field problem, a time outside (0, T), a size ≤ 0 or
            a preset kick of the wrong length.

    Reference: Onken et al., arXiv 2104.03270 (corridor shocks at t = 0.1).

    Example:
        >>> from odeflow.control import LQR
        >>> pb = LQR(dim=2)
        >>> out = shock_experiment(pb, pb.exact_value(), size=1.0)
        >>> abs(out["relative_gap"]) < 1e-6     # the exact feedback recovers optimally
        True
    """
    if problem.diffusion is not None or problem.uses_density:
        raise ValueError("the shock experiment needs a deterministic, density-free problem")
    T = problem.horizon
    t = T / 2 if time is None else float(time)
    if not 0 < t < T:
        raise ValueError(f"the shock time must be in (0, {T:g}), got {time!r}")
    if not (math.isfinite(size) and size > 0):
        raise ValueError(f"the shock size must be a positive number, got {size!r}")
    nt = nt or 2 * getattr(problem, "steps", 8)
    k = min(max(round(t / T * nt), 1), nt - 1)
    ref = next(iter(value.parameters()), torch.zeros((), dtype=torch.float64))
    gen = torch.Generator().manual_seed(seed)
    agents = hasattr(problem, "safe_starts")
    if agents:
        x = problem.safe_starts(samples, 0.25 * problem.spread, generator=gen)
    else:
        x = problem.sample_initial(samples, generator=gen, dtype=torch.float64)
    x = x.to(ref)
    kick = getattr(problem, "shock", None)
    if kick is not None:
        kick = torch.as_tensor(kick, dtype=ref.dtype)
        if kick.shape != (problem.dim,):
            raise ValueError(f"{type(problem).__name__}.shock must have length {problem.dim}")
    else:
        kick = torch.randn(problem.dim, generator=gen, dtype=torch.float64)
        kick = (size * kick / kick.norm()).to(ref)
    with torch.no_grad():
        base = rollout(problem, value, x, nt=nt)
        hit = rollout(problem, value, x, nt=nt, shock=(k, kick))
        v = value.jet(hit.paths[k], k * T / nt).value
        zT = hit.paths[-1]
        out = {
            "time": k * T / nt,
            "kick_norm": float(kick.norm()),
            "cost_to_go": float(hit.cost.mean()),
            "value_at_kick": float(v.mean()),
            "relative_gap": float(hit.cost.mean() / v.mean() - 1),
            "terminal_cost": float(problem.terminal_cost(zT).mean()),
            "terminal_cost_no_shock": float(problem.terminal_cost(base.paths[-1]).mean()),
        }
        if agents:
            safe = problem.safety(hit.paths[k:])
            out["collisions"] = int((safe.collisions > 0).sum())
            out["violations"] = int((safe.violations > 0).sum())
            out["terminal_error"] = float(safe.terminal_error.max())
    return out
