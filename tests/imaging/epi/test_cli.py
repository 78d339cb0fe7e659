"""`odeflow epi correct` / `odeflow epi demo`: help, summary line, exit codes, no partial
outputs, inputs untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pytest.importorskip("nilearn")

from odeflow.cli import main  # noqa: E402

from ._epi_files import phantom, snapshot, write_pair  # noqa: E402


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["epi", "correct", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for needle in (
        "--up",
        "--down",
        "--pe-dir",
        "--readout-time",
        "--apply",
        "--out",
        "--device",
        "--alpha",
        "--beta",
        "--solver",
        "examples:",
        "odeflow epi correct",
    ):
        assert needle in text, needle


def test_epi_without_subcommand_prints_help(capsys):
    assert main(["epi"]) == 2
    assert "correct" in capsys.readouterr().out


def test_missing_required_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["epi", "correct", "--up", "a.nii.gz", "--out", "x_"])
    assert e.value.code == 2
    assert "--down" in capsys.readouterr().err


def test_correct_writes_outputs_and_prints_summary(tmp_path, capsys):
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph, up_pe=None, down_pe=None, trt=None)
    before = snapshot(tmp_path / "in")
    rc = main(
        [
            "epi",
            "correct",
            "--up",
            str(up),
            "--down",
            str(down),
            "--pe-dir",
            "AP",
            "--readout-time",
            "0.05",
            "--out",
            str(tmp_path / "out" / "s_"),
            "--quiet",
            "--no-qc",
            "--alpha",
            "250",
            "--solver",
            "gn",
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2] == (
        "odeflow epi: up j- (AP, --pe-dir), down j, readout 0.05 s (--readout-time)"
    )
    line = lines[-1]
    assert line.startswith("odeflow epi: RMS distance") and "Hz" in line and " s " in line
    field = nib.load(str(tmp_path / "out" / "s_fieldmap.nii.gz"))
    assert field.shape == ph.up.shape and np.allclose(field.affine, ph.affine)
    m = json.loads((tmp_path / "out" / "s_metrics.json").read_text())
    assert m["parameters"]["alpha"] == 250.0
    assert m["acquisition"]["pe_up"] == "j-" and m["acquisition"]["sources"]["pe_up"] == "--pe-dir"
    assert snapshot(tmp_path / "in") == before


@pytest.mark.parametrize(
    "case,extra,message",
    [
        ("same_polarity", [], "same phase-encoding polarity"),
        ("no_readout", [], "--readout-time"),
        ("unreadable", [], "cannot read"),
        ("missing", [], "does not exist"),
        ("conflict", ["--pe-dir", "j"], "contradicts"),
        ("bad_pe", ["--pe-dir", "sideways"], "unknown phase-encoding direction"),
        ("exists", [], "already exist"),
    ],
)
def test_bad_input_exits_nonzero_without_outputs(tmp_path, capsys, case, extra, message):
    ph = phantom(-1)
    kw = {}
    if case == "same_polarity":
        kw = {"up_pe": "j-", "down_pe": "j-"}
    elif case == "no_readout":
        kw = {"trt": None}
    up, down = write_pair(tmp_path / "in", ph, **kw)
    if case == "unreadable":
        up.write_bytes(b"not a nifti at all")
    elif case == "missing":
        down.unlink()
    out = tmp_path / "out"
    if case == "exists":
        out.mkdir()
        (out / "s_fieldmap.nii.gz").write_bytes(b"precious")
    before_in, before_out = snapshot(tmp_path / "in"), snapshot(tmp_path) if out.exists() else {}
    rc = main(
        [
            "epi",
            "correct",
            "--up",
            str(up),
            "--down",
            str(down),
            "--out",
            str(out / "s_"),
            "--quiet",
            *extra,
        ]
    )
    assert rc != 0
    err = capsys.readouterr().err
    assert message in err and "error" in err
    assert snapshot(tmp_path / "in") == before_in
    if case == "exists":
        assert snapshot(tmp_path) == before_out
    else:
        assert not out.exists()


def _correct_args(up, down, out, *extra):
    return ["epi", "correct", "--up", str(up), "--down", str(down), "--out", str(out), *extra]


def test_unconverged_solve_is_reported(tmp_path, capsys):
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph)
    rc = main(_correct_args(up, down, tmp_path / "o_", "--quiet", "--no-qc", "--solver", "lbfgs"))
    assert rc == 0  # the outputs are written; the status is stated, not hidden
    captured = capsys.readouterr()
    line = captured.out.strip().splitlines()[-1]
    assert line.startswith("odeflow epi: RMS distance")
    assert "NOT CONVERGED (lbfgs stopped with status MAX_ITERATIONS after 50 iterations)" in line
    err = captured.err
    assert err.startswith("odeflow epi: warning: ") and err.count("\n") == 1
    assert "--solver gn" in err and "--max-iter (now 10" in err and "Traceback" not in err
    m = json.loads((tmp_path / "o_metrics.json").read_text())
    assert m["result"]["status"] == "MAX_ITERATIONS"
    # a converged solve prints neither
    rc = main(_correct_args(up, down, tmp_path / "g_", "--quiet", "--no-qc"))
    assert rc == 0
    captured = capsys.readouterr()
    assert json.loads((tmp_path / "g_metrics.json").read_text())["result"]["status"] == (
        "CONVERGED"
    )
    assert "NOT CONVERGED" not in captured.out and "warning" not in captured.err


def test_apply_series_named_up_is_refused(tmp_path, capsys):
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph)
    series = tmp_path / "in" / "up.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([ph.up.numpy()] * 2, -1), ph.affine), str(series))
    before = snapshot(tmp_path)
    rc = main(_correct_args(up, down, f"{tmp_path / 'out'}/", "--apply", str(series), "--quiet"))
    assert rc != 0
    err = capsys.readouterr().err
    assert f"--apply series '{series}'" in err and "'up_corrected'" in err
    assert snapshot(tmp_path) == before


def test_console_exit_code_in_a_subprocess(tmp_path):
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph, up_pe="j", down_pe="j")
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "odeflow.cli",
            "epi",
            "correct",
            "--up",
            str(up),
            "--down",
            str(down),
            "--out",
            str(tmp_path / "o_"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "same phase-encoding polarity" in proc.stderr
    assert not list(tmp_path.glob("o_*"))


def test_demo_quick(tmp_path, capsys):
    rc = main(["epi", "demo", "--out", str(tmp_path / "demo"), "--quick", "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "field RMSE" in printed
    m = json.loads((tmp_path / "demo" / "demo_metrics.json").read_text())
    # the printed percentage is the RMS ratio and says so (README's "rel. distance" is squared)
    assert f"relative RMS distance {100 * m['relative_rms_distance']:.1f} %" in printed
    assert m["jacobian_min"] > 0 and m["field_rmse_vox"] < 0.5
    assert (tmp_path / "demo" / "corrected" / "sub-phantom_qc.html").is_file()
    assert (tmp_path / "demo" / "corrected" / "sub-phantom_dir-AP_dwi_corrected.nii.gz").is_file()


@pytest.mark.slow
def test_demo_full_meets_the_acceptance_figures(tmp_path):
    """The 2 mm whole-brain phantom (SNR 30, peak 4 voxels) through the files: field RMSE in the
    brain ≤ 0.25 voxel, both Jacobians > 0, corrected distance ≤ 15 % of the uncorrected."""
    from odeflow.cli._demo_epi import run_demo

    m = run_demo(tmp_path / "demo", verbose=False)
    assert m["peak_displacement_vox"] >= 4.0 - 1e-6
    assert m["field_rmse_vox"] <= 0.25
    assert m["jacobian_min"] > 0
    assert m["relative_rms_distance"] <= 0.15


def test_unwritable_output_location_exits_nonzero(tmp_path, capsys):
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder should be")
    rc = main(
        [
            "epi",
            "correct",
            "--up",
            str(up),
            "--down",
            str(down),
            "--no-qc",
            "--quiet",
            "--out",
            str(blocker / "s_"),
        ]
    )
    assert rc == 1
    assert "error" in capsys.readouterr().err
    assert blocker.read_text().startswith("a file") and sorted(tmp_path.iterdir()) == [
        blocker,
        tmp_path / "in",
    ]


def test_same_volume_by_a_negative_index_is_refused(tmp_path, capsys):
    """--up-volume -1 and --down-volume 1 of a two-volume file are one volume: refused, not
    "corrected" to a zero field."""
    ph = phantom(-1)
    b0s = tmp_path / "b0s.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([ph.up.numpy(), ph.down.numpy()], -1), ph.affine), b0s)
    args = ["--pe-dir", "j-", "--readout-time", "0.05", "--quiet", "--no-qc"]
    rc = main([*_correct_args(b0s, b0s, tmp_path / "o_", *args), "--up-volume", "-1",
               "--down-volume", "1"])  # fmt: skip
    assert rc == 1
    assert capsys.readouterr().err == (
        "odeflow epi correct: error: --up-volume -1 and --down-volume 1 are the same volume "
        f"(1) of '{b0s}'; pick two different volumes (e.g. 0 and 1)\n"
    )
    assert not list(tmp_path.glob("o_*"))
    rc = main([*_correct_args(b0s, b0s, tmp_path / "o_", *args), "--up-volume", "0",
               "--down-volume", "-1"])  # fmt: skip
    assert rc == 0
    assert json.loads((tmp_path / "o_metrics.json").read_text())["inputs"]["down"]["volume"] == 1


def test_output_under_a_file_is_refused_before_the_solve(tmp_path, capsys, monkeypatch):
    """An --out whose folder cannot exist (a file is in the way) is refused at once, naming
    --out and the file, not after the solve with the name of a hidden temporary folder."""
    import odeflow.imaging.epi

    monkeypatch.setattr(
        odeflow.imaging.epi, "estimate_field", lambda *a, **k: pytest.fail("solve started")
    )
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder should be")
    out = f"{blocker}/sub/s_"
    assert main(_correct_args(up, down, out, "--quiet", "--no-qc")) == 1
    assert capsys.readouterr().err == (
        f"odeflow epi correct: error: --out '{out}': '{blocker}' is a file, not a folder; "
        "choose another --out prefix\n"
    )
    assert blocker.read_text().startswith("a file")
