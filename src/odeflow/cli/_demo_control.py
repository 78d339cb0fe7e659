"""``odeflow demo --only crowd``: 2-D crowd motion around an obstacle (PNAS 2020), < 1 min."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from odeflow.cli._demo import single_thread

__all__ = ["run_demo"]


def run_demo(out_dir: Path, verbose: bool = True) -> dict:
    """Train a value network on the 2-D crowd-motion problem and draw its trajectories and
    densities (``crowd.png``), with the cost terms and the obstacle-core mass measured on
    fresh samples (``metrics.json``).

    The problem is :class:`odeflow.control.CrowdMotion` as in the paper's code (a bump of
    mass 50, peak 11.25); L-BFGS on the objective, 60 iterations, 256 particles. For that
    bump the optimal crowd squeezes past the obstacle's centre rather than splitting: a
    single agent starting at x₁ = 0 pays 21.13 going straight and more on any detour.

    Args:
        out_dir: folder for ``crowd.png`` and ``metrics.json`` (created).
        verbose: the summary lines.

    Returns:
        A dict of the cost terms, the largest fraction of the crowd inside the obstacle's
        core, and the training seconds.

    Example:
        >>> import tempfile
        >>> r = run_demo(Path(tempfile.mkdtemp()), verbose=False)  # doctest: +SKIP
    """
    from odeflow.control import (
        CrowdMotion,
        LossWeights,
        ValueNetwork,
        crowd_metrics,
        fit,
        plot_crowd,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with single_thread():
        torch.manual_seed(0)
        pb = CrowdMotion(dim=2)
        phi = ValueNetwork(2, width=16).double()
        t0 = time.perf_counter()
        fit(pb, phi, optimizer="lbfgs", iterations=60, batch=256, verbose=verbose, seed=0,
            weights=LossWeights(hjb=0.0, terminal_value=0.0))  # fmt: skip
        seconds = time.perf_counter() - t0
        metrics = crowd_metrics(pb, phi, samples=4096, nt=16, seed=1)
        plot_crowd(pb, phi, out_dir / "crowd.png", samples=2048, nt=16, seed=2)
    result = {k: round(v, 4) for k, v in metrics.items() if k != "core_mass_by_time"}
    result["train_seconds"] = round(seconds, 2)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    if verbose:
        print(
            f"   objective {result['objective']:.3f} (kinetic {result['kinetic']:.3f}, "
            f"obstacle {result['obstacle']:.3f}, KL {result['kl']:.4f}); at most "
            f"{100 * result['core_mass']:.1f} % of the crowd in the obstacle's core; "
            f"trained in {seconds:.1f} s -> crowd.png"
        )
    return result
