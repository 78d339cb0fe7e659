"""Butcher tableaus: validation on construction and observed orders of convergence."""

from __future__ import annotations

import math

import pytest
import torch

import odeflow
from odeflow.ode import TABLEAUS, ButcherTableau, get_tableau
from odeflow.testing import observed_order

D64 = torch.float64


@pytest.mark.parametrize("name", list(TABLEAUS))
def test_observed_order_matches_tableau(name):
    # y' = y cos t, y(0) = 1  ->  y = exp(sin t)
    tab = TABLEAUS[name]
    t = torch.tensor([0.0, 2.0], dtype=D64)
    exact = math.exp(math.sin(2.0))
    # asymptotic regime: fine enough that the leading error term dominates
    ns = [32, 64, 128, 256] if tab.order < 4 else [16, 32, 64, 128]
    errs = []
    for n in ns:
        ys = odeflow.odeint(
            lambda t, y: y * torch.cos(t),
            torch.ones(1, dtype=D64),
            t,
            method=name,
            steps_per_interval=n,
        )
        errs.append(abs(ys[-1].item() - exact))
    p = observed_order(errs, [2.0 / n for n in ns])
    assert abs(p - tab.order) <= 0.2, (name, p, errs)


def test_user_tableau_and_step_size():
    # Ralston's 3rd order method, given by the user.
    tab = ButcherTableau(
        "ralston3",
        a=((), (0.5,), (0.0, 0.75)),
        b=(2 / 9, 1 / 3, 4 / 9),
        c=(0.0, 0.5, 0.75),
        order=3,
    )
    t = torch.tensor([0.0, 1.0, 2.0], dtype=D64)
    a = odeflow.odeint(lambda t, y: -y, torch.ones(1, dtype=D64), t, method=tab, step_size=0.1)
    b = odeflow.odeint(
        lambda t, y: -y, torch.ones(1, dtype=D64), t, method=tab, steps_per_interval=10
    )
    assert torch.equal(a, b)
    assert abs(a[-1].item() - math.exp(-2.0)) < 1e-4


def test_rk4_is_classical_not_38():
    assert TABLEAUS["rk4"].b == (1 / 6, 1 / 3, 1 / 3, 1 / 6)
    assert TABLEAUS["rk38"].b == (1 / 8, 3 / 8, 3 / 8, 1 / 8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 0.5), order=1), "rows of a must sum to c"),
        (dict(a=((), (1.0,)), b=(0.6, 0.5), c=(0.0, 1.0), order=1), "order-1 condition"),
        (dict(a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0), order=3), "order-3 condition"),
        (dict(a=((0.5,), (1.0,)), b=(0.5, 0.5), c=(0.5, 1.0), order=1), "not explicit"),
        (dict(a=((),), b=(1.0,), c=(0.0, 1.0), order=1), "len\\(c\\)"),
        (dict(a=((),), b=(1.0,), c=(0.0,), order=0), "positive int"),
    ],
)
def test_invalid_tableau_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ButcherTableau("bad", **kwargs)


def test_tableau_is_frozen():
    with pytest.raises(AttributeError):
        TABLEAUS["rk4"].order = 3  # type: ignore[misc]


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="euler, midpoint, heun, ralston, rk3, ssprk3, rk4, rk38"):
        get_tableau("dopri5")
