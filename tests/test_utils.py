"""odeflow._utils: argument checks, the caller's stack level, atomic writes, strict JSON."""

from __future__ import annotations

import inspect
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import odeflow
from odeflow import _utils as U

PACKAGE = Path(odeflow.__file__).resolve().parent


def test_checks_name_the_argument():
    assert U.check_positive_int("depth", np.int64(3)) == 3
    assert U.check_int("maxiter", 0) == 0
    for bad in (0, -1, 2.0, True, "3"):
        with pytest.raises(ValueError, match=r"f: depth must be a positive integer"):
            U.check_positive_int("depth", bad, who="f")
    assert U.check_finite_real("h", np.float32(0.5), positive=True) == 0.5
    for bad in (math.inf, math.nan, True, 1j, "1"):
        with pytest.raises(ValueError, match="h must be a finite number"):
            U.check_finite_real("h", bad)
    with pytest.raises(ValueError, match="> 0"):
        U.check_finite_real("h", 0.0, positive=True)
    with pytest.raises(ValueError, match=">= 0"):
        U.check_finite_real("tol", -1e-3, nonnegative=True)
    assert U.check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="not a torch device"):
        U.check_device("tpu:x")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            U.check_device("cuda", what="--device cuda")


def test_outside_stacklevel_names_the_first_frame_outside_odeflow():
    """Two nested functions whose code claims to live inside the package: the warning is
    attributed to this test's line, at any depth."""
    src = (
        "import warnings\n"
        "from odeflow._utils import outside_stacklevel\n"
        "def inner():\n"
        "    warnings.warn('deep', UserWarning, stacklevel=outside_stacklevel())\n"
        "def outer():\n"
        "    inner()\n"
    )
    ns: dict = {}
    exec(compile(src, str(PACKAGE / "_fake_module.py"), "exec"), ns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ns["outer"]()  # the line the warning must name
        line = inspect.currentframe().f_lineno - 1
    assert caught[0].filename == __file__ and caught[0].lineno == line


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "sub" / "a.bin"
    U.atomic_write(target, lambda fh: fh.write(b"old"))
    assert target.read_bytes() == b"old"

    def fail(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        U.atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.bin"]  # no temp left
    with pytest.raises(IsADirectoryError):
        U.atomic_write(tmp_path, lambda fh: None)


def test_json_is_strict(tmp_path):
    data = {"a": np.float32(1.5), "b": torch.tensor([1, 2]), "c": (Path("x"), None, True)}
    assert U.jsonable(data) == {"a": 1.5, "b": [1, 2], "c": ["x", None, True]}
    with pytest.raises(ValueError, match=r"value\['m'\]\[1\] is nan"):
        U.jsonable({"m": [1.0, float("nan")]})
    assert U.jsonable({"m": [math.inf]}, nonfinite="null") == {"m": [None]}
    assert math.isnan(U.jsonable([np.nan], nonfinite="keep")[0])  # (torch.save payloads)
    with pytest.raises(TypeError, match="not JSON-like"):
        U.jsonable({"f": object()})
    U.write_json(tmp_path / "m.json", {"x": np.arange(3), "y": -math.inf}, nonfinite="null")
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": [0, 1, 2], "y": None}
    with pytest.raises(ValueError, match="inf"):
        U.write_json(tmp_path / "n.json", {"y": math.inf})
    assert not (tmp_path / "n.json").exists()


def test_progress_is_silent_when_not_verbose(capsys):
    bar = U.progress(3, desc="x", verbose=False)
    bar.update(3)
    bar.close()
    assert capsys.readouterr().err == ""
