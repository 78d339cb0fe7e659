"""QC report and metrics JSON: written, self-contained, with the documented keys."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

pytest.importorskip("matplotlib")
nib = pytest.importorskip("nibabel")
pytest.importorskip("nilearn")

from odeflow.imaging.epi._pipeline import correct_files  # noqa: E402
from odeflow.imaging.epi._qc import choose_slice, write_qc_report  # noqa: E402

from ._epi_files import phantom, write_pair  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _volumes(shape=(10, 12, 8)):
    rng = np.random.default_rng(0)
    up = rng.random(shape)
    return dict(
        up=up,
        down=up[::-1].copy(),
        corrected_up=up,
        corrected_down=up,
        field_hz=rng.standard_normal(shape) * 20,
        jacobian_up=1 + 0.1 * up,
        jacobian_down=1 - 0.1 * up,
    )


@pytest.mark.parametrize("pe_axis", [0, 1, 2])
def test_report_files_are_written(tmp_path, pe_axis):
    hist = {"objective": [10.0, 5.0, 4.0], "distance": [8.0, 3.0, 2.0], "smoothness": [None]}
    metrics = {
        "result": {"rms_distance_before": 1.5, "status": "CONVERGED"},
        "versions": {"odeflow": "0.1.0"},
    }
    out = write_qc_report(
        tmp_path / "q.png",
        tmp_path / "q.html",
        pe_axis=pe_axis,
        voxel_size=(2.0, 2.5, 3.0),
        history=hist,
        metrics=metrics,
        **_volumes(),
    )
    png = out["png"].read_bytes()
    assert png.startswith(PNG_MAGIC)
    page = out["html"].read_text()
    # self-contained: the PNG is embedded, nothing is fetched
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert embedded and base64.b64decode(embedded.group(1)) == png
    assert "http" not in page and "<script" not in page
    assert "rms_distance_before" in page and "CONVERGED" in page and "odeflow" in page


def test_report_png_only_and_bad_shapes(tmp_path):
    out = write_qc_report(tmp_path / "q.png", None, pe_axis=1, **_volumes())
    assert set(out) == {"png"} and not (tmp_path / "q.html").exists()
    vols = _volumes()
    vols["field_hz"] = vols["field_hz"][:, :, :-1]
    with pytest.raises(ValueError, match="field_hz has shape"):
        write_qc_report(tmp_path / "r.png", None, pe_axis=1, **vols)
    with pytest.raises(ValueError, match="pe_axis"):
        write_qc_report(tmp_path / "r.png", None, pe_axis=3, **_volumes())


def test_slice_choice_contains_pe_axis_and_most_distortion():
    for pe in (0, 1, 2):
        axis, _ = choose_slice((8, 9, 10), pe)
        assert axis != pe
    d = np.zeros((6, 7, 8))
    d[:, :, 6] = 1.0
    assert choose_slice(d.shape, 1, d) == (2, 6)
    d = np.zeros((6, 7, 8))
    d[:, 2, :] = 1.0
    assert choose_slice(d.shape, 2, d) == (1, 2)


def test_pipeline_writes_report_and_metrics(tmp_path):
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph)
    out = correct_files(up, down, tmp_path / "o" / "s_", verbose=False)
    assert out.paths["qc_png"].read_bytes().startswith(PNG_MAGIC)
    assert "data:image/png;base64," in out.paths["qc_html"].read_text()
    m = json.loads(out.paths["metrics"].read_text())
    assert m == json.loads(json.dumps(out.metrics, default=str))
    for key in (
        "versions",
        "inputs",
        "acquisition",
        "parameters",
        "result",
        "history",
        "timings_s",
        "outputs",
    ):
        assert key in m, key
    for key in ("odeflow", "torch", "numpy", "python", "nibabel"):
        assert key in m["versions"]
    assert m["parameters"]["alpha"] == 300.0 and m["parameters"]["solver"] == "gn"
    r = m["result"]
    for key in (
        "final_distance",
        "final_smoothness",
        "final_objective",
        "rms_distance_before",
        "rms_distance_after",
        "field_hz_min",
        "field_hz_max",
        "jacobian_up_min",
        "jacobian_down_min",
        "status",
        "iterations",
    ):
        assert r[key] is not None, key
    assert r["jacobian_up_min"] > 0 and r["jacobian_down_min"] > 0
    assert r["rms_distance_after"] < r["rms_distance_before"]
    assert len(m["history"]["objective"]) == r["iterations"] + 1
    assert m["history"]["objective"][-1] <= m["history"]["objective"][0]
    for key in ("read", "estimate", "write", "total"):
        assert m["timings_s"][key] >= 0
    assert m["inputs"]["up"]["sha256"] and m["acquisition"]["readout_time_s"] == 0.05


def test_report_html_is_utf8_even_for_undecodable_file_names(tmp_path):
    # a folder named in Latin-1 ("Müller" as b"M\xfcller") is decoded by Python with surrogate
    # escapes; the report used to crash with UnicodeEncodeError after the whole estimation
    # (and, under a non-UTF-8 locale, any non-ASCII path did the same)
    latin1 = "/data/sub-M\udcfcller/up.nii.gz"
    metrics = {"inputs": {"up": {"path": latin1}, "down": {"path": "/data/sub-Müller/dn.nii"}}}
    out = write_qc_report(
        tmp_path / "q.png", tmp_path / "q.html", pe_axis=1, metrics=metrics, **_volumes()
    )
    raw = out["html"].read_bytes()
    assert b"/data/sub-M\xfcller/up.nii.gz" in raw
    assert "/data/sub-Müller/dn.nii".encode() in raw
