import pytest

from odeflow.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert "odeflow" in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_bench_passes_its_options_to_the_benchmark(capfd):
    """`odeflow bench NAME ARGS` runs benchmarks/NAME_peers.py ARGS (its --help here)."""
    assert main(["bench", "ode", "--help"]) == 0
    out = capfd.readouterr().out
    assert "ode_peers.py" in out and "--precisions" in out


def test_bench_outside_a_checkout_names_the_fix(capsys, monkeypatch):
    from odeflow.cli import _bench

    monkeypatch.setattr(_bench, "benchmarks_dir", lambda: None)
    assert main(["bench", "flows", "--quick"]) == 1
    err = capsys.readouterr().err
    assert "source checkout" in err and "clone" in err


def test_bench_unknown_name_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "odes"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'odes'" in err and "'derivatives'" in err


def _failing_sample(exc):
    def run(args):
        raise exc

    return run


@pytest.mark.parametrize("exc", [
    ValueError("bad value"),
    FileNotFoundError("checkpoint x.pt does not exist"),
    ImportError("plots need matplotlib: pip install 'odeflow[viz]'"),
    FloatingPointError("the fp16 state overflowed"),
])  # fmt: skip
def test_known_errors_are_one_line_naming_the_subcommand(capsys, monkeypatch, exc):
    from odeflow.cli import _flow

    monkeypatch.setattr(_flow, "_sample", _failing_sample(exc))
    assert main(["flow", "sample", "--checkpoint", "x.pt"]) == 1
    err = capsys.readouterr().err
    assert err == f"odeflow flow sample: error: {exc}\n"


def test_a_bug_keeps_its_traceback(monkeypatch):
    """An exception odeflow does not raise on purpose (a bug) is not turned into a tidy
    one-line error that would hide it."""
    from odeflow.cli import _flow

    monkeypatch.setattr(_flow, "_sample", _failing_sample(IndexError("index 0 is out of bounds")))
    with pytest.raises(IndexError, match="out of bounds"):
        main(["flow", "sample", "--checkpoint", "x.pt"])


def test_error_prefix_of_a_command_without_subcommand(capsys, monkeypatch):
    from odeflow.cli import _bench

    monkeypatch.setattr(_bench, "benchmarks_dir", lambda: None)
    assert main(["bench", "flows", "--quick"]) == 1
    assert capsys.readouterr().err.startswith("odeflow bench: error:")


def test_demo_unknown_name_is_refused_before_any_output(tmp_path, capsys, monkeypatch):
    """`demo --only` with a misspelt name is refused (not silently skipped next to a valid
    one), and no --out folder is created."""
    import sys
    import types

    from odeflow.cli import _demo

    ran = []
    fake = types.SimpleNamespace(run_demo=lambda out, verbose: ran.append(out) or {})
    monkeypatch.setitem(sys.modules, "fake_demo", fake)
    monkeypatch.setattr(_demo, "DEMOS", (("spiral", "fake_demo", "run_demo"),))
    out = tmp_path / "demos"
    for only in (["sprial"], ["sprial", "spiral"]):
        assert main(["demo", "--out", str(out), "--only", *only, "--quiet"]) == 1
        err = capsys.readouterr().err
        assert err == "odeflow demo: error: unknown demo sprial; valid names are: spiral\n"
        assert not out.exists() and ran == []
    assert main(["demo", "--out", str(out), "--only", "spiral", "--quiet"]) == 0
    assert ran == [out / "spiral"] and (out / "summary.json").is_file()


def test_demo_overwrite_reaches_the_demos_that_take_it(tmp_path, monkeypatch):
    """`demo --overwrite` (what `make demo` passes, so that a second run works) is handed to
    a demo whose function takes ``overwrite``; without the flag nothing is overwritten."""
    import sys
    import types

    from odeflow.cli import _demo

    seen = []

    def with_flag(out, verbose, overwrite=False):
        seen.append(("with", overwrite))
        return {}

    fake = types.SimpleNamespace(a=lambda out, verbose: seen.append(("plain",)) or {}, b=with_flag)
    monkeypatch.setitem(sys.modules, "fake_demo2", fake)
    monkeypatch.setattr(_demo, "DEMOS", (("a", "fake_demo2", "a"), ("b", "fake_demo2", "b")))
    out = str(tmp_path / "demos")
    assert main(["demo", "--out", out, "--quiet"]) == 0
    assert main(["demo", "--out", out, "--quiet", "--overwrite"]) == 0
    assert seen == [("plain",), ("with", False), ("plain",), ("with", True)]
