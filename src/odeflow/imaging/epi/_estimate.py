"""The numerical steps of :func:`~odeflow.imaging.epi.correct_files`: the device, the field
estimation on the pair, and the correction of further series with the estimated field."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..._utils import check_device
from ._apply import apply_correction
from ._inputs import ApplySeries, PairInputs
from ._nifti import EPIInputError
from ._solve import EPIResult, estimate_field

__all__ = ["correct_series", "estimate_pair", "resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` → CUDA if available, else the CPU; refuse a device that is not a
    CPU or an available CUDA device (``EPIInputError`` naming ``device=...``)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = check_device(device)
    except ValueError as exc:
        raise EPIInputError(str(exc)) from None
    if dev.type not in ("cpu", "cuda"):
        raise EPIInputError(f"device={device!r} is not supported; use 'cpu', 'cuda' or 'cuda:N'")
    return dev


def estimate_pair(
    pair: PairInputs,
    *,
    alpha: float,
    beta: float,
    solver: str,
    levels: int,
    max_iter: int,
    negative: str,
    device: torch.device,
    verbose: bool,
) -> EPIResult:
    """:func:`~odeflow.imaging.epi.estimate_field` on the pair, along its PE axis and with the
    voxel sizes of its affine."""
    return estimate_field(
        pair.up.data,
        pair.down.data,
        pe_axis=pair.acquisition.pe_axis,
        voxel_size=pair.up.voxel_size,
        alpha=alpha,
        beta=beta,
        solver=solver,
        levels=levels,
        max_iter=max_iter,
        negative=negative,
        device=device,
        verbose=verbose,
    )


def correct_series(
    applied: Sequence[ApplySeries],
    result: EPIResult,
    pair: PairInputs,
    field_hz: np.ndarray,
    device: torch.device,
) -> list[np.ndarray]:
    """Each series corrected with ``s · Δf · T`` (its PE sign ``s`` and readout time ``T``),
    as float32 arrays (a long series is written as float32 anyway).

    The staggered (face) field of the estimate is used where available, else ``field_hz``.
    """
    acq = pair.acquisition
    faces = result.displacement_faces
    grid = field_hz
    if faces is not None:
        grid = faces.detach().cpu().numpy().astype(np.float64) * acq.pe_up.sign / acq.readout_time
    out = []
    for s in applied:
        disp = torch.as_tensor(s.pe_sign * grid * s.readout_time, dtype=torch.float32)
        vols = torch.as_tensor(s.image.data)
        vols, disp = vols.to(device), disp.to(device)
        corrected = apply_correction(vols, disp, pe_axis=acq.pe_axis, polarity=+1)
        out.append(corrected.detach().cpu().numpy().astype(np.float32))
        del corrected, vols
    return out
