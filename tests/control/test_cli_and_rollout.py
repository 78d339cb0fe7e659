"""`odeflow control` commands; closed-loop rollouts with shocks."""

import json

import pytest
import torch

from odeflow.cli import main
from odeflow.control import LQR, rollout


def test_control_list(capsys):
    assert main(["control", "list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names[:6] == ["lqr", "hjb", "gaussian-ot", "pnas-ot", "pnas-crowd", "soc-obstacle"]
    assert {"quadcopter", "hodgkin-huxley"} <= set(names)
    assert {"corridor", "swap2", "swap12", "swarm50"} <= set(names)


def test_control_train_eval_and_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["control", "train", "--problem", "lqr", "--dim", "2", "--out", str(out),
            "--iterations", "3", "--batch", "16", "--quiet", "--eval-samples", "64"]  # fmt: skip
    assert main(args) == 0
    assert (out / "model.pt").is_file() and (out / "solution.png").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iterations"] == 3 and metrics["relative_gap"] > 0
    capsys.readouterr()
    assert main(args) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["control", "eval", "--checkpoint", str(out / "model.pt"), "--samples", "64"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["riccati_value"] > 0 and "objective" in ev
    assert main(["control", "train", "--problem", "lqx", "--out", str(tmp_path / "x")]) == 1
    assert "known presets" in capsys.readouterr().err


def test_rollout_recovers_from_a_shock():
    """After a kick at t = 0.5 the exact feedback's cost-to-go equals the value of the kicked
    state (the feedback recovers optimally); deterministic and stochastic paths."""
    pb = LQR(dim=2, gamma=2.0)
    V = pb.exact_value()
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kick = torch.tensor([1.5, -0.7], dtype=torch.float64)
    out = rollout(pb, V, x, nt=40, shock=(20, kick))
    torch.testing.assert_close(out.cost, V(out.paths[20], 0.5), rtol=1e-7, atol=1e-9)
    assert torch.allclose(out.paths[20] - kick, rollout(pb, V, x, nt=40).paths[20])
    pbs = LQR(dim=2, gamma=2.0, sigma=0.3)
    xs = x[:1].expand(4000, 2)
    sto = rollout(pbs, pbs.exact_value(), xs, nt=40, generator=torch.Generator().manual_seed(1))
    se = float(sto.cost.std()) / 4000**0.5
    assert abs(float(sto.cost.mean()) - float(pbs.exact_value()(x[:1], 0.0))) < 4 * se + 0.03
    with pytest.raises(ValueError, match="shock step"):
        rollout(pb, V, x, nt=10, shock=(10, kick))
    with pytest.raises(ValueError, match="kick must have shape"):
        rollout(pb, V, x, nt=10, shock=(5, torch.ones(3)))
