"""``odeflow demo --only corridor``: two agents cross a corridor under a learned feedback
(under a minute on a laptop CPU)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from odeflow.cli._demo import single_thread

__all__ = ["run_demo"]


def run_demo(out_dir: Path, verbose: bool = True) -> dict:
    """Train a value network for :class:`odeflow.control.Corridor` (L-BFGS on the NeuralOC
    loss, then on the objective alone), fly the agents from the nominal start and from 200
    perturbed starts, and write ``trajectories.png``, ``shock.png`` (the paper's kick at
    t = 0.1) and ``metrics.json``.

    Args:
        out_dir: output folder (created).
        verbose: progress bar and a summary line.

    Returns:
        A dict with the training seconds, the closed-loop cost from the nominal start, the
        rollouts with collisions or obstacle violations, and the shock figures.

    Example:
        >>> import tempfile
        >>> r = run_demo(Path(tempfile.mkdtemp()), verbose=False)  # doctest: +SKIP
    """
    from odeflow.control import (
        Corridor,
        LossWeights,
        ValueNetwork,
        agent_rollout,
        fit,
        plot_agents,
    )
    from odeflow.control._agents import agent_metrics
    from odeflow.control._agents_plot import write_pictures

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with single_thread():
        torch.manual_seed(0)
        pb = Corridor(spread=0.5)
        phi = ValueNetwork(4, width=16)
        t0 = time.perf_counter()
        fit(pb, phi, optimizer="lbfgs", iterations=50, batch=64, nt=10, verbose=verbose)
        fit(pb, phi, optimizer="lbfgs", iterations=25, batch=64, nt=10, verbose=verbose,
            weights=LossWeights(hjb=0.0, terminal_value=0.0), seed=1)  # fmt: skip
        seconds = time.perf_counter() - t0
        write_pictures(pb, phi, out_dir)
        m = agent_metrics(pb, phi, rollouts=200)
        kick = torch.tensor(Corridor.shock)
        shocked, safe = agent_rollout(pb, phi, pb.start[None].float(), shock=(0.1, kick))
        plot_agents(pb, shocked.paths, out_dir / "shock.png",
                    title="corridor: kick at t = 0.1, the feedback recovers")  # fmt: skip
    result = {
        "train_seconds": round(seconds, 1),
        **m,
        "shock_terminal_error": float(safe.terminal_error[0]),
        "shock_collisions": int(safe.collisions[0]),
    }
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    if verbose:
        print(
            f"   corridor: cost {m['nominal_cost']:.4g} from the nominal start, "
            f"{m['rollouts_with_collisions']} of {m['rollouts']} perturbed rollouts collide, "
            f"{m['rollouts_with_violations']} enter an obstacle"
        )
    return result
