"""GAS without code execution: a restricted reader for MAF's ``ethylene_CO.pickle`` and a
one-time conversion to a plain ``.npy`` array.

MAF (arXiv 1705.07057) distributes GAS as a pickled pandas DataFrame. Unpickling runs any
callable the file names, so a crafted file would run code; odeflow never calls
``pickle.load``/``pandas.read_pickle`` on it. Its reader resolves only the handful of
numpy/pandas classes and reconstructors that a DataFrame of numbers is built from and
refuses every other name before anything is called.
"""

from __future__ import annotations

import importlib
import os
import pickle
from pathlib import Path

import numpy as np

__all__ = ["convert_gas", "read_dataframe_pickle"]

#: MAF's label and time columns, dropped before the correlation pruning
GAS_DROPPED = ("Meth", "Eth", "Time")

# (module, name) as a pickle may spell it -> where the object lives now (candidates in
# order: current pandas/numpy first, then older layouts). Exact names only; no prefixes.
_NUMPY_CORE = ("numpy._core", "numpy.core")
_ALLOWED: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}


def _allow(spellings, *targets) -> None:
    for key in spellings:
        _ALLOWED[key] = targets


_allow([("builtins", "slice"), ("__builtin__", "slice")], ("builtins", "slice"))
_allow([("builtins", "object"), ("__builtin__", "object")], ("builtins", "object"))
_allow([("_codecs", "encode")], ("_codecs", "encode"))  # bytes under protocols 0-2
_allow([("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor")],
       ("copyreg", "_reconstructor"))  # fmt: skip
_allow([("numpy", "dtype")], ("numpy", "dtype"))
_allow([("numpy", "ndarray")], ("numpy", "ndarray"))
for _name, _mod in (("_reconstruct", "multiarray"), ("scalar", "multiarray"),
                    ("_frombuffer", "numeric")):  # fmt: skip
    _allow([(f"{c}.{_mod}", _name) for c in _NUMPY_CORE],
           *[(f"{c}.{_mod}", _name) for c in _NUMPY_CORE])  # fmt: skip
_allow([("pandas", "DataFrame"), ("pandas.core.frame", "DataFrame")], ("pandas", "DataFrame"))
_allow([("pandas", "Series"), ("pandas.core.series", "Series")], ("pandas", "Series"))
_allow([("pandas", "Index"), ("pandas.core.indexes.base", "Index")]
       + [("pandas.core.indexes.numeric", n) for n in ("Int64Index", "UInt64Index",
                                                        "Float64Index")],
       ("pandas", "Index"))  # fmt: skip
_allow([("pandas", "RangeIndex"), ("pandas.core.indexes.range", "RangeIndex")],
       ("pandas", "RangeIndex"))  # fmt: skip
_allow([("pandas.core.indexes.base", "_new_Index")], ("pandas.core.indexes.base", "_new_Index"))
_allow([("pandas.core.internals.managers", "BlockManager"),
        ("pandas.core.internals", "BlockManager")],
       ("pandas.core.internals.managers", "BlockManager"))  # fmt: skip
_allow([("pandas.core.internals.managers", "SingleBlockManager"),
        ("pandas.core.internals", "SingleBlockManager")],
       ("pandas.core.internals.managers", "SingleBlockManager"))  # fmt: skip
_allow([("pandas._libs.internals", "_unpickle_block"),
        ("pandas.core.internals.blocks", "new_block")],
       ("pandas._libs.internals", "_unpickle_block"),
       ("pandas.core.internals.blocks", "new_block"))  # fmt: skip
_allow([("pandas._libs.internals", "BlockPlacement")], ("pandas._libs.internals", "BlockPlacement"))
# string column labels as pandas >= 3 stores them
_allow([("pandas", "StringDtype"), ("pandas.core.arrays.string_", "StringDtype")],
       ("pandas", "StringDtype"))  # fmt: skip
_allow([("pandas.arrays", "StringArray"), ("pandas.core.arrays.string_", "StringArray")],
       ("pandas.arrays", "StringArray"))  # fmt: skip
_allow([("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked")],
       ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"))  # fmt: skip


class _Refused(pickle.UnpicklingError):
    """A name outside the allow-list (raised before anything is called)."""


class _DataFrameUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` resolves only the allow-listed names.

    Every callable a pickle can invoke (REDUCE, NEWOBJ, INST, OBJ, BUILD's ``__setstate__``,
    the extension registry) is first looked up through ``find_class``; anything outside the
    list raises before it is called. ``persistent_load`` is not defined, so persistent IDs
    are refused as well.
    """

    def find_class(self, module: str, name: str):
        targets = _ALLOWED.get((module, name))
        if targets is None:
            raise _Refused(
                f"it references {module}.{name}, which a DataFrame of numbers never needs"
            )
        for mod, attr in targets:
            try:
                return getattr(importlib.import_module(mod), attr)
            except (ImportError, AttributeError):
                continue
        raise _Refused(
            f"it references {module}.{name}, which the installed numpy/pandas do not provide "
            "(a pickle from an incompatible pandas version)"
        )


def read_dataframe_pickle(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read a pickled pandas DataFrame of real numbers without running code from the file.

    The pickle is read by an unpickler that resolves only the numpy/pandas classes and
    reconstructors a DataFrame of numbers is made of (``DataFrame``, ``Index``,
    ``RangeIndex``, ``BlockManager``, ``numpy.ndarray``, ``numpy.dtype``, ...); any other
    name (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) is refused before it
    is called.

    Args:
        path: the pickle file (e.g. MAF's ``gas/ethylene_CO.pickle``).

    Returns:
        ``(columns, values)``: the column labels as strings and the values as a float64
        ``(n, d)`` array.

    Raises:
        ValueError: the file names a class or function outside the allow-list (the name is
            given), is not a pickle, or holds something other than a DataFrame of real
            numbers.
        ImportError: pandas is not installed.

    Example:
        >>> import io, os, pickle, tempfile
        >>> class Payload:
        ...     def __reduce__(self):
        ...         return (os.system, ("echo pwned",))
        >>> f = os.path.join(tempfile.mkdtemp(), "x.pickle")
        >>> with open(f, "wb") as fh:
        ...     pickle.dump(Payload(), fh)
        >>> read_dataframe_pickle(f)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ... refused to unpickle it: it references ...system, which a DataFrame ...
    """
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading GAS's pickle needs pandas (pip install pandas)") from exc
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            # latin1: numpy arrays pickled under Python 2 (ignored by Python 3 pickles)
            obj = _DataFrameUnpickler(fh, encoding="latin1").load()
    except _Refused as exc:
        raise ValueError(
            f"{path}: odeflow refused to unpickle it: {exc}. The MAF file holds only a "
            "DataFrame of numbers; this one may be crafted to run code (nothing in it was run)"
        ) from None
    except Exception as exc:  # truncated, not a pickle, a state pandas rejects
        raise ValueError(
            f"{path} is not a readable DataFrame pickle ({type(exc).__name__}: {exc})"
        ) from None
    if type(obj) is not pd.DataFrame:
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a pandas DataFrame")
    columns = [str(c) for c in obj.columns]
    values = obj.to_numpy()
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{path} holds values of dtype {values.dtype}, not real numbers")
    return columns, values.astype(np.float64)


def convert_gas(src: str | Path, out: str | Path | None = None, *, overwrite: bool = False) -> Path:
    """Convert MAF's GAS pickle once into a plain ``.npy`` array that loads without pickle.

    Reads ``src`` with :func:`read_dataframe_pickle` (no code from the file runs), drops
    MAF's label and time columns (``Meth``, ``Eth``, ``Time``) and saves the remaining
    columns as a float64 ``(n, d)`` array with ``np.save(allow_pickle=False)``.
    ``load_tabular("gas", root)`` then reads ``root/gas/ethylene_CO.npy`` in preference to
    the pickle and gives the same data (the correlation pruning and standardisation of MAF,
    arXiv 1705.07057, run on the array).

    Args:
        src: the pickle, or the MAF root folder (``gas/ethylene_CO.pickle`` under it).
        out: the ``.npy`` file to write (default: ``ethylene_CO.npy`` beside the pickle).
        overwrite: replace an existing ``out`` (refused otherwise).

    Returns:
        The path written.

    Raises:
        FileNotFoundError: no pickle at ``src``.
        FileExistsError: ``out`` exists and ``overwrite`` is false.
        ValueError: the pickle is refused or unreadable (see :func:`read_dataframe_pickle`),
            or ``out`` does not end in ``.npy``.

    Example:
        >>> import os, tempfile
        >>> import pandas as pd
        >>> root = tempfile.mkdtemp()
        >>> os.mkdir(os.path.join(root, "gas"))
        >>> pd.DataFrame({"Time": [0.0, 1.0], "Meth": [1.0, 0.0], "s1": [0.5, 0.7]}).to_pickle(
        ...     os.path.join(root, "gas", "ethylene_CO.pickle"))
        >>> np.load(convert_gas(root), allow_pickle=False)
        array([[0.5],
               [0.7]])
    """
    src = Path(src)
    if src.is_dir():
        src = src / "gas" / "ethylene_CO.pickle"
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such file (MAF's gas/ethylene_CO.pickle)")
    out = src.with_suffix(".npy") if out is None else Path(out)
    if out.suffix != ".npy":
        raise ValueError(f"out={str(out)!r} must end in .npy")
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"{out} already exists; pass overwrite=True (--overwrite) to replace it"
        )
    columns, values = read_dataframe_pickle(src)
    keep = [i for i, c in enumerate(columns) if c not in GAS_DROPPED]
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.npy")
    try:
        np.save(tmp, np.ascontiguousarray(values[:, keep]), allow_pickle=False)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
