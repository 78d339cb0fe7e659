"""``fit`` returns a typed FitResult and changes only the flow's weights (issue 20): a preset's
α and step counts are used for the run and recorded, the flow's own settings stay as built."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from odeflow.flows import FitResult, OTFlow, fit, get_preset

P = get_preset("8gaussians")  # α (1, 30, 1), nt 8, nt_val 12


def _data(n=96, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _settings(flow):
    return flow.alpha, flow.nt, flow.nt_eval, flow.precision, flow.config()


def test_a_preset_trains_with_its_settings_and_leaves_the_flows_own():
    """A default flow trained with a preset takes bitwise the steps of the preset's own model
    (same α, same RK4 steps in training and validation), and keeps its α, nt, nt_eval."""
    torch.manual_seed(0)
    plain = OTFlow(2, width=4).double()  # the default rule's α (1, 20, 2), nt 4, nt_eval 8
    built = OTFlow.from_preset(P, width=4)
    built.load_state_dict(plain.state_dict())
    before = _settings(plain)
    kw = dict(preset=P, iters=3, batch=32, val_data=_data(16, seed=1), val_every=1,
              verbose=False)  # fmt: skip
    res, ref = plain.fit(_data(), **kw), fit(built, _data(), **kw)
    assert isinstance(res, FitResult)
    assert (res.alpha, res.nt, res.val_nt, res.preset) == (P.alpha, P.nt, P.nt_val, P.name)
    assert _settings(plain) == before  # nothing but the weights changed
    assert (built.alpha, built.nt, built.nt_eval) == (P.alpha, P.nt, P.nt_val)
    for (k, a), b in zip(plain.state_dict().items(), built.state_dict().values()):
        assert torch.equal(a, b), k
    assert [h["loss"] for h in res.history] == [h["loss"] for h in ref.history]
    assert [h.get("val_nll") for h in res.history] == [h.get("val_nll") for h in ref.history]


def test_without_a_preset_the_result_records_the_flows_settings():
    flow = OTFlow(2, width=4, alpha=(1.0, 5.0, 1.0), nt=3, nt_eval=5).double()
    res = fit(flow, _data(), iters=2, batch=32, val_nt=2, precision="fp32", verbose=False)
    assert (res.alpha, res.nt, res.val_nt, res.preset) == ((1.0, 5.0, 1.0), 3, 2, "")
    assert (flow.alpha, flow.nt, flow.nt_eval) == ((1.0, 5.0, 1.0), 3, 5)


def test_a_preset_of_another_alpha0_is_refused_before_training():
    """α₀ scales the flow's dynamics: training with another α₀ would fit another model."""
    flow = OTFlow(2, width=4, alpha=(2.0, 30.0, 1.0)).double()
    weights = {k: v.clone() for k, v in flow.state_dict().items()}
    with pytest.raises(ValueError, match=r"α₀ = 1.0, but the flow has α₀ = 2.0.*from_preset"):
        fit(flow, _data(), preset=P, iters=1, verbose=False)
    assert all(torch.equal(v, flow.state_dict()[k]) for k, v in weights.items())
    # with the preset's α₀ (the flow's α₁, α₂ may differ) training runs
    other = dataclasses.replace(P, alpha=(2.0, 10.0, 1.0))
    assert fit(flow, _data(), preset=other, iters=1, batch=32, verbose=False).iterations == 1
    assert flow.alpha == (2.0, 30.0, 1.0)
