"""``fit`` settings and state, the divergence message, and checkpoint files (save/load)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from odeflow.flows import (
    OTFlow,
    TrainingDiverged,
    evaluate_nll,
    fit,
    get_preset,
    load_checkpoint,
    save_checkpoint,
)


def _data(n=256, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                   b.state_dict().values()))  # fmt: skip


# ---------------------------------------------------------------- checkpoint extra


def test_checkpoint_extra_is_converted_to_plain_data_and_loads(tmp_path):
    flow = OTFlow(2, width=4, nt=2).double()
    path = tmp_path / "c.pt"
    nested = {"p": (Path("a"), np.zeros(2)), 3: None}
    save_checkpoint(flow, path, data=Path("sets/x.npy"), mean=np.array([[1.5, 2.0]]),
                    v=np.float32(0.25), n=np.int64(7), ok=np.bool_(True), name=np.str_("a"),
                    t=torch.tensor([1, 2]), nested=nested)  # fmt: skip
    back = load_checkpoint(path)  # reads with weights_only=True
    assert back.checkpoint_extra == {
        "data": "sets/x.npy", "mean": [[1.5, 2.0]], "v": 0.25, "n": 7, "ok": True,
        "name": "a", "t": [1, 2], "nested": {"p": ["a", [0.0, 0.0]], "3": None},
    }  # fmt: skip
    ex = back.checkpoint_extra
    assert type(ex["v"]) is float and type(ex["n"]) is int and type(ex["ok"]) is bool
    assert type(ex["name"]) is str and type(ex["data"]) is str


@pytest.mark.parametrize("extra,key", [
    ({"note": lambda: 0}, "extra['note']"),
    ({"dt": torch.float64}, "extra['dt']"),
    ({"meta": {"a": [1, {2, 3}]}}, "extra['meta']['a'][1]"),
    ({"obj": object()}, "extra['obj']"),
])  # fmt: skip
def test_checkpoint_extra_not_json_like_is_refused_before_writing(tmp_path, extra, key):
    path = tmp_path / "c.pt"
    with pytest.raises(TypeError, match=r"checkpoint " + key.replace("[", r"\[") + " is a"):
        save_checkpoint(OTFlow(2, width=4), path, **extra)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file left


def test_failed_save_keeps_the_existing_checkpoint(tmp_path, monkeypatch):
    flow = OTFlow(2, width=4, nt=2).double()
    path = tmp_path / "flow.pt"
    flow.save(path, step=1)
    good = path.read_bytes()
    other = OTFlow(2, width=4, nt=2).double()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)

    def broken_save(obj, f, *args, **kwargs):  # writes half a file, then the disk is full
        f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        other.save(path, step=2)
    with pytest.raises(TypeError):
        other.save(path, step={1})
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert [q.name for q in tmp_path.iterdir()] == ["flow.pt"]  # temporary file removed
    back = load_checkpoint(path)
    assert back.checkpoint_extra == {"step": 1} and _same_weights(back, flow)
    other.save(path, step=2)  # a successful save replaces it
    assert load_checkpoint(path).checkpoint_extra == {"step": 2}
    assert _same_weights(load_checkpoint(path), other)


# ---------------------------------------------------------------- load_checkpoint(map_location)


@pytest.mark.parametrize("where", ["cpu", torch.device("cpu")])
def test_load_checkpoint_map_location_device(tmp_path, where):
    flow = OTFlow(2, width=4, nt=2).double()
    flow.save(tmp_path / "c.pt")
    back = load_checkpoint(tmp_path / "c.pt", map_location=where)
    assert {p.device for p in back.parameters()} == {torch.device("cpu")}
    assert _same_weights(back, flow)


def test_load_checkpoint_map_location_meta_and_mappings(tmp_path):
    flow = OTFlow(2, width=4, nt=2).double()
    flow.save(tmp_path / "c.pt")
    meta = load_checkpoint(tmp_path / "c.pt", map_location="meta")  # shapes only
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    assert meta.config() == flow.config()
    assert [p.shape for p in meta.parameters()] == [p.shape for p in flow.parameters()]
    for mapping in ({"cuda:0": "cpu"}, lambda storage, loc: storage):  # steer torch.load only
        back = load_checkpoint(tmp_path / "c.pt", map_location=mapping)
        assert {p.device for p in back.parameters()} == {torch.device("cpu")}
        assert _same_weights(back, flow)


@pytest.mark.gpu
def test_load_checkpoint_map_location_cuda(tmp_path, cuda):
    flow = OTFlow(2, width=4, nt=2).double()
    flow.save(tmp_path / "c.pt")
    back = load_checkpoint(tmp_path / "c.pt", map_location="cuda")
    assert {p.device.type for p in back.parameters()} == {"cuda"}
    x = _data(8)
    assert torch.allclose(back.log_prob(x.to(cuda)).cpu(), flow.log_prob(x))


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize("kwargs,match", [
    ({"clip": -1.0}, r"clip must be a number > 0 .* got -1.0"),
    ({"clip": 0.0}, r"clip must be a number > 0"),
    ({"clip": float("nan")}, r"clip must be a number > 0"),
    ({"lr_drop": 0.0}, r"lr_drop must be a finite number > 1 .* got 0.0"),
    ({"lr_drop": 1.0}, r"lr_drop must be a finite number > 1"),
    ({"lr_drop": -2.0}, r"lr_drop must be a finite number > 1"),
    ({"lr_drop": float("inf")}, r"lr_drop must be a finite number > 1"),
    ({"patience": 0}, r"patience must be an integer >= 1 .* got 0"),
    ({"patience": -1}, r"patience must be an integer >= 1"),
    ({"patience": 2.5}, r"patience must be an integer >= 1 .* got 2.5"),
    ({"max_drops": -5}, r"max_drops must be an integer >= 0 .* got -5"),
    ({"max_drops": 1.0}, r"max_drops must be an integer >= 0"),
    ({"val_every": 0}, r"val_every must be an integer >= 1 .* got 0"),
    ({"val_every": -3}, r"val_every must be an integer >= 1"),
])  # fmt: skip
def test_fit_rejects_settings_out_of_range(kwargs, match):
    flow = OTFlow(2, width=4, nt=3, nt_eval=5).double()
    before = OTFlow(2, width=4, nt=3, nt_eval=5).double()
    before.load_state_dict(flow.state_dict())
    with pytest.raises(ValueError, match=match):
        fit(flow, _data(), preset="8gaussians", iters=2, batch=64, precision="bf16",
            verbose=False, **kwargs)  # fmt: skip
    # refused before anything changed: weights, preset α / step counts, precision
    assert _same_weights(flow, before) and flow.config() == before.config()


def test_fit_rejects_a_preset_with_bad_alpha():
    flow = OTFlow(2, width=4, nt=2).double()
    bad = dataclasses.replace(get_preset("8gaussians"), alpha=(1.0, float("nan"), 1.0))
    with pytest.raises(ValueError, match="alpha must be a sequence of three finite numbers"):
        fit(flow, _data(), preset=bad, iters=1, batch=64, verbose=False)
    assert flow.alpha == (1.0, 1.0, 1.0)


def test_fit_accepts_edge_settings():
    flow = OTFlow(2, width=4, nt=2).double()
    data = _data()
    assert max(float(p.detach().abs().max()) for p in flow.parameters()) > 0.1
    res = fit(flow, data, val_data=data[:64], iters=6, batch=64, lr=1e-9, val_every=1,
              patience=1, max_drops=0, lr_drop=1.5, clip=np.float64(0.1),
              verbose=False)  # fmt: skip
    # with max_drops=0 the first stalled validation stops training, learning rate unchanged
    assert res.status == "converged" and res.iterations < 6
    assert {h["lr"] for h in res.history} == {1e-9}
    assert max(float(p.detach().abs().max()) for p in flow.parameters()) <= 0.1 + 1e-6


# ---------------------------------------------------------------- divergence message


def _diverge_at_3(flow, restore_best, val):
    def cb(it, info):
        if it == 2:
            with torch.no_grad():
                next(flow.parameters()).fill_(float("nan"))

    data = _data()
    with pytest.raises(TrainingDiverged) as err:
        fit(flow, data, val_data=data[:64] if val else None, val_every=1, iters=5, batch=64,
            restore_best=restore_best, callback=cb, verbose=False)  # fmt: skip
    return str(err.value)


def test_diverged_message_says_best_weights_were_restored():
    flow = OTFlow(2, width=4, nt=2).double()
    msg = _diverge_at_3(flow, True, True)
    assert "stopped at iteration 3" in msg and "were restored" in msg
    assert all(bool(torch.isfinite(p).all()) for p in flow.parameters())
    assert math.isfinite(evaluate_nll(flow, _data(64, seed=1)))


def test_diverged_message_without_restore_says_weights_were_kept():
    flow = OTFlow(2, width=4, nt=2).double()
    msg = _diverge_at_3(flow, False, True)
    assert "restore_best=False, so the flow keeps the weights that gave this loss" in msg
    assert "were not restored" in msg and "were restored" not in msg
    assert bool(torch.isnan(next(flow.parameters())).any())  # what the message says


def test_diverged_message_without_validation():
    flow = OTFlow(2, width=4, nt=2).double()
    msg = _diverge_at_3(flow, True, False)
    assert "no validated weights to restore" in msg and "were restored" not in msg
    assert bool(torch.isnan(next(flow.parameters())).any())


# ---------------------------------------------------------------- state after fit


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fit_restores_precision_and_mode(mode):
    flow = OTFlow(2, width=4, nt=2).train(mode == "train")
    seen = []
    loss = flow.loss
    flow.loss = lambda x, nt=None: (seen.append((flow.precision, flow.training)), loss(x, nt))[1]
    res = fit(flow, _data().float(), iters=2, batch=64, precision="bf16", verbose=False)
    assert seen == [("bf16", True)] * 2  # training ran in bf16, in train mode
    assert res.precision == "bf16"
    assert flow.precision == "fp32" and flow.config()["precision"] == "fp32"
    assert flow.training == (mode == "train")
    assert fit(flow, _data().float(), iters=1, batch=64, verbose=False).precision == "fp32"


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fit_restores_precision_and_mode_after_divergence(mode):
    flow = OTFlow(2, width=4, nt=2, precision="tf32").double().train(mode == "train")
    huge = torch.full((16, 2), 1e200, dtype=torch.float64)
    with pytest.raises(TrainingDiverged):
        fit(flow, huge, iters=2, batch=8, precision="bf16", verbose=False)
    assert flow.precision == "tf32" and flow.training == (mode == "train")


def test_minibatches_are_full_and_cover_the_data():
    """Data tensors give full minibatches of min(batch, n) rows, reshuffled every epoch; the
    rows left over (n mod batch) change between epochs, so every row is used."""
    from odeflow.flows._train import _as_batches

    x = torch.arange(10, dtype=torch.float64).reshape(5, 2)
    it = _as_batches(x, 2, 2, 0, torch.float64, "cpu")
    batches = [next(it) for _ in range(40)]  # 20 epochs of 2 batches
    assert all(b.shape == (2, 2) for b in batches)
    for k in range(0, 40, 2):  # within an epoch no row repeats
        rows = torch.cat(batches[k : k + 2])[:, 0].tolist()
        assert len(set(rows)) == 4
    assert {r for b in batches for r in b[:, 0].tolist()} == {0.0, 2.0, 4.0, 6.0, 8.0}
    small = _as_batches(x, 2, 64, 0, torch.float64, "cpu")
    assert next(small).shape == (5, 2)  # batch > n: the whole (shuffled) data set
