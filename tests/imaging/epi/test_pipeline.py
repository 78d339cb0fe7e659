"""File pipeline: geometry kept, field in Hz with the documented sign, reorientation
invariance, --apply, 4-D pairs, and atomic failure on every kind of bad input."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pytest.importorskip("nilearn")

from odeflow.imaging.epi import _pipeline  # noqa: E402
from odeflow.imaging.epi._nifti import EPIInputError  # noqa: E402
from odeflow.imaging.epi._pipeline import (  # noqa: E402
    EPIConvergenceWarning,
    correct_files,
    output_paths,
)

from ._epi_files import (  # noqa: E402
    SHAPE,
    TRT,
    oblique,
    phantom,
    reorient,
    save,
    snapshot,
    undo_reorient,
    write_pair,
)

FAST = {"qc": False, "verbose": False}


def _field_rmse_vox(field_hz: np.ndarray, ph) -> float:
    mask = ph.mask.numpy().astype(bool)
    return float(np.sqrt(np.mean((field_hz - ph.field_hz.numpy())[mask] ** 2)) * TRT)


@pytest.mark.parametrize("polarity,up_pe,down_pe", [(-1, "j-", "j"), (+1, "j", "j-")])
def test_outputs_keep_geometry_and_field_matches_truth(tmp_path, polarity, up_pe, down_pe):
    ph = phantom(polarity)
    aff = oblique(ph.affine)
    up, down = write_pair(tmp_path / "in", ph, affine=aff, up_pe=up_pe, down_pe=down_pe)
    before = snapshot(tmp_path / "in")
    out = correct_files(up, down, tmp_path / "out" / "sub-01_", **FAST)
    ref = nib.load(str(up))
    niftis = [k for k, p in out.paths.items() if p.name.endswith(".nii.gz")]
    assert len(niftis) == 8
    for key in niftis:
        img = nib.load(str(out.paths[key]))
        assert img.shape == SHAPE, key
        assert np.allclose(img.affine, ref.affine, atol=1e-5), key
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 2
        assert img.header.get_xyzt_units() == ("mm", "sec")
        side = json.loads(out.paths[f"{key}_json"].read_text())
        assert side["DistortionCorrection"]["TotalReadoutTime"] == TRT
    assert json.loads(out.paths["fieldmap_json"].read_text())["Units"] == "Hz"
    # the field in Hz agrees with the phantom's truth (sign convention end to end)
    field = nib.load(str(out.paths["fieldmap"])).get_fdata()
    peak = float(np.abs(ph.field_hz.numpy()).max()) * TRT
    assert peak > 1.0
    assert _field_rmse_vox(field, ph) < 0.15 * peak
    # displacement maps are the up image's b (voxels) and b*h_PE (mm)
    b = nib.load(str(out.paths["displacement_vox"])).get_fdata()
    mm = nib.load(str(out.paths["displacement_mm"])).get_fdata()
    assert np.allclose(b, polarity * field * TRT, atol=1e-5)
    assert np.allclose(mm, b * 3.0, atol=1e-5)  # VOXEL[1] = 3 mm along PE
    assert np.allclose(b, out.result.displacement.numpy(), atol=1e-6)
    jac = nib.load(str(out.paths["jacobian_up"])).get_fdata()
    assert jac.min() > 0 and nib.load(str(out.paths["jacobian_down"])).get_fdata().min() > 0
    m = out.metrics["result"]
    assert m["rms_distance_after"] < 0.5 * m["rms_distance_before"]
    assert out.metrics["acquisition"]["pe_up"] == up_pe
    assert snapshot(tmp_path / "in") == before  # inputs untouched
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in out.paths.values()
    )  # no temp folder left


@pytest.mark.parametrize(
    "perm,flips",
    [
        ((1, 2, 0), (True, False, True)),  # PE axis j becomes i, flipped
        ((2, 0, 1), (False, True, True)),  # PE axis j becomes k, flipped; i flipped too
        ((0, 1, 2), (True, False, False)),  # only a non-PE axis flipped
    ],
)
def test_reoriented_copy_gives_the_same_world_space_field(tmp_path, perm, flips):
    ph = phantom(-1)
    base = correct_files(*write_pair(tmp_path / "a", ph), tmp_path / "a" / "r_", **FAST)
    f0 = nib.load(str(base.paths["fieldmap"])).get_fdata()
    up_r, aff_r = reorient(ph.up.numpy(), ph.affine, perm, flips)
    down_r, _ = reorient(ph.down.numpy(), ph.affine, perm, flips)
    # the sidecars describe the same physical direction (up: j-) in the new voxel axes
    axis = perm.index(1)
    sign = -1 * (-1 if flips[axis] else 1)
    up_pe = "ijk"[axis] + ("-" if sign < 0 else "")
    down_pe = "ijk"[axis] + ("" if sign < 0 else "-")
    paths = write_pair(
        tmp_path / "b",
        ph,
        affine=aff_r,
        up_pe=up_pe,
        down_pe=down_pe,
        up_data=up_r,
        down_data=down_r,
    )
    res = correct_files(*paths, tmp_path / "b" / "r_", **FAST)
    img = nib.load(str(res.paths["fieldmap"]))
    assert np.allclose(img.affine, aff_r, atol=1e-5)
    assert img.shape == up_r.shape
    f1 = undo_reorient(img.get_fdata(), perm, flips)
    scale = float(np.abs(f0).max())
    assert np.abs(f1 - f0).max() <= 1e-3 * scale
    # the anatomical code "AP" maps through the new affine to the same direction
    res2 = correct_files(
        *write_pair(
            tmp_path / "c",
            ph,
            affine=aff_r,
            up_pe=None,
            down_pe=None,
            up_data=up_r,
            down_data=down_r,
        ),
        tmp_path / "c" / "r_",
        pe_dir="AP",
        **FAST,
    )
    assert res2.acquisition.pe_up.code == up_pe
    f2 = undo_reorient(nib.load(str(res2.paths["fieldmap"])).get_fdata(), perm, flips)
    assert np.abs(f2 - f0).max() <= 1e-3 * scale


def test_swapping_up_and_down_keeps_the_field_in_hz(tmp_path):
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph)
    a = correct_files(up, down, tmp_path / "a_", **FAST)
    b = correct_files(down, up, tmp_path / "b_", **FAST)
    fa = nib.load(str(a.paths["fieldmap"])).get_fdata()
    fb = nib.load(str(b.paths["fieldmap"])).get_fdata()
    # b (voxels) changes sign with the roles; the physical field in Hz does not
    da = nib.load(str(a.paths["displacement_vox"])).get_fdata()
    db = nib.load(str(b.paths["displacement_vox"])).get_fdata()
    scale = float(np.abs(fa).max())
    assert np.abs(fa - fb).max() <= 2e-2 * scale
    assert np.abs(da + db).max() <= 2e-2 * scale * TRT


def test_apply_series_with_either_polarity(tmp_path):
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph)
    w = np.array([1.0, 0.5, 0.25], np.float32)
    dwi_up = save(
        tmp_path / "in" / "dwi_ap.nii.gz",
        ph.up.numpy()[..., None] * w,
        ph.affine,
        {"PhaseEncodingDirection": "j-", "TotalReadoutTime": TRT},
    )
    dwi_dn = save(
        tmp_path / "in" / "dwi_pa.nii.gz",
        ph.down.numpy()[..., None] * w,
        ph.affine,
        {"PhaseEncodingDirection": "j"},
    )
    out = correct_files(up, down, tmp_path / "o_", apply=[dwi_up, dwi_dn], **FAST)
    cu = nib.load(str(out.paths["up_corrected"])).get_fdata()
    cd = nib.load(str(out.paths["down_corrected"])).get_fdata()
    au = nib.load(str(out.paths["apply:dwi_ap"])).get_fdata()
    ad = nib.load(str(out.paths["apply:dwi_pa"])).get_fdata()
    assert au.shape == (*SHAPE, 3)
    tol = 1e-5 * float(np.abs(cu).max())
    assert np.abs(au - cu[..., None] * w).max() <= tol
    assert np.abs(ad - cd[..., None] * w).max() <= tol
    assert np.allclose(nib.load(str(out.paths["apply:dwi_ap"])).affine, ph.affine)


def test_apply_series_on_another_axis_is_refused(tmp_path):
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph)
    s = save(
        tmp_path / "in" / "bold.nii.gz",
        np.stack([ph.up.numpy()] * 2, -1),
        ph.affine,
        {"PhaseEncodingDirection": "i"},
    )
    with pytest.raises(EPIInputError, match="same PE axis"):
        correct_files(up, down, tmp_path / "out" / "x_", apply=[s], **FAST)
    assert not (tmp_path / "out").exists()


def test_four_d_pair_from_one_file(tmp_path):
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph)
    ref = correct_files(up, down, tmp_path / "ref_", **FAST)
    pair = save(
        tmp_path / "in" / "b0s.nii.gz",
        np.stack([ph.up.numpy(), ph.down.numpy()], -1),
        ph.affine,
        {"PhaseEncodingDirection": "j-", "TotalReadoutTime": TRT},
    )
    with pytest.raises(EPIInputError, match="--up-volume and --down-volume"):
        correct_files(pair, pair, tmp_path / "x_", pe_dir="j-", **FAST)
    with pytest.raises(EPIInputError, match="--pe-dir"):
        correct_files(pair, pair, tmp_path / "x_", up_volume=0, down_volume=1, **FAST)
    with pytest.raises(EPIInputError, match="4-D series with 2 volumes"):
        correct_files(pair, down, tmp_path / "x_", **FAST)
    out = correct_files(
        pair, pair, tmp_path / "p_", up_volume=0, down_volume=1, pe_dir="j-", **FAST
    )
    assert out.acquisition.readout_time == TRT  # still read from the shared sidecar
    assert np.array_equal(
        nib.load(str(out.paths["fieldmap"])).get_fdata(),
        nib.load(str(ref.paths["fieldmap"])).get_fdata(),
    )
    assert not list(tmp_path.glob("x_*"))


# ---- bad input: clear error, no outputs, inputs untouched -------------------------------


def _bad_case(tmp_path, case):
    ph = phantom(-1)
    d = tmp_path / "in"
    kw = {}
    if case == "shape":
        up, down = write_pair(d, ph, down_data=ph.down.numpy()[:, :, :-1])
        return up, down, kw, EPIInputError, "differ in shape"
    if case == "affine":
        up, down = write_pair(d, ph)
        shifted = ph.affine.copy()
        shifted[0, 3] += 2.0
        save(down, ph.down, shifted, {"PhaseEncodingDirection": "j", "TotalReadoutTime": TRT})
        return up, down, kw, EPIInputError, "different affines"
    if case == "same_polarity":
        up, down = write_pair(d, ph, up_pe="j", down_pe="j")
        return up, down, kw, EPIInputError, "same phase-encoding polarity"
    if case == "no_readout":
        up, down = write_pair(d, ph, trt=None)
        return up, down, kw, EPIInputError, "readout time is unknown"
    if case == "non_finite":
        bad = ph.down.numpy().copy()
        bad[3, 4, 5] = np.nan
        up, down = write_pair(d, ph, down_data=bad)
        return up, down, kw, EPIInputError, "non-finite"
    if case == "two_d":
        up, down = write_pair(d, ph)
        nib.save(nib.Nifti1Image(ph.down.numpy()[:, :, 0], ph.affine), str(down))
        return up, down, kw, EPIInputError, "2-D images"
    if case == "unreadable":
        up, down = write_pair(d, ph)
        down.write_bytes(b"\x1f\x8b garbage")
        return up, down, kw, EPIInputError, "cannot read"
    if case == "missing":
        up, down = write_pair(d, ph)
        down.unlink()
        return up, down, kw, FileNotFoundError, "does not exist"
    if case == "complex":
        up, down = write_pair(d, ph)
        nib.save(nib.Nifti1Image(ph.down.numpy().astype(np.complex64), ph.affine), str(down))
        return up, down, kw, EPIInputError, "complex-valued"
    if case == "estimator_fails":
        up, down = write_pair(d, ph)
        return up, down, {"alpha": -1.0}, ValueError, "alpha"
    raise AssertionError(case)


BAD_CASES = [
    "shape",
    "affine",
    "same_polarity",
    "no_readout",
    "non_finite",
    "two_d",
    "unreadable",
    "missing",
    "complex",
    "estimator_fails",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_refused_without_partial_outputs(tmp_path, case):
    up, down, kw, exc, msg = _bad_case(tmp_path, case)
    before = snapshot(tmp_path / "in")
    with pytest.raises(exc, match=msg):
        correct_files(up, down, tmp_path / "out" / "sub_", **{**FAST, **kw})
    assert not (tmp_path / "out").exists()
    assert snapshot(tmp_path / "in") == before


def test_outputs_never_overwrite_inputs(tmp_path):
    ph = phantom(-1)
    d = tmp_path / "in"
    d.mkdir()
    # inputs named like the outputs of prefix "res_"
    up = save(
        d / "res_fieldmap.nii.gz",
        ph.up,
        ph.affine,
        {"PhaseEncodingDirection": "j-", "TotalReadoutTime": TRT},
    )
    down = save(
        d / "pa.nii.gz",
        ph.down,
        ph.affine,
        {"PhaseEncodingDirection": "j", "TotalReadoutTime": TRT},
    )
    before = snapshot(d)
    for overwrite in (False, True):
        with pytest.raises(EPIInputError, match="would overwrite the input"):
            correct_files(up, down, d / "res_", overwrite=overwrite, **FAST)
        assert snapshot(d) == before


def test_existing_outputs_need_overwrite(tmp_path):
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph)
    first = correct_files(up, down, tmp_path / "o_", **FAST)
    old = snapshot(tmp_path)
    with pytest.raises(EPIInputError, match=r"already exist.*--overwrite"):
        correct_files(up, down, tmp_path / "o_", **FAST)
    assert snapshot(tmp_path) == old
    again = correct_files(up, down, tmp_path / "o_", overwrite=True, alpha=100.0, **FAST)
    assert set(again.paths) == set(first.paths)
    assert json.loads(again.paths["metrics"].read_text())["parameters"]["alpha"] == 100.0


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph)
    real = _pipeline.save_nifti
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(_pipeline, "save_nifti", flaky)
    with pytest.raises(OSError, match="disk full"):
        correct_files(up, down, tmp_path / "out" / "deep" / "s_", **FAST)
    assert len(calls) == 4
    assert not (tmp_path / "out").exists()


def test_failure_while_renaming_restores_previous_outputs(tmp_path, monkeypatch):
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph)
    correct_files(up, down, tmp_path / "out" / "s_", **FAST)
    old = snapshot(tmp_path / "out")
    real = _pipeline.os.replace
    calls = []

    def flaky(src, dst):
        calls.append(1)
        if len(calls) == 7:
            raise OSError("rename failed")
        return real(src, dst)

    monkeypatch.setattr(_pipeline.os, "replace", flaky)
    with pytest.raises(OSError, match="rename failed"):
        correct_files(up, down, tmp_path / "out" / "s_", overwrite=True, alpha=50.0, **FAST)
    monkeypatch.setattr(_pipeline.os, "replace", real)
    assert snapshot(tmp_path / "out") == old


def test_output_names():
    p = output_paths("res/sub-01_", ["x/dwi.nii.gz"])
    assert p["fieldmap"].as_posix() == "res/sub-01_fieldmap.nii.gz"
    assert p["fieldmap_json"].as_posix() == "res/sub-01_fieldmap.json"
    assert p["apply:dwi"].as_posix() == "res/sub-01_dwi_corrected.nii.gz"
    assert p["qc_html"].as_posix() == "res/sub-01_qc.html"
    assert output_paths("res/")["corrected"].as_posix() == "res/corrected.nii.gz"
    with pytest.raises(EPIInputError, match="share the name"):
        output_paths("res/", ["a/dwi.nii.gz", "b/dwi.nii"])


@pytest.mark.parametrize("prefix", ["res/", "res/sub-01_"])
def test_every_output_gets_its_own_file(prefix):
    apply = ["a/dwi.nii.gz", "b/up_series.nii", "c/corrected.nii.gz", "d/fieldmap.nii.gz"]
    for qc in (True, False):
        p = output_paths(prefix, apply, qc=qc)
        names = [q.as_posix().casefold() for q in p.values()]
        assert len(set(names)) == len(names) == 2 * (8 + len(apply)) + (3 if qc else 1)


@pytest.mark.parametrize(
    "apply, clash",
    [
        ("x/up.nii.gz", "up_corrected.nii.gz"),
        ("x/down.nii", "down_corrected.nii.gz"),
        ("x/Up.nii.gz", "up_corrected.nii.gz"),  # same file on a case-insensitive system
    ],
)
def test_apply_series_named_like_an_own_output_is_refused(apply, clash):
    with pytest.raises(EPIInputError) as e:
        output_paths("res/sub-01_", [apply])
    msg = str(e.value)
    # the message names both owners of the file and how to rename
    assert f"--apply series '{apply}'" in msg and "own output" in msg
    assert f"res/sub-01_{clash}" in msg and "_series.nii.gz" in msg


def test_apply_series_named_up_does_not_replace_the_corrected_pair(tmp_path):
    # the audit's case: a 4-D series whose file is called up.nii.gz
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph)
    series = save(
        tmp_path / "in" / "up.nii.gz",
        np.stack([ph.up.numpy()] * 3, -1),
        ph.affine,
        {"PhaseEncodingDirection": "j-", "TotalReadoutTime": TRT},
    )
    before = snapshot(tmp_path)
    with pytest.raises(EPIInputError, match=r"up_corrected.*would both be written"):
        correct_files(up, down, f"{tmp_path / 'out'}/", apply=[series], **FAST)
    assert snapshot(tmp_path) == before  # nothing written, inputs untouched
    # two series whose names differ only in letter case are refused as well
    other = save(tmp_path / "in" / "UP_b.nii.gz", ph.up, ph.affine)
    with pytest.raises(EPIInputError, match="share the name"):
        output_paths(tmp_path / "out", [tmp_path / "in" / "up_b.nii.gz", other])


@pytest.mark.parametrize("as_type", [str, lambda p: p])
def test_a_single_apply_path_is_one_series(tmp_path, as_type):
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph)
    w = np.array([1.0, 0.5], np.float32)
    dwi = save(
        tmp_path / "in" / "dwi.nii.gz",
        ph.up.numpy()[..., None] * w,
        ph.affine,
        {"PhaseEncodingDirection": "j-", "TotalReadoutTime": TRT},
    )
    out = correct_files(up, down, tmp_path / "o_", apply=as_type(dwi), **FAST)
    assert [k for k in out.paths if k.startswith("apply:") and not k.endswith("_json")] == [
        "apply:dwi"
    ]
    assert [a["path"] for a in out.metrics["inputs"]["apply"]] == [str(dwi)]
    cu = nib.load(str(out.paths["up_corrected"])).get_fdata()
    got = nib.load(str(out.paths["apply:dwi"])).get_fdata()
    assert np.abs(got - cu[..., None] * w).max() <= 1e-5 * float(np.abs(cu).max())


def test_unconverged_solve_warns_and_the_summary_says_so(tmp_path):
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EPIConvergenceWarning)  # converged: no warning
        ok = correct_files(up, down, tmp_path / "gn_", **FAST)
    assert ok.metrics["result"]["status"] == "CONVERGED"
    assert "NOT CONVERGED" not in ok.summary
    with pytest.warns(EPIConvergenceWarning, match=r"MAX_ITERATIONS.*--solver gn.*--max-iter"):
        lb = correct_files(up, down, tmp_path / "lb_", solver="lbfgs", **FAST)
    assert lb.metrics["result"]["status"] == "MAX_ITERATIONS"
    assert "NOT CONVERGED (lbfgs stopped with status MAX_ITERATIONS after 50 iterations)" in (
        lb.summary
    )
    assert lb.paths["fieldmap"].is_file()  # the outputs are still written


@pytest.mark.parametrize("solver", ["gn", "lbfgs"])
def test_convergence_warning_names_the_status_and_a_remedy(solver):
    from odeflow.optim import Status

    for status in Status:
        if status is Status.CONVERGED:
            continue
        msg = _pipeline._not_converged(solver, status, 7, 10)
        assert f"({solver})" in msg and "7 iterations" in msg and status.name in msg
        assert "--max-iter (now 10" in msg or "--solver" in msg, msg


def test_unavailable_or_unknown_device_is_refused(tmp_path):
    import torch

    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph)
    bad = ["tpu", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in bad:
        with pytest.raises(EPIInputError, match="device"):
            correct_files(up, down, tmp_path / "out" / "s_", device=device, **FAST)
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
def test_cuda_matches_cpu(tmp_path, cuda):
    ph = phantom(-1)
    up, down = write_pair(tmp_path / "in", ph)
    series = save(
        tmp_path / "in" / "dwi.nii.gz",
        np.stack([ph.up.numpy()] * 3, -1),
        ph.affine,
        {"PhaseEncodingDirection": "j-", "TotalReadoutTime": TRT},
    )
    outs = {}
    for device in ("cpu", str(cuda)):
        res = correct_files(
            up, down, tmp_path / device / "s_", device=device, apply=[series], **FAST
        )
        assert res.metrics["parameters"]["device"].startswith(device.split(":")[0])
        outs[device] = {
            k: nib.load(str(res.paths[k])).get_fdata()
            for k in ("fieldmap", "up_corrected", "apply:dwi")
        }
    a, b = outs["cpu"], outs[str(cuda)]
    for k in a:
        scale = float(np.abs(a[k]).max())
        assert np.abs(a[k] - b[k]).max() <= 1e-3 * scale, k


def test_single_slice_volume_is_corrected(tmp_path):
    ph = phantom(-1)
    up, down = write_pair(
        tmp_path / "in",
        ph,
        up_data=ph.up.numpy()[:, :, 8:9],
        down_data=ph.down.numpy()[:, :, 8:9],
    )
    out = correct_files(up, down, tmp_path / "o_", verbose=False)
    assert nib.load(str(out.paths["fieldmap"])).shape == (SHAPE[0], SHAPE[1], 1)
    assert out.paths["qc_png"].stat().st_size > 0
    r = out.metrics["result"]
    assert r["rms_distance_after"] < r["rms_distance_before"]


@pytest.mark.parametrize("unit, factor", [("micron", 1000.0), ("meter", 1e-3)])
def test_spatial_unit_of_the_header_is_honoured(tmp_path, unit, factor):
    # an affine in microns used to give displacement_mm 1000x too large; one in metres gave a
    # voxel volume ~1e-8 that stopped the solver at the OT start (a different field in Hz)
    ph = phantom(-1)
    ref = correct_files(*write_pair(tmp_path / "mm", ph), tmp_path / "mm_", **FAST)
    affine = ph.affine.copy()
    affine[:3] *= factor
    paths = []
    for name, data, pe in (("up", ph.up, "j-"), ("down", ph.down, "j")):
        img = nib.Nifti1Image(data.numpy(), affine)
        img.header.set_xyzt_units(unit, "sec")
        nib.save(img, str(tmp_path / f"{name}.nii.gz"))
        (tmp_path / f"{name}.json").write_text(
            json.dumps({"PhaseEncodingDirection": pe, "TotalReadoutTime": TRT})
        )
        paths.append(tmp_path / f"{name}.nii.gz")
    out = correct_files(*paths, tmp_path / "u_", **FAST)
    assert out.metrics["inputs"]["voxel_size_mm"] == pytest.approx(
        ref.metrics["inputs"]["voxel_size_mm"]
    )
    for key in ("displacement_mm", "fieldmap"):
        got = nib.load(str(out.paths[key])).get_fdata()
        want = nib.load(str(ref.paths[key])).get_fdata()
        assert np.allclose(got, want, atol=1e-3 * np.abs(want).max())


def test_affine_mismatch_is_judged_in_mm_whatever_the_unit(tmp_path):
    # with affines in metres the 1e-3 tolerance was a quarter of a voxel: a pair shifted by
    # 0.5 mm was accepted as the same grid
    ph = phantom(-1)
    affine = ph.affine.copy()
    affine[:3] *= 1e-3
    shifted = affine.copy()
    shifted[1, 3] += 0.5e-3
    paths = []
    for name, data, aff in (("up", ph.up, affine), ("down", ph.down, shifted)):
        img = nib.Nifti1Image(data.numpy(), aff)
        img.header.set_xyzt_units("meter", "sec")
        nib.save(img, str(tmp_path / f"{name}.nii.gz"))
        paths.append(tmp_path / f"{name}.nii.gz")
    with pytest.raises(EPIInputError, match="different affines"):
        correct_files(*paths, tmp_path / "o_", pe_dir="j-", readout_time=TRT, **FAST)
