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
