"""Loaders for the MAF-format tabular density-estimation sets and an offline real-data case.

The five sets (POWER, GAS, HEPMASS, MINIBOONE, BSDS300) are distributed by Papamakarios
et al. (MAF, arXiv 1705.07057; Zenodo record 1161203). Nothing is downloaded: the user
points ``root`` at the unpacked folder. The preprocessing reproduces MAF's published
recipe (shuffle/split/whiten as described in its appendix and data code), written here
from that description.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._gas import GAS_DROPPED, read_dataframe_pickle
from ._toys import _check_dtype

__all__ = ["TABULAR_FILES", "TabularData", "check_data", "load_sklearn", "load_tabular"]

#: files each set needs, relative to ``root``
TABULAR_FILES: dict[str, tuple[str, ...]] = {
    "power": ("power/data.npy",),
    "gas": ("gas/ethylene_CO.pickle",),
    "hepmass": ("hepmass/1000_train.csv", "hepmass/1000_test.csv"),
    "miniboone": ("miniboone/data.npy",),
    "bsds300": ("BSDS300/BSDS300.hdf5",),
}


@dataclass(frozen=True)
class TabularData:
    """Train / validation / test splits of one dataset, each ``(n, d)``."""

    name: str
    train: Tensor
    val: Tensor
    test: Tensor

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])


def check_data(x, dim: int | None = None, *, name: str = "data") -> Tensor:
    """Validate a data matrix at the public boundary and return it as a tensor.

    ``x`` is a tensor, a NumPy array or nested lists of real numbers (integers and bools
    become the default float dtype).

    Raises:
        ValueError: not a rectangular array of real numbers (strings, objects, ragged
            lists, complex values), not 2-D, empty, wrong number of columns, or contains
            NaN/inf; ``name`` says which data.

    Example:
        >>> check_data(torch.zeros(3, 2), 2).shape
        torch.Size([3, 2])
    """
    if not isinstance(x, Tensor):
        try:
            arr = np.asarray(x)
        except ValueError as exc:  # ragged nested lists
            why = str(exc).split(". ")[0]
            raise ValueError(
                f"{name} is not a rectangular (n, d) array of numbers ({why}); give every row "
                "the same number of entries"
            ) from None
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise ValueError(
                f"{name} must hold real numbers, got an array of dtype {arr.dtype} (e.g. "
                "strings or mixed objects); convert it first, e.g. np.asarray(data, dtype=float)"
            )
        x = torch.as_tensor(arr)
    if x.is_complex():
        raise ValueError(
            f"{name} is complex ({x.dtype}); a flow models real data: pass the real and "
            "imaginary parts as separate columns"
        )
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, d) array, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows); pass at least one sample")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(
            f"{name} has {x.shape[1]} columns but the flow has dim={dim}; "
            f"build the flow with dim={x.shape[1]} or pass data of dimension {dim}"
        )
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(1).sum())
        raise ValueError(f"{name} contains NaN or inf in {bad} row(s); clean or drop them first")
    return x


def _require(root: Path, name: str) -> list[Path]:
    layout = ", ".join(TABULAR_FILES[name])
    if root.is_file():
        raise FileNotFoundError(
            f"{root} is a file; pass the folder that holds {layout} (MAF data, Zenodo "
            "record 1161203)"
        )
    paths = [root / f for f in TABULAR_FILES[name]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{name.upper()} files not found: {', '.join(missing)}. Expected layout under "
            f"{root}: {layout} (MAF data, Zenodo record 1161203; odeflow never downloads)"
        )
    return paths


def _bad_file(path: Path, why: str) -> ValueError:
    return ValueError(f"{path} {why}; expected the MAF file (Zenodo record 1161203) unchanged")


def _matrix(arr: Any, path: Path, cols: int | None = None) -> np.ndarray:
    """``arr`` (read from ``path``) as a finite float64 ``(n, cols)`` matrix, else a
    ValueError naming the file."""
    arr = np.asarray(arr)
    if np.iscomplexobj(arr) or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise _bad_file(path, f"holds values of dtype {arr.dtype}, not real numbers")
    if arr.ndim != 2 or arr.shape[1] == 0 or (cols is not None and arr.shape[1] != cols):
        raise _bad_file(
            path, f"holds an array of shape {arr.shape}, not (n, {cols or 'd'}) with n rows"
        )
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr).all(1)
    if bad.any():
        raise _bad_file(
            path,
            f"has NaN or inf in {int(bad.sum())} row(s) (the first is row {int(bad.argmax())})",
        )
    return arr


def read_npy(path: str | Path, name: str | None = None) -> np.ndarray:
    """Read one array from a ``.npy`` file without ever unpickling (``allow_pickle=False``).

    Raises:
        ValueError: the file is empty, not in NumPy's ``.npy`` format (e.g. an ``.npz``
            archive or other bytes), truncated, or holds Python objects (dtype object,
            which would need unpickling: save a numeric array instead). The message starts
            with ``name`` (``"NAME: ..."``), else with the path (``"PATH is ..."``).
    """
    path = Path(path)

    def bad(reason: str) -> ValueError:
        return ValueError(f"{name}: {reason}" if name else f"{path} is {reason}")

    with open(path, "rb") as fh:
        head = fh.read(6)
    if not head:
        raise bad("empty (0 bytes), not a .npy array; save the array with np.save")
    if head.startswith(b"PK"):
        raise bad("an .npz archive, not a .npy file; save the one (n, d) array with np.save")
    if head != b"\x93NUMPY":
        raise bad("not a .npy file (it lacks NumPy's .npy header); save the array with np.save")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):  # object arrays: never unpickled, never suggested
            raise bad(
                "an array of Python objects (pickled), which odeflow never loads; save a "
                "numeric array, e.g. np.save(path, np.asarray(x, dtype=float))"
            ) from None
        raise bad(f"not a readable .npy array ({exc})") from None
    except Exception as exc:  # truncated, damaged header, ...
        raise bad(f"not a readable .npy array ({type(exc).__name__}: {exc})") from None


def _load_npy(path: Path, cols: int | None) -> np.ndarray:
    try:
        arr = read_npy(path)
    except ValueError as exc:  # (the message starts with the path)
        raise ValueError(f"{exc}; expected the MAF file (Zenodo record 1161203)") from None
    return _matrix(arr, path, cols)


def _split(data: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_test = int(0.1 * data.shape[0])
    n_val = int(0.1 * (data.shape[0] - n_test))
    if n_val < 1:  # (data[-0:] would be every row)
        raise _bad_file(path, f"has {data.shape[0]} rows; the 10 %/10 % split needs >= 11")
    test, rest = data[-n_test:], data[:-n_test]
    return rest[:-n_val], rest[-n_val:], test


def _scale(x: np.ndarray, path: Path, names=None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) standard deviation of the columns of ``x``; a constant column
    is a ValueError naming the file (and the column, by index or by ``names``)."""
    mu, sd = x.mean(0), x.std(0)
    if (sd == 0).any():
        const = [names[i] if names is not None else i for i in np.flatnonzero(sd == 0).tolist()]
        raise _bad_file(path, f"has constant column(s) {const}, which cannot be standardised")
    return mu, sd


def _whiten_trainval(tr, va, te, path: Path):
    mu, sd = _scale(np.vstack([tr, va]), path)
    return (tr - mu) / sd, (va - mu) / sd, (te - mu) / sd


def _power(root: Path):
    (f,) = _require(root, "power")
    rng = np.random.RandomState(42)
    data = _load_npy(f, 8)
    rng.shuffle(data)
    n = data.shape[0]
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    # MAF's draw order: voltage noise, then gap noise, then sub-metering noise
    voltage = 0.01 * rng.rand(n, 1)
    gap = 0.001 * rng.rand(n, 1)
    noise = np.hstack([gap, voltage, rng.rand(n, 3), np.zeros((n, 1))])
    return _whiten_trainval(*_split(data + noise, f), f)


def _gas(root: Path):
    """GAS from ``gas/ethylene_CO.npy`` (written by :func:`convert_gas`) if present, else
    from MAF's pickle through the restricted reader (no code from the file runs)."""
    npy = root / "gas" / "ethylene_CO.npy"
    if npy.is_file():
        f, data, names = npy, _load_npy(npy, None), None
    else:
        (f,) = _require(root, "gas")
        try:
            columns, values = read_dataframe_pickle(f)
        except ValueError as exc:
            raise ValueError(f"{exc}; expected the MAF file (Zenodo record 1161203)") from None
        keep = [i for i, c in enumerate(columns) if c not in GAS_DROPPED]
        names = [columns[i] for i in keep]
        data = _matrix(values[:, keep], f)  # real, finite numbers before the correlations
    idx = list(range(data.shape[1]))
    with np.errstate(invalid="ignore", divide="ignore"):  # (constant columns: named below)
        corr = np.corrcoef(data, rowvar=False).reshape(len(idx), len(idx))
    while True:  # drop one of every pair of columns with correlation > 0.98
        over = (corr[np.ix_(idx, idx)] > 0.98).sum(1)
        if not (over > 1).any():
            break
        del idx[int(np.where(over > 1)[0][0])]
    data = data[:, idx]
    mu, sd = _scale(data, f, [names[i] for i in idx] if names is not None else idx)
    return _split((data - mu) / sd, f)


def _hepmass(root: Path):
    ftr, fte = _require(root, "hepmass")
    import pandas as pd

    def read(path: Path, cols: int | None = None) -> np.ndarray:
        try:
            df = pd.read_csv(path, index_col=False)
        except Exception as exc:
            raise _bad_file(path, f"is not a readable CSV ({type(exc).__name__}: {exc})") from None
        return _matrix(df.to_numpy(), path, cols)

    tr = read(ftr)
    te = read(fte, tr.shape[1] + 1)  # the test file has an extra (mass) column
    if tr.shape[1] < 2:
        raise _bad_file(ftr, f"has {tr.shape[1]} column(s), not a label and features")
    tr = tr[tr[:, 0] == 1, 1:]  # signal only, drop the label
    te = te[te[:, 0] == 1, 1:-1]  # ... and the test file's extra last column
    mu, sd = _scale(tr, ftr)
    tr, te = (tr - mu) / sd, (te - mu) / sd
    # drop features whose smallest value recurs more than 5 times (discrete-valued columns)
    keep = [i for i in range(tr.shape[1]) if Counter(tr[:, i])[tr[:, i].min()] <= 5]
    tr, te = tr[:, keep], te[:, keep]
    n_val = int(0.1 * tr.shape[0])
    if n_val < 1:  # (tr[:-0] would be no rows)
        raise _bad_file(
            ftr, f"has {tr.shape[0]} signal rows; the 10 % validation split needs >= 10"
        )
    return tr[:-n_val], tr[-n_val:], te


def _miniboone(root: Path):
    (f,) = _require(root, "miniboone")
    return _whiten_trainval(*_split(_load_npy(f, 43), f), f)


def _bsds300(root: Path):
    (f,) = _require(root, "bsds300")
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("BSDS300 is stored as HDF5; install h5py (pip install h5py)") from exc
    try:
        with h5py.File(f, "r") as h:
            missing = [k for k in ("train", "validation", "test") if k not in h]
            if missing:
                raise _bad_file(f, f"lacks the dataset(s) {missing}")
            return tuple(_matrix(h[k][()], f, 63) for k in ("train", "validation", "test"))
    except OSError as exc:  # not HDF5, truncated
        raise _bad_file(f, f"is not a readable HDF5 file ({exc})") from None


_LOADERS = {
    "power": _power,
    "gas": _gas,
    "hepmass": _hepmass,
    "miniboone": _miniboone,
    "bsds300": _bsds300,
}


def load_tabular(name: str, root: str | Path, *, dtype: torch.dtype = torch.float32) -> TabularData:
    """Load one MAF-format tabular set from files under ``root``.

    Preprocessing (MAF, arXiv 1705.07057): POWER drops two columns, adds the published
    dequantisation noise (seed 42), splits 10 % test / 10 % of the rest validation, and
    whitens with train+validation statistics; GAS drops the label/time columns and one of
    each pair of columns correlated above 0.98, then standardises (GAS is read from
    ``gas/ethylene_CO.npy`` if :func:`convert_gas` wrote one, else from MAF's pickle by a
    restricted reader that refuses anything but a DataFrame of numbers: no code from the
    file runs); HEPMASS keeps the
    signal rows, standardises with train statistics and drops discrete-valued features;
    MINIBOONE splits and whitens like POWER; BSDS300 is read as stored.

    Args:
        name: ``power``, ``gas``, ``hepmass``, ``miniboone`` or ``bsds300`` (any case).
        root: folder holding the files listed in :data:`TABULAR_FILES`.
        dtype: dtype of the returned tensors.

    Returns:
        :class:`TabularData` with ``train``, ``val``, ``test`` of shape ``(n, d)``.

    Raises:
        ValueError: unknown name (valid names listed), a non-floating ``dtype``, or a file
            that is not the MAF file (unreadable, wrong shape, NaN/inf, a constant column,
            too few rows for the splits; the file is named).
        FileNotFoundError: a required file is absent (the expected paths are named), or
            ``root`` is a file.

    Example:
        >>> load_tabular("mnist", ".")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown tabular set 'mnist'; valid names are: power, gas, hepmass, ...
    """
    key = str(name).lower()
    if key not in _LOADERS:
        raise ValueError(f"unknown tabular set {name!r}; valid names are: {', '.join(_LOADERS)}")
    _check_dtype(dtype)
    tr, va, te = _LOADERS[key](Path(root))
    out = [check_data(torch.as_tensor(np.ascontiguousarray(a)).to(dtype), name=f"{key} {s}")
           for a, s in ((tr, "train"), (va, "val"), (te, "test"))]  # fmt: skip
    return TabularData(key, *out)


def load_sklearn(
    name: str = "breast_cancer", *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> TabularData:
    """An offline real-data case from scikit-learn's bundled sets, standardised.

    ``breast_cancer`` (569 × 30, continuous features) or ``digits`` (1797 × 64 pixel
    intensities in 0..16, dequantised with U(0, 1) noise, constant pixels dropped).
    Rows are shuffled with ``seed`` and split 80/10/10; features are standardised with
    training statistics.

    Raises:
        ValueError: unknown name, or a non-floating ``dtype``.
        ImportError: scikit-learn is not installed.

    Example:
        >>> d = load_sklearn("breast_cancer")
        >>> d.dim, d.train.shape[0] + d.val.shape[0] + d.test.shape[0]
        (30, 569)
    """
    try:
        from sklearn import datasets
    except ImportError as exc:  # pragma: no cover
        raise ImportError("load_sklearn needs scikit-learn (pip install scikit-learn)") from exc
    _check_dtype(dtype)
    rng = np.random.RandomState(seed)
    if name == "breast_cancer":
        x = datasets.load_breast_cancer().data.astype(np.float64)
    elif name == "digits":
        x = datasets.load_digits().data.astype(np.float64)
        x = x[:, x.std(0) > 0] + rng.rand(x.shape[0], int((x.std(0) > 0).sum()))
    else:
        raise ValueError(f"unknown sklearn set {name!r}; valid names are: breast_cancer, digits")
    x = x[rng.permutation(x.shape[0])]
    n = x.shape[0]
    n_tr, n_va = int(0.8 * n), int(0.1 * n)
    tr, va, te = x[:n_tr], x[n_tr : n_tr + n_va], x[n_tr + n_va :]
    mu, sd = tr.mean(0), tr.std(0)
    sd[sd == 0] = 1.0
    conv = [torch.as_tensor((a - mu) / sd).to(dtype) for a in (tr, va, te)]
    return TabularData(name, *conv)
