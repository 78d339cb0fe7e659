"""Where :func:`~odeflow.imaging.epi.correct_files` writes: the planned output files, their
collision checks, and the checks against inputs, earlier runs and unwritable folders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ._bids import sidecar_path
from ._nifti import EPIInputError

__all__ = ["OutputPlan", "output_paths", "plan_outputs"]

#: output kinds written for every run (name → file name after the prefix)
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
#: the report (``qc_*`` only with ``qc=True``)
_REPORT: dict[str, str] = {
    "qc_png": "qc.png",
    "qc_html": "qc.html",
    "metrics": "metrics.json",
}


def _split_prefix(out_prefix: str | os.PathLike[str]) -> tuple[Path, str]:
    s = os.fspath(out_prefix)
    if not s:
        raise EPIInputError("out_prefix is empty; give e.g. out_prefix='results/sub-01_'")
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


def stem(path: Path) -> str:
    """The file name without ``.nii.gz``/``.nii`` (else without its last suffix)."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def as_path_list(apply: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """``apply`` as a list of paths; a single path (``str`` or ``os.PathLike``) is one series."""
    if isinstance(apply, (str, os.PathLike)):
        return [Path(apply)]
    return [Path(a) for a in apply]


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (by real path, or by inode where both exist)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


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
    for a in as_path_list(apply):
        s = stem(a)
        # a series already named with the prefix (sub-01_dwi with --out dir/sub-01_) is not
        # given it twice
        short = s[len(name) :] if name and s.startswith(name) and s != name else s
        plan(f"apply:{s}", f"{short}_corrected.nii.gz", f"the --apply series '{a}'", a)
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
    rename = f"(and its .json sidecar) under another name, e.g. '{stem(source)}_series.nii.gz'"
    if other_source is not None:
        head = (
            f"two --apply series share the name '{stem(source)}': '{other_source}' and '{source}'"
        )
        fix = f"rename or link one of them {rename}"
    else:
        head = f"{what} and {other_what}"
        fix = f"the names of odeflow's own outputs are fixed, so rename or link the series {rename}"
    return f"{head} would both be written to {where}; {fix}"


@dataclass(frozen=True)
class OutputPlan:
    """The checked output plan of one run.

    Attributes:
        paths: output name → path (see :func:`output_paths`).
        stale: an earlier run's report files to remove (``qc=False`` with ``overwrite``).
        directory: the folder of the outputs (may not exist yet).
    """

    paths: dict[str, Path]
    stale: list[Path]
    directory: Path


def plan_outputs(
    out_prefix: str | os.PathLike[str],
    inputs: Sequence[Path],
    apply: Sequence[Path],
    *,
    qc: bool,
    overwrite: bool,
) -> OutputPlan:
    """Plan the outputs and refuse, before any work, a plan that cannot be carried out.

    Refused (``EPIInputError``, naming the argument): an output that would overwrite an input
    or its sidecar (even with ``overwrite``), outputs (or a stale report) that already exist
    without ``overwrite``, an output folder that cannot be created or written to; and every
    collision :func:`output_paths` refuses.
    """
    paths = output_paths(out_prefix, apply, qc=qc)
    protected = [*inputs, *apply]
    protected += [sidecar_path(p) for p in protected]
    for key, out in paths.items():
        for inp in protected:
            if same_file(out, inp):
                raise EPIInputError(
                    f"output '{out}' ({key}) would overwrite the input '{inp}'; choose another "
                    "out_prefix"
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
                "out_prefix or pass overwrite=True (--overwrite)"
            )
    directory = paths["metrics"].parent
    _check_out_folder(directory, out_prefix)
    return OutputPlan(paths=paths, stale=stale, directory=directory)


def _check_out_folder(directory: Path, out_prefix: str | os.PathLike[str]) -> None:
    """Refuse, before any work, an output folder that cannot be created or written to."""
    d = directory.absolute()
    while not d.exists():
        d = d.parent
    if not d.is_dir():
        raise EPIInputError(
            f"out_prefix={os.fspath(out_prefix)!r}: '{d}' is a file, not a folder; choose "
            "another out_prefix"
        )
    if not os.access(d, os.W_OK | os.X_OK):
        raise EPIInputError(
            f"out_prefix={os.fspath(out_prefix)!r}: the folder '{d}' is not writable; choose "
            "another out_prefix"
        )
