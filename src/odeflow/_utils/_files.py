"""Atomic file writes and strict JSON."""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import IO, Any

import numpy as np
import torch

__all__ = ["atomic_write", "dumps_json", "jsonable", "write_json"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO], None], *, binary: bool = True):
    """Write a file all or nothing: ``write(fh)`` fills a temporary file beside ``path``, which
    is flushed, fsynced and renamed over ``path`` (``os.replace``).

    A failure (also in ``write``) removes the temporary file and leaves an existing ``path``
    untouched. Parent folders are created.

    Raises:
        IsADirectoryError: ``path`` is an existing folder.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name inside it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb" if binary else "x", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def jsonable(obj: Any, key: str = "value", *, nonfinite: str = "error") -> Any:
    """``obj`` as plain JSON data (None, bool, int, float, str, list, dict with str keys).

    NumPy scalars/arrays and tensors become (nested) Python numbers via ``tolist()``, paths
    become ``str``, tuples become lists. A NaN or infinite float raises ``ValueError`` naming
    where it is (``nonfinite="error"``, the default), becomes ``None`` (``nonfinite="null"``)
    or stays (``nonfinite="keep"``: plain data for ``torch.save``, not for JSON). Anything
    else raises ``TypeError`` naming ``key``.

    >>> jsonable({"a": (1, 2.5), "p": PurePath("x")})
    {'a': [1, 2.5], 'p': 'x'}
    """
    if nonfinite not in ("error", "null", "keep"):
        raise ValueError(f"nonfinite must be 'error', 'null' or 'keep', got {nonfinite!r}.")
    if obj is None:
        return None
    if isinstance(obj, (np.generic, np.ndarray, torch.Tensor)):  # NumPy scalars/arrays, tensors
        return jsonable(obj.tolist(), key, nonfinite=nonfinite)
    if isinstance(obj, bool):  # (before int)
        return bool(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isfinite(obj) or nonfinite == "keep":
            return float(obj)
        if nonfinite == "null":
            return None
        raise ValueError(
            f"{key} is {obj!r}, which JSON cannot hold; replace it (e.g. by None) first."
        )
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v, f"{key}[{k!r}]", nonfinite=nonfinite) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, f"{key}[{i}]", nonfinite=nonfinite) for i, v in enumerate(obj)]
    raise TypeError(
        f"{key} is a {type(obj).__name__} ({obj!r:.60}), which is not JSON-like (None, bool, "
        "int, float, str, and lists, tuples and dicts of them; paths, NumPy arrays and tensors "
        "are converted). Convert it first, e.g. with str()."
    )


def dumps_json(obj: Any, *, nonfinite: str = "error", indent: int | None = 2) -> str:
    """Strict JSON text of ``jsonable(obj)`` (``allow_nan=False``; ``nonfinite`` is "error"
    or "null")."""
    return json.dumps(jsonable(obj, nonfinite=nonfinite), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike[str], obj: Any, *, nonfinite: str = "error") -> None:
    """Write ``obj`` as strict JSON (with a final newline) to ``path``, atomically."""
    text = dumps_json(obj, nonfinite=nonfinite) + "\n"
    atomic_write(path, lambda fh: fh.write(text), binary=False)
