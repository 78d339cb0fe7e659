"""GAS is read without running code from the file (issue 21, "code execution from a data
file"): a restricted unpickler that resolves only what a DataFrame of numbers needs, and a
one-time conversion to ``.npy`` that the loader prefers."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from odeflow.flows import convert_gas, load_tabular
from odeflow.flows._gas import read_dataframe_pickle
from odeflow.flows._tabular import read_npy

pd = pytest.importorskip("pandas")


class _SystemPayload:
    """Unpickling this calls ``os.system(cmd)``."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _OpenPayload:
    """Unpickling this calls ``builtins.open(path, "w")``, creating the file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _gas_frame(n: int = 400, seed: int = 2):
    rng = np.random.default_rng(seed)
    cols = {f"s{i}": rng.normal(size=n) for i in range(6)}
    cols["dup"] = cols["s0"] * 2.0 + 1.0  # perfectly correlated with s0: dropped
    cols.update(Meth=rng.normal(size=n), Eth=rng.normal(size=n), Time=np.arange(float(n)))
    return pd.DataFrame(cols)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_restricted_reader_reads_a_dataframe_pickled_by_the_installed_pandas(tmp_path, protocol):
    df = _gas_frame(50)
    f = tmp_path / "df.pickle"
    f.write_bytes(pickle.dumps(df, protocol=protocol))
    cols, values = read_dataframe_pickle(f)
    assert cols == list(df.columns)
    assert values.dtype == np.float64 and np.array_equal(values, df.to_numpy())


def test_restricted_reader_reads_to_pickle_output_and_integer_labels(tmp_path):
    df = pd.DataFrame(np.arange(12.0).reshape(4, 3))  # RangeIndex columns, no strings
    df.to_pickle(tmp_path / "a.pickle")
    cols, values = read_dataframe_pickle(tmp_path / "a.pickle")
    assert cols == ["0", "1", "2"] and np.array_equal(values, df.to_numpy())


def test_restricted_reader_accepts_older_module_spellings(tmp_path):
    """Pickles from pandas 1.x / numpy 1.x name the same objects under older modules
    (``pandas.core.frame``, ``numpy.core.multiarray``): they resolve to the same objects."""
    df = _gas_frame(20)
    raw = pickle.dumps(df, protocol=2)  # GLOBAL opcodes spell "module\nname\n"
    renames = {b"pandas\nDataFrame\n": b"pandas.core.frame\nDataFrame\n",
               b"numpy._core.multiarray\n": b"numpy.core.multiarray\n",
               b"pandas\nRangeIndex\n": b"pandas.core.indexes.range\nRangeIndex\n"}  # fmt: skip
    for old, new in renames.items():
        assert old in raw
        raw = raw.replace(old, new)
    (tmp_path / "old.pickle").write_bytes(raw)
    cols, values = read_dataframe_pickle(tmp_path / "old.pickle")
    assert cols == list(df.columns) and np.array_equal(values, df.to_numpy())


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_reduce_payload_is_refused_and_never_runs(tmp_path, protocol):
    marker = tmp_path / "marker"
    (tmp_path / "gas").mkdir()
    f = tmp_path / "gas" / "ethylene_CO.pickle"
    f.write_bytes(pickle.dumps(_SystemPayload(f"touch {marker}"), protocol=protocol))
    with pytest.raises(ValueError, match=r"refused to unpickle it: it references \w+\.system"):
        load_tabular("gas", tmp_path)
    with pytest.raises(ValueError, match="refused to unpickle"):
        convert_gas(tmp_path)
    assert not marker.exists()
    assert not (tmp_path / "gas" / "ethylene_CO.npy").exists()


def test_payload_hidden_inside_a_real_dataframe_is_refused(tmp_path):
    """A payload in the DataFrame's ``attrs`` is reached only after the DataFrame's own
    classes resolved: it is still refused, and the file it would create is never created."""
    marker = tmp_path / "created-by-pickle"
    df = _gas_frame(20)
    df.attrs["x"] = _OpenPayload(str(marker))
    f = tmp_path / "df.pickle"
    f.write_bytes(pickle.dumps(df))
    assert b"DataFrame" in f.read_bytes()
    with pytest.raises(ValueError, match=r"references (builtins|io)\.open"):
        read_dataframe_pickle(f)
    assert not marker.exists()


def test_every_global_a_payload_can_name_is_checked(tmp_path):
    """``eval``/``exec``/``getattr``/``__import__`` and pandas' own pickle helpers are not
    on the list (the list is exact names, not module prefixes)."""
    for module, name in [("builtins", "eval"), ("builtins", "getattr"), ("builtins", "exec"),
                         ("builtins", "__import__"), ("pandas", "read_pickle"),
                         ("numpy", "load"), ("subprocess", "Popen"), ("pandas.io.pickle",
                         "read_pickle"), ("numpy.testing", "assert_equal")]:  # fmt: skip
        # a protocol-0 pickle that would call module.name("1") and return it
        raw = f"c{module}\n{name}\n(S'1'\ntR.".encode()
        (tmp_path / "p.pickle").write_bytes(raw)
        with pytest.raises(ValueError, match=rf"references {module}\.{name},"):
            read_dataframe_pickle(tmp_path / "p.pickle")


def test_non_dataframe_and_garbage_are_refused(tmp_path):
    (tmp_path / "s.pickle").write_bytes(pickle.dumps(pd.Series([1.0, 2.0])))
    with pytest.raises(ValueError, match="holds a Series, not a pandas DataFrame"):
        read_dataframe_pickle(tmp_path / "s.pickle")
    (tmp_path / "g.pickle").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="is not a readable DataFrame pickle"):
        read_dataframe_pickle(tmp_path / "g.pickle")
    (tmp_path / "l.pickle").write_bytes(pickle.dumps([1.0, 2.0]))
    with pytest.raises(ValueError, match="holds a list, not a pandas DataFrame"):
        read_dataframe_pickle(tmp_path / "l.pickle")


def test_convert_gas_then_the_loader_prefers_the_npy_and_gives_the_same_data(tmp_path):
    (tmp_path / "gas").mkdir()
    pkl = tmp_path / "gas" / "ethylene_CO.pickle"
    _gas_frame().to_pickle(pkl)
    from_pickle = load_tabular("gas", tmp_path, dtype=torch.float64)
    out = convert_gas(tmp_path)
    assert out == tmp_path / "gas" / "ethylene_CO.npy"
    arr = np.load(out, allow_pickle=False)
    assert arr.shape == (400, 7) and arr.dtype == np.float64  # Meth, Eth, Time dropped
    pkl.write_bytes(pickle.dumps(_SystemPayload("exit 1")))  # the pickle is not read now
    from_npy = load_tabular("gas", tmp_path, dtype=torch.float64)
    assert from_npy.dim == from_pickle.dim == 6  # the duplicate column pruned
    for a, b in zip((from_npy.train, from_npy.val, from_npy.test),
                    (from_pickle.train, from_pickle.val, from_pickle.test)):  # fmt: skip
        assert a.equal(b)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        convert_gas(tmp_path / "gas" / "ethylene_CO.pickle", out)


def test_cli_convert_gas(tmp_path):
    (tmp_path / "gas").mkdir()
    _gas_frame(100).to_pickle(tmp_path / "gas" / "ethylene_CO.pickle")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "odeflow", "flow", "convert-gas", "--root", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "ethylene_CO.npy" in r.stdout
    assert np.load(tmp_path / "gas" / "ethylene_CO.npy").shape == (100, 7)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "--overwrite" in r.stderr


@pytest.mark.parametrize("content,match", [
    (b"", r"is empty \(0 bytes\)"),
    (bytes(range(256)) * 4, r"is not a \.npy file"),
    (b"PK\x03\x04rest", r"is an \.npz archive"),
], ids=["empty", "random-bytes", "npz"])  # fmt: skip
def test_npy_reader_never_suggests_unpickling(tmp_path, content, match):
    f = tmp_path / "data.npy"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=match) as err:
        read_npy(f)
    assert "allow_pickle" not in str(err.value)


def test_npy_object_array_is_refused_without_suggesting_allow_pickle(tmp_path):
    marker = tmp_path / "marker"
    f = tmp_path / "data.npy"
    np.save(f, np.array([_SystemPayload(f"touch {marker}")], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="an array of Python objects") as err:
        read_npy(f)
    assert "allow_pickle" not in str(err.value) and not marker.exists()
    (tmp_path / "miniboone").mkdir()
    os.replace(f, tmp_path / "miniboone" / "data.npy")
    with pytest.raises(ValueError, match="an array of Python objects") as err:
        load_tabular("miniboone", tmp_path)
    assert "allow_pickle" not in str(err.value) and not marker.exists()


def test_no_unrestricted_unpickling_in_the_sources():
    """Nothing in src calls pickle.load(s)/read_pickle or np.load with allow_pickle=True, and
    every torch.load passes weights_only=True."""
    import re
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src"
    for path in src.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"pickle\.loads?\(|read_pickle\(|allow_pickle=True", text), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
