"""fit's learning-rate schedules: the step drops and the cosine decay, as the lr Adam
actually uses at every iteration, deterministic given the seed."""

import itertools
import math

import pytest
import torch

from odeflow.control import LQR, ValueNetwork, fit
from odeflow.control._train import lr_multiplier


def _phi():
    torch.manual_seed(0)
    return ValueNetwork(2, width=4).double()


def _lrs_used(monkeypatch, **kw) -> list[float]:
    """The learning rate of every Adam step fit takes."""
    seen: list[float] = []
    step = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    fit(LQR(dim=2), _phi(), optimizer="adam", nt=2, verbose=False, resample_every=1, **kw)
    return seen


def test_cosine_multiplier_closed_form():
    total, k0, f = 101, 40, 0.01
    m = [lr_multiplier("cosine", k, total, (k0,), f) for k in range(total)]
    assert m[: k0 + 1] == [1.0] * (k0 + 1)
    assert m[-1] == pytest.approx(f, abs=1e-15)
    assert m[70] == pytest.approx((1 + f) / 2, abs=1e-15)  # halfway: cos = 0
    assert all(a >= b for a, b in itertools.pairwise(m))
    for k in range(k0, total):  # the half cosine, written independently
        want = f + (1 - f) * (1 + math.cos(math.pi * (k - k0) / (total - 1 - k0))) / 2
        assert m[k] == pytest.approx(want, rel=1e-14)
    assert lr_multiplier("cosine", 0, 5, (), 0.1) == 1.0  # no entry: the decay starts at 0
    assert lr_multiplier("cosine", 4, 5, (), 0.1) == pytest.approx(0.1)


def test_step_multiplier_counts_the_drops_passed():
    assert [lr_multiplier("step", k, 6, (2, 4), 0.5) for k in range(6)] == [
        1.0, 1.0, 0.5, 0.5, 0.25, 0.25]  # fmt: skip


def test_fit_uses_the_cosine_schedule_over_all_stages(monkeypatch):
    """Two multilevel stages of 4 iterations: the decay runs over the 8 together."""
    seen = _lrs_used(monkeypatch, iterations=4, batch=[8, 16], lr=0.02, lr_drops=(2,),
                     lr_factor=0.1, lr_schedule="cosine")  # fmt: skip
    want = [0.02 * lr_multiplier("cosine", k, 8, (2,), 0.1) for k in range(8)]
    assert seen == pytest.approx(want, rel=1e-12)
    assert seen[-1] == pytest.approx(0.002, rel=1e-12)


def test_fit_step_schedule_unchanged(monkeypatch):
    seen = _lrs_used(monkeypatch, iterations=5, batch=8, lr=0.01, lr_drops=(2, 4))
    assert seen == pytest.approx([0.01, 0.01, 1e-3, 1e-3, 1e-4], rel=1e-12)


def test_cosine_fit_is_deterministic_given_the_seed():
    runs = []
    for _ in range(2):
        phi = _phi()
        fit(LQR(dim=2), phi, iterations=4, batch=8, nt=2, lr_schedule="cosine", seed=3,
            verbose=False)  # fmt: skip
        runs.append([p.detach().clone() for p in phi.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"lr_schedule": "linear"}, "lr_schedule must be 'step' or 'cosine'"),
     ({"lr_schedule": "cosine", "lr_drops": (1, 2)}, "at most one entry in lr_drops")],
)  # fmt: skip
def test_bad_schedule_is_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        fit(LQR(dim=2), _phi(), iterations=3, batch=8, nt=2, verbose=False, **kw)
