"""Pictures of a trained feedback: trajectories over the value function on a 2-D slice."""

from __future__ import annotations

from pathlib import Path

import torch

from ._problem import ControlProblem

__all__ = ["plot_solution"]


def plot_solution(problem: ControlProblem, value, path: str | Path, *, samples: int = 64,
                  nt: int | None = None, seed: int = 0) -> Path:  # fmt: skip
    """Write a PNG: closed-loop trajectories (first two coordinates) over Φ(·, 0) on the
    slice x₃ = … = x_d = 0, and, for density problems, the particles at t = 0, T/2, T.

    Needs matplotlib (the ``viz`` extra).

    Raises:
        ImportError: matplotlib is missing (names the extra).
        ValueError: a problem of dimension 1.

    Example:
        >>> import tempfile, pathlib
        >>> from odeflow.control import LQR
        >>> pb = LQR(dim=2)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     plot_solution(pb, pb.exact_value(), pathlib.Path(d) / "lqr.png").is_file()
        True
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'odeflow[viz]'") from None
    from ._simulate import rollout

    if problem.dim < 2:
        raise ValueError("plot_solution needs a problem of dimension >= 2")
    ref = next(iter(value.parameters()), torch.zeros((), dtype=torch.float64))
    gen = torch.Generator().manual_seed(seed)
    x = problem.sample_initial(samples, generator=gen, dtype=ref.dtype)
    steps = nt or 2 * getattr(problem, "steps", 8)
    paths = rollout(problem, value, x, nt=steps, generator=gen).paths
    p = paths[..., :2].cpu().numpy()
    lo, hi = p.min((0, 1)) - 0.5, p.max((0, 1)) + 0.5
    g0 = torch.linspace(float(lo[0]), float(hi[0]), 80, dtype=ref.dtype)
    g1 = torch.linspace(float(lo[1]), float(hi[1]), 80, dtype=ref.dtype)
    X, Y = torch.meshgrid(g0, g1, indexing="xy")
    grid = torch.zeros(X.numel(), problem.dim, dtype=ref.dtype)
    grid[:, 0], grid[:, 1] = X.reshape(-1), Y.reshape(-1)
    with torch.no_grad():
        phi = value.jet(grid, 0.0).value.reshape(X.shape)
    fig, ax = plt.subplots(figsize=(5, 5))
    cs = ax.contourf(X.numpy(), Y.numpy(), phi.numpy(), levels=30, cmap="viridis")
    fig.colorbar(cs, ax=ax, label="Φ(x, 0)")
    for k in range(p.shape[1]):
        ax.plot(p[:, k, 0], p[:, k, 1], color="white", lw=0.6, alpha=0.7)
    for i, c in ((0, "tab:blue"), (p.shape[0] // 2, "tab:orange"), (-1, "tab:red")):
        ax.scatter(p[i, :, 0], p[i, :, 1], s=4, color=c)
    ax.set_title(f"{problem.name}, d = {problem.dim}: trajectories over Φ(·, 0)")
    ax.set_xlabel("x₁")
    ax.set_ylabel("x₂")
    path = Path(path)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
