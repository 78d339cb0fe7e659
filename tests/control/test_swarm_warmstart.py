"""The swarm's warm start (benchmarks/_swarm_warmstart.py): its L-BFGS on the transcription
reaches IPOPT's optimum, and its guess passes over the wall without agents meeting."""

from pathlib import Path

import numpy as np
import pytest
import torch

from odeflow.control import Swap2, Swarm50

BENCH = str(Path(__file__).resolve().parents[2] / "benchmarks")


def test_solve_path_reaches_the_ipopt_optimum(monkeypatch):
    """Same transcription, same start guess: the torch L-BFGS solve and IPOPT agree on the
    optimal cost (obstacle and pair costs included) and on the path."""
    pytest.importorskip("casadi")
    monkeypatch.syspath_prepend(BENCH)
    from _apps_agents import solve_ipopt
    from _swarm_warmstart import solve_path

    pb, nt = Swap2(), 12
    ref = solve_ipopt(pb, pb.start.numpy(), nt)
    assert ref["status"] == "Solve_Succeeded"
    s = np.linspace(0.0, 1.0, nt + 1)[:, None]
    guess = (1 - s) * pb.start.numpy() + s * pb.target.numpy()
    guess = guess + np.sin(np.pi * s) * 0.3 * np.cos(np.arange(4))[None]  # solve_ipopt's
    out = solve_path(pb, pb.start.numpy(), guess, iterations=2000)
    assert out["cost"] == pytest.approx(ref["cost"], rel=1e-7)
    assert np.abs(out["path"] - ref["path"]).max() < 1e-3 * np.abs(ref["path"]).max()


def test_detour_guess_passes_over_the_wall_apart(monkeypatch):
    """The guess starts and ends where it should, no agent centre enters a box, and the
    agents that share an x (all at (x, 0, 5) at T/2 on straight lines) pass apart."""
    monkeypatch.syspath_prepend(BENCH)
    from _swarm_warmstart import detour_guess

    pb = Swarm50()
    path = detour_guess(pb, pb.start.numpy(), 20)
    np.testing.assert_allclose(path[0], pb.start.numpy())
    np.testing.assert_allclose(path[-1], pb.target.numpy(), atol=1e-12)
    paths = torch.as_tensor(path)[:, None]
    assert int(pb.safety(paths).violations[0]) == 0
    assert float(pb.pair_distances(paths[10]).min()) > 2 * pb.radius * pb.interaction_margin
