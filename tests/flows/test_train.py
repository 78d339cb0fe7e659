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


def test_save_to_a_folder_names_the_fix(tmp_path):
    with pytest.raises(IsADirectoryError, match=r"is a folder; give the checkpoint's file name"):
        OTFlow(2, width=4).save(tmp_path)
    assert list(tmp_path.iterdir()) == []


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
    flow = OTFlow(2, width=4, nt=2, alpha=(1.0, 1.0, 1.0)).double()
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
    # float32: bf16 training needs a float32 flow (a float64 one is refused)
    flow = OTFlow(2, width=4, nt=2, precision="tf32").train(mode == "train")
    huge = torch.full((16, 2), 1e30)  # finite in float32, overflows inside the solve
    with pytest.raises(TrainingDiverged):
        fit(flow, huge, iters=2, batch=8, precision="bf16", verbose=False)
    assert flow.precision == "tf32" and flow.training == (mode == "train")


def test_minibatches_are_full_and_cover_the_data():
    """Data tensors give full minibatches of min(batch, n) rows, reshuffled every epoch; the
    rows left over (n mod batch) change between epochs, so every row is used."""
    from odeflow.flows._train import _as_batches

    x = torch.arange(10, dtype=torch.float64).reshape(5, 2)
    it = _as_batches(x, 2, 0, torch.float64, "cpu")
    batches = [next(it) for _ in range(40)]  # 20 epochs of 2 batches
    assert all(b.shape == (2, 2) for b in batches)
    for k in range(0, 40, 2):  # within an epoch no row repeats
        rows = torch.cat(batches[k : k + 2])[:, 0].tolist()
        assert len(set(rows)) == 4
    assert {r for b in batches for r in b[:, 0].tolist()} == {0.0, 2.0, 4.0, 6.0, 8.0}
    small = _as_batches(x, 64, 0, torch.float64, "cpu")
    assert next(small).shape == (5, 2)  # batch > n: the whole (shuffled) data set


# ---------------------------------------------------------------- argument checks


def _snapshot(flow):
    return (flow.config(), {k: v.clone() for k, v in flow.state_dict().items()},
            next(flow.parameters()).dtype, flow.training)  # fmt: skip


def _unchanged(flow, snap):
    cfg, state, dtype, training = snap
    return (flow.config() == cfg and next(flow.parameters()).dtype == dtype
            and flow.training == training
            and all(torch.equal(state[k], v) for k, v in flow.state_dict().items()))  # fmt: skip


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_fit_refuses_reduced_precision_on_a_float64_flow(precision):
    """autocast leaves float64 alone: bf16/fp16 on a float64 flow would silently train in
    float64 while FitResult.precision claimed bf16/fp16; it is refused, naming the fix."""
    flow = OTFlow.from_preset("8gaussians", width=4, nt=2, nt_eval=2)  # float64
    snap = _snapshot(flow)
    with pytest.raises(ValueError, match=rf"precision='{precision}' needs a float32 flow.*"
                       r"flow\.float\(\)"):  # fmt: skip
        fit(flow, _data(), iters=1, batch=64, precision=precision, verbose=False)
    assert _unchanged(flow, snap)
    own = OTFlow(2, width=4, nt=2, precision=precision).double()  # the flow's own setting
    with pytest.raises(ValueError, match="the flow's own precision"):
        fit(own, _data(), iters=1, batch=64, verbose=False)
    res = fit(flow.float(), _data().float(), iters=1, batch=64, precision=precision,
              verbose=False)  # fmt: skip
    assert (res.precision, res.dtype) == (precision, "float32")


@pytest.mark.parametrize("kwargs,match", [
    ({"iters": 2.7}, r"iters must be an integer >= 1 .* got 2\.7"),
    ({"iters": 0}, r"iters must be an integer >= 1"),
    ({"batch": 1.5}, r"batch must be an integer >= 1 .* got 1\.5"),
    ({"batch": 0}, r"batch must be an integer >= 1"),
    ({"lr": float("inf")}, r"lr must be a finite number > 0 .* got inf"),
    ({"lr": float("nan")}, r"lr must be a finite number > 0"),
    ({"lr": 0.0}, r"lr must be a finite number > 0"),
    ({"val_nt": 0}, r"val_nt must be an integer >= 1 .* got 0"),
    ({"val_nt": -3}, r"val_nt must be an integer >= 1"),
    ({"val_nt": 2.5}, r"val_nt must be an integer >= 1"),
    ({"seed": None}, r"seed must be an integer .* got None"),
    ({"seed": 1.5}, r"seed must be an integer"),
    ({"device": "bogus"}, r"device='bogus': not a torch device"),
])  # fmt: skip
def test_fit_rejects_bad_arguments_before_training(kwargs, match):
    flow = OTFlow(2, width=4, nt=2).double()
    snap = _snapshot(flow)
    calls = []
    with pytest.raises(ValueError, match=match):
        fit(flow, _data(), val_data=_data(16, seed=1), iters=kwargs.pop("iters", 3),
            batch=kwargs.pop("batch", 64), verbose=False,
            callback=lambda it, info: calls.append(it), **kwargs)  # fmt: skip
    assert calls == [] and _unchanged(flow, snap)  # refused before the first step


def test_fit_refuses_cuda_when_it_is_not_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    flow = OTFlow(2, width=4, nt=2).double()
    with pytest.raises(ValueError, match="device='cuda' asks for CUDA, but CUDA is not available"):
        fit(flow, _data(), iters=1, batch=64, device="cuda", verbose=False)
    assert next(flow.parameters()).device.type == "cpu"


@pytest.mark.parametrize("bad,match", [
    (torch.full((10, 2), float("nan"), dtype=torch.float64), "training data contains NaN"),
    ([["a", "b"], ["c", "d"]], "training data must hold real numbers, got an array of dtype <U1"),
    ([[1.0, 2.0], [3.0]], "training data is not a rectangular"),
    (torch.zeros(4, 2, dtype=torch.complex64), "training data is complex"),
])  # fmt: skip
def test_failed_fit_with_a_preset_leaves_the_flow_unchanged(bad, match):
    """The data are checked before the preset's α and step counts are applied."""
    flow = OTFlow(2, width=4, nt=2, alpha=(1.0, 1.0, 1.0)).double()
    snap = _snapshot(flow)
    with pytest.raises(ValueError, match=match):
        fit(flow, bad, preset="8gaussians", iters=1, verbose=False)
    assert _unchanged(flow, snap)
    assert (flow.alpha, flow.nt, flow.nt_eval) == ((1.0, 1.0, 1.0), 2, 4)
    with pytest.raises(ValueError, match="validation data contains NaN"):
        fit(flow, _data(), val_data=_data(8).fill_(float("inf")), preset="8gaussians",
            iters=1, verbose=False)  # fmt: skip
    assert _unchanged(flow, snap)


def test_fit_accepts_numpy_integer_settings():
    flow = OTFlow(2, width=4, nt=2).double()
    res = fit(flow, _data(), iters=np.int64(2), batch=np.int32(64), seed=np.int64(3),
              val_data=_data(16, seed=1), val_nt=np.int64(2), verbose=False)  # fmt: skip
    assert res.iterations == 2 and math.isfinite(res.best_val_nll)


@pytest.mark.parametrize("kwargs,match", [
    ({"batch": -1}, r"batch must be an integer >= 1 .* got -1"),
    ({"batch": 0}, r"batch must be an integer >= 1 .* got 0"),
    ({"batch": 2.5}, r"batch must be an integer >= 1"),
    ({"nt": 0}, r"nt must be an integer >= 1 .* got 0"),
])  # fmt: skip
def test_evaluate_nll_rejects_bad_batch_and_nt(kwargs, match):
    flow = OTFlow(2, width=4, nt=2).double()
    with pytest.raises(ValueError, match=match):
        evaluate_nll(flow, _data(50), **kwargs)


def test_evaluate_nll_is_independent_of_the_chunk_size():
    flow = OTFlow(2, width=4, nt=2).double()
    x = _data(50)
    whole = evaluate_nll(flow, x)
    assert whole == pytest.approx(evaluate_nll(flow, x, batch=1), rel=1e-12)
    assert whole == pytest.approx(evaluate_nll(flow, x, batch=7), rel=1e-12)
    assert whole == pytest.approx(-float(flow.log_prob(x).detach().mean()), rel=1e-12)


# ---------------------------------------------------------------- loading other files


def test_load_a_file_that_is_not_a_checkpoint(tmp_path):
    """The message is short and never suggests weights_only=False (unsafe on a foreign
    file)."""
    (tmp_path / "garbage.pt").write_bytes(b"garbage")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled object, not data
    np.save(tmp_path / "array.npy", np.zeros(3))
    for name in ("garbage.pt", "module.pt", "array.npy"):
        with pytest.raises(ValueError) as err:
            load_checkpoint(tmp_path / name)
        msg = str(err.value)
        assert f"{tmp_path / name} is not an odeflow checkpoint (torch.load failed: " in msg
        assert "weights_only" not in msg and len(msg) < 400
        assert err.value.__cause__ is None and err.value.__suppress_context__
    with pytest.raises(FileNotFoundError, match="is a folder; pass the checkpoint file in it"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("payload,match", [
    ({"format": "odeflow.otflow/1"}, "lacks a valid 'config' and 'state_dict'"),
    ({"format": "odeflow.otflow/1", "state_dict": {}}, "lacks a valid 'config' \\(a dict\\)"),
    ({"format": "odeflow.otflow/1", "config": [2], "state_dict": {}}, "lacks a valid 'config'"),
    ({"format": "odeflow.otflow/1", "config": {"width": 4}, "state_dict": {}},
     "has an invalid config .*dim"),
    ({"format": "odeflow.otflow/1", "config": {"dim": 2, "width": 0}, "state_dict": {}},
     "has an invalid config \\(width must be an integer >= 1"),
])  # fmt: skip
def test_load_an_incomplete_checkpoint(tmp_path, payload, match):
    torch.save(payload, tmp_path / "c.pt")
    with pytest.raises(ValueError, match=match):
        load_checkpoint(tmp_path / "c.pt")
