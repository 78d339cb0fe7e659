"""File-level distortion correction: :func:`correct_files` and its result.

``correct_files`` is orchestration over one module per step: :mod:`._outputs` (plan the
output files, refuse collisions, existing outputs and unwritable folders), :mod:`._inputs`
(read and validate the pair, its acquisition and the series to correct), :mod:`._estimate`
(device, field estimation, correction of the series), :mod:`._metrics` (``metrics.json`` from
typed pieces, sidecars) and :mod:`._staging` (write into a hidden folder, then commit every
file or none). Errors name the arguments (``out_prefix=...``); the command line maps them to
its flags.
"""

from __future__ import annotations

import importlib.util
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..._utils import dumps_json, jsonable, outside_stacklevel
from ...optim import MinimizeStatus
from ._bids import READOUT_TIME_RANGE, Acquisition
from ._estimate import correct_series, estimate_pair, resolve_device
from ._inputs import ApplySeries, PairInputs, read_apply_series, read_pair
from ._metrics import CorrectedImages, ResultMetrics, build_metrics, history, provenance, sidecars
from ._nifti import NiftiImage, save_nifti
from ._outputs import OutputPlan, as_path_list, output_paths, plan_outputs, stem
from ._qc import write_qc_report
from ._solve import EPIResult
from ._staging import commit as _commit
from ._staging import make_dirs as _make_dirs  # noqa: F401  (kept importable from here)
from ._staging import staging_folder

__all__ = ["CorrectionOutputs", "EPIConvergenceWarning", "correct_files", "output_paths"]


class EPIConvergenceWarning(UserWarning):
    """Issued by :func:`correct_files` when the field estimation stopped without converging."""


@dataclass
class CorrectionOutputs:
    """What :func:`correct_files` wrote and measured.

    Attributes:
        paths: output name → written path (NIfTIs, their ``.json`` sidecars under
            ``"<name>_json"``, ``qc_png``, ``qc_html``, ``metrics``).
        metrics: the content of ``metrics.json`` (parameters, versions, timings, distances,
            field and Jacobian ranges).
        result: the array-level :class:`~odeflow.imaging.epi.EPIResult`.
        acquisition: the resolved :class:`~odeflow.imaging.epi.Acquisition`.
        summary: the one-line summary the CLI prints (RMS distance before → after, field
            range in Hz, seconds, and the solver status when it did not converge).
    """

    paths: dict[str, Path]
    metrics: dict[str, Any]
    result: EPIResult
    acquisition: Acquisition
    summary: str = ""


def correct_files(
    up: str | os.PathLike[str],
    down: str | os.PathLike[str],
    out_prefix: str | os.PathLike[str],
    *,
    pe_dir: str | None = None,
    pe_dir_down: str | None = None,
    readout_time: float | None = None,
    up_volume: int | Literal["mean"] | None = None,
    down_volume: int | Literal["mean"] | None = None,
    ignore_sidecars: bool = False,
    apply: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] = (),
    apply_pe_dir: str | None = None,
    alpha: float = 300.0,
    beta: float = 1e-4,
    solver: str = "gn",
    levels: int = 1,
    max_iter: int = 10,
    device: str | None = None,
    qc: bool = True,
    overwrite: bool = False,
    verbose: bool = True,
    negative: str = "error",
    readout_time_range: tuple[float, float] = READOUT_TIME_RANGE,
) -> CorrectionOutputs:
    r"""Correct a blip-up/blip-down NIfTI pair and write every output with the input's geometry.

    Steps: read both images (and their BIDS sidecars) → validate (same grid and affine, finite,
    3-D, opposite phase-encoding polarity, a readout time) → estimate the displacement ``b``
    with :func:`~odeflow.imaging.epi.estimate_field` on the PE axis and anisotropic voxel sizes
    of the affine → write, with the input's affine and header:

    * ``<prefix>up_corrected``, ``down_corrected`` (Jacobian-modulated) and ``corrected`` (mean);
    * ``<prefix>fieldmap``: the off-resonance field ``Δf = s_up · b / T`` in Hz (BIDS fieldmap,
      ``Units: Hz``), where ``b`` is the up image's displacement in voxels along increasing index
      of the PE axis, ``s_up = ±1`` the up image's PE sign and ``T`` the total readout time — an
      image with PE ``(axis, sign s)`` and readout time ``T`` is displaced by ``s · Δf · T``
      voxels along that axis (the topup / SDCFlows convention);
    * ``<prefix>displacement_vox`` (``b``) and ``displacement_mm`` (``b · h_PE``): the up
      image's displacement along increasing PE index (the down image's is the negative);
    * ``<prefix>jacobian_up`` / ``jacobian_down`` (``1 ± ∂_v b``);
    * each ``apply`` series (3-D or 4-D, same PE axis) corrected with ``s · Δf · T``, its PE
      ``s`` from its sidecar, else ``apply_pe_dir``, else the up image's, and its readout time
      ``T`` from its sidecar, else the pair's (an explicit ``readout_time`` applies to all);
    * a JSON sidecar for each image, ``metrics.json`` and (``qc=True``) ``qc.png``/``qc.html``.

    A 4-D input needs ``up_volume``/``down_volume`` (an index or ``"mean"``).  Both volumes may
    come from one 4-D file (e.g. ``up_volume=0, down_volume=1``); a file's sidecar cannot
    describe two polarities, so then ``pe_dir`` is required and the sidecars' PE is ignored.

    Outputs are written to a temporary folder next to them and renamed into place only when all
    succeeded; on any error nothing is left behind (pre-existing files, with ``overwrite``, are
    restored).  Inputs are never overwritten, even with ``overwrite=True``.

    Args:
        up, down: the NIfTI files (``.nii``/``.nii.gz``) of opposite PE polarity.
        out_prefix: ``"dir/"`` or ``"dir/name_"``; the folder is created if needed.
        pe_dir, pe_dir_down, readout_time, ignore_sidecars: explicit acquisition metadata,
            see :func:`~odeflow.imaging.epi._bids.resolve_acquisition`.
        up_volume, down_volume: volume of a 4-D input (index or ``"mean"``).
        apply: further series to correct with the estimated field: one path or a sequence
            of paths.  Each is written as ``<prefix><stem>_corrected.nii.gz``; a stem that
            would reuse another output's file (two series named alike, or ``up``/``down``,
            which would replace ``up_corrected``/``down_corrected``) is refused.
        apply_pe_dir: PE direction of the ``apply`` series without a sidecar.
        alpha, beta, solver, levels, max_iter: passed to ``estimate_field``.
        device: torch device for the estimation and the ``apply`` series (``"cpu"``,
            ``"cuda"``, ``"cuda:1"``); ``None`` or ``"auto"``: CUDA when available, else CPU.
        qc: also write the PNG/HTML report (with ``qc=False`` and ``overwrite``, the report
            of an earlier run under the same prefix is removed rather than left stale).
        overwrite: replace existing outputs (never inputs).
        verbose: progress bars.
        negative: negative intensities, which the model does not allow: ``"error"``
            (refused, stating the fraction of negative mass), ``"clip"`` or ``"shift"``;
            see :func:`~odeflow.imaging.epi.estimate_field`.
        readout_time_range: ``(min, max)`` plausible total readout times in seconds
            (default 1e-4 .. 1 s), for ``readout_time`` and the sidecars' values alike.

    Returns:
        :class:`CorrectionOutputs`.

    Raises:
        FileNotFoundError: for a missing input.
        EPIInputError: (a ``ValueError``) for any unusable input or metadata, outputs that
            exist (without ``overwrite``), that would overwrite an input or that would share
            a file (see :func:`output_paths`).
        OSError: if the output folder cannot be written.
        ImportError: if ``qc`` is requested and matplotlib is not installed.

    Warns:
        EPIConvergenceWarning: if the optimizer stopped without converging (e.g. at
            ``max_iter``); the outputs are written, ``summary`` and ``metrics["result"]
            ["status"]`` state the status, and the message says how to fix it (the default
            Gauss–Newton solver, a larger ``max_iter``).

    Reference:
        Julian, Ruthotto et al., "PyHySCO: GPU-enabled susceptibility artifact distortion
        correction in seconds", arXiv:2403.10706; Andersson et al., NeuroImage 20 (2003)
        (topup field convention); BIDS specification (fieldmaps, PhaseEncodingDirection).

    Example:
        >>> import tempfile, nibabel as nib, numpy as np
        >>> from odeflow.imaging.epi import make_phantom
        >>> ph = make_phantom(voxel_size=4.0, shape=(16, 20, 16), peak_displacement=1.5, snr=None)
        >>> d = Path(tempfile.mkdtemp())
        >>> for name, img in (("ap", ph.up), ("pa", ph.down)):
        ...     nib.save(nib.Nifti1Image(img.numpy(), ph.affine), d / f"{name}.nii.gz")
        >>> out = correct_files(d / "ap.nii.gz", d / "pa.nii.gz", d / "res_", pe_dir="j",
        ...                     readout_time=0.05, qc=False, verbose=False)
        >>> nib.load(out.paths["fieldmap"]).shape
        (16, 20, 16)
    """
    t_total = time.perf_counter()
    timings: dict[str, float] = {}
    dev = resolve_device(device)
    if qc and importlib.util.find_spec("matplotlib") is None:
        raise ImportError(
            "the QC report needs matplotlib: `pip install 'odeflow[viz]'`, or pass qc=False "
            "(--no-qc)"
        )
    up_p, down_p = Path(up), Path(down)
    apply_p = as_path_list(apply)
    plan = plan_outputs(out_prefix, [up_p, down_p], apply_p, qc=qc, overwrite=overwrite)
    for p in (up_p, down_p, *apply_p):
        if not p.exists():
            raise FileNotFoundError(f"input image '{p}' does not exist")

    t0 = time.perf_counter()
    pair = read_pair(
        up_p,
        down_p,
        up_volume=up_volume,
        down_volume=down_volume,
        pe_dir=pe_dir,
        pe_dir_down=pe_dir_down,
        readout_time=readout_time,
        ignore_sidecars=ignore_sidecars,
        readout_time_range=readout_time_range,
    )
    applied = read_apply_series(
        apply_p,
        pair,
        apply_pe_dir=apply_pe_dir,
        readout_time=readout_time,
        ignore_sidecars=ignore_sidecars,
        readout_time_range=readout_time_range,
    )
    timings["read"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    solve = {"alpha": alpha, "beta": beta, "solver": solver, "levels": levels,
             "max_iter": max_iter, "negative": negative}  # fmt: skip
    result = estimate_pair(pair, **solve, device=dev, verbose=verbose)
    timings["estimate"] = time.perf_counter() - t0
    images = CorrectedImages.from_result(result, pair)
    t0 = time.perf_counter()
    series = correct_series(applied, result, pair, images.field_hz, dev)
    timings["apply"] = time.perf_counter() - t0

    hist = history(result)
    measured = ResultMetrics.measure(result, pair, images, hist)
    parameters = {**solve, "readout_time_range_s": list(readout_time_range), "device": str(dev)}
    metrics = build_metrics(pair=pair, applied=applied, parameters=parameters, result=result,
                            measured=measured, hist=hist, paths=plan.paths)  # fmt: skip

    t0 = time.perf_counter()
    with staging_folder(plan.directory) as tmp:
        staged = _stage_images(tmp, plan, pair, applied, images, series, alpha, beta, solver)
        if qc:
            staged.update(_stage_report(tmp, plan, pair, images, hist, metrics))
        timings["write"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_total
        metrics["timings_s"] = {**timings, "estimator": dict(result.timings)}
        metrics = jsonable(metrics, nonfinite="null")
        staged[plan.paths["metrics"]] = _stage_json(tmp / plan.paths["metrics"].name, metrics)
        _commit(staged, tmp, overwrite=overwrite, remove=plan.stale)

    summary = (
        f"RMS distance {measured.rms_distance_before:.4g} -> {measured.rms_distance_after:.4g} "
        f"({100 * measured.relative_rms_distance:.1f} %), field "
        f"{measured.field_hz_min:.1f} .. {measured.field_hz_max:.1f} Hz, "
        f"{timings['total']:.1f} s"
    )
    status = result.status
    if not status.ok:
        summary += (
            f", NOT CONVERGED ({solver} stopped with status {status.name} after "
            f"{measured.iterations} iterations)"
        )
        warnings.warn(
            _not_converged(solver, status, measured.iterations, max_iter),
            EPIConvergenceWarning,
            stacklevel=outside_stacklevel(),
        )
    return CorrectionOutputs(
        paths=plan.paths, metrics=metrics, result=result, acquisition=pair.acquisition,
        summary=summary,
    )  # fmt: skip


def _stage_json(path: Path, obj: dict[str, Any]) -> Path:
    """Write ``obj`` as strict JSON (NaN/inf as ``null``) into the staging folder."""
    path.write_text(dumps_json(obj, nonfinite="null") + "\n")
    return path


def _stage_images(
    tmp: Path,
    plan: OutputPlan,
    pair: PairInputs,
    applied: Sequence[ApplySeries],
    images: CorrectedImages,
    series: Sequence[np.ndarray],
    alpha: float,
    beta: float,
    solver: str,
) -> dict[Path, Path]:
    """Write every output image (with the geometry of its reference) and its sidecar into
    ``tmp``; return destination → staged file."""
    arrays: dict[str, tuple[np.ndarray, NiftiImage]] = {
        "up_corrected": (images.up, pair.up),
        "down_corrected": (images.down, pair.down),
        "corrected": (images.corrected, pair.up),
        "fieldmap": (images.field_hz, pair.up),
        "displacement_mm": (images.displacement_vox * images.h_pe, pair.up),
        "displacement_vox": (images.displacement_vox, pair.up),
        "jacobian_up": (images.jacobian_up, pair.up),
        "jacobian_down": (images.jacobian_down, pair.up),
    }
    for s, data in zip(applied, series):
        arrays[f"apply:{stem(s.path)}"] = (data, s.image)
    prov = provenance(pair, alpha=alpha, beta=beta, solver=solver)
    side = sidecars(pair, prov, applied, images.h_pe)
    staged: dict[Path, Path] = {}
    for key, (data, ref) in arrays.items():
        path = plan.paths[key]
        staged[path] = save_nifti(data, ref, tmp / path.name, description=f"odeflow epi {key}")
        jpath = plan.paths[f"{key}_json"]
        staged[jpath] = _stage_json(tmp / jpath.name, side[key])
    return staged


def _stage_report(
    tmp: Path,
    plan: OutputPlan,
    pair: PairInputs,
    images: CorrectedImages,
    hist: dict[str, list[float | None]],
    metrics: dict[str, Any],
) -> dict[Path, Path]:
    """Write the QC figure and page into ``tmp``; return destination → staged file."""
    png, page = plan.paths["qc_png"], plan.paths["qc_html"]
    report = write_qc_report(
        tmp / png.name,
        tmp / page.name,
        up=pair.up.data.astype(np.float64),
        down=pair.down.data.astype(np.float64),
        corrected_up=images.up,
        corrected_down=images.down,
        field_hz=images.field_hz,
        jacobian_up=images.jacobian_up,
        jacobian_down=images.jacobian_down,
        pe_axis=pair.acquisition.pe_axis,
        voxel_size=pair.up.voxel_size,
        history=hist,
        metrics=metrics,
    )
    return {png: report["png"], page: report["html"]}


def _not_converged(solver: str, status: MinimizeStatus, iterations: int, max_iter: int) -> str:
    """The warning for a solve that stopped without converging, with what to do about it."""
    head = (
        f"the field estimation ({solver}) stopped after {iterations} iterations without "
        f"converging (status {status.name}); the field and corrected images may be far from "
        "the optimum. "
    )
    if status.name == "MAX_ITERATIONS":
        if solver == "lbfgs":
            return head + (
                "Use the default Gauss-Newton solver (--solver gn), which converges in a few "
                f"iterations, or raise --max-iter (now {max_iter}; L-BFGS runs 5 x max-iter "
                "iterations and may need several hundred)"
            )
        return head + f"Raise --max-iter (now {max_iter})"
    other = "gn" if solver == "lbfgs" else "lbfgs"
    if status.name == "STAGNATED":
        return (
            f"the field estimation ({solver}) stopped after {iterations} iterations because a "
            "step no longer changed the objective at the working precision (status STAGNATED), "
            "before its convergence test was met; the field is usually optimal up to round-off. "
            f"If the QC looks wrong, compare with --solver {other}"
        )
    return head + (
        f"Try --solver {other} or a coarse-to-fine start (--levels 2), and check that the two "
        "images are a matching blip-up/blip-down pair"
    )
