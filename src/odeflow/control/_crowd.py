"""Crowd-motion diagnostics: the cost terms at the final density, the mass in the obstacle's
core along the flow, and pictures of the trajectories and densities."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch

from ._presets import CrowdMotion
from ._solver import _check_pair, solve_characteristics

__all__ = ["crowd_metrics", "plot_crowd"]


def _flow(problem: CrowdMotion, value, samples: int, nt: int, seed: int, x=None):
    if not isinstance(problem, CrowdMotion):
        raise TypeError(f"problem must be a CrowdMotion, got {type(problem).__name__}")
    _check_pair(problem, value)
    ref = next(iter(value.parameters()), torch.zeros((), dtype=torch.float64))
    if x is None:
        x = problem.sample_initial(samples, generator=torch.Generator().manual_seed(seed))
    x = x.to(dtype=ref.dtype, device=ref.device)
    with torch.no_grad():
        ch = solve_characteristics(problem, value, x, nt=nt, gradient="backprop", trajectory=True)
    return x, ch


def crowd_metrics(
    problem: CrowdMotion, value, *, samples: int = 4096, nt: int = 16, seed: int = 0, x=None
) -> dict[str, float | list[float]]:
    r"""The cost terms and the obstacle-core mass of a crowd-motion feedback on fresh samples.

    ``samples`` new draws from ρ₀ (seeded by ``seed``; or the given initial states ``x``,
    ``(n, d)``) follow the characteristics of Φ (RK4, ``nt`` steps, with the exact
    log-determinant ℓ, so log ρ(z_t, t) = log ρ₀(x) − ℓ_t). Returned (means over the
    particles, floats):

    * ``kinetic`` E∫(α₁/2)|u|² dt; ``obstacle`` E∫α₂Q(z) dt; ``entropy``
      E∫α₂·0.01·log ρ(z, t) dt (= α₂·0.01∫∫ρ log ρ);
    * ``kl`` the terminal KL(ρ_T ‖ ρ₁) = E[log ρ_T(z_T) − log ρ₁(z_T)] (without α₃);
    * ``kl_stderr``, ``obstacle_stderr`` the Monte Carlo standard errors of those two
      (the particles' standard deviation over √samples);
    * ``objective`` kinetic + obstacle + entropy + α₃·kl;
    * ``core_mass`` the largest fraction of the particles inside the obstacle's core
      {Q > Q(0)/2} (:meth:`CrowdMotion.in_core`) over the nt + 1 times t_k = kT/nt, and
      ``core_mass_by_time`` the fractions at each t_k.

    The obstacle cost and the KL depend only on (x₁, x₂) and do not change with d at the
    optimum; the entropy term adds −0.01·½log(2πe·0.3) per extra coordinate.

    Raises:
        TypeError: not a :class:`CrowdMotion`. ValueError: dimension mismatch.

    Reference: Ruthotto et al., PNAS 2020, arXiv 1912.01825.

    Example:
        >>> from odeflow.control import ValueNetwork
        >>> pb = CrowdMotion(dim=2)
        >>> m = crowd_metrics(pb, ValueNetwork(2, width=4).double(), samples=64, nt=4)
        >>> sorted(m)[:3], 0 <= m["core_mass"] <= 1
        (['core_mass', 'core_mass_by_time', 'entropy'], True)
    """
    x, ch = _flow(problem, value, samples, nt, seed, x)
    pure = copy.copy(problem)
    pure.entropy = 0.0  # the flow does not depend on the costs: a second pass splits F
    with torch.no_grad():
        obst = solve_characteristics(pure, value, x, nt=nt, gradient="backprop").interaction
    log_rho_T = ch.log_density0[-1] - ch.log_det[-1]
    zT = ch.z[-1]
    kl = problem.terminal_cost(zT, log_rho_T) / problem.lam
    frac = [float(problem.in_core(z).double().mean()) for z in ch.z]
    n = kl.numel()
    out = {
        "kinetic": float(ch.running[-1].mean()),
        "obstacle": float(obst.mean()),
        "entropy": float((ch.interaction[-1] - obst).mean()),
        "kl": float(kl.mean()),
        "kl_stderr": float(kl.double().std() / n**0.5) if n > 1 else math.inf,
        "obstacle_stderr": float(obst.double().std() / n**0.5) if n > 1 else math.inf,
    }
    out["objective"] = out["kinetic"] + out["obstacle"] + out["entropy"] + problem.lam * out["kl"]
    out["core_mass"] = max(frac)
    out["core_mass_by_time"] = frac
    return out


def plot_crowd(problem: CrowdMotion, value, path: str | Path, *, samples: int = 2048,
               nt: int = 16, seed: int = 0, paths: int = 48) -> Path:  # fmt: skip
    """Write a PNG: left, ``paths`` trajectories over the obstacle Q (with its core's
    boundary); right, the particles at t = 0, T/4, T/2, 3T/4, T coloured by their exact
    density log ρ(z, t) = log ρ₀(x) − ℓ_t (first two coordinates).

    Needs matplotlib (the ``viz`` extra).

    Raises:
        ImportError: matplotlib is missing. TypeError, ValueError: as :func:`crowd_metrics`.

    Example:
        >>> import tempfile, pathlib
        >>> from odeflow.control import ValueNetwork
        >>> phi = ValueNetwork(2, width=4).double()
        >>> with tempfile.TemporaryDirectory() as d:
        ...     plot_crowd(CrowdMotion(), phi, pathlib.Path(d) / "c.png", samples=64).is_file()
        True
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'odeflow[viz]'") from None
    if isinstance(nt, bool) or not isinstance(nt, int) or nt < 4 or nt % 4:
        raise ValueError(f"nt must be a positive multiple of 4 (snapshots at T/4), got {nt!r}")
    _, ch = _flow(problem, value, samples, nt, seed)
    z = ch.z[..., :2].cpu().double()
    log_rho = (ch.log_density0 - ch.log_det).cpu().double()
    g = torch.linspace(-4.5, 4.5, 181, dtype=torch.float64)
    X, Y = torch.meshgrid(g, g, indexing="xy")
    grid = torch.zeros(X.numel(), problem.dim, dtype=torch.float64)
    grid[:, 0], grid[:, 1] = X.reshape(-1), Y.reshape(-1)
    Q = problem.obstacle(grid, torch.tensor(0.0)).reshape(X.shape)
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    ax = axes[0]
    ax.contourf(X.numpy(), Y.numpy(), Q.numpy(), levels=20, cmap="Greys")
    ax.contour(X.numpy(), Y.numpy(), Q.numpy(), levels=[0.5 * problem.peak], colors="red")
    for k in range(min(paths, z.shape[1])):
        ax.plot(z[:, k, 0], z[:, k, 1], color="tab:blue", lw=0.7, alpha=0.8)
    ax.set_title("trajectories over the obstacle Q (red: core Q > Q(0)/2)")
    ax = axes[1]
    ax.contour(X.numpy(), Y.numpy(), Q.numpy(), levels=[0.5 * problem.peak], colors="red")
    vmin, vmax = float(log_rho.min()), float(log_rho.max())
    for i in range(0, nt + 1, nt // 4):
        sc = ax.scatter(z[i, :, 0], z[i, :, 1], c=log_rho[i], s=2, cmap="viridis",
                        vmin=vmin, vmax=vmax)  # fmt: skip
    fig.colorbar(sc, ax=ax, label="log ρ(z, t) (exact, from the log-determinant)")
    ax.set_title("density at t = 0, T/4, T/2, 3T/4, T")
    for ax in axes:
        ax.set_xlim(-4.5, 4.5)
        ax.set_ylim(-4.5, 4.5)
        ax.set_aspect("equal")
        ax.set_xlabel("x₁")
        ax.set_ylabel("x₂")
    fig.suptitle(f"crowd motion, d = {problem.dim}, obstacle mass {problem.mass:.4g}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
