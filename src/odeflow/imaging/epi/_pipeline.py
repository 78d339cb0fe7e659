"""File-level distortion correction: read → validate → estimate → write every output atomically."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._bids import (
    READOUT_TIME_RANGE,
    Acquisition,
    parse_pe_direction,
    read_sidecar,
    readout_time_from_sidecar,
    resolve_acquisition,
    sidecar_path,
)
from ._nifti import EPIInputError, NiftiImage, _mm_per_unit, load_nifti, save_nifti

__all__ = ["CorrectionOutputs", "EPIConvergenceWarning", "correct_files", "output_paths"]

#: affines of up and down may differ by this much (mm, or relative for the 3x3 part)
_AFFINE_ATOL = 1e-3

#: output kinds written for every run (name → (suffix, description))
_OUTPUTS: dict[str, str] = {
    "up_corrected": "up_corrected.nii.gz",
    "down_corrected": "down_corrected.nii.gz",
    "corrected": "corrected.nii.gz",
    "fieldmap": "fieldmap.nii.gz",
    "displacement_mm": "displacement_mm.nii.gz",
    "displacement_vox": "displacement_vox.nii.gz",
    "jacobian_up": "jacobian_up.nii.gz",
    "jacobian_down": "jacobian_down.nii.gz",
}
_REPORT: dict[str, str] = {
    "qc_png": "qc.png",
    "qc_html": "qc.html",
    "metrics": "metrics.json",
}


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
        acquisition: the resolved :class:`~odeflow.imaging.epi._bids.Acquisition`.
        summary: the one-line summary the CLI prints (RMS distance before → after, field
            range in Hz, seconds, and the solver status when it did not converge).
    """

    paths: dict[str, Path]
    metrics: dict[str, Any]
    result: Any
    acquisition: Acquisition
    summary: str = ""


def _split_prefix(out_prefix: str | os.PathLike[str]) -> tuple[Path, str]:
    s = os.fspath(out_prefix)
    if not s:
        raise EPIInputError("the output prefix is empty; give e.g. --out results/sub-01_")
    if s.endswith(("/", os.sep)) or Path(s).is_dir():
        return _resolvable(Path(s)), ""
    p = Path(s)
    return _resolvable(p.parent), p.name


def _resolvable(directory: Path) -> Path:
    """``directory`` with the ``..``/``.`` after its first missing folder resolved by name.

    The OS cannot resolve ``new/..`` while ``new`` does not exist (creating the folders one
    by one then failed with ``[Errno 17]`` and left ``new/`` behind); a missing folder has no
    symbolic links to follow, so its ``..`` is resolved lexically. Existing parts are kept
    as given (their ``..`` follows links as the OS does).
    """
    parts = directory.parts
    k = len(parts)
    while k > 0 and not Path(*parts[:k]).exists():
        k -= 1
    if k == len(parts):
        return directory
    head = Path(*parts[:k]) if k else Path(".")
    rest = os.path.normpath(os.path.join(*parts[k:]))
    return head if rest == "." else head / rest


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _as_path_list(apply: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """``apply`` as a list of paths; a single path (``str`` or ``os.PathLike``) is one series."""
    if isinstance(apply, (str, os.PathLike)):
        return [Path(apply)]
    return [Path(a) for a in apply]


def output_paths(
    out_prefix: str | os.PathLike[str],
    apply: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] = (),
    *,
    qc: bool = True,
) -> dict[str, Path]:
    """The files :func:`correct_files` writes for ``out_prefix`` (``dir/`` or ``dir/name_``).

    Every NIfTI ``<prefix><kind>.nii.gz`` has a sidecar ``<prefix><kind>.json`` (key
    ``"<kind>_json"``); each ``--apply`` series ``X.nii.gz`` gives ``<prefix>X_corrected.nii.gz``
    (key ``"apply:X"``), where a name that already starts with the prefix's name part keeps
    it once (``sub-01_dwi.nii.gz`` with ``dir/sub-01_`` gives ``dir/sub-01_dwi_corrected``).
    ``apply`` is one path or a sequence of paths.  A ``..`` after a folder that does not
    exist yet is resolved by name (``new/../res/r_`` is ``res/r_``).

    Every output must get a file of its own.  The planned paths are compared, ignoring letter
    case (as case-insensitive file systems do), and a collision is refused: two ``apply``
    series with the same name stem, or an ``apply`` series named like one of odeflow's own
    outputs (``up.nii.gz`` → ``up_corrected``, ``down.nii.gz`` → ``down_corrected``).

    Raises:
        EPIInputError: if two outputs would be written to the same file (the message names
            both and how to rename).

    Example:
        >>> sorted(output_paths("out/sub-01_", qc=False))[:3]
        ['corrected', 'corrected_json', 'displacement_mm']
        >>> output_paths("out/", "dwi.nii.gz")["apply:dwi"].as_posix()
        'out/dwi_corrected.nii.gz'
        >>> output_paths("out/sub-01_", "sub-01_dwi.nii.gz")["apply:sub-01_dwi"].as_posix()
        'out/sub-01_dwi_corrected.nii.gz'
    """
    directory, name = _split_prefix(out_prefix)
    # (key, path, what writes it, the --apply input or None)
    planned: list[tuple[str, Path, str, Path | None]] = []

    def plan(key: str, suffix: str, what: str, source: Path | None) -> None:
        planned.append((key, directory / f"{name}{suffix}", what, source))
        if suffix.endswith(".nii.gz"):
            json_suffix = suffix[: -len(".nii.gz")] + ".json"
            planned.append((f"{key}_json", directory / f"{name}{json_suffix}", what, source))

    for key, suffix in _OUTPUTS.items():
        plan(key, suffix, f"odeflow's own output '{key}'", None)
    for a in _as_path_list(apply):
        stem = _stem(a)
        # a series already named with the prefix (sub-01_dwi with --out dir/sub-01_) is not
        # given it twice
        short = stem[len(name) :] if name and stem.startswith(name) and stem != name else stem
        plan(f"apply:{stem}", f"{short}_corrected.nii.gz", f"the --apply series '{a}'", a)
    for key, suffix in _REPORT.items():
        if qc or key == "metrics":
            plan(key, suffix, f"odeflow's own output '{key}'", None)

    paths: dict[str, Path] = {}
    seen: dict[str, tuple[Path, str, Path | None]] = {}
    for key, path, what, source in planned:
        folded = os.path.normcase(os.fspath(path)).casefold()
        if folded in seen:
            other_path, other_what, other_source = seen[folded]
            raise EPIInputError(
                _collision(path, what, source, other_path, other_what, other_source)
            )
        seen[folded] = (path, what, source)
        paths[key] = path
    return paths


def _collision(
    path: Path,
    what: str,
    source: Path | None,
    other_path: Path,
    other_what: str,
    other_source: Path | None,
) -> str:
    where = (
        f"'{path}'"
        if path == other_path
        else f"'{other_path}' and '{path}' (same name up to letter case)"
    )
    if source is None:
        # odeflow's own names are distinct; reaching this is a bug, not a user error
        return f"{what} and {other_what} would both be written to {where} (please report this)"
    rename = f"(and its .json sidecar) under another name, e.g. '{_stem(source)}_series.nii.gz'"
    if other_source is not None:
        head = (
            f"two --apply series share the name '{_stem(source)}': '{other_source}' and '{source}'"
        )
        fix = f"rename or link one of them {rename}"
    else:
        head = f"{what} and {other_what}"
        fix = f"the names of odeflow's own outputs are fixed, so rename or link the series {rename}"
    return f"{head} would both be written to {where}; {fix}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _to_numpy(x: Any, dtype: Any = np.float64) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check_affines(a: np.ndarray, b: np.ndarray, what: str) -> None:
    diff = np.abs(np.asarray(a) - np.asarray(b))
    scale = max(1.0, float(np.abs(a[:3, :3]).max()))
    if diff[:3, :3].max() > _AFFINE_ATOL * scale or diff[:3, 3].max() > _AFFINE_ATOL * 10:
        raise EPIInputError(
            f"{what} have different affines (max difference {float(diff.max()):.4g}); they must "
            "share the voxel grid and orientation. If one was reoriented or resampled, bring "
            "both to the same grid first"
        )


def _affine_mm(img: NiftiImage) -> np.ndarray:
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
    _check_affines(_affine_mm(up), _affine_mm(down), "up and down")


def _versions() -> dict[str, str]:
    import torch

    from odeflow import __version__

    v = {
        "odeflow": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    try:
        import nibabel

        v["nibabel"] = nibabel.__version__
    except ImportError:  # pragma: no cover
        pass
    return v


def _history(result: Any) -> dict[str, list[float | None]]:
    h = getattr(result, "history", None) or []
    keys = ("objective", "distance", "smoothness", "barrier", "grad_norm")
    out: dict[str, list[float | None]] = {k: [] for k in keys}
    for e in h:
        for k in keys:
            v = e.get(k) if isinstance(e, dict) else getattr(e, k, None)
            out[k].append(None if v is None else float(v))
    return {k: v for k, v in out.items() if any(x is not None for x in v)}


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _finite_only(o: Any) -> Any:
    """Replace NaN/inf floats by ``None`` (JSON has no such numbers)."""
    if isinstance(o, dict):
        return {k: _finite_only(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite_only(v) for v in o]
    if isinstance(o, (float, np.floating)) and not np.isfinite(o):
        return None
    return o


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    text = json.dumps(_finite_only(obj), indent=2, default=_json_default, allow_nan=False)
    path.write_text(text + "\n")


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


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
    dev = _resolve_device(device)
    if qc and importlib.util.find_spec("matplotlib") is None:
        raise ImportError(
            "the QC report needs matplotlib: `pip install 'odeflow[viz]'`, or pass qc=False "
            "(--no-qc)"
        )
    up_p, down_p = Path(up), Path(down)
    apply_p = _as_path_list(apply)
    paths = output_paths(out_prefix, apply_p, qc=qc)
    inputs = [up_p, down_p, *apply_p]
    inputs += [sidecar_path(p) for p in inputs]
    for key, out in paths.items():
        for inp in inputs:
            if _same_file(out, inp):
                raise EPIInputError(
                    f"output '{out}' ({key}) would overwrite the input '{inp}'; choose another "
                    "--out prefix"
                )
    # without a report, an earlier run's report would sit stale beside the new outputs
    stale = [] if qc else [p for p in output_paths(out_prefix, (), qc=True).values()
                           if p.name.endswith(("qc.png", "qc.html"))]  # fmt: skip
    stale = [p for p in stale if p.exists() or p.is_symlink()]
    if not overwrite:
        existing = [str(p) for p in [*paths.values(), *stale] if p.exists() or p.is_symlink()]
        if existing:
            raise EPIInputError(
                f"{len(existing)} output(s) already exist (e.g. '{existing[0]}'); choose another "
                "--out prefix or pass --overwrite"
            )
    _check_out_folder(paths["metrics"].parent, out_prefix)
    for p in (up_p, down_p, *apply_p):
        if not p.exists():
            raise FileNotFoundError(f"input image '{p}' does not exist")

    # ---- read and validate -------------------------------------------------------------
    t0 = time.perf_counter()
    same_file = _same_file(up_p, down_p)
    if same_file:
        if up_volume is None or down_volume is None or up_volume == down_volume:
            raise EPIInputError(
                f"--up and --down are the same file '{up_p}'; pick the two volumes with "
                "--up-volume and --down-volume (e.g. 0 and 1)"
            )
        if pe_dir is None:
            raise EPIInputError(
                "--up and --down come from one file, whose sidecar cannot describe two "
                "polarities; give the up volume's direction with --pe-dir (down is its opposite)"
            )
    img_up = load_nifti(up_p, volume=up_volume)
    img_down = load_nifti(down_p, volume=down_volume)
    if same_file and img_up.volume == img_down.volume:  # e.g. -1 and 1 of two volumes
        raise EPIInputError(
            f"--up-volume {up_volume} and --down-volume {down_volume} are the same volume "
            f"({img_up.volume}) of '{up_p}'; pick two different volumes (e.g. 0 and 1)"
        )
    _check_pair(img_up, img_down)
    meta_up, meta_down = read_sidecar(up_p), read_sidecar(down_p)
    acq = resolve_acquisition(
        img_up.shape,
        img_up.affine,
        meta_up,
        meta_down,
        pe_dir=pe_dir,
        pe_dir_down=pe_dir_down,
        readout_time=readout_time,
        ignore_sidecars=ignore_sidecars or same_file,
        readout_time_range=readout_time_range,
    )
    if img_up.shape[acq.pe_axis] < 4:
        raise EPIInputError(
            f"the images have only {img_up.shape[acq.pe_axis]} voxels along the PE axis "
            f"{acq.pe_up.code[0]}; at least 4 are needed"
        )
    applied: list[tuple[Path, NiftiImage, int, float, dict[str, Any]]] = []
    for a in apply_p:
        img = load_nifti(a, allow_4d=True)
        if img.shape[:3] != img_up.shape:
            raise EPIInputError(
                f"--apply '{a}' has the spatial shape {img.shape[:3]}, not the pair's "
                f"{img_up.shape}; it must be on the same grid"
            )
        _check_affines(_affine_mm(img), _affine_mm(img_up), f"--apply '{a}' and the pair")
        meta = read_sidecar(a)
        side = None if ignore_sidecars else meta.get("PhaseEncodingDirection")
        if apply_pe_dir is not None:
            pe = parse_pe_direction(apply_pe_dir, img.affine)
            if side is not None and parse_pe_direction(str(side)) != pe:
                raise EPIInputError(
                    f"--apply-pe-dir {apply_pe_dir} contradicts the sidecar of '{a}' "
                    f"({side}); if the sidecar is wrong, add --ignore-sidecars"
                )
        elif side is not None:
            pe = parse_pe_direction(str(side))
        else:
            pe = acq.pe_up
        if pe.axis != acq.pe_axis:
            raise EPIInputError(
                f"--apply '{a}' is phase-encoded along {pe.code}, but the field was estimated "
                f"along {acq.pe_up.code[0]}; it can only correct series with the same PE axis"
            )
        got = (
            None
            if readout_time is not None
            else readout_time_from_sidecar(
                meta, img.shape[acq.pe_axis], readout_time_range=readout_time_range
            )
        )
        trt = got[0] if got is not None else acq.readout_time
        applied.append((a, img, pe.sign, trt, meta))
    timings["read"] = time.perf_counter() - t0

    # ---- estimate ----------------------------------------------------------------------
    from . import apply_correction, estimate_field

    t0 = time.perf_counter()
    result = estimate_field(
        img_up.data,
        img_down.data,
        pe_axis=acq.pe_axis,
        voxel_size=img_up.voxel_size,
        alpha=alpha,
        beta=beta,
        solver=solver,
        levels=levels,
        max_iter=max_iter,
        negative=negative,
        device=dev,
        verbose=verbose,
    )
    timings["estimate"] = time.perf_counter() - t0
    b = _to_numpy(result.displacement)
    field_hz = acq.field_hz(b)
    h_pe = img_up.voxel_size[acq.pe_axis]
    images: dict[str, tuple[np.ndarray, NiftiImage]] = {
        "up_corrected": (_to_numpy(result.corrected_up), img_up),
        "down_corrected": (_to_numpy(result.corrected_down), img_down),
        "corrected": (_to_numpy(result.corrected), img_up),
        "fieldmap": (field_hz, img_up),
        "displacement_mm": (b * h_pe, img_up),
        "displacement_vox": (b, img_up),
        "jacobian_up": (_to_numpy(result.jacobian_up), img_up),
        "jacobian_down": (_to_numpy(result.jacobian_down), img_up),
    }
    t0 = time.perf_counter()
    faces = getattr(result, "displacement_faces", None)
    field_faces = None if faces is None else _to_numpy(faces) * acq.pe_up.sign / acq.readout_time
    for a, img, sign, trt, _ in applied:
        import torch

        grid = field_faces if field_faces is not None else field_hz
        disp = torch.as_tensor(sign * grid * trt, dtype=torch.float32)
        vols = torch.as_tensor(img.data)
        vols, disp = vols.to(dev), disp.to(dev)
        corrected = apply_correction(vols, disp, pe_axis=acq.pe_axis, polarity=+1)
        # a long series stays float32 (it is written as float32 anyway)
        images[f"apply:{_stem(a)}"] = (_to_numpy(corrected, np.float32), img)
        del corrected, vols
    timings["apply"] = time.perf_counter() - t0

    # ---- metrics -----------------------------------------------------------------------
    up_d, dn_d = img_up.data.astype(np.float64), img_down.data.astype(np.float64)
    cu, cd = images["up_corrected"][0], images["down_corrected"][0]
    rms_before = float(np.sqrt(np.mean((up_d - dn_d) ** 2)))
    rms_after = float(np.sqrt(np.mean((cu - cd) ** 2)))
    hist = _history(result)
    ju, jd = images["jacobian_up"][0], images["jacobian_down"][0]
    status = getattr(result, "status", None)
    metrics: dict[str, Any] = {
        "software": "odeflow epi correct",
        "versions": _versions(),
        "inputs": {
            "up": {"path": str(up_p), "sha256": _sha256(up_p), "volume": img_up.volume},
            "down": {"path": str(down_p), "sha256": _sha256(down_p), "volume": img_down.volume},
            "apply": [
                {"path": str(a), "sha256": _sha256(a), "pe_sign": s, "readout_time": t}
                for a, _, s, t, _ in applied
            ],
            "shape": list(img_up.shape),
            "voxel_size_mm": list(img_up.voxel_size),
            "affine": img_up.affine.tolist(),
        },
        "acquisition": {
            "pe_up": acq.pe_up.code,
            "pe_down": acq.pe_down.code,
            "pe_axis": acq.pe_axis,
            "pe_up_world_direction_ras": acq.pe_up.world_direction(img_up.affine).tolist(),
            "pe_up_anatomical": acq.pe_up.anatomical(img_up.affine),
            "readout_time_s": acq.readout_time,
            "sources": acq.sources,
        },
        "parameters": {
            "alpha": alpha,
            "beta": beta,
            "solver": solver,
            "levels": levels,
            "max_iter": max_iter,
            "negative": negative,
            "readout_time_range_s": list(readout_time_range),
            "device": str(dev),
            "estimator": dict(getattr(result, "params", {}) or {}),
        },
        "result": {
            "status": getattr(status, "name", str(status)),
            "iterations": int(getattr(result, "iterations", 0)),
            "rms_distance_before": rms_before,
            "rms_distance_after": rms_after,
            "relative_rms_distance": rms_after / rms_before if rms_before > 0 else 0.0,
            "relative_distance_squared": _finite(getattr(result, "relative_distance", np.nan)),
            "final_objective": hist.get("objective", [None])[-1],
            "final_distance": hist.get("distance", [None])[-1],
            "final_smoothness": hist.get("smoothness", [None])[-1],
            "field_hz_min": float(field_hz.min()),
            "field_hz_max": float(field_hz.max()),
            "displacement_vox_min": float(b.min()),
            "displacement_vox_max": float(b.max()),
            "displacement_mm_max_abs": float(np.abs(b).max() * h_pe),
            "jacobian_up_min": float(ju.min()),
            "jacobian_up_max": float(ju.max()),
            "jacobian_down_min": float(jd.min()),
            "jacobian_down_max": float(jd.max()),
        },
        "history": hist,
        "timings_s": {},
        "outputs": {k: str(v) for k, v in paths.items()},
    }

    # ---- write (atomically) ------------------------------------------------------------
    t0 = time.perf_counter()
    directory = paths["metrics"].parent
    created = _make_dirs(directory)
    staged: dict[Path, Path] = {}
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".odeflow-tmp-", dir=directory))
        provenance = {
            "odeflow_version": metrics["versions"]["odeflow"],
            "Sources": [str(up_p), str(down_p)],
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
        sidecars = _sidecars(acq, meta_up, meta_down, provenance, applied, h_pe)
        for key, (data, ref) in images.items():
            staged[paths[key]] = save_nifti(
                data, ref, tmp / paths[key].name, description=f"odeflow epi {key}"
            )
            jpath = paths[f"{key}_json"]
            _write_json(tmp / jpath.name, sidecars[key])
            staged[jpath] = tmp / jpath.name
        if qc:
            from ._qc import write_qc_report

            report = write_qc_report(
                tmp / paths["qc_png"].name,
                tmp / paths["qc_html"].name,
                up=up_d,
                down=dn_d,
                corrected_up=cu,
                corrected_down=cd,
                field_hz=field_hz,
                jacobian_up=ju,
                jacobian_down=jd,
                pe_axis=acq.pe_axis,
                voxel_size=img_up.voxel_size,
                history=hist,
                metrics=metrics,
            )
            staged[paths["qc_png"]] = report["png"]
            staged[paths["qc_html"]] = report["html"]
        timings["write"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_total
        metrics["timings_s"] = {**timings, "estimator": dict(getattr(result, "timings", {}))}
        metrics = _finite_only(metrics)
        _write_json(tmp / paths["metrics"].name, metrics)
        staged[paths["metrics"]] = tmp / paths["metrics"].name
        _commit(staged, tmp, overwrite=overwrite, remove=stale)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                pass
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    summary = (
        f"RMS distance {rms_before:.4g} -> {rms_after:.4g} "
        f"({100 * metrics['result']['relative_rms_distance']:.1f} %), field "
        f"{metrics['result']['field_hz_min']:.1f} .. {metrics['result']['field_hz_max']:.1f} Hz, "
        f"{timings['total']:.1f} s"
    )
    if status is not None and not status.ok:
        summary += (
            f", NOT CONVERGED ({solver} stopped with status {status.name} after "
            f"{metrics['result']['iterations']} iterations)"
        )
        warnings.warn(
            _not_converged(solver, status, metrics["result"]["iterations"], max_iter),
            EPIConvergenceWarning,
            stacklevel=2,
        )
    return CorrectionOutputs(
        paths=paths, metrics=metrics, result=result, acquisition=acq, summary=summary
    )


def _not_converged(solver: str, status: Any, iterations: int, max_iter: int) -> str:
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


def _resolve_device(device: Any) -> Any:
    """``None``/``"auto"`` → CUDA if available else CPU; refuse an unavailable CUDA device."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise EPIInputError(f"unknown device {device!r} ({exc}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise EPIInputError(
                f"device {device!r} requested but CUDA is not available here; use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise EPIInputError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA "
                "device(s) exist"
            )
    elif dev.type != "cpu":
        raise EPIInputError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    return dev


def _check_out_folder(directory: Path, out_prefix: str | os.PathLike[str]) -> None:
    """Refuse, before any work, an output folder that cannot be created or written to."""
    d = directory.absolute()
    while not d.exists():
        d = d.parent
    if not d.is_dir():
        raise EPIInputError(
            f"--out {os.fspath(out_prefix)!r}: '{d}' is a file, not a folder; choose another "
            "--out prefix"
        )
    if not os.access(d, os.W_OK | os.X_OK):
        raise EPIInputError(
            f"--out {os.fspath(out_prefix)!r}: the folder '{d}' is not writable; choose another "
            "--out prefix"
        )


def _make_dirs(directory: Path) -> list[Path]:
    """Create ``directory`` (and parents); return the folders created, outermost first."""
    missing = []
    d = directory.absolute()
    while not d.exists():
        missing.append(d)
        d = d.parent
    missing.reverse()
    made: list[Path] = []
    try:
        for m in missing:
            m.mkdir()
            made.append(m)
    except BaseException:  # no empty folder is left behind
        for m in reversed(made):
            try:
                m.rmdir()
            except OSError:
                pass
        raise
    return missing


def _commit(
    staged: dict[Path, Path], tmp: Path, *, overwrite: bool, remove: Sequence[Path] = ()
) -> None:
    """Rename every staged file into place and move ``remove`` (stale outputs) away; on
    failure undo (restoring replaced and removed files)."""
    done: list[Path] = []
    backups: list[tuple[Path, Path]] = []
    try:
        for stale in remove:
            backup = tmp / f".backup-{len(backups)}-{stale.name}"
            os.replace(stale, backup)
            backups.append((stale, backup))
        for final, temp in staged.items():
            if final.exists() or final.is_symlink():
                if not overwrite:
                    raise EPIInputError(
                        f"output '{final}' appeared while correcting; nothing was written"
                    )
                backup = tmp / f".backup-{len(backups)}-{final.name}"
                os.replace(final, backup)
                backups.append((final, backup))
            os.replace(temp, final)
            done.append(final)
    except BaseException:
        for f in done:
            try:
                f.unlink()
            except OSError:
                pass
        for final, backup in backups:
            os.replace(backup, final)
        raise


def _sidecars(
    acq: Acquisition,
    meta_up: dict[str, Any],
    meta_down: dict[str, Any],
    provenance: dict[str, Any],
    applied: Sequence[tuple[Path, NiftiImage, int, float, dict[str, Any]]],
    h_pe: float,
) -> dict[str, dict[str, Any]]:
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
    out: dict[str, dict[str, Any]] = {
        "up_corrected": {
            **meta_up,
            **provenance,
            "Description": "up image, susceptibility distortion corrected (Jacobian modulated)",
        },
        "down_corrected": {
            **meta_down,
            **provenance,
            "Description": "down image, susceptibility distortion corrected (Jacobian modulated)",
        },
        "corrected": {**provenance, "Description": "mean of the corrected up and down images"},
        "fieldmap": {
            **provenance,
            "Units": "Hz",
            "Description": "off-resonance field",
            "FieldSignConvention": convention,
        },
        "displacement_mm": {
            **provenance,
            "Units": "mm",
            "PhaseEncodingAxis": axis,
            "VoxelSizeAlongPE": h_pe,
            "Description": disp,
        },
        "displacement_vox": {
            **provenance,
            "Units": "voxels",
            "PhaseEncodingAxis": axis,
            "Description": disp,
        },
        "jacobian_up": {**provenance, "Description": "1 + d b / d x_PE (up image's Jacobian)"},
        "jacobian_down": {**provenance, "Description": "1 - d b / d x_PE (down image's Jacobian)"},
    }
    for a, _, sign, trt, meta in applied:
        out[f"apply:{_stem(a)}"] = {
            **meta,
            **provenance,
            "Sources": [str(a)],
            "Description": f"corrected with the field (PE sign {sign:+d}, readout {trt} s)",
        }
    return out
