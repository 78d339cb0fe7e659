"""No silent NaN results and careless inputs to ``odeflow flow`` (issue 21): non-finite
checkpoints, log-densities, samples and metrics are refused with the cause; a config is
checked against its checkpoint's tensors before anything is allocated; bad data files and
output paths get messages instead of raw errors."""

from __future__ import annotations

import json
import resource

import numpy as np
import pytest
import torch

from odeflow.cli import main
from odeflow.flows import OTFlow, evaluate_nll, load_checkpoint, save_checkpoint


def _strict_json(text: str):
    def refuse(c):
        raise AssertionError(f"invalid JSON constant {c}")

    return json.loads(text, parse_constant=refuse)


def _tiny(seed: int = 0) -> OTFlow:
    torch.manual_seed(seed)
    return OTFlow(2, width=4, nt=2)


def _overflowing(flow: OTFlow) -> OTFlow:
    """Finite weights scaled so that the float32 ODE solution overflows."""
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(1e18)
    return flow


def _write(tmp_path, flow: OTFlow, name: str = "flow.pt", **extra) -> str:
    """A checkpoint written without save_checkpoint's own check (as an edited file)."""
    path = tmp_path / name
    payload = {"format": "odeflow.otflow/1", "config": flow.config(), "dtype": "float32",
               "state_dict": flow.state_dict(), "extra": {"seed": 0, **extra}}  # fmt: skip
    torch.save(payload, path)
    return str(path)


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_with_nan_weights_is_refused_at_load_and_at_save(tmp_path):
    flow = _tiny()
    with torch.no_grad():
        next(flow.parameters())[0, 0] = float("nan")
    name = next(flow.named_parameters())[0]  # the parameter set to NaN above
    with pytest.raises(ValueError, match=rf"weights hold NaN or inf \({name}"):
        save_checkpoint(flow, tmp_path / "a.pt")
    assert not (tmp_path / "a.pt").exists()
    ck = _write(tmp_path, flow)
    with pytest.raises(ValueError, match=rf"holds non-finite weights \({name}: 1 of \d+ values "
                       r"\(1 NaN\)\)"):  # fmt: skip
        load_checkpoint(ck)


def test_config_is_checked_against_the_tensors_before_allocating(tmp_path):
    """A 5 kB checkpoint whose config says width=200000 would build ~160 GB of weights:
    it is refused from the shapes alone (on the meta device), with peak memory unchanged."""
    flow = _tiny()
    ck = _write(tmp_path, flow)
    payload = torch.load(ck, weights_only=True)
    payload["config"]["width"] = 200_000
    torch.save(payload, tmp_path / "wide.pt")
    assert (tmp_path / "wide.pt").stat().st_size < 10_000
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    with pytest.raises(
        ValueError,
        match=r"does not fit its config \(shape mismatch "
        r"potential\.\S+: \(4, 3\) in the file, \(200000, 3\) from the config",
    ):
        load_checkpoint(tmp_path / "wide.pt")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 500_000
    payload["config"]["width"] = 2**62  # sizes that overflow: an invalid config
    torch.save(payload, tmp_path / "huge.pt")
    with pytest.raises(ValueError, match="has an invalid config"):
        load_checkpoint(tmp_path / "huge.pt")
    payload["config"]["width"] = 4
    payload["state_dict"] = {**payload["state_dict"], "extra.weight": torch.zeros(2)}
    torch.save(payload, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"\(unexpected extra\.weight\)"):
        load_checkpoint(tmp_path / "extra.pt")


# ---------------------------------------------------------------- log_prob / evaluate_nll


def test_log_prob_names_non_finite_weights():
    flow = _tiny()
    x = torch.randn(5, 2)
    assert torch.isfinite(flow.log_prob(x)).all()
    with torch.no_grad():
        flow.potential.parameters().__next__().fill_(float("inf"))
    with pytest.raises(FloatingPointError, match=r"log_prob is not finite for 5 of 5 values .*"
                       r"the flow's weights hold NaN or inf \(potential\."):  # fmt: skip
        flow.log_prob(x)
    with pytest.raises(FloatingPointError, match="weights hold NaN or inf"):
        evaluate_nll(flow, x)


def test_log_prob_names_an_overflowing_solve():
    flow = _overflowing(_tiny())
    x = torch.randn(4, 2)
    with pytest.raises(FloatingPointError, match=r"overflowed in float32 with nt=4 RK4 steps"):
        flow.log_prob(x)
    with pytest.raises(FloatingPointError, match="overflowed in float32"):
        evaluate_nll(flow, x, batch=3)
    assert torch.isfinite(_tiny().log_prob(x)).all()  # the same points, a sane flow


# ---------------------------------------------------------------- flow sample / eval


def test_flow_sample_refuses_to_write_non_finite_samples(tmp_path, capsys):
    ck = _write(tmp_path, _overflowing(_tiny()))
    out = tmp_path / "s.npy"
    assert main(["flow", "sample", "--checkpoint", ck, "-n", "20", "--out", str(out),
                 "--log-prob"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "odeflow flow sample: error: the flow gave non-finite samples: " in err
    assert "overflowed in float32" in err and "nothing was written" in err
    assert not out.exists() and not (tmp_path / "s.log_prob.npy").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "flow.pt"]  # no temporary left


def test_flow_sample_and_eval_refuse_a_nan_checkpoint(tmp_path, capsys):
    flow = _tiny()
    with torch.no_grad():
        next(flow.parameters()).view(-1)[0] = float("nan")
    ck = _write(tmp_path, flow)
    assert main(["flow", "sample", "--checkpoint", ck, "--out", str(tmp_path / "s")]) == 1
    assert "holds non-finite weights" in capsys.readouterr().err
    assert main(["flow", "eval", "--checkpoint", ck, "--data", "8gaussians"]) == 1
    captured = capsys.readouterr()
    assert "holds non-finite weights" in captured.err and captured.out == ""


def test_flow_eval_prints_strict_json_or_refuses(tmp_path, capsys):
    ck = _write(tmp_path, _tiny(), n_test=64)
    assert main(["flow", "eval", "--checkpoint", ck, "--data", "8gaussians"]) == 0
    res = _strict_json(capsys.readouterr().out)
    assert res["n"] == 64 and np.isfinite(res["test_nll"])
    bad = _write(tmp_path, _overflowing(_tiny()), "bad.pt", n_test=64)
    assert main(["flow", "eval", "--checkpoint", bad, "--data", "8gaussians"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "NaN" not in captured.out
    assert "error: log_prob is not finite" in captured.err and "overflowed" in captured.err


def test_flow_train_metrics_are_strict_json(tmp_path):
    """metrics.json holds no NaN literal (a missing validation NLL is null)."""
    out = tmp_path / "run"
    assert main(["flow", "train", "--data", "8gaussians", "--out", str(out), "--iters", "2",
                 "--batch", "16", "--width", "4", "--n-test", "20", "--quiet"]) == 0  # fmt: skip
    metrics = _strict_json((out / "metrics.json").read_text())
    assert np.isfinite(metrics["test_nll"])


# ---------------------------------------------------------------- data files and paths


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("make,msg", [
    (lambda: open("d.npy", "wb").close(), "--data d.npy: empty (0 bytes), not a .npy array"),
    (lambda: open("d.npy", "wb").write(np.random.default_rng(0).bytes(300)),
     "--data d.npy: not a .npy file (it lacks NumPy's .npy header)"),
    (lambda: np.save("d.npy", np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True),
     "--data d.npy: an array of Python objects (pickled), which odeflow never loads"),
    (lambda: np.save("d.npy", np.r_[np.ones((29, 2)), [[1e300, 0.0]]]),
     "split of --data d.npy holds values up to 1e+300 in magnitude, which overflow float32"),
], ids=["empty", "random-bytes", "object-array", "overflows-float32"])  # fmt: skip
def test_flow_train_data_file_messages(in_tmp, capsys, make, msg):
    make()
    assert main(["flow", "train", "--data", "d.npy", "--out", "o", "--iters", "1",
                 "--quiet"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert msg in err and "allow_pickle" not in err and "Traceback" not in err
    assert "NaN or inf" not in err and not (in_tmp / "o").exists()


def test_flow_eval_refuses_nan_rows_outside_its_test_split_as_train_does(in_tmp, capsys):
    x = np.random.default_rng(0).normal(size=(60, 2))
    x[:, 0] = np.nan  # every row; and below one row of the training split only
    np.save("all.npy", x)
    ck = _write(in_tmp, _tiny())
    for split in ("train", "validation"):
        y = np.random.default_rng(0).normal(size=(60, 2))
        perm = torch.randperm(60, generator=torch.Generator().manual_seed(0)).numpy()
        y[perm[{"validation": 6, "train": 12}[split]]] = np.nan
        np.save("one.npy", y)
        assert main(["flow", "train", "--data", "one.npy", "--out", "o", "--iters", "1",
                     "--quiet"]) == 1  # fmt: skip
        train_err = capsys.readouterr().err.split("error: ", 1)[1]
        assert main(["flow", "eval", "--checkpoint", ck, "--data", "one.npy"]) == 1
        eval_err = capsys.readouterr().err.split("error: ", 1)[1]
        assert train_err == eval_err and f"the {split} split" in eval_err


def test_flow_out_paths(in_tmp, capsys):
    open("afile", "w").close()
    assert main(["flow", "train", "--data", "8gaussians", "--out", "afile", "--iters", "1",
                 "--quiet"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "--out afile is an existing file; give a folder" in err and "Errno" not in err
    ck = _write(in_tmp, _tiny())
    assert main(["flow", "sample", "--checkpoint", ck, "-n", "3", "--out", "afile/s.npy"]) == 1
    err = capsys.readouterr().err
    assert "--out afile/s.npy: afile is a file, not a folder" in err and "Errno" not in err


def test_flow_huge_counts_are_refused_before_allocating(in_tmp, capsys):
    ck = _write(in_tmp, _tiny())
    assert main(["flow", "sample", "--checkpoint", ck, "-n", str(10**15), "--out", "s"]) == 1
    err = capsys.readouterr().err
    assert "-n 1000000000000000 needs about 8 PB of memory, more than the" in err
    assert main(["flow", "eval", "--checkpoint", ck, "--data", "8gaussians", "--n-test",
                 str(10**15)]) == 1  # fmt: skip
    assert "--n-test 1000000000000000 needs about" in capsys.readouterr().err
    assert main(["flow", "train", "--data", "8gaussians", "--out", "o", "--n-test",
                 str(10**15), "--quiet"]) == 1  # fmt: skip
    assert "--n-test 1000000000000000 needs about" in capsys.readouterr().err
    assert not (in_tmp / "o").exists() and not (in_tmp / "s.npy").exists()


def test_flow_sample_in_chunks_is_deterministic(in_tmp, monkeypatch):
    """Past one chunk the draws are chunked (bounded working memory); a seed still gives
    the same samples and log-densities, of the right shapes."""
    import odeflow.cli._flow as cli

    ck = _write(in_tmp, _tiny())
    monkeypatch.setattr(cli, "_SAMPLE_CHUNK", 4)
    for name in ("a", "b"):
        assert main(["flow", "sample", "--checkpoint", ck, "-n", "10", "--out", name,
                     "--log-prob"]) == 0  # fmt: skip
    a, b = np.load("a.npy"), np.load("b.npy")
    assert a.shape == (10, 2) and np.array_equal(a, b) and np.isfinite(a).all()
    assert len(np.unique(a[:, 0])) == 10  # ten different draws, not one chunk repeated
    lp = np.load("a.log_prob.npy")
    assert lp.shape == (10,) and np.array_equal(lp, np.load("b.log_prob.npy"))


def test_flow_train_keeps_the_weights_but_writes_no_metrics_for_a_non_finite_nll(
    tmp_path, capsys, monkeypatch
):
    import odeflow.flows

    def nll(*a, **k):
        raise FloatingPointError("log_prob is not finite for 1 of 20 values (1 NaN)")

    monkeypatch.setattr(odeflow.flows, "evaluate_nll", nll)
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")  # an earlier run's, replaced with --overwrite
    assert main(["flow", "train", "--data", "8gaussians", "--out", str(out), "--iters", "1",
                 "--batch", "16", "--width", "4", "--n-test", "20", "--quiet",
                 "--overwrite"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "error: test NLL: log_prob is not finite" in err and "no metrics.json" in err
    assert load_checkpoint(out / "flow.pt").dim == 2
    assert not (out / "metrics.json").exists()
