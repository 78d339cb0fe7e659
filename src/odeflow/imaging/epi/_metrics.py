"""The record of one :func:`~odeflow.imaging.epi.correct_files` run: ``metrics.json`` built
from typed pieces, and the BIDS sidecars of the outputs."""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..._version import __version__
from ._bids import Acquisition
from ._inputs import ApplySeries, PairInputs
from ._outputs import stem
from ._solve import EPIResult

__all__ = ["CorrectedImages", "ResultMetrics", "build_metrics", "provenance", "sidecars"]

#: the per-iterate quantities of the estimator's history recorded in ``metrics.json``
_HISTORY_KEYS = ("objective", "distance", "smoothness", "barrier", "grad_norm")


def as_numpy(x: torch.Tensor | np.ndarray, dtype: Any = np.float64) -> np.ndarray:
    """``x`` as a NumPy array of ``dtype`` (a tensor is detached and moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


@dataclass(frozen=True)
class CorrectedImages:
    """The estimator's result on the image grid as float64 arrays, in the output units.

    Attributes:
        displacement_vox: ``b``, the up image's displacement along increasing PE index.
        field_hz: the off-resonance field ``s_up · b / T``.
        h_pe: the voxel size along PE (mm).
        up, down, corrected: the corrected up/down images and their mean.
        jacobian_up, jacobian_down: ``1 ± ∂b``.
    """

    displacement_vox: np.ndarray
    field_hz: np.ndarray
    h_pe: float
    up: np.ndarray
    down: np.ndarray
    corrected: np.ndarray
    jacobian_up: np.ndarray
    jacobian_down: np.ndarray

    @classmethod
    def from_result(cls, result: EPIResult, pair: PairInputs) -> CorrectedImages:
        b = as_numpy(result.displacement)
        return cls(
            displacement_vox=b,
            field_hz=pair.acquisition.field_hz(b),
            h_pe=pair.up.voxel_size[pair.acquisition.pe_axis],
            up=as_numpy(result.corrected_up),
            down=as_numpy(result.corrected_down),
            corrected=as_numpy(result.corrected),
            jacobian_up=as_numpy(result.jacobian_up),
            jacobian_down=as_numpy(result.jacobian_down),
        )


def history(result: EPIResult) -> dict[str, list[float | None]]:
    """The estimator's per-iterate history as one list per quantity (absent ones dropped)."""
    out: dict[str, list[float | None]] = {k: [] for k in _HISTORY_KEYS}
    for e in result.history:
        for k in _HISTORY_KEYS:
            v = e.get(k)
            out[k].append(None if v is None else float(v))
    return {k: v for k, v in out.items() if any(x is not None for x in v)}


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)))


@dataclass(frozen=True)
class ResultMetrics:
    """The ``"result"`` section of ``metrics.json``: solver outcome, distances, ranges."""

    status: str
    iterations: int
    rms_distance_before: float
    rms_distance_after: float
    relative_rms_distance: float
    relative_distance_squared: float | None
    final_objective: float | None
    final_distance: float | None
    final_smoothness: float | None
    field_hz_min: float
    field_hz_max: float
    displacement_vox_min: float
    displacement_vox_max: float
    displacement_mm_max_abs: float
    jacobian_up_min: float
    jacobian_up_max: float
    jacobian_down_min: float
    jacobian_down_max: float

    @classmethod
    def measure(
        cls,
        result: EPIResult,
        pair: PairInputs,
        images: CorrectedImages,
        hist: dict[str, list[float | None]],
    ) -> ResultMetrics:
        up, down = pair.up.data.astype(np.float64), pair.down.data.astype(np.float64)
        before, after = _rms(up - down), _rms(images.up - images.down)
        b, ju, jd = images.displacement_vox, images.jacobian_up, images.jacobian_down
        return cls(
            status=result.status.name,
            iterations=int(result.iterations),
            rms_distance_before=before,
            rms_distance_after=after,
            relative_rms_distance=after / before if before > 0 else 0.0,
            relative_distance_squared=_finite(result.relative_distance),
            final_objective=hist.get("objective", [None])[-1],
            final_distance=hist.get("distance", [None])[-1],
            final_smoothness=hist.get("smoothness", [None])[-1],
            field_hz_min=float(images.field_hz.min()),
            field_hz_max=float(images.field_hz.max()),
            displacement_vox_min=float(b.min()),
            displacement_vox_max=float(b.max()),
            displacement_mm_max_abs=float(np.abs(b).max() * images.h_pe),
            jacobian_up_min=float(ju.min()),
            jacobian_up_max=float(ju.max()),
            jacobian_down_min=float(jd.min()),
            jacobian_down_max=float(jd.max()),
        )


def sha256(path: Path) -> str:
    """The SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str]:
    """The versions of odeflow, Python, torch, NumPy, the platform and nibabel (if installed)."""
    v = {
        "odeflow": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    try:
        v["nibabel"] = metadata.version("nibabel")
    except metadata.PackageNotFoundError:  # pragma: no cover
        pass
    return v


def _inputs(pair: PairInputs, applied: Sequence[ApplySeries]) -> dict[str, Any]:
    up, down = pair.up_path, pair.down_path
    return {
        "up": {"path": str(up), "sha256": sha256(up), "volume": pair.up.volume},
        "down": {"path": str(down), "sha256": sha256(down), "volume": pair.down.volume},
        "apply": [
            {
                "path": str(s.path),
                "sha256": sha256(s.path),
                "pe_sign": s.pe_sign,
                "readout_time": s.readout_time,
            }
            for s in applied
        ],
        "shape": list(pair.up.shape),
        "voxel_size_mm": list(pair.up.voxel_size),
        "affine": pair.up.affine.tolist(),
    }


def _acquisition(acq: Acquisition, affine: np.ndarray) -> dict[str, Any]:
    return {
        "pe_up": acq.pe_up.code,
        "pe_down": acq.pe_down.code,
        "pe_axis": acq.pe_axis,
        "pe_up_world_direction_ras": acq.pe_up.world_direction(affine).tolist(),
        "pe_up_anatomical": acq.pe_up.anatomical(affine),
        "readout_time_s": acq.readout_time,
        "sources": acq.sources,
    }


def build_metrics(
    *,
    pair: PairInputs,
    applied: Sequence[ApplySeries],
    parameters: dict[str, Any],
    result: EPIResult,
    measured: ResultMetrics,
    hist: dict[str, list[float | None]],
    paths: dict[str, Path],
) -> dict[str, Any]:
    """The content of ``metrics.json`` (``timings_s`` is filled in when the run ends).

    ``parameters`` are the run's arguments (alpha, beta, solver, levels, max_iter, negative,
    readout_time_range_s, device); the estimator's own record is added under ``estimator``.
    """
    return {
        "software": "odeflow epi correct",
        "versions": versions(),
        "inputs": _inputs(pair, applied),
        "acquisition": _acquisition(pair.acquisition, pair.up.affine),
        "parameters": {**parameters, "estimator": dict(result.params)},
        "result": asdict(measured),
        "history": hist,
        "timings_s": {},
        "outputs": {k: str(v) for k, v in paths.items()},
    }


def provenance(pair: PairInputs, *, alpha: float, beta: float, solver: str) -> dict[str, Any]:
    """The provenance entries shared by every output's sidecar."""
    acq = pair.acquisition
    return {
        "odeflow_version": __version__,
        "Sources": [str(pair.up_path), str(pair.down_path)],
        "DistortionCorrection": {
            "Method": "odeflow epi (mass-preserving blip-up/blip-down, HySCO model)",
            "Alpha": alpha,
            "Beta": beta,
            "Solver": solver,
            "PhaseEncodingUp": acq.pe_up.code,
            "PhaseEncodingDown": acq.pe_down.code,
            "TotalReadoutTime": acq.readout_time,
        },
    }


def sidecars(
    pair: PairInputs,
    prov: dict[str, Any],
    applied: Sequence[ApplySeries],
    h_pe: float,
) -> dict[str, dict[str, Any]]:
    """The BIDS sidecar of every output image (output name → JSON content)."""
    acq = pair.acquisition
    axis = acq.pe_up.code[0]
    convention = (
        f"an image phase-encoded along {axis} with sign s (+1 for '{axis}', -1 for '{axis}-') "
        "and total readout time T is displaced by s*fieldmap*T voxels along increasing index "
        f"of {axis}"
    )
    disp = (
        f"displacement of the up image ({acq.pe_up.code}) along increasing index of {axis}; "
        "the down image is displaced by its negative"
    )
    modulated = "susceptibility distortion corrected (Jacobian modulated)"
    out: dict[str, dict[str, Any]] = {
        "up_corrected": {**pair.meta_up, **prov, "Description": f"up image, {modulated}"},
        "down_corrected": {**pair.meta_down, **prov, "Description": f"down image, {modulated}"},
        "corrected": {**prov, "Description": "mean of the corrected up and down images"},
        "fieldmap": {
            **prov,
            "Units": "Hz",
            "Description": "off-resonance field",
            "FieldSignConvention": convention,
        },
        "displacement_mm": {
            **prov,
            "Units": "mm",
            "PhaseEncodingAxis": axis,
            "VoxelSizeAlongPE": h_pe,
            "Description": disp,
        },
        "displacement_vox": {
            **prov,
            "Units": "voxels",
            "PhaseEncodingAxis": axis,
            "Description": disp,
        },
        "jacobian_up": {**prov, "Description": "1 + d b / d x_PE (up image's Jacobian)"},
        "jacobian_down": {**prov, "Description": "1 - d b / d x_PE (down image's Jacobian)"},
    }
    for s in applied:
        out[f"apply:{stem(s.path)}"] = {
            **s.meta,
            **prov,
            "Sources": [str(s.path)],
            "Description": (
                f"corrected with the field (PE sign {s.pe_sign:+d}, readout {s.readout_time} s)"
            ),
        }
    return out
