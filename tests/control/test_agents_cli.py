"""`odeflow control train|eval --shock` on an agent problem; the shock experiment."""

import json

import pytest
import torch

from odeflow.cli import main
from odeflow.control import LQR, Corridor, LQRValue
from odeflow.control._shock import shock_experiment


def test_train_writes_agent_pictures_and_eval_runs_the_shock(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    args = ["control", "train", "--problem", "corridor", "--out", str(out), "--iterations", "2",
            "--batch", "8", "--quiet", "--eval-samples", "16", "--optimizer", "adam"]  # fmt: skip
    assert main(args) == 0
    assert (out / "trajectories.png").stat().st_size > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rollouts"] == 16 and metrics["nominal_cost"] > 0
    capsys.readouterr()
    ev = ["control", "eval", "--checkpoint", str(out / "model.pt"), "--samples", "16", "--shock"]
    assert main(ev) == 0
    shock = json.loads(capsys.readouterr().out)["shock"]
    assert shock["time"] == pytest.approx(0.5)
    assert shock["kick_norm"] == pytest.approx(float(torch.tensor(Corridor.shock).norm()))
    assert {"cost_to_go", "value_at_kick", "collisions", "violations"} <= set(shock)
    assert main([*ev, "--shock-time", "2.0"]) == 1
    assert "shock time" in capsys.readouterr().err


def test_shock_experiment_recovers_with_exact_values():
    """The exact feedback recovers optimally: the cost-to-go after the kick equals the value
    of the kicked state (LQR; agents without interaction, where the LQR value is exact)."""
    pb = LQR(dim=3, gamma=2.0)
    out = shock_experiment(pb, pb.exact_value(), time=0.3, size=1.0, samples=8, nt=30)
    assert abs(out["relative_gap"]) < 1e-6 and out["kick_norm"] == pytest.approx(1.0)
    assert out["terminal_cost"] > out["terminal_cost_no_shock"]
    cor = Corridor()
    cor.alpha, cor.discs = (100.0, 0.0, 0.0), None  # free flight: the LQR value is exact
    V = LQRValue(4, Qf=100.0, target=cor.target, horizon=1.0)
    res = shock_experiment(cor, V, time=0.1, samples=8, nt=40)
    assert abs(res["relative_gap"]) < 1e-6 and res["time"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="shock size"):
        shock_experiment(pb, pb.exact_value(), size=0.0)
