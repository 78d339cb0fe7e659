"""fit's training settings: the caller's, else the problem's ``fit_defaults``, else fit's own."""

from types import MappingProxyType

import pytest
import torch

from odeflow.control import LQR, ValueNetwork, fit
from odeflow.control._train import FIT_DEFAULTS, _settings


class _Quick(LQR):
    fit_defaults = MappingProxyType({"iterations": 3, "batch": 8, "resample_every": 2})


def _phi():
    torch.manual_seed(0)
    return ValueNetwork(2, width=4).double()


def test_problem_recipe_fills_what_the_caller_leaves_out():
    res = fit(_Quick(dim=2), _phi(), nt=2, verbose=False)
    assert res.iterations == 3
    assert fit(_Quick(dim=2), _phi(), iterations=2, nt=2, verbose=False).iterations == 2


def test_recipe_and_explicit_arguments_take_the_same_steps():
    """A recipe is exactly the arguments it names: same weights as passing them."""
    a, b = _phi(), _phi()
    fit(_Quick(dim=2), a, nt=2, verbose=False, seed=4)
    fit(LQR(dim=2), b, iterations=3, batch=8, resample_every=2, nt=2, verbose=False, seed=4)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_recipe_for_another_optimizer_is_not_used():
    """Asking for L-BFGS on a problem whose recipe is Adam's: fit's own defaults apply."""

    class AdamRecipe(LQR):
        fit_defaults = MappingProxyType({"optimizer": "adam", "iterations": 3, "batch": 8})

    none = dict.fromkeys(FIT_DEFAULTS)
    cfg = _settings(AdamRecipe(dim=2), {**none, "optimizer": "lbfgs"})
    assert cfg == {**FIT_DEFAULTS, "optimizer": "lbfgs"}
    assert fit(AdamRecipe(dim=2), _phi(), optimizer="adam", nt=2, verbose=False).iterations == 3


def test_unknown_recipe_key_is_refused():
    class Bad(LQR):
        fit_defaults = MappingProxyType({"iterations": 2, "epochs": 3})

    with pytest.raises(ValueError, match=r"unknown settings \['epochs'\]"):
        fit(Bad(dim=2), _phi(), verbose=False)
    assert set(FIT_DEFAULTS) == {"optimizer", "iterations", "batch", "lr", "lr_drops",
                                 "lr_factor", "lr_schedule", "resample_every"}  # fmt: skip
