"""Pictures of multi-agent paths: trajectories in 2-D or 3-D (PNG) and an animation (GIF,
matplotlib's Pillow writer, no external binary)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ._agents import AgentProblem

__all__ = ["animate_agents", "plot_agents", "write_pictures"]


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'odeflow[viz]'") from None
    return plt


def _paths(problem: AgentProblem, paths) -> np.ndarray:
    p = torch.as_tensor(paths).detach().cpu().double()
    if p.ndim == 2:
        p = p[:, None]
    if p.ndim != 3 or p.shape[-1] != problem.dim:
        raise ValueError(f"paths must have shape (nt + 1, n, {problem.dim}), got {tuple(p.shape)}")
    return p.reshape(p.shape[0], p.shape[1], problem.n_agents, problem.agent_dim).numpy()


def _box_edges(lo, hi):
    lo = np.where(np.isfinite(lo), lo, 0.0)
    c = np.array(
        [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    return [(c[i], c[j]) for i in range(8) for j in range(i + 1, 8) if (c[i] != c[j]).sum() == 1]


def _draw_obstacles(ax, problem: AgentProblem, three: bool) -> None:
    import matplotlib.patches as mpatches

    if problem.discs is not None and not three:
        for c, R, _ in zip(*(v.numpy() for v in problem.discs), strict=True):
            ax.add_patch(mpatches.Circle(c, R, color="0.35", alpha=0.8, zorder=1))
            ax.add_patch(mpatches.Circle(c, R + problem.inflate, fill=False, ls="--",
                                         color="0.5", lw=0.8, zorder=1))  # fmt: skip
    if problem.boxes is not None:
        for lo, hi in zip(problem.boxes[0].numpy(), problem.boxes[1].numpy(), strict=True):
            if three:
                for a, b in _box_edges(lo, hi):
                    ax.plot(*zip(a, b, strict=True), color="0.3", lw=1.0)
            else:
                lo2 = np.where(np.isfinite(lo), lo, -1e3)
                ax.add_patch(mpatches.Rectangle(lo2[:2], *(hi - lo2)[:2], color="0.35",
                                                alpha=0.8, zorder=1))  # fmt: skip


def plot_agents(problem: AgentProblem, paths, path: str | Path, *, title: str | None = None,
                sample: int = 0) -> Path:  # fmt: skip
    """Write a PNG of the agents' trajectories: 2-D with obstacles (true size filled, the
    inflated size dashed) and the agents' discs at the start and at T, or 3-D for agents in
    space (boxes as wire frames).

    Args:
        problem: an :class:`AgentProblem`. paths: ``(nt + 1, n, d)`` or ``(nt + 1, d)``
            (e.g. ``Rollout.paths``). path: the PNG. title: optional. sample: which of the n.

    Returns:
        The path written.

    Raises:
        ImportError: matplotlib is missing (names the extra). ValueError: bad path shapes.

    Example:
        >>> import tempfile, pathlib
        >>> from odeflow.control import Corridor, LQRValue, agent_rollout
        >>> pb = Corridor()
        >>> out, _ = agent_rollout(pb, LQRValue(4, Qf=100.0, target=pb.target), pb.start[None])
        >>> with tempfile.TemporaryDirectory() as d:
        ...     plot_agents(pb, out.paths, pathlib.Path(d) / "c.png").is_file()
        True
    """
    plt = _plt()
    p = _paths(problem, paths)[:, sample]  # (T, A, k)
    three = problem.agent_dim == 3
    fig = plt.figure(figsize=(6, 6))
    ax = fig.add_subplot(projection="3d") if three else fig.add_subplot()
    _draw_obstacles(ax, problem, three)
    colors = plt.cm.tab20(np.linspace(0, 1, problem.n_agents, endpoint=False))
    y = problem.target.reshape(problem.n_agents, -1).numpy()
    for i in range(problem.n_agents):
        ax.plot(*p[:, i].T, color=colors[i], lw=1.2)
        ax.scatter(*y[i], marker="x", color=colors[i], s=25)
        if not three:
            for pos in (p[0, i], p[-1, i]):
                ax.add_patch(plt.Circle(pos, problem.radius, color=colors[i], alpha=0.35))
        else:
            ax.scatter(*p[0, i], color=colors[i], s=8)
    if not three:
        ax.set_aspect("equal")
        lo = np.minimum(p.min((0, 1)), y.min(0)) - 1.5 * problem.radius - 0.5
        hi = np.maximum(p.max((0, 1)), y.max(0)) + 1.5 * problem.radius + 0.5
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
    ax.set_title(title or f"{problem.name}: {problem.n_agents} agents, d = {problem.dim}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def animate_agents(problem: AgentProblem, paths, path: str | Path, *, fps: int = 10,
                   sample: int = 0, stride: int = 1) -> Path:  # fmt: skip
    """Write an animated GIF of the agents flying (matplotlib's PillowWriter, no ffmpeg).

    Args:
        problem, paths, sample: as :func:`plot_agents`. path: the GIF. fps: frames per
            second. stride: keep every stride-th time step.

    Returns:
        The path written.

    Example:
        >>> import tempfile, pathlib
        >>> from odeflow.control import LQRValue, Swap2, agent_rollout
        >>> pb = Swap2()
        >>> out, _ = agent_rollout(pb, LQRValue(4, Qf=300.0, target=pb.target), pb.start[None],
        ...                        dt=0.25)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     animate_agents(pb, out.paths, pathlib.Path(d) / "s.gif").stat().st_size > 0
        True
    """
    plt = _plt()
    from matplotlib.animation import FuncAnimation, PillowWriter

    full = _paths(problem, paths)
    p, n_steps = full[::stride, sample], full.shape[0] - 1
    three = problem.agent_dim == 3
    fig = plt.figure(figsize=(5, 5))
    ax = fig.add_subplot(projection="3d") if three else fig.add_subplot()
    _draw_obstacles(ax, problem, three)
    y = problem.target.reshape(problem.n_agents, -1).numpy()
    ax.scatter(*y.T, marker="x", color="tab:red", s=12)
    lo, hi = np.minimum(p.min((0, 1)), y.min(0)) - 0.5, np.maximum(p.max((0, 1)), y.max(0)) + 0.5
    setters = (ax.set_xlim, ax.set_ylim) + ((ax.set_zlim,) if three else ())
    for a, set_lim in enumerate(setters):
        set_lim(lo[a], hi[a])
    if not three:
        ax.set_aspect("equal")
    dots = ax.scatter(*p[0].T, color="tab:blue", s=14)

    def frame(k):
        if three:
            dots._offsets3d = tuple(p[k].T)
        else:
            dots.set_offsets(p[k])
        ax.set_title(f"{problem.name}: t = {k * stride / n_steps * problem.horizon:.2f}")
        return (dots,)

    anim = FuncAnimation(fig, frame, frames=len(p), blit=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    anim.save(path, writer=PillowWriter(fps=fps))
    plt.close(fig)
    return path


def write_pictures(problem: AgentProblem, value, out_dir: str | Path, *, dt: float = 0.02,
                   gif: bool | None = None) -> list[Path]:  # fmt: skip
    """The closed-loop paths of ``value`` from the nominal start as ``trajectories.png`` and,
    for agents in 3-D (or with ``gif=True``), ``trajectories.gif``; returns the files."""
    from ._agents import agent_rollout

    ref = next(iter(value.parameters()), torch.zeros((), dtype=torch.float64))
    out, safe = agent_rollout(problem, value, problem.start[None].to(ref), dt=dt)
    title = (
        f"{problem.name}: cost {float(out.cost[0]):.4g}, collisions {int(safe.collisions[0])}, "
        f"violations {int(safe.violations[0])}"
    )
    out_dir = Path(out_dir)
    files = [plot_agents(problem, out.paths, out_dir / "trajectories.png", title=title)]
    if gif if gif is not None else problem.agent_dim == 3:
        stride = max(1, (out.paths.shape[0] - 1) // 40)
        files.append(animate_agents(problem, out.paths, out_dir / "trajectories.gif",
                                    stride=stride))  # fmt: skip
    return files
