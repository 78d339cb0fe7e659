"""Embedded pairs: validation, observed orders of the main, embedded and dense solutions."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import odeflow
from odeflow.ode._embedded import EMBEDDED_TABLEAUS, EmbeddedTableau, get_embedded
from odeflow.ode._interp import interpolate
from odeflow.ode._tableaus import ButcherTableau
from odeflow.testing import observed_order

D64 = torch.float64


A_OSC = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=D64)


def _oscillator(t, y):  # y'' = -y: (cos t, -sin t)
    return y @ A_OSC.T


def _tan(t, y):  # y' = 1 + y², y(0) = 0  ->  y = tan t
    return 1 + y * y


def _logistic(t, y):  # y' = y (1 - y), y(0) = 0.1  ->  y = 1 / (1 + 9 e^{-t})
    return y * (1 - y)


_PROBLEMS = {
    "osc": (_oscillator, [1.0, 0.0], 10.0, lambda T: [math.cos(T), -math.sin(T)]),
    "tan": (_tan, [0.0], 1.2, lambda T: [math.tan(T)]),
}

# (problem, step counts) in the asymptotic range and above round-off, per pair and solution
# (tsit5 is tuned for a small 6th-order error term, so its 5th order shows on fine grids)
_CASES = {
    ("bosh3", "main"): ("osc", [40, 60, 80, 120]),
    ("bosh3", "embedded"): ("osc", [60, 80, 120, 160]),
    ("dopri5", "main"): ("osc", [40, 60, 80, 120]),
    ("dopri5", "embedded"): ("osc", [40, 60, 80, 120]),
    ("tsit5", "main"): ("osc", [160, 240, 320, 480]),
    ("tsit5", "embedded"): ("osc", [40, 60, 80, 120]),
    ("dopri8", "main"): ("tan", [16, 24, 32, 48]),
    ("dopri8", "embedded"): ("osc", [20, 30, 40, 60]),
}


@pytest.mark.parametrize("name, part", list(_CASES))
def test_observed_order_of_main_and_embedded_solutions(name, part):
    tab = EMBEDDED_TABLEAUS[name]
    if part == "embedded":
        tab = ButcherTableau(name + "_low", tab.a, tab.b_low, tab.c, tab.order_low)
    problem, ns = _CASES[name, part]
    f, y0, T, exact = _PROBLEMS[problem]
    errs = []
    for n in ns:
        ys = odeflow.odeint(f, torch.tensor(y0, dtype=D64), torch.tensor([0.0, T], dtype=D64),
                            method=tab, steps_per_interval=n)  # fmt: skip
        errs.append((ys[-1] - torch.tensor(exact(T), dtype=D64)).norm().item())
    p = observed_order(errs, [T / n for n in ns])
    assert abs(p - tab.order) <= 0.2, (name, part, p, errs)


@pytest.mark.parametrize("name", list(EMBEDDED_TABLEAUS))
def test_dense_output_local_order(name):
    # one step from the exact state; the error at θ = 0.7 is O(h^{q+1}): q = the pair's dense
    # order, or 3 for cubic Hermite (through the step's end state, of local error O(h^{p+1}))
    tab = EMBEDDED_TABLEAUS[name]
    q = tab.dense_order or 3
    exact = lambda t: 1 / (1 + 9 * math.exp(-t))  # noqa: E731
    t0, th = 0.3, 0.7
    hs = [0.2, 0.1, 0.05, 0.025]
    errs = []
    for h in hs:
        y = [torch.tensor([exact(t0)], dtype=D64)]
        ks = []
        for i in range(tab.stages):
            yi = y[0] + h * sum(tab.a[i][j] * ks[j] for j in range(i)) if i else y[0]
            ks.append(_logistic(torch.tensor(t0 + tab.c[i] * h, dtype=D64), yi))
        y1 = [y[0] + h * sum(b * k for b, k in zip(tab.b, ks))]
        f1 = [_logistic(torch.tensor(t0 + h, dtype=D64), y1[0])]
        u = interpolate(tab, y, y1, [[k] for k in ks], f1, h, th)[0]
        errs.append(abs(u.item() - exact(t0 + th * h)))
    assert abs(observed_order(errs, hs) - (q + 1)) <= 0.2, (name, errs)


def test_pairs_are_fsal_with_known_orders():
    got = {n: (t.order, t.order_low, t.dense_order, t.fsal) for n, t in EMBEDDED_TABLEAUS.items()}
    assert got == {
        "bosh3": (3, 2, 0, True),
        "dopri5": (5, 4, 4, True),
        "tsit5": (5, 4, 4, True),
        "dopri8": (8, 7, 0, True),
    }


def _replace(name, **kw):
    return dataclasses.replace(EMBEDDED_TABLEAUS[name], **kw)


@pytest.mark.parametrize(
    "make, match",
    [
        # Tsitouras's paper prints the last error weight as +1/66: the order-4 conditions fail
        (
            lambda: _replace("tsit5", b_low=(*EMBEDDED_TABLEAUS["tsit5"].b_low[:6], -2 / 66)),
            "b_low fail the order-1",
        ),
        (
            lambda: _replace("dopri5", order_low=5),
            "order_low must be an int from 1 to order - 1 = 4",
        ),
        (
            lambda: _replace("dopri5", order_low=0),
            "order_low must be an int from 1 to order - 1 = 4",
        ),
        (lambda: _replace("bosh3", b_low=(1.0, 0.0)), "b_low must hold 4 finite"),
        (lambda: _replace("bosh3", b_low=EMBEDDED_TABLEAUS["bosh3"].b), "estimates no error"),
        (lambda: _replace("bosh3", b_low=(0.5, 0.5, 0.0, 0.0)), "order-2 condition"),
        (lambda: _replace("dopri5", dense_order=6), "dense_order must be an int from 1 to 5"),
        (lambda: _replace("dopri5", dense=None, dense_order=4), "dense_order given without"),
        (lambda: _replace("dopri5", dense=EMBEDDED_TABLEAUS["dopri5"].dense[:6]), "7 rows"),
        # a perturbed dense weight fails the θ-identity (and then θ = 1 as well)
        (
            lambda: _replace(
                "dopri5", dense=((1.0, -2.0, 1.0, 0.0), *EMBEDDED_TABLEAUS["dopri5"].dense[1:])
            ),
            "dense weights at θ = 1 must equal b",
        ),
    ],
)
def test_invalid_pairs_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_dense_condition_failure_names_the_power():
    tab = EMBEDDED_TABLEAUS["dopri5"]
    rows = [list(r) for r in tab.dense]
    rows[0][0] += 1e-3  # keep θ = 1: move the same amount from θ to θ²
    rows[0][1] -= 1e-3
    with pytest.raises(ValueError, match=r"dense output fails the order-1 condition .* θ"):
        dataclasses.replace(tab, dense=tuple(tuple(r) for r in rows))


def test_get_embedded_lists_the_pairs():
    assert get_embedded("tsit5") is EMBEDDED_TABLEAUS["tsit5"]
    for bad in ("rk4", odeflow.ode.TABLEAUS["heun"]):
        with pytest.raises(ValueError, match="bosh3, dopri5, tsit5, dopri8"):
            get_embedded(bad)
    with pytest.raises(TypeError):
        get_embedded(5)
    assert isinstance(EMBEDDED_TABLEAUS["dopri8"], EmbeddedTableau)


def test_get_tableau_knows_the_pairs():
    assert odeflow.ode.get_tableau("dopri5") is EMBEDDED_TABLEAUS["dopri5"]
    with pytest.raises(ValueError, match="rk38, bosh3, dopri5, tsit5, dopri8"):
        odeflow.ode.get_tableau("dopri6")
