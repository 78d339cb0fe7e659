"""Preset dtype policy: presets build flows in their dtype, ``fit`` never changes it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from odeflow.cli import main
from odeflow.flows import OTFlow, fit, get_preset, load_checkpoint


def _dtype(flow):
    dts = {p.dtype for p in flow.parameters()}
    assert len(dts) == 1
    return dts.pop()


@pytest.mark.parametrize("name,expected", [("8gaussians", torch.float64),
                                           ("checkerboard", torch.float64),
                                           ("miniboone", torch.float32),
                                           ("power", torch.float32)])  # fmt: skip
def test_from_preset_uses_preset_dtype(name, expected):
    p = get_preset(name)
    assert p.dtype == expected and p.double == (expected == torch.float64)
    flow = OTFlow.from_preset(name, width=4)
    assert _dtype(flow) == expected
    other = torch.float32 if expected == torch.float64 else torch.float64
    assert _dtype(OTFlow.from_preset(name, width=4, dtype=other)) == other


def _pair(dtype):
    torch.manual_seed(0)
    a = OTFlow(2, width=8, nt=2, nt_eval=2).to(dtype)
    b = OTFlow(2, width=8, nt=2, nt_eval=2).to(dtype)
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("flow_dtype,data_dtype", [(torch.float32, torch.float64),
                                                   (torch.float64, torch.float32)])  # fmt: skip
def test_fit_casts_data_to_flow_dtype_and_keeps_flow_dtype(flow_dtype, data_dtype):
    g = torch.Generator().manual_seed(1)
    data = torch.randn(300, 2, generator=g, dtype=data_dtype) * 0.7 + 0.2
    val = torch.randn(64, 2, generator=g, dtype=data_dtype)
    data_copy, val_copy = data.clone(), val.clone()
    a, b = _pair(flow_dtype)
    kw = dict(iters=6, batch=64, lr=1e-2, val_every=3, seed=3, verbose=False)
    ra = fit(a, data, val_data=val, **kw)
    # the same run on data converted by hand: identical weights, so fit casts the data
    rb = fit(b, data.to(flow_dtype), val_data=val.to(flow_dtype), **kw)
    assert _dtype(a) == flow_dtype and ra.dtype == str(flow_dtype).removeprefix("torch.")
    for (ka, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), ka
    assert ra.best_val_nll == rb.best_val_nll
    # inputs untouched
    assert data.dtype == data_dtype and torch.equal(data, data_copy)
    assert torch.equal(val, val_copy)


def test_fit_with_toy_preset_does_not_change_a_float32_flow():
    flow = OTFlow(2, width=4)
    res = fit(flow, "8gaussians", preset="8gaussians", iters=2, batch=32, verbose=False)
    assert _dtype(flow) == torch.float32 and res.dtype == "float32"
    assert res.alpha == get_preset("8gaussians").alpha  # the preset's α was applied
    flow64 = OTFlow.from_preset("8gaussians", width=4)
    res64 = fit(flow64, "8gaussians", preset="8gaussians", iters=2, batch=32, verbose=False)
    assert _dtype(flow64) == torch.float64 and res64.dtype == "float64"


def test_fit_numpy_data_follows_flow_dtype():
    x = np.random.RandomState(0).randn(128, 2).astype(np.float32)
    flow = OTFlow(2, width=4, nt=2).double()
    res = fit(flow, x, iters=2, batch=64, verbose=False)
    assert res.dtype == "float64" and _dtype(flow) == torch.float64
    assert x.dtype == np.float32


@pytest.mark.parametrize("extra,expected", [([], "float64"),
                                            (["--dtype", "float32"], "float32"),
                                            (["--precision", "bf16"], "float32")])  # fmt: skip
def test_cli_train_dtype(tmp_path, extra, expected):
    out = tmp_path / "run"
    argv = ["flow", "train", "--data", "8gaussians", "--out", str(out), "--iters", "2",
            "--batch", "64", "--width", "4", "--n-test", "100", "--quiet", *extra]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dtype"] == expected
    assert str(_dtype(load_checkpoint(out / "flow.pt"))) == f"torch.{expected}"


def test_cli_train_without_preset_is_float32(tmp_path):
    data = np.random.RandomState(0).randn(200, 3)
    np.save(tmp_path / "d.npy", data)
    out = tmp_path / "run"
    assert main(["flow", "train", "--data", str(tmp_path / "d.npy"), "--out", str(out),
                 "--iters", "2", "--batch", "32", "--width", "4", "--quiet"]) == 0  # fmt: skip
    assert json.loads((out / "metrics.json").read_text())["dtype"] == "float32"
