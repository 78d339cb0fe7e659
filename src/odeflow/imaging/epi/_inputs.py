"""Reading and validating the inputs of :func:`~odeflow.imaging.epi.correct_files`: the
blip-up/blip-down pair with its acquisition, and the series to correct with the field."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._bids import (
    Acquisition,
    PhaseEncoding,
    parse_pe_direction,
    read_sidecar,
    readout_time_from_sidecar,
    resolve_acquisition,
)
from ._nifti import EPIInputError, NiftiImage, _mm_per_unit, load_nifti
from ._outputs import same_file

__all__ = ["ApplySeries", "PairInputs", "read_apply_series", "read_pair"]

#: affines of up and down may differ by this much (mm, or relative for the 3x3 part)
_AFFINE_ATOL = 1e-3


@dataclass(frozen=True)
class PairInputs:
    """The validated blip-up/blip-down pair.

    Attributes:
        up_path, down_path: the files read.
        up, down: the selected 3-D volumes (same grid and affine).
        meta_up, meta_down: their BIDS sidecars (``{}`` when absent).
        acquisition: the resolved phase encodings and readout time.
    """

    up_path: Path
    down_path: Path
    up: NiftiImage
    down: NiftiImage
    meta_up: dict[str, Any]
    meta_down: dict[str, Any]
    acquisition: Acquisition


@dataclass(frozen=True)
class ApplySeries:
    """A series to correct with the estimated field.

    Attributes:
        path: the file read.
        image: the 3-D or 4-D image, on the pair's grid.
        pe_sign: its phase-encoding sign along the pair's PE axis (±1).
        readout_time: its total readout time (s).
        meta: its BIDS sidecar (``{}`` when absent).
    """

    path: Path
    image: NiftiImage
    pe_sign: int
    readout_time: float
    meta: dict[str, Any]


def check_affines(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Refuse two affines (in mm) that differ by more than ``_AFFINE_ATOL``."""
    diff = np.abs(np.asarray(a) - np.asarray(b))
    scale = max(1.0, float(np.abs(a[:3, :3]).max()))
    if diff[:3, :3].max() > _AFFINE_ATOL * scale or diff[:3, 3].max() > _AFFINE_ATOL * 10:
        raise EPIInputError(
            f"{what} have different affines (max difference {float(diff.max()):.4g}); they must "
            "share the voxel grid and orientation. If one was reoriented or resampled, bring "
            "both to the same grid first"
        )


def affine_mm(img: NiftiImage) -> np.ndarray:
    """``img``'s affine with the world coordinates in mm (the header's unit converted)."""
    a = np.array(img.affine, dtype=np.float64)
    a[:3] *= _mm_per_unit(img.header)
    return a


def _check_pair(up: NiftiImage, down: NiftiImage) -> None:
    if up.shape != down.shape:
        raise EPIInputError(
            f"up {up.shape} and down {down.shape} differ in shape; both must be on the same voxel "
            "grid (they are normally acquired with the same protocol)"
        )
    check_affines(affine_mm(up), affine_mm(down), "up and down")


def read_pair(
    up: Path,
    down: Path,
    *,
    up_volume: int | Literal["mean"] | None,
    down_volume: int | Literal["mean"] | None,
    pe_dir: str | None,
    pe_dir_down: str | None,
    readout_time: float | None,
    ignore_sidecars: bool,
    readout_time_range: tuple[float, float],
) -> PairInputs:
    """Read the pair and its sidecars and resolve the acquisition (see ``correct_files``).

    Raises:
        EPIInputError: one file without two distinct volumes or without ``pe_dir``, images
            on different grids, unresolvable metadata, fewer than 4 voxels along PE.
    """
    one_file = same_file(up, down)
    if one_file:
        if up_volume is None or down_volume is None or up_volume == down_volume:
            raise EPIInputError(
                f"up and down are the same file '{up}'; pick the two volumes with up_volume "
                "and down_volume (--up-volume and --down-volume), e.g. 0 and 1"
            )
        if pe_dir is None:
            raise EPIInputError(
                "up and down come from one file, whose sidecar cannot describe two "
                "polarities; give the up volume's direction with pe_dir (--pe-dir); down is "
                "its opposite"
            )
    img_up = load_nifti(up, volume=up_volume)
    img_down = load_nifti(down, volume=down_volume)
    if one_file and img_up.volume == img_down.volume:  # e.g. -1 and 1 of two volumes
        raise EPIInputError(
            f"up_volume={up_volume} and down_volume={down_volume} are the same volume "
            f"({img_up.volume}) of '{up}'; pick two different volumes (e.g. 0 and 1)"
        )
    _check_pair(img_up, img_down)
    meta_up, meta_down = read_sidecar(up), read_sidecar(down)
    acq = resolve_acquisition(
        img_up.shape,
        img_up.affine,
        meta_up,
        meta_down,
        pe_dir=pe_dir,
        pe_dir_down=pe_dir_down,
        readout_time=readout_time,
        ignore_sidecars=ignore_sidecars or one_file,
        readout_time_range=readout_time_range,
    )
    if img_up.shape[acq.pe_axis] < 4:
        raise EPIInputError(
            f"the images have only {img_up.shape[acq.pe_axis]} voxels along the PE axis "
            f"{acq.pe_up.code[0]}; at least 4 are needed"
        )
    return PairInputs(up, down, img_up, img_down, meta_up, meta_down, acq)


def read_apply_series(
    paths: Sequence[Path],
    pair: PairInputs,
    *,
    apply_pe_dir: str | None,
    readout_time: float | None,
    ignore_sidecars: bool,
    readout_time_range: tuple[float, float],
) -> list[ApplySeries]:
    """Read the series to correct: on the pair's grid and PE axis; PE sign from the sidecar,
    else ``apply_pe_dir``, else the up image's; readout time from an explicit
    ``readout_time``, else the sidecar, else the pair's."""
    acq = pair.acquisition
    out = []
    for a in paths:
        img = load_nifti(a, allow_4d=True)
        if img.shape[:3] != pair.up.shape:
            raise EPIInputError(
                f"the apply series '{a}' has the spatial shape {img.shape[:3]}, not the pair's "
                f"{pair.up.shape}; it must be on the same grid"
            )
        check_affines(affine_mm(img), affine_mm(pair.up), f"the apply series '{a}' and the pair")
        meta = read_sidecar(a)
        pe = _apply_pe(a, img, meta, acq, apply_pe_dir=apply_pe_dir, ignore=ignore_sidecars)
        got = (
            None
            if readout_time is not None
            else readout_time_from_sidecar(
                meta, img.shape[acq.pe_axis], readout_time_range=readout_time_range
            )
        )
        trt = got[0] if got is not None else acq.readout_time
        out.append(ApplySeries(a, img, pe.sign, trt, meta))
    return out


def _apply_pe(a: Path, img: NiftiImage, meta: dict[str, Any], acq: Acquisition, *,
              apply_pe_dir: str | None, ignore: bool) -> PhaseEncoding:  # fmt: skip
    side = None if ignore else meta.get("PhaseEncodingDirection")
    if apply_pe_dir is not None:
        pe = parse_pe_direction(apply_pe_dir, img.affine)
        if side is not None and parse_pe_direction(str(side)) != pe:
            raise EPIInputError(
                f"apply_pe_dir={apply_pe_dir!r} contradicts the sidecar of '{a}' ({side}); if "
                "the sidecar is wrong, pass ignore_sidecars=True"
            )
    elif side is not None:
        pe = parse_pe_direction(str(side))
    else:
        pe = acq.pe_up
    if pe.axis != acq.pe_axis:
        raise EPIInputError(
            f"the apply series '{a}' is phase-encoded along {pe.code}, but the field was "
            f"estimated along {acq.pe_up.code[0]}; it can only correct series with the same "
            "PE axis"
        )
    return pe
