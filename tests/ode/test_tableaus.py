"""Butcher tableaus: validation on construction and observed orders of convergence."""

from __future__ import annotations

import math

import numpy as np
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
        (dict(a=((),), b=(1.0,), c=(0.0,), order=0), "an int from 1 to 8"),
        (dict(a=((),), b=(1.0,), c=(0.0,), order=True), "an int from 1 to 8"),
        (dict(a=((),), b=(1.0,), c=(0.0,), order=9), "an int from 1 to 8"),
        (dict(a=((), ("x",)), b=(0.5, 0.5), c=(0.0, 1.0), order=1), "row 1 of a must hold real"),
        (dict(a=((), None), b=(0.5, 0.5), c=(0.0, 1.0), order=1), "row 1 of a must be a seq"),
        (dict(a=None, b=(1.0,), c=(0.0,), order=1), "a must be a sequence of rows"),
        (dict(a=((),), b="1", c=(0.0,), order=1), "b must be a sequence"),
        # an explicit s-stage method has order at most s: rk4's coefficients claiming 5
        (
            dict(a=TABLEAUS["rk4"].a, b=TABLEAUS["rk4"].b, c=TABLEAUS["rk4"].c, order=5),
            "order-5 condition b.c\\^4 = 1/5",
        ),
    ],
)
def test_invalid_tableau_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ButcherTableau("bad", **kwargs)


def test_order_conditions_of_every_rooted_tree():
    from odeflow.ode._tableaus import _order_residuals, _trees

    # the number of rooted trees with n nodes (OEIS A000081): one condition each
    assert [len(_trees(n)) for n in range(1, 9)] == [1, 1, 2, 4, 9, 20, 48, 115]
    # Dormand–Prince's 5th-order weights satisfy all 17 conditions up to order 5, not order 6
    a = (
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    )
    b = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
    c = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
    tab = ButcherTableau("dopri5", a=a, b=b, c=c, order=5)
    res = _order_residuals(tab.a, tab.b, tab.c, 6)
    assert len(res) == 1 + 1 + 2 + 4 + 9 + 20
    assert max(abs(r) for p, _, r in res if p <= 5) < 1e-14
    assert max(abs(r) for p, _, r in res if p == 6) > 1e-5
    # the order-5 names follow the usual notation, e.g. b.(Ac)^2 = 1/20 and b.A(c*Ac) = 1/40
    names = {name for p, name, _ in res if p == 5}
    assert {"b.(Ac)^2 = 1/20", "b.Ac^3 = 1/20", "b.(A(c*Ac)) = 1/40", "b.AAAc = 1/120"} <= names
    # integral orders of other types are accepted (stored as int)
    assert ButcherTableau("e", a=((),), b=(1.0,), c=(0.0,), order=np.int64(1)).order == 1


def test_tableau_is_frozen():
    with pytest.raises(AttributeError):
        TABLEAUS["rk4"].order = 3  # type: ignore[misc]


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="euler, midpoint, heun, ralston, rk3, ssprk3, rk4, rk38"):
        get_tableau("dopri6")  # ("dopri5" is a method since issue 19)
