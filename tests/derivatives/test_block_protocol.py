"""The abstract block: every sweep is declared, and a block's sweeps agree with each other."""

from __future__ import annotations

import pytest
import torch

import odeflow.derivatives as D
from odeflow.derivatives._laplacian import laplacian_sweep, supports
from odeflow.derivatives._sweep import Kind, plus

F64 = torch.float64


def test_a_block_missing_a_sweep_cannot_be_made():
    class Half(D.Block):
        def forward(self, u):
            return u

    with pytest.raises(TypeError, match="abstract"):
        Half()
    with pytest.raises(TypeError, match="abstract"):
        type("NoDerivatives", (D.Activation,), {})()


def test_icnn_generic_laplacian_sweep_matches_the_forward_jet():
    """ICNN has no specialised Laplacian sweep (``supports`` is False, so auto mode uses the
    forward jet) but its Laplacian record/reverse, built from its generic sweeps, are exact."""
    torch.manual_seed(0)
    net = D.Sum(D.ICNN(4, width=6, depth=3), D.Quadratic(4, rank=2)).to(F64)
    assert not supports(net)
    x = torch.randn(5, 4, dtype=F64)
    seed = torch.eye(4, dtype=F64)[:3]  # the last input left out
    value, g, lap = laplacian_sweep(net, x, seed, F64)
    ref = D.compute(net, x, want="laplacian", mode="func", exclude_last=1)
    torch.testing.assert_close(value[:, 0], ref.value)
    torch.testing.assert_close(g[:, 0], ref.gradient)
    torch.testing.assert_close(lap[:, 0], ref.laplacian)


@pytest.mark.parametrize("mode", ["forward", "mixed", "backward"])
def test_every_mode_runs_each_block_through_its_own_sweeps(mode):
    """One network holding every block kind; each mode's Laplacian equals torch.func's."""
    torch.manual_seed(1)
    d, w = 3, 5
    body = D.Sequential(D.Single(d, w), D.ResNet(w, depth=2, h=0.5), D.Linear(w, 1))
    net = D.Sum(body, D.ICNN(d, width=4), D.Quadratic(d, rank=2)).to(F64)
    x = torch.randn(4, d, dtype=F64)
    out = D.compute(net, x, want="laplacian", mode=mode)
    ref = D.compute(net, x, want="laplacian", mode="func")
    torch.testing.assert_close(out.laplacian, ref.laplacian)
    torch.testing.assert_close(out.gradient, ref.gradient)


def test_entry_width_drives_the_backward_choice():
    narrow = D.Sequential(D.Single(64, 4), D.Linear(4, 1))
    assert narrow._entry_width() == 4
    assert D.Quadratic(3)._entry_width() == 0 and D.Single(3, 2)._entry_width() == float("inf")
    assert D.Sum(narrow, D.Quadratic(64))._entry_width() == 4


def test_kind_enum_and_the_shared_add():
    assert {k.value for k in Kind} == {"grad", "lap", "hess", "hvp"}
    t = torch.ones(2)
    assert plus(None, None) is None and plus(t, None) is t and plus(None, t) is t
    torch.testing.assert_close(plus(t, t), 2 * t)
