"""NIfTI reading and writing that keeps the scan's geometry (affine, qform/sform codes, header).

Every image odeflow writes for an input scan carries that scan's affine, its qform and sform
codes and the rest of its header (units, slice timing, TR), with the data type set to float32
and the scaling reset.  Reading validates what the correction needs: a readable NIfTI-1/2 file,
real-valued (magnitude, not complex) 3-D data (or one chosen volume of a 4-D series), finite
voxels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["EPIInputError", "NiftiImage", "load_nifti", "save_nifti", "voxel_sizes"]

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


class EPIInputError(ValueError):
    """Raised when an input scan or its metadata cannot be used for distortion correction."""


def _nibabel() -> Any:
    try:
        import nibabel
    except ImportError as exc:  # pragma: no cover - nibabel is part of the `epi` extra
        raise ImportError(
            "odeflow.imaging.epi needs nibabel for NIfTI I/O; install it with "
            "`pip install 'odeflow[epi]'`"
        ) from exc
    return nibabel


def voxel_sizes(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel edge lengths (mm) along the three array axes: the column norms of ``affine[:3, :3]``.

    For an affine ``A`` mapping voxel indices ``(i, j, k, 1)`` to world millimetres, the step
    along array axis ``a`` is the column ``A[:3, a]``; its Euclidean norm is the voxel size
    along that axis, whatever the rotation, flips or shears of the scan orientation.

    Args:
        affine: (4, 4) voxel-to-world matrix.

    Returns:
        ``(h_0, h_1, h_2)`` in the affine's units (mm for NIfTI).

    Raises:
        EPIInputError: if the affine is not a finite (4, 4) matrix or is singular.

    Example:
        >>> import numpy as np
        >>> voxel_sizes(np.diag([-2.0, 2.0, 2.5, 1.0]))
        (2.0, 2.0, 2.5)
    """
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise EPIInputError(f"the affine must be a finite 4x4 matrix, got shape {a.shape}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise EPIInputError(
            "the affine's 3x3 part is singular: the file's qform/sform is broken; "
            "fix the header (e.g. with nibabel or fslorient) before correcting"
        )
    h = np.linalg.norm(a[:3, :3], axis=0)
    return (float(h[0]), float(h[1]), float(h[2]))


@dataclass(frozen=True)
class NiftiImage:
    """A NIfTI image in memory: voxel data, the voxel-to-world affine and the full header.

    Attributes:
        data: (X, Y, Z) or (X, Y, Z, T) float32 array, scaling (``scl_slope``) applied.
        affine: (4, 4) float64 voxel-to-world matrix (the header's best affine).
        header: a private copy of the file's header (``nibabel`` ``Nifti1Header`` /
            ``Nifti2Header``); written back by :func:`save_nifti`.
        path: the file it was read from, or ``None``.
        volume: which volume of a 4-D file ``data`` holds (an index, ``"mean"``) or ``None``.
    """

    data: np.ndarray
    affine: np.ndarray
    header: Any
    path: Path | None = None
    volume: int | str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The data shape."""
        return tuple(self.data.shape)

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel edge lengths (mm) along the three array axes, from the affine.

        The affine is in the header's spatial unit (``xyzt_units``): metres and microns are
        converted to mm; an unknown unit is taken as mm (the NIfTI default in practice).
        """
        f = _mm_per_unit(self.header)
        return tuple(f * h for h in voxel_sizes(self.affine))  # type: ignore[return-value]


#: millimetres per NIfTI spatial unit
_MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3}


def _mm_per_unit(header: Any) -> float:
    try:
        unit = header.get_xyzt_units()[0]
    except Exception:  # no header (an in-memory image) or not a NIfTI header
        return 1.0
    return _MM_PER_UNIT.get(unit, 1.0)


def _describe(path: Path | None) -> str:
    return f"'{path}'" if path is not None else "the image"


def load_nifti(
    path: str | os.PathLike[str],
    *,
    volume: int | Literal["mean"] | None = None,
    allow_4d: bool = False,
    check_finite: bool = True,
) -> NiftiImage:
    """Read a ``.nii`` / ``.nii.gz`` file, keeping its affine and header.

    A 4-D file with one volume, ``(X, Y, Z, 1)``, is read as 3-D.  From a 4-D series either
    ``volume`` picks one volume (an index, or ``"mean"`` for the average of all volumes) or
    ``allow_4d=True`` returns the whole series.  Data are returned as float32 with the header's
    scaling applied.

    Args:
        path: the NIfTI-1 or NIfTI-2 file.
        volume: volume index (negative counts from the end) or ``"mean"``; only for 4-D files
            unless it is ``0``.
        allow_4d: return a 4-D series as ``(X, Y, Z, T)`` instead of refusing it.
        check_finite: refuse NaN or infinite voxels.

    Returns:
        :class:`NiftiImage` with ``data`` (X, Y, Z) or (X, Y, Z, T).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        EPIInputError: if the file is not a readable NIfTI image, holds complex values (pass
            the magnitude image), has fewer than 3 or more than 4 dimensions, is 4-D without
            ``volume``/``allow_4d``, ``volume`` is out of range, or it holds non-finite voxels.

    Example:
        >>> import tempfile, numpy as np, nibabel as nib
        >>> d = tempfile.mkdtemp()
        >>> nib.save(nib.Nifti1Image(np.ones((4, 5, 6), np.float32), np.diag([2., 2., 3., 1.])),
        ...          d + "/a.nii.gz")
        >>> img = load_nifti(d + "/a.nii.gz")
        >>> img.shape, img.voxel_size
        ((4, 5, 6), (2.0, 2.0, 3.0))
    """
    nib = _nibabel()
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input image '{p}' does not exist")
    if p.is_dir():
        raise EPIInputError(f"input '{p}' is a directory; give a .nii or .nii.gz file")
    if not p.name.endswith(_NIFTI_SUFFIXES):
        raise EPIInputError(
            f"input '{p}' is not a NIfTI file (expected a .nii or .nii.gz name); convert it "
            "first, e.g. DICOM with dcm2niix"
        )
    try:
        img = nib.load(str(p))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise TypeError(f"read as {type(img).__name__}, not NIfTI")
        stored = np.dtype(img.get_data_dtype())
        if stored.kind == "c":  # get_fdata would drop the imaginary part with a mere warning
            raise EPIInputError(
                f"{_describe(p)} holds complex-valued data ({stored}); the correction needs real "
                "magnitude images. Pass the magnitude instead, e.g. with nibabel and numpy: "
                "img = nib.load(path); nib.save(nib.Nifti1Image(np.abs(np.asanyarray("
                "img.dataobj)).astype(np.float32), img.affine), 'magnitude.nii.gz')"
            )
        data = np.asarray(img.get_fdata(dtype=np.float32))
        affine = np.asarray(img.affine, dtype=np.float64)
        header = img.header.copy()
    except EPIInputError:
        raise
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise EPIInputError(
            f"cannot read {_describe(p)} as a NIfTI image ({type(exc).__name__}: {exc}); "
            "is the file complete and not corrupted?"
        ) from exc
    return _validated(
        data, affine, header, p, volume=volume, allow_4d=allow_4d, check_finite=check_finite
    )


def _validated(
    data: np.ndarray,
    affine: np.ndarray,
    header: Any,
    path: Path | None,
    *,
    volume: int | str | None,
    allow_4d: bool,
    check_finite: bool,
) -> NiftiImage:
    name = _describe(path)
    if data.ndim == 4 and data.shape[3] == 1 and volume is None:
        # one volume and none asked for: a 3-D image (a chosen index goes through the 4-D
        # path below, so that -1 picks it and 1 is out of range)
        data = data[..., 0]
    if data.ndim < 3 or (data.ndim == 3 and min(data.shape) < 1):
        raise EPIInputError(
            f"{name} has shape {data.shape}: a 3-D volume (X, Y, Z) is needed, 2-D images "
            "cannot be corrected; save single slices as (X, Y, 1)"
        )
    if data.ndim > 4:
        raise EPIInputError(
            f"{name} has {data.ndim} dimensions {data.shape}; only 3-D volumes and 4-D series "
            "are supported"
        )
    chosen: int | str | None = None
    if data.ndim == 4:
        n = data.shape[3]
        if volume is None:
            if not allow_4d:
                raise EPIInputError(
                    f"{name} is a 4-D series with {n} volumes; choose the volume to use "
                    "(--up-volume/--down-volume INDEX, or 'mean' to average them)"
                )
        elif isinstance(volume, str):
            if volume != "mean":
                raise EPIInputError(f"volume must be an index or 'mean', got {volume!r}")
            data = data.mean(axis=3, dtype=np.float64).astype(np.float32)
            chosen = "mean"
        else:
            v = int(volume)
            if not -n <= v < n:
                raise EPIInputError(f"volume {v} is out of range for {name} with {n} volumes")
            data = np.ascontiguousarray(data[..., v])
            chosen = v % n
    elif volume is not None and volume not in (0, "mean"):
        raise EPIInputError(f"volume {volume!r} requested but {name} is 3-D (one volume)")
    voxel_sizes(affine)  # validates the affine
    if check_finite:
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise EPIInputError(
                f"{name} has {bad} non-finite (NaN or infinite) voxels; replace them (e.g. by 0) "
                "before correcting"
            )
    return NiftiImage(data=data, affine=affine, header=header, path=path, volume=chosen)


def save_nifti(
    data: np.ndarray,
    reference: NiftiImage,
    path: str | os.PathLike[str],
    *,
    description: str = "odeflow",
) -> Path:
    """Write ``data`` as NIfTI with ``reference``'s affine, qform/sform codes and header.

    The data type becomes float32 with no scaling; the spatial grid must be the reference's,
    a 4th dimension (a series) is allowed.  Units, TR, slice information and the image class
    (NIfTI-1 or NIfTI-2) are those of the reference.

    Args:
        data: (X, Y, Z) or (X, Y, Z, T) array on the reference grid.
        reference: the image whose geometry is kept.
        path: output ``.nii`` / ``.nii.gz`` file (written directly; see the pipeline for the
            atomic temp-then-rename protocol).
        description: the header's ``descrip`` field (truncated to 79 characters).

    Returns:
        The written path.

    Raises:
        EPIInputError: if ``data`` is not on the reference's spatial grid or not finite.

    Example:
        >>> import tempfile, numpy as np
        >>> ref = NiftiImage(np.zeros((3, 4, 5), np.float32), np.diag([-2., 2., 2., 1.]),
        ...                  header=None)
        >>> out = save_nifti(np.ones((3, 4, 5)), ref, tempfile.mkdtemp() + "/b.nii.gz")
        >>> np.allclose(load_nifti(out).affine, ref.affine)
        True
    """
    nib = _nibabel()
    arr = np.asarray(data, dtype=np.float32)
    spatial = tuple(reference.data.shape[:3])
    if arr.ndim not in (3, 4) or tuple(arr.shape[:3]) != spatial:
        raise EPIInputError(f"output of shape {arr.shape} is not on the reference grid {spatial}")
    if not np.all(np.isfinite(arr)):
        raise EPIInputError(f"refusing to write non-finite values to '{path}'")
    if reference.header is None:
        img = nib.Nifti1Image(arr, reference.affine)
        img.header.set_qform(reference.affine, code=1)
        img.header.set_sform(reference.affine, code=1)
    else:
        klass = (
            nib.Nifti2Image if isinstance(reference.header, nib.Nifti2Header) else (nib.Nifti1Image)
        )
        hdr = reference.header.copy()
        qform, qcode = reference.header.get_qform(coded=True)
        sform, scode = reference.header.get_sform(coded=True)
        img = klass(arr, reference.affine, header=hdr)
        # keep the original codes (nibabel would otherwise relabel them "aligned"/"unknown")
        img.header.set_qform(qform, code=int(qcode))
        img.header.set_sform(sform, code=int(scode))
    img.set_data_dtype(np.float32)
    img.header["scl_slope"] = np.nan
    img.header["scl_inter"] = np.nan
    img.header["cal_min"] = 0.0
    img.header["cal_max"] = 0.0
    img.header["descrip"] = description.encode("ascii", "replace")[:79]
    out = Path(path)
    nib.save(img, str(out))
    return out
