"""Checks the subcommands share: room for an output, output paths, JSON without NaN."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``, else the free
    physical pages), or ``None`` where the platform does not say."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - platform
        return None


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def check_memory(nbytes: float, what: str, fix: str) -> None:
    """Refuse work that needs more than the memory available (ValueError naming ``what``
    and ``fix``) instead of failing later with an allocator error."""
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise ValueError(
            f"{what} needs about {_size(nbytes)} of memory, more than the {_size(avail)} "
            f"available; {fix}"
        )


def check_disk(folder: Path, nbytes: float, what: str) -> None:
    """Refuse to write ``nbytes`` into ``folder`` (or its nearest existing parent) when the
    disk has less free space."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:  # pragma: no cover - platform
        return
    if nbytes > free:
        raise ValueError(
            f"{what} would write about {_size(nbytes)}, more than the {_size(free)} free on "
            f"the disk of {folder}"
        )


def check_out_path(path: Path, flag: str, *, folder: bool) -> None:
    """Refuse an output path whose parents include a file, or (``folder=True``) that is
    itself an existing file, with a message instead of ``[Errno 17] File exists``."""
    if folder and path.exists() and not path.is_dir():
        raise ValueError(
            f"{flag} {path} is an existing file; give a folder (new or existing) for the outputs"
        )
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {path}: {parent} is a file, not a folder")
            return


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN/inf float replaced by ``None`` (JSON ``null``), so that
    ``json.dumps(..., allow_nan=False)`` writes valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON (no NaN/Infinity literals, which JSON does not have)."""
    return json.dumps(obj, allow_nan=False, **kwargs)


def save_npy(path: Path, arr: np.ndarray) -> None:
    """``np.save`` to a temporary file beside ``path``, then moved over it: an error or an
    interrupt leaves no partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    try:
        np.save(tmp, arr, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
