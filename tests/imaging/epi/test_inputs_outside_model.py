"""EPI inputs outside the model (issue 21): negative intensities, an empty image, an
implausible readout time or weight; and the output paths of ``odeflow epi correct|demo``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

nib = pytest.importorskip("nibabel")
pytest.importorskip("nilearn")

from odeflow.cli import main  # noqa: E402
from odeflow.cli._demo_epi import run_demo  # noqa: E402
from odeflow.imaging.epi import (  # noqa: E402
    EPIInputError,
    correct_files,
    estimate_field,
    resolve_acquisition,
)
from odeflow.imaging.epi._pipeline import output_paths  # noqa: E402

from ._epi_files import VOXEL, phantom, write_pair  # noqa: E402

_FAST = dict(pe_axis=1, voxel_size=VOXEL, verbose=False, max_iter=3)


def _pair():
    ph = phantom(-1)
    return ph.up.double(), ph.down.double()


def _cli(tmp_path, up, down, *extra):
    return main(["epi", "correct", "--up", str(up), "--down", str(down), "--out",
                 str(tmp_path / "out" / "r_"), "--quiet", "--no-qc", "--max-iter", "2",
                 *extra])  # fmt: skip


# ---------------------------------------------------------------- negative intensities


def test_negative_offset_is_refused_with_the_fraction_of_negative_mass():
    up, dn = _pair()
    off = 0.1 * float(up.max())
    with pytest.raises(ValueError) as err:
        estimate_field(up - off, dn - off, **_FAST)
    msg = str(err.value)
    frac = float((off - up).clamp(min=0).sum() / (up - off).abs().sum())
    assert f"up: {100 * frac:.3g} % of its mass" in msg
    assert "negative='shift'" in msg and "negative='clip'" in msg


def test_shift_undoes_a_constant_offset_and_clip_removes_negatives():
    up, dn = _pair()
    ref = estimate_field(up, dn, **_FAST)
    off = 0.1 * float(up.max())
    shifted = estimate_field(up - off, dn - off, negative="shift", **_FAST)
    # the phantom's background is 0, so the common minimum is -off: the same pair back
    assert shifted.params["intensity_shift"] == pytest.approx(off)
    torch.testing.assert_close(shifted.displacement, ref.displacement, rtol=0, atol=1e-8)
    noisy = up - 0.2 * float(up.max()) * (torch.arange(up.numel()) % 2).reshape(up.shape)
    clipped = estimate_field(noisy, dn, negative="clip", **_FAST)
    assert clipped.params["negative"] == "clip" and clipped.params["negative_mass_up"] > 1e-3
    assert bool(clipped.corrected_up.isfinite().all())
    with pytest.raises(ValueError, match="negative must be one of 'error', 'clip', 'shift'"):
        estimate_field(up, dn, negative="abs", **_FAST)


def test_negative_mass_within_the_tolerance_is_accepted_unchanged():
    up, dn = _pair()
    tiny = up.clone()
    tiny[0, 0, 0] = -1e-4 * float(up.abs().sum())  # 0.01 % of the mass
    res = estimate_field(tiny, dn, **_FAST)
    assert 0 < res.params["negative_mass_up"] <= 1e-3 and res.params["intensity_shift"] == 0.0


def test_empty_single_image_is_refused():
    up, dn = _pair()
    for args, name in (((torch.zeros_like(up), dn), "up"), ((up, torch.zeros_like(dn)), "down")):
        with pytest.raises(ValueError, match=f"{name} is zero everywhere \\(an empty image\\)"):
            estimate_field(*args, **_FAST)
    with pytest.raises(ValueError, match="clipping its negative values leaves an empty image"):
        estimate_field(-up, dn, negative="clip", **_FAST)


def test_cli_negative_option(tmp_path, capsys):
    ph = phantom(-1)
    off = 0.2 * float(ph.up.max())
    up, down = write_pair(tmp_path / "in", ph, up_data=ph.up - off, down_data=ph.down - off)
    assert _cli(tmp_path, up, down) == 1
    err = capsys.readouterr().err
    assert "% of its mass" in err and "--negative shift" in err
    assert not (tmp_path / "out").exists()
    assert _cli(tmp_path, up, down, "--negative", "shift") == 0
    m = json.loads((tmp_path / "out" / "r_metrics.json").read_text())
    assert m["parameters"]["negative"] == "shift"
    assert m["parameters"]["estimator"]["intensity_shift"] == pytest.approx(off, rel=1e-5)


def test_cli_all_zero_up_image_is_refused(tmp_path, capsys):
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph, up_data=np.zeros(ph.up.shape))
    assert _cli(tmp_path, up, down) == 1
    assert "up is zero everywhere (an empty image)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- readout time, weights


def test_readout_time_outside_the_plausible_range():
    meta = ({"PhaseEncodingDirection": "j"}, {"PhaseEncodingDirection": "j-"})
    with pytest.raises(EPIInputError, match=r"--readout-time = 1e-09 s is implausibly short"):
        resolve_acquisition((8, 8, 8), np.eye(4), *meta, readout_time=1e-9)
    with pytest.raises(EPIInputError, match=r"TotalReadoutTime = 1e-06 s is implausibly short"):
        resolve_acquisition((8, 8, 8), np.eye(4), *[{**m, "TotalReadoutTime": 1e-6} for m in meta])
    acq = resolve_acquisition((8, 8, 8), np.eye(4), *meta, readout_time=1e-9,
                              readout_time_range=(1e-10, 1.0))  # fmt: skip
    assert acq.readout_time == 1e-9
    with pytest.raises(EPIInputError, match=r"implausibly long .* widen the accepted range"):
        resolve_acquisition((8, 8, 8), np.eye(4), *meta, readout_time=2.0)
    assert resolve_acquisition((8, 8, 8), np.eye(4), *meta, readout_time=2.0,
                               readout_time_range=(1e-4, 5.0)).readout_time == 2.0  # fmt: skip
    with pytest.raises(EPIInputError, match="0 < min < max"):
        resolve_acquisition((8, 8, 8), np.eye(4), *meta, readout_time=0.05,
                            readout_time_range=(1.0, 0.5))  # fmt: skip


def test_cli_readout_time_range(tmp_path, capsys):
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph)
    assert _cli(tmp_path, up, down, "--readout-time", "1e-9") == 1
    err = capsys.readouterr().err
    assert "implausibly short" in err and "--readout-time-range" in err
    assert not (tmp_path / "out").exists()
    args = ("--readout-time", "1e-3", "--readout-time-range", "1e-4", "1")
    assert _cli(tmp_path, up, down, *args) == 0
    m = json.loads((tmp_path / "out" / "r_metrics.json").read_text())
    assert m["acquisition"]["readout_time_s"] == 1e-3


@pytest.mark.parametrize("flag", ["--alpha", "--beta"])
def test_huge_weights_get_a_message(tmp_path, capsys, flag):
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph)
    assert _cli(tmp_path, up, down, flag, "1e300") == 1
    err = capsys.readouterr().err
    assert f"{flag[2:]} = 1e+300 is too large" in err and "overflow" in err
    assert "cannot be converted" not in err and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- output paths


def test_out_through_a_missing_folder_and_dotdot(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert output_paths("new/../res/r_", qc=False)["fieldmap"].as_posix() == (
        "res/r_fieldmap.nii.gz"
    )
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph)
    rc = main(["epi", "correct", "--up", str(up), "--down", str(down), "--out",
               "new/../res/r_", "--quiet", "--no-qc", "--max-iter", "1"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "res" / "r_fieldmap.nii.gz").is_file()
    assert not (tmp_path / "new").exists()


def test_failed_folder_creation_leaves_no_empty_folder(tmp_path, monkeypatch):
    from pathlib import Path

    from odeflow.imaging.epi._pipeline import _make_dirs

    real = Path.mkdir

    def mkdir(self, *a, **k):
        if self.name == "c":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(PermissionError):
        _make_dirs(tmp_path / "a" / "b" / "c")
    assert not (tmp_path / "a").exists()


def test_overwrite_without_qc_removes_the_old_report(tmp_path, capsys):
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph)
    (tmp_path / "out").mkdir()
    old = [tmp_path / "out" / "r_qc.png", tmp_path / "out" / "r_qc.html"]
    for f in old:
        f.write_text("an earlier run's report")
    assert _cli(tmp_path, up, down) == 1  # without --overwrite: an earlier run's output
    assert "already exist" in capsys.readouterr().err and all(f.exists() for f in old)
    assert _cli(tmp_path, up, down, "--overwrite") == 0
    assert not any(f.exists() for f in old)
    assert (tmp_path / "out" / "r_fieldmap.nii.gz").is_file()


def test_failed_run_restores_the_old_report(tmp_path, monkeypatch):
    import odeflow.imaging.epi._pipeline as pipeline

    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph)
    (tmp_path / "out").mkdir()
    png = tmp_path / "out" / "r_qc.png"
    png.write_text("old")
    real = pipeline._commit

    def failing(staged, tmp, **kw):
        staged = {**staged, tmp_path / "missing-dir" / "x": tmp / "nope"}  # fails last
        return real(staged, tmp, **kw)

    monkeypatch.setattr(pipeline, "_commit", failing)
    with pytest.raises(OSError):
        correct_files(up, down, tmp_path / "out" / "r_", qc=False, overwrite=True,
                      verbose=False, max_iter=1)  # fmt: skip
    assert png.read_text() == "old"
    assert not (tmp_path / "out" / "r_fieldmap.nii.gz").exists()


def test_applied_series_name_does_not_repeat_the_prefix(tmp_path):
    paths = output_paths(tmp_path / "sub-01_", [tmp_path / "in" / "sub-01_dir-AP_dwi.nii.gz"])
    assert paths["apply:sub-01_dir-AP_dwi"].name == "sub-01_dir-AP_dwi_corrected.nii.gz"
    assert paths["apply:sub-01_dir-AP_dwi_json"].name == "sub-01_dir-AP_dwi_corrected.json"
    # a series whose name, without the prefix, is one of odeflow's outputs is refused
    with pytest.raises(EPIInputError, match="would both be written to"):
        output_paths(tmp_path / "sub-01_", [tmp_path / "sub-01_up.nii.gz"])


def test_demo_refuses_an_existing_run_and_an_empty_out(tmp_path, capsys, monkeypatch):
    import odeflow.imaging.epi as epi

    monkeypatch.setattr(epi, "make_phantom", lambda **k: pytest.fail("the demo started"))
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "demo_metrics.json").write_text("{}")
    with pytest.raises(EPIInputError, match="holds the files of an earlier demo"):
        run_demo(tmp_path / "demo", verbose=False)
    assert main(["epi", "demo", "--out", str(tmp_path / "demo"), "--quick", "--quiet"]) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert main(["epi", "demo", "--out", "", "--quick", "--quiet"]) == 1
    assert "--out is empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(EPIInputError, match="is an existing file"):
        run_demo(tmp_path / "afile", verbose=False, overwrite=True)
