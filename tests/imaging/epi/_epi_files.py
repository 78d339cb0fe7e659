"""Helpers for the file-level EPI tests: small phantom pairs on disk, reorientation, snapshots."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np

SHAPE = (16, 22, 16)
VOXEL = (4, 3, 4)
TRT = 0.05


@functools.lru_cache(maxsize=4)
def phantom(polarity: int = -1, snr: float | None = None):
    """A small anisotropic phantom (PE along j, peak 1.5 voxels), cached per process."""
    from odeflow.imaging.epi import make_phantom

    return make_phantom(
        voxel_size=VOXEL,
        shape=SHAPE,
        pe_axis=1,
        polarity=polarity,
        peak_displacement=1.5,
        readout_time=TRT,
        snr=snr,
        seed=3,
    )


def oblique(affine: np.ndarray, angle: float = 0.25) -> np.ndarray:
    """``affine`` rotated about the world z axis by ``angle`` radians (an oblique scan)."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.eye(4)
    rot[:2, :2] = [[c, -s], [s, c]]
    return rot @ affine


def save(path: Path, data, affine, meta: dict | None = None, *, qcode=1, scode=2) -> Path:
    import nibabel as nib

    arr = np.asarray(data.numpy() if hasattr(data, "numpy") else data, dtype=np.float32)
    img = nib.Nifti1Image(arr, affine)
    img.header.set_qform(affine, code=qcode)
    img.header.set_sform(affine, code=scode)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    if meta is not None:
        side = path.with_name(path.name.replace(".nii.gz", "").replace(".nii", "") + ".json")
        side.write_text(json.dumps(meta))
    return path


def write_pair(
    directory: Path,
    ph,
    *,
    affine=None,
    up_pe="j-",
    down_pe="j",
    trt=TRT,
    up_data=None,
    down_data=None,
    name="sub-01",
):
    """Write ``ph``'s up/down as ``<name>_dir-AP_epi.nii.gz`` / ``dir-PA`` with sidecars.

    ``up_pe``/``down_pe``/``trt`` set to ``None`` leave the field out of the sidecar.
    """
    directory.mkdir(parents=True, exist_ok=True)
    affine = ph.affine if affine is None else affine
    paths = []
    for tag, data, pe in (
        ("AP", ph.up if up_data is None else up_data, up_pe),
        ("PA", ph.down if down_data is None else down_data, down_pe),
    ):
        meta = {}
        if pe is not None:
            meta["PhaseEncodingDirection"] = pe
        if trt is not None:
            meta["TotalReadoutTime"] = trt
        paths.append(save(directory / f"{name}_dir-{tag}_epi.nii.gz", data, affine, meta))
    return paths[0], paths[1]


def reorient(data: np.ndarray, affine: np.ndarray, perm, flips):
    """``np.flip(np.transpose(data, perm), flipped axes)`` and its affine (same world grid)."""
    out = np.transpose(np.asarray(data), perm)
    new = np.eye(4)
    new[:, :3] = affine[:, list(perm)]
    new[:, 3] = affine[:, 3]
    for ax, f in enumerate(flips):
        if f:
            out = np.flip(out, axis=ax)
            new[:3, 3] += new[:3, ax] * (out.shape[ax] - 1)
            new[:3, ax] *= -1
    return np.ascontiguousarray(out), new


def undo_reorient(data: np.ndarray, perm, flips) -> np.ndarray:
    """Inverse of :func:`reorient` on the data."""
    out = np.asarray(data)
    for ax, f in enumerate(flips):
        if f:
            out = np.flip(out, axis=ax)
    return np.transpose(out, np.argsort(perm))


def snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file under ``directory``."""
    return {
        str(p.relative_to(directory)): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
