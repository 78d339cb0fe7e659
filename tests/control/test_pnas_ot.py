"""PNAS OT: the problem separates, so its optimal objective does not depend on d. The preset's
training defaults (``PnasOT.fit_defaults``) with a default ``ValueNetwork(d)``."""

import pytest
import torch

from odeflow.control import PnasOT, ValueNetwork, evaluate, fit


def _objective(dim: int, x: torch.Tensor) -> float:
    """Train a default ``ValueNetwork(dim)`` (float32) with the preset's defaults; the
    objective on the first ``dim`` coordinates of ``x``."""
    torch.manual_seed(0)
    phi = ValueNetwork(dim)
    fit(PnasOT(dim=dim), phi, verbose=False)
    return evaluate(PnasOT(dim=dim), phi, x=x[:, :dim].contiguous())["objective"]


@pytest.mark.slow
def test_objective_with_the_defaults_nearly_d_invariant():
    """On 4000 samples sharing their first two coordinates, this CPU measured 10.886 (d = 2),
    10.976 (d = 10, 0.8 % higher), 10.825 (d = 50, 0.6 % lower) and 10.839 (d = 100, 0.4 %
    lower): the issue's 2 %. d = 50 and 100 train on 2048 samples per iteration (with 512,
    d = 100 gave 11.502, 5.7 % higher: the gradient noise of the extra coordinates; see
    ``PnasOT``)."""
    x = PnasOT(dim=100).sample_initial(4000, generator=torch.Generator().manual_seed(7))
    objs = {d: _objective(d, x) for d in (2, 10, 50, 100)}
    for d in (10, 50, 100):
        assert abs(objs[d] / objs[2] - 1) < 0.02, objs


def test_recipe_batch_grows_with_the_dimension():
    """The recipe's batch: 512 up to d = 10, 2048 above (the class keeps 512)."""
    assert PnasOT(dim=2).fit_defaults["batch"] == PnasOT(dim=10).fit_defaults["batch"] == 512
    big = PnasOT(dim=100).fit_defaults
    assert big["batch"] == 2048 and PnasOT.fit_defaults["batch"] == 512
    assert {k: v for k, v in big.items() if k != "batch"} == {
        k: v for k, v in PnasOT.fit_defaults.items() if k != "batch"
    }
