"""CrowdMotion's training recipe (``fit_defaults``): PnasOT's Adam recipe on fresh samples,
with the batch scaled for d > 10."""

import pytest
import torch

from odeflow.control import CrowdMotion, ValueNetwork, fit


def test_crowd_recipe_scales_the_batch_above_d10():
    small, big = CrowdMotion(dim=10).fit_defaults, CrowdMotion(dim=11).fit_defaults
    assert small["batch"] == CrowdMotion(dim=2).fit_defaults["batch"] == 512
    assert big["batch"] == 2048 and CrowdMotion.fit_defaults["batch"] == 512
    assert {k: v for k, v in big.items() if k != "batch"} == {
        k: v for k, v in small.items() if k != "batch"
    }
    assert small["optimizer"] == "adam" and small["resample_every"] == 1
    with pytest.raises(TypeError):
        small["batch"] = 1  # read-only: the class recipe is shared


def test_fit_runs_the_crowd_recipe_with_a_time_quadratic():
    torch.manual_seed(0)
    pb = CrowdMotion(dim=3)
    phi = ValueNetwork(3, width=8, time_degree=2).double()
    res = fit(pb, phi, iterations=3, batch=32, verbose=False)
    assert res.iterations == 3
    assert all(torch.isfinite(torch.tensor(h["total"])) for h in res.history)
    assert phi.time_quadratic.abs().sum() > 0  # the quadratic S(t) is trained
