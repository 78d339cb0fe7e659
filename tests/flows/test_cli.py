"""``odeflow flow train|sample|eval`` end to end on a tiny run (writes only into tmp_path)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from odeflow.cli import main


def test_flow_cli_train_sample_eval(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "flow",
                "train",
                "--data",
                "8gaussians",
                "--out",
                str(out),
                "--iters",
                "6",
                "--batch",
                "128",
                "--width",
                "8",
                "--n-test",
                "300",
                "--quiet",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iterations"] == 6 and np.isfinite(metrics["test_nll"])
    assert metrics["config"]["alpha"] == [1.0, 30.0, 1.0]  # the 8gaussians preset was applied
    assert (out / "samples.png").stat().st_size > 1000
    assert (
        main(
            [
                "flow",
                "sample",
                "--checkpoint",
                str(out / "flow.pt"),
                "-n",
                "50",
                "--out",
                str(tmp_path / "s.npy"),
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "s.npy").shape == (50, 2)
    capsys.readouterr()
    assert (
        main(
            [
                "flow",
                "eval",
                "--checkpoint",
                str(out / "flow.pt"),
                "--data",
                "8gaussians",
                "--n-test",
                "200",
            ]
        )
        == 0
    )
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["n"] == 200 and abs(rec["test_nll"] - metrics["test_nll"]) < 0.5


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_flow_cli_eval_defaults_to_the_training_split_of_a_file(tmp_path, capsys):
    data = np.random.RandomState(0).randn(240, 2) @ np.array([[1.0, 0.0], [0.6, 0.4]])
    np.save(tmp_path / "d.npy", data)
    out = tmp_path / "run"
    assert main(["flow", "train", "--data", str(tmp_path / "d.npy"), "--out", str(out),
                 "--seed", "1", "--iters", "2", "--batch", "64", "--width", "4",
                 "--quiet"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    ev = ["flow", "eval", "--checkpoint", str(out / "flow.pt"), "--data", str(tmp_path / "d.npy")]
    assert main(ev) == 0  # no --seed: the checkpoint's (1), so the same test rows
    rec = _last_json(capsys)
    assert rec["seed"] == 1 and rec["n"] == 24
    assert abs(rec["test_nll"] - metrics["test_nll"]) < 1e-9
    assert main([*ev, "--seed", "0"]) == 0  # another split gives another number
    rec0 = _last_json(capsys)
    assert rec0["seed"] == 0 and abs(rec0["test_nll"] - metrics["test_nll"]) > 1e-6


def test_flow_cli_eval_defaults_to_the_training_toy_test_set(tmp_path, capsys):
    from odeflow.flows import get_preset

    out = tmp_path / "run"
    assert main(["flow", "train", "--data", "8gaussians", "--out", str(out), "--seed", "1",
                 "--iters", "2", "--batch", "64", "--width", "4", "--n-test", "300",
                 "--quiet"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["flow", "eval", "--checkpoint", str(out / "flow.pt"), "--data",
                 "8gaussians"]) == 0  # fmt: skip
    rec = _last_json(capsys)
    assert (rec["seed"], rec["n"], rec["nt"]) == (1, 300, get_preset("8gaussians").nt_test)
    assert abs(rec["test_nll"] - metrics["test_nll"]) < 1e-9


def test_flow_cli_file_data_keep_float64(tmp_path):
    from odeflow.cli._flow import _load_data

    big = 1e6 + np.random.RandomState(0).randn(50, 2) * 1e-2  # float32 would merge values
    np.save(tmp_path / "big.npy", big)
    np.savetxt(tmp_path / "big.csv", big, delimiter=",", fmt="%.17g")
    for name in ("big.npy", "big.csv"):
        tr, va, te, _ = _load_data(str(tmp_path / name), None, 0, 10)
        assert tr.dtype == va.dtype == te.dtype == torch.float64
        rows = np.concatenate([tr.numpy(), va.numpy(), te.numpy()])
        assert np.array_equal(np.sort(rows, axis=0), np.sort(big, axis=0))


def test_flow_cli_sample_out_gets_npy_suffix_or_goes_into_a_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["flow", "train", "--data", "8gaussians", "--out", str(out), "--iters", "1",
                 "--batch", "32", "--width", "4", "--n-test", "50", "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    ck = str(out / "flow.pt")
    assert main(["flow", "sample", "--checkpoint", ck, "-n", "5", "--out",
                 str(tmp_path / "x")]) == 0  # fmt: skip
    assert str(tmp_path / "x.npy") in capsys.readouterr().out
    assert np.load(tmp_path / "x.npy").shape == (5, 2) and not (tmp_path / "x").exists()
    assert main(["flow", "sample", "--checkpoint", ck, "-n", "5", "--out",
                 str(tmp_path / "y.npy"), "--log-prob"]) == 0  # fmt: skip
    assert "log-densities" in capsys.readouterr().out
    lp = np.load(tmp_path / "y.log_prob.npy")
    assert lp.shape == (5,) and np.isfinite(lp).all()
    assert np.array_equal(np.load(tmp_path / "y.npy"), np.load(tmp_path / "x.npy"))
    for folder in ("adir", "adir.npy"):  # --out names an existing folder: write into it
        (tmp_path / folder).mkdir()
        assert main(["flow", "sample", "--checkpoint", ck, "-n", "5", "--out",
                     str(tmp_path / folder), "--log-prob"]) == 0  # fmt: skip
        assert str(tmp_path / folder / "samples.npy") in capsys.readouterr().out
        assert np.array_equal(np.load(tmp_path / folder / "samples.npy"),
                              np.load(tmp_path / "x.npy"))  # fmt: skip
        assert np.array_equal(np.load(tmp_path / folder / "samples.log_prob.npy"), lp)
    assert not (tmp_path / "adir.npy.npy").exists() and (tmp_path / "adir.npy").is_dir()
    (tmp_path / "afile").write_text("x")  # train --out names a file
    assert main(["flow", "train", "--data", "8gaussians", "--out", str(tmp_path / "afile"),
                 "--iters", "1", "--quiet"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "odeflow flow train: error:" in err and "afile" in err and "Traceback" not in err


def test_flow_cli_train_precision_is_recorded_not_kept(tmp_path):
    from odeflow.flows import load_checkpoint

    out = tmp_path / "run"
    assert main(["flow", "train", "--data", "8gaussians", "--out", str(out), "--iters", "2",
                 "--batch", "32", "--width", "4", "--n-test", "50", "--precision", "bf16",
                 "--quiet"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["precision"] == "bf16"  # what training ran in
    assert metrics["config"]["precision"] == "fp32"  # the flow's own setting
    assert load_checkpoint(out / "flow.pt").precision == "fp32"


def test_flow_cli_states_an_emulated_precision_in_one_line(tmp_path, capsys, monkeypatch):
    """odeflow's own warnings reach a command-line user as one "odeflow flow: warning:" line,
    not as Python's file:line report of the console script."""
    from odeflow.ode import _precision

    monkeypatch.setattr(_precision, "_warned", set())
    monkeypatch.setattr(_precision, "_cpu_flags", lambda: frozenset({"avx2"}))
    warnings.simplefilter("default", _precision.PerformanceWarning)  # (pytest's config ignores it)
    assert main(["flow", "train", "--data", "8gaussians", "--out", str(tmp_path / "run"),
                 "--iters", "1", "--batch", "16", "--width", "4", "--n-test", "20",
                 "--precision", "bf16", "--quiet"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("odeflow flow: warning: precision='bf16' on this CPU: it has no")
    assert err.count("\n") == 1 and "PerformanceWarning:" not in err


@pytest.mark.parametrize("argv,msg", [
    (["flow", "eval", "--checkpoint", "x.pt", "--data", "miniboone"], "does not exist"),
    (["flow", "train", "--data", "banana", "--out", "o"], "unknown --data 'banana'"),
    (["flow", "train", "--data", "missing.npy", "--out", "o"], "--data missing.npy: no such file"),
    (["flow", "train", "--data", "one_d.npy", "--out", "o"],
     "--data one_d.npy: need a numeric (n, d) array with n >= 3 rows"),
    (["flow", "train", "--data", "words.npy", "--out", "o"], "dtype <U"),
    (["flow", "train", "--data", "two.csv", "--out", "o"], "got shape (2, 2)"),
    (["flow", "train", "--data", "complex.npy", "--out", "o", "--iters", "1", "--quiet"],
     "real-valued columns, got shape (5, 2) and dtype complex128"),
    (["flow", "train", "--data", "no_cols.npy", "--out", "o"], "got shape (5, 0)"),
    (["flow", "train", "--data", "archive.npy", "--out", "o"],
     "--data archive.npy: an .npz archive, not a .npy file"),
])  # fmt: skip
def test_flow_cli_errors(tmp_path, capsys, monkeypatch, argv, msg):
    monkeypatch.chdir(tmp_path)
    np.save("one_d.npy", np.random.RandomState(0).randn(100))
    np.save("words.npy", np.array([["a", "b"]] * 5))
    np.savetxt("two.csv", np.ones((2, 2)), delimiter=",")
    np.save("complex.npy", np.ones((5, 2)) + 1j)  # the imaginary part would be dropped
    np.save("no_cols.npy", np.ones((5, 0)))
    np.savez("archive.npz", x=np.ones((5, 2)))
    (tmp_path / "archive.npz").rename("archive.npy")
    assert main(argv) == 1
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before any output


def test_demo_writes_picture_and_metrics(tmp_path):
    from odeflow.cli._demo_otflow import run_demo

    res = run_demo(tmp_path / "demo", verbose=False, iters=4)
    assert res["iterations"] == 4 and 2.7 < res["true_entropy"] < 2.9
    assert (tmp_path / "demo" / "otflow_8gaussians.png").stat().st_size > 1000
    assert (tmp_path / "demo" / "otflow_8gaussians.pt").is_file()


_TINY = ["--iters", "1", "--batch", "16", "--width", "4", "--quiet"]


def _with_bad_row(tmp_path, split, n=60, seed=0):
    """A data file whose ``split`` (as `flow train` cuts it: a seeded permutation, then
    test, validation, train rows) holds one NaN row."""
    x = np.random.RandomState(0).randn(n, 2)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    n_te = n // 10
    row = {"test": 0, "validation": n_te, "train": 2 * n_te}[split]
    x[perm[row]] = np.nan
    path = tmp_path / f"nan_{split}.npy"
    np.save(path, x)
    return path


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_flow_cli_train_checks_every_split_before_training(tmp_path, capsys, monkeypatch, split):
    """A NaN row in any split stops `flow train` before training (fit is never called) and
    the message names the split; no output folder is left."""
    import odeflow.flows

    # `flow train` looks fit up in odeflow.flows when it runs
    monkeypatch.setattr(odeflow.flows, "fit", lambda *a, **k: pytest.fail("training started"))
    data = _with_bad_row(tmp_path, split)
    out = tmp_path / "run"
    assert main(["flow", "train", "--data", str(data), "--out", str(out), *_TINY]) == 1
    err = capsys.readouterr().err
    assert (f"odeflow flow train: error: the {split} split of --data {data} contains NaN or "
            "inf in 1 row(s)") in err  # fmt: skip
    assert "evaluation data" not in err and not out.exists()


def _checkpoint(tmp_path):
    from odeflow.flows import OTFlow

    path = tmp_path / "flow.pt"
    OTFlow(2, width=4, nt=2).save(path, seed=0)
    return str(path)


def test_flow_cli_eval_names_the_test_split(tmp_path, capsys):
    ck = _checkpoint(tmp_path)
    data = _with_bad_row(tmp_path, "test")
    assert main(["flow", "eval", "--checkpoint", ck, "--data", str(data)]) == 1
    assert (f"odeflow flow eval: error: the test split of --data {data} contains NaN"
            in capsys.readouterr().err)  # fmt: skip
    # a NaN row of the training split is refused too, as `flow train` refuses it (issue 21)
    bad = _with_bad_row(tmp_path, "train")
    assert main(["flow", "eval", "--checkpoint", ck, "--data", str(bad)]) == 1
    assert (f"odeflow flow eval: error: the train split of --data {bad} contains NaN"
            in capsys.readouterr().err)  # fmt: skip
    ok = tmp_path / "ok.npy"
    np.save(ok, np.random.RandomState(0).randn(60, 2))
    assert main(["flow", "eval", "--checkpoint", ck, "--data", str(ok)]) == 0
    assert _last_json(capsys)["n"] == 6


@pytest.mark.parametrize("argv,msg", [
    (["train", "--width", "0"], "--width must be >= 1, got 0"),
    (["train", "--width", "-3"], "--width must be >= 1, got -3"),
    (["train", "--iters", "0"], "--iters must be >= 1, got 0"),
    (["train", "--batch", "0"], "--batch must be >= 1, got 0"),
    (["train", "--n-test", "0"], "--n-test must be >= 1, got 0"),
    (["train", "--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["train", "--lr", "0"], "--lr must be a finite number > 0"),
    (["train", "--device", "bogus"], "--device bogus: not a torch device"),
    (["train", "--device", "cuda"], "--device cuda asks for CUDA, but CUDA is not available"),
    (["train", "--preset", "power"], "preset 'power' is for dim=6, but the flow has dim=2"),
    (["train", "--seed", "-1"], "--seed must be an integer from 0 to 2**32 - 1, got -1"),
    (["train", "--out", ""], "--out is empty"),  # not the current folder
    (["train", "--precision", "fp16", "--double"],
     "--precision fp16 needs float32 parameters; drop --double / --dtype float64"),
])  # fmt: skip
def test_flow_cli_train_refuses_bad_options(tmp_path, capsys, monkeypatch, argv, msg):
    """Refused with one line naming the option (0 is not taken for "the default"), and no
    output folder is left behind, even when fit itself refuses (the preset case)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    np.save("d.npy", np.random.RandomState(0).randn(40, 2))
    cmd = ["flow", argv[0], "--data", "d.npy", "--out", "o/nested", "--quiet",
           "--iters", "1", "--batch", "16", "--width", "4", *argv[1:]]  # fmt: skip
    assert main(cmd) == 1
    err = capsys.readouterr().err
    assert f"odeflow flow train: error: {msg}" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option,msg", [
    (["--nt", "0"], "--nt must be >= 1, got 0"),
    (["--n-test", "0"], "--n-test must be >= 1, got 0"),
    (["--seed", "-1"], "--seed must be an integer from 0 to 2**32 - 1, got -1"),
    (["--device", "cuda"], "--device cuda asks for CUDA, but CUDA is not available"),
    (["--device", "bogus"], "--device bogus: not a torch device"),
])  # fmt: skip
def test_flow_cli_eval_refuses_bad_options(tmp_path, capsys, monkeypatch, option, msg):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ck = _checkpoint(tmp_path)
    assert main(["flow", "eval", "--checkpoint", ck, "--data", "8gaussians", *option]) == 1
    assert f"odeflow flow eval: error: {msg}" in capsys.readouterr().err


def test_flow_cli_sample_and_eval_take_a_device(tmp_path, capsys, monkeypatch):
    """--device cpu gives what the default gives; an unusable device is one line, before
    any output."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ck = _checkpoint(tmp_path)
    base = ["flow", "sample", "--checkpoint", ck, "-n", "5", "--log-prob"]
    assert main([*base, "--out", str(tmp_path / "a.npy")]) == 0
    assert main([*base, "--out", str(tmp_path / "b.npy"), "--device", "cpu"]) == 0
    for suffix in (".npy", ".log_prob.npy"):
        assert np.array_equal(np.load(tmp_path / f"a{suffix}"), np.load(tmp_path / f"b{suffix}"))
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "c.npy"), "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("odeflow flow sample: error: --device cuda asks for CUDA")
    assert not (tmp_path / "c.npy").exists()
    ev = ["flow", "eval", "--checkpoint", ck, "--data", "8gaussians", "--n-test", "64"]
    assert main(ev) == 0
    default = json.loads(capsys.readouterr().out)
    assert main([*ev, "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out) == default


def test_flow_cli_reads_whitespace_separated_txt(tmp_path):
    from odeflow.cli._flow import _load_data

    x = np.random.RandomState(0).randn(30, 3)
    np.savetxt(tmp_path / "ws.txt", x)  # spaces, as np.savetxt writes by default
    np.savetxt(tmp_path / "tab.txt", x, delimiter="\t")
    np.savetxt(tmp_path / "comma.txt", x, delimiter=",")
    for name in ("ws.txt", "tab.txt", "comma.txt"):
        tr, va, te, _ = _load_data(str(tmp_path / name), None, 0, 10)
        rows = np.concatenate([tr.numpy(), va.numpy(), te.numpy()])
        assert np.allclose(np.sort(rows, axis=0), np.sort(x, axis=0), rtol=1e-15, atol=0)
    (tmp_path / "bad.txt").write_text("a b\n1 2\n3 4\n")
    with pytest.raises(ValueError, match=r"not a readable \.txt file"):
        _load_data(str(tmp_path / "bad.txt"), None, 0, 10)


def test_flow_cli_sample_from_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    assert main(["flow", "sample", "--checkpoint", str(tmp_path / "notes.pt"), "-n", "5",
                 "--out", str(tmp_path / "s.npy")]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "odeflow flow sample: error:" in err and "is not an odeflow checkpoint" in err
    assert "weights_only" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s.npy").exists()


def test_flow_cli_train_refuses_dtype_and_double_together(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["flow", "train", "--data", "8gaussians", "--out", str(tmp_path / "o"),
              "--dtype", "float32", "--double", "--n-test", "50", *_TINY])  # fmt: skip
    assert e.value.code == 2
    assert "argument --double: not allowed with argument --dtype" in capsys.readouterr().err


def test_flow_cli_outputs_of_an_earlier_run_are_kept(tmp_path, capsys, monkeypatch):
    """`flow train` and `flow sample` refuse to replace existing outputs (checked before any
    training or sampling) unless --overwrite; the checkpoint itself is never replaced."""
    import odeflow.flows

    monkeypatch.chdir(tmp_path)
    np.save("d.npy", np.random.RandomState(0).randn(40, 2))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text("earlier")
    train = ["flow", "train", "--data", "d.npy", "--out", "run", *_TINY]
    with monkeypatch.context() as m:
        m.setattr(odeflow.flows, "fit", lambda *a, **k: pytest.fail("training started"))
        assert main(train) == 1
    err = capsys.readouterr().err
    assert err == ("odeflow flow train: error: 1 output(s) already exist (e.g. "
                   "run/metrics.json); choose another --out or pass --overwrite\n")  # fmt: skip
    assert (tmp_path / "run" / "metrics.json").read_text() == "earlier"
    assert main([*train, "--overwrite"]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["iterations"] == 1
    ck = "run/flow.pt"
    sample = ["flow", "sample", "--checkpoint", ck, "-n", "5", "--log-prob"]
    np.save("d.log_prob.npy", np.zeros(3))  # only the log-density file exists
    before = (tmp_path / "d.npy").read_bytes()
    assert main([*sample, "--out", "d.npy"]) == 1
    assert "2 output(s) already exist (e.g. d.npy)" in capsys.readouterr().err
    assert (tmp_path / "d.npy").read_bytes() == before
    assert np.load("d.log_prob.npy").shape == (3,)
    assert main([*sample, "--out", "d.npy", "--overwrite"]) == 0
    assert np.load("d.npy").shape == (5, 2) and np.load("d.log_prob.npy").shape == (5,)
    (tmp_path / "ck.npy").write_bytes((tmp_path / ck).read_bytes())
    assert main(["flow", "sample", "--checkpoint", "ck.npy", "--out", "ck.npy",
                 "--overwrite"]) == 1  # fmt: skip
    assert "--out ck.npy is the checkpoint itself" in capsys.readouterr().err
    assert (tmp_path / "ck.npy").read_bytes() == (tmp_path / ck).read_bytes()
    # a 3-D run over the 2-D one leaves no picture that seems to be its own
    assert (tmp_path / "run" / "samples.png").is_file()
    np.save("d3.npy", np.random.RandomState(1).randn(40, 3))
    assert main(["flow", "train", "--data", "d3.npy", "--out", "run", *_TINY, "--overwrite"]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["dim"] == 3
    assert not (tmp_path / "run" / "samples.png").exists()
