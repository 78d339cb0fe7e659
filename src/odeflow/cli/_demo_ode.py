"""``odeflow demo --only neural-ode``: learn the 2-D cubic spiral vector field in < 1 minute."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from odeflow.cli._demo import single_thread
from odeflow.ode import AutonomousField, fit_trajectory, odeint, spiral_data

__all__ = ["run_demo"]


class _Cubic(nn.Module):
    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y**3


def run_demo(out_dir: Path, verbose: bool = True) -> dict:
    """Fit a neural ODE to the cubic spiral, print the loss falling, save a PNG.

    Args:
        out_dir: folder for ``spiral.png`` (created).
        verbose: progress bar and loss prints.

    Returns:
        A dict with the first and last losses, the full-rollout MSE and the PNG path.

    Example:
        >>> import tempfile
        >>> r = run_demo(Path(tempfile.mkdtemp()), verbose=False)  # doctest: +SKIP
    """
    with single_thread():
        return _run(Path(out_dir), verbose)


def _run(out_dir: Path, verbose: bool) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    t, ys = spiral_data(1000, 25.0)
    func = AutonomousField(nn.Sequential(_Cubic(), nn.Linear(2, 50), nn.Tanh(), nn.Linear(50, 2)))
    with torch.no_grad():
        before = odeint(func, ys[0:1], t)[:, 0].clone()

    def report(it: int, loss: float) -> None:
        if verbose and (it % 50 == 0 or it == iters - 1):
            print(f"   iter {it:4d}  loss {loss:.4f}")

    iters = 400
    t0 = time.perf_counter()
    res = fit_trajectory(func, t, ys, iters=iters, batch_time=10, batch_size=20, lr=1e-2,
                         verbose=False, callback=report)  # fmt: skip
    secs = time.perf_counter() - t0
    with torch.no_grad():
        after = odeint(func, ys[0:1], t)[:, 0]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 4))
    ax[0].plot(ys[:, 0], ys[:, 1], "k-", lw=2, label="data")
    ax[0].plot(before[:, 0], before[:, 1], "C1:", label="untrained")
    ax[0].plot(after[:, 0], after[:, 1], "C0--", label="fitted")
    ax[0].set(title="phase plane", xlabel="y1", ylabel="y2")
    ax[0].legend()
    ax[1].plot(t, ys[:, 0], "k-", t, after[:, 0], "C0--")
    ax[1].set(title="y1(t): data vs fitted", xlabel="t")
    ax[2].semilogy(res.losses)
    ax[2].set(title="training loss (L1)", xlabel="iteration")
    fig.tight_layout()
    png = out_dir / "spiral.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return {
        "loss_first": res.losses[0],
        "loss_last": sum(res.losses[-20:]) / len(res.losses[-20:]),
        "rollout_mse": res.final_mse,
        "train_seconds": round(secs, 2),
        "png": str(png),
    }
