"""The EPI demo: the offline phantom end to end through the file pipeline (``odeflow epi demo``,
``odeflow demo --only epi``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from odeflow._utils import dumps_json
from odeflow.imaging.epi import EPIInputError, correct_files, make_phantom
from odeflow.imaging.epi._outputs import output_paths  # (no public name: the output plan)

__all__ = ["run_demo"]


def _save(data: Any, affine: np.ndarray, path: Path, meta: dict[str, Any] | None = None) -> Path:
    import nibabel as nib

    arr = np.asarray(
        data.detach().cpu().numpy() if hasattr(data, "detach") else data, dtype=np.float32
    )
    img = nib.Nifti1Image(arr, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    if meta is not None:
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(
            json.dumps(meta, indent=2) + "\n"
        )
    return path


#: the demo's inputs (under ``inputs/``), its correction prefix and its summary
_INPUTS = tuple(f"sub-phantom_{n}" for n in ("dir-AP_epi", "dir-PA_epi", "dir-AP_dwi",
                                            "truth_fieldmap", "truth_image"))  # fmt: skip
_PREFIX = "corrected/sub-phantom_"


def _check_out(out_dir: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse an empty ``out_dir`` and, without ``overwrite``, one holding a demo's files."""
    if not os.fspath(out_dir):
        raise EPIInputError("--out is empty; give the demo's output folder, e.g. --out epi-demo")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise EPIInputError(f"--out {out} is an existing file; give a folder for the demo")
    if overwrite:
        return out
    planned = [out / "demo_metrics.json"]
    for stem in _INPUTS:
        planned += [out / "inputs" / f"{stem}.nii.gz", out / "inputs" / f"{stem}.json"]
    planned += output_paths(out / _PREFIX, [Path(f"{_INPUTS[2]}.nii.gz")]).values()
    existing = [p for p in planned if p.exists() or p.is_symlink()]
    if existing:
        raise EPIInputError(
            f"--out {out} holds the files of an earlier demo ({len(existing)}, e.g. "
            f"{existing[0]}); choose another --out or pass --overwrite"
        )
    return out


def run_demo(
    out_dir: Path,
    verbose: bool = True,
    *,
    voxel_size: float = 2.0,
    shape: Sequence[int] | None = None,
    peak_displacement: float = 4.0,
    snr: float | None = 30.0,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Correct the MNI152 phantom end to end: BIDS NIfTIs in, corrected NIfTIs + QC report out.

    1. :func:`~odeflow.imaging.epi.make_phantom` (whole brain at ``voxel_size`` mm, SNR 30, peak
       displacement 4 voxels, PE along j with the up image ``j-``, i.e. anterior→posterior).
    2. Writes ``inputs/sub-phantom_dir-AP_epi.nii.gz`` and ``…dir-PA_epi.nii.gz`` with BIDS
       sidecars (``PhaseEncodingDirection``, ``TotalReadoutTime``), a 3-volume
       ``…dir-AP_dwi.nii.gz`` series, and the ground truth (``…_truth_fieldmap.nii.gz`` in Hz,
       ``…_truth_image.nii.gz``).
    3. Runs :func:`~odeflow.imaging.epi.correct_files` into ``corrected/sub-phantom_`` (with
       ``--apply`` of the series) and compares the field with the truth in the brain mask.

    Args:
        out_dir: output folder (created).
        verbose: progress bars.
        voxel_size, shape, peak_displacement, snr, seed: phantom parameters (see
            :func:`~odeflow.imaging.epi.make_phantom`); ``shape`` crops for quick runs.
        overwrite: replace the files of an earlier demo in ``out_dir`` (refused otherwise).

    Returns:
        Metrics: ``field_rmse_vox`` / ``field_rmse_hz`` / ``field_p95_vox`` (in the mask),
        ``peak_displacement_vox``, ``relative_rms_distance`` (corrected vs uncorrected RMS
        difference of up and down), ``jacobian_min``, ``seconds_total``, ``qc_html`` and the
        other output paths.

    Raises:
        ImportError: without nibabel/nilearn (the ``epi`` extra).
        EPIInputError: ``out_dir`` is empty (it would write into the current folder), or
            holds an earlier demo's files and ``overwrite`` is false.

    Example:
        >>> import tempfile
        >>> res = run_demo(Path(tempfile.mkdtemp()), verbose=False, voxel_size=4.0,
        ...                shape=(16, 20, 16), peak_displacement=1.5)
        >>> res["field_rmse_vox"] < 0.5 and res["jacobian_min"] > 0
        True
    """
    out = _check_out(out_dir, overwrite)
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    ph = make_phantom(
        voxel_size=voxel_size,
        shape=shape,
        pe_axis=1,
        polarity=-1,
        peak_displacement=peak_displacement,
        snr=snr,
        seed=seed,
    )
    trt = float(ph.readout_time)
    up_code = "j-" if ph.polarity < 0 else "j"
    down_code = "j" if ph.polarity < 0 else "j-"
    base = inputs / "sub-phantom"
    meta = {"TotalReadoutTime": trt, "PhaseEncodingDirection": up_code}
    up = _save(ph.up, ph.affine, Path(f"{base}_dir-AP_epi.nii.gz"), meta)
    down = _save(
        ph.down,
        ph.affine,
        Path(f"{base}_dir-PA_epi.nii.gz"),
        {**meta, "PhaseEncodingDirection": down_code},
    )
    weights = np.array([1.0, 0.55, 0.35], dtype=np.float32)
    series = np.asarray(ph.up.cpu().numpy())[..., None] * weights
    dwi = _save(series, ph.affine, Path(f"{base}_dir-AP_dwi.nii.gz"), meta)
    truth_field = _save(
        ph.field_hz, ph.affine, Path(f"{base}_truth_fieldmap.nii.gz"), {"Units": "Hz"}
    )
    _save(ph.truth, ph.affine, Path(f"{base}_truth_image.nii.gz"))

    res = correct_files(up, down, out / _PREFIX, apply=[dwi], verbose=verbose, overwrite=overwrite)
    import nibabel as nib

    field = np.asarray(nib.load(str(res.paths["fieldmap"])).get_fdata())
    mask = np.asarray(ph.mask.cpu().numpy(), dtype=bool)
    err_vox = np.abs(field - np.asarray(ph.field_hz.cpu().numpy()))[mask] * trt
    r = res.metrics["result"]
    summary = {
        "shape": list(ph.up.shape),
        "voxel_size_mm": list(ph.voxel_size),
        "peak_displacement_vox": float(np.abs(ph.displacement.cpu().numpy())[mask].max()),
        "field_rmse_vox": float(np.sqrt(np.mean(err_vox**2))),
        "field_rmse_hz": float(np.sqrt(np.mean(err_vox**2))) / trt,
        "field_p95_vox": float(np.percentile(err_vox, 95)),
        "relative_rms_distance": r["relative_rms_distance"],
        "jacobian_min": min(r["jacobian_up_min"], r["jacobian_down_min"]),
        "status": r["status"],
        "iterations": r["iterations"],
        "seconds_estimate": res.metrics["timings_s"]["estimate"],
        "seconds_total": res.metrics["timings_s"]["total"],
        "qc_html": str(res.paths.get("qc_html", "")),
        "fieldmap": str(res.paths["fieldmap"]),
        "truth_fieldmap": str(truth_field),
    }
    # strict JSON: a non-finite figure is written as null, never as a NaN literal
    text = dumps_json(summary, nonfinite="null")
    (out / "demo_metrics.json").write_text(text + "\n")
    return summary
