"""``odeflow flow train|sample|eval`` end to end on a tiny run (writes only into tmp_path)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from odeflow.cli import main


def test_flow_cli_train_sample_eval(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["flow", "train", "--data", "8gaussians", "--out", str(out), "--iters", "6",
                 "--batch", "128", "--width", "8", "--n-test", "300", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iterations"] == 6 and np.isfinite(metrics["test_nll"])
    assert metrics["config"]["alpha"] == [1.0, 30.0, 1.0]  # the 8gaussians preset was applied
    assert (out / "samples.png").stat().st_size > 1000
    assert main(["flow", "sample", "--checkpoint", str(out / "flow.pt"), "-n", "50",
                 "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (50, 2)
    capsys.readouterr()
    assert main(["flow", "eval", "--checkpoint", str(out / "flow.pt"), "--data", "8gaussians",
                 "--n-test", "200"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["n"] == 200 and abs(rec["test_nll"] - metrics["test_nll"]) < 0.5


@pytest.mark.parametrize("argv,msg", [
    (["flow", "eval", "--checkpoint", "x.pt", "--data", "miniboone"], "does not exist"),
    (["flow", "train", "--data", "banana", "--out", "o"], "unknown --data 'banana'"),
])
def test_flow_cli_errors(tmp_path, capsys, monkeypatch, argv, msg):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    assert msg in capsys.readouterr().err


def test_demo_writes_picture_and_metrics(tmp_path):
    from odeflow.flows._demo import run_demo

    res = run_demo(tmp_path / "demo", verbose=False, iters=4)
    assert res["iterations"] == 4 and 2.7 < res["true_entropy"] < 2.9
    assert (tmp_path / "demo" / "otflow_8gaussians.png").stat().st_size > 1000
    assert (tmp_path / "demo" / "otflow_8gaussians.pt").is_file()
