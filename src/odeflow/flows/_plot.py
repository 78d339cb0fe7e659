"""PNG of a 2-D flow: data, model samples and model density (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

__all__ = ["plot_flow_2d"]


def plot_flow_2d(
    flow, data: Tensor, path: str | Path, *, n: int = 4000, grid: int = 100, seed: int = 0
) -> Path:
    """Save a three-panel PNG (data, samples, exp(log_prob) on a grid) of a 2-D flow.

    Raises:
        ValueError: the flow is not 2-D.
        ImportError: matplotlib is missing (install the ``viz`` extra).
    """
    if flow.dim != 2:
        raise ValueError(f"plot_flow_2d needs a 2-D flow, got dim={flow.dim}")
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover
        raise ImportError("plots need matplotlib: pip install 'odeflow[viz]'") from exc
    data = data[:n].detach().cpu().float()
    lim = float(data.abs().max()) * 1.1 + 0.5
    with torch.no_grad():
        dev = next(flow.parameters()).device  # flow.sample draws z on the flow's device
        gen = torch.Generator(device=dev).manual_seed(seed)
        xs = flow.sample(n, generator=gen).cpu().float()
        g = torch.linspace(-lim, lim, grid)
        xx, yy = torch.meshgrid(g, g, indexing="xy")
        pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
        dens = flow.log_prob(pts).exp().reshape(grid, grid).cpu().float()
    fig, ax = plt.subplots(1, 3, figsize=(12, 4))
    ax[0].scatter(data[:, 0], data[:, 1], s=1, alpha=0.5)
    ax[0].set_title("data")
    ax[1].scatter(xs[:, 0], xs[:, 1], s=1, alpha=0.5, color="C1")
    ax[1].set_title("OT-Flow samples")
    ax[2].imshow(dens.numpy(), extent=(-lim, lim, -lim, lim), origin="lower", cmap="viridis")
    ax[2].set_title("OT-Flow density")
    for a in ax:
        a.set_xlim(-lim, lim)
        a.set_ylim(-lim, lim)
        a.set_aspect("equal")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
