"""Adaptive solves: tolerances met on closed forms, dense output, NFE against torchdiffeq,
max_steps, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import odeflow
from odeflow.ode import PIController
from odeflow.ode._embedded import EMBEDDED_TABLEAUS

D64 = torch.float64
A_OSC = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=D64)


def _expsin(t, y):  # y' = y cos t, y(0) = 1  ->  exp(sin t)
    return y * torch.cos(t)


def _vdp(t, y):  # Van der Pol, μ = 1
    return torch.stack([y[..., 1], (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], -1)


def _lv(t, y):  # Lotka–Volterra
    return torch.stack([1.5 * y[..., 0] - y[..., 0] * y[..., 1],
                        -3.0 * y[..., 1] + y[..., 0] * y[..., 1]], -1)  # fmt: skip


@pytest.mark.parametrize("name", list(EMBEDDED_TABLEAUS))
@pytest.mark.parametrize("tol", [1e-4, 1e-7])
def test_tolerance_met_on_closed_forms(name, tol):
    # global error at 41 dense outputs, in units of the tolerance, on two closed forms:
    # local error control keeps it a small multiple of tol (bosh3, the lowest order, ~12)
    t = torch.linspace(0, 10, 41, dtype=D64)
    cases = [
        (_expsin, torch.ones(1, dtype=D64), torch.exp(torch.sin(t))[:, None]),
        (lambda t, y: y @ A_OSC.T, torch.tensor([1.0, 0.0], dtype=D64),
         torch.stack([torch.cos(t), -torch.sin(t)], 1)),
    ]  # fmt: skip
    for f, y0, exact in cases:
        sol = odeflow.solve(f, y0, t, method=name, rtol=tol, atol=tol)
        assert sol.status is odeflow.ode.SolveStatus.SUCCESS
        err = ((sol.ys - exact).abs() / (tol + tol * exact.abs())).max().item()
        assert err < 20.0, (name, tol, err)


@pytest.mark.parametrize("name", ["bosh3", "dopri5", "tsit5", "dopri8"])
def test_outputs_do_not_force_steps(name):
    t_end = torch.tensor([0.0, 5.0], dtype=D64)
    t_dense = torch.linspace(0, 5, 101, dtype=D64)
    y0 = torch.tensor([2.0, 0.0], dtype=D64)
    a = odeflow.solve(_vdp, y0, t_end, method=name, rtol=1e-6, atol=1e-8)
    b = odeflow.solve(_vdp, y0, t_dense, method=name, rtol=1e-6, atol=1e-8)
    assert a.steps == b.steps  # the same accepted steps ...
    assert torch.equal(a.ys[-1], b.ys[-1])  # ... bitwise
    # ... and the dense values agree with a tight solve at those times
    ref = odeflow.odeint(_vdp, y0, t_dense, method="dopri8", rtol=1e-12, atol=1e-12)
    assert (b.ys - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("method", ["bosh3", "dopri5", "dopri8"])
@pytest.mark.parametrize("problem", ["vdp", "lv"])
def test_nfe_comparable_to_torchdiffeq(method, problem):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    f, y0 = {"vdp": (_vdp, [2.0, 0.0]), "lv": (_lv, [1.0, 1.0])}[problem]
    y0 = torch.tensor(y0, dtype=D64)
    t = torch.tensor([0.0, 10.0], dtype=D64)
    n = [0]

    def counted(t, y):
        n[0] += 1
        return f(t, y)

    for tol in (1e-3, 1e-5) if method == "bosh3" else (1e-4, 1e-7):  # (bosh3: ~7000 NFE at 1e-7)
        n[0] = 0
        torchdiffeq.odeint(counted, y0, t, method=method, rtol=tol, atol=tol)
        sol = odeflow.solve(f, y0, t, method=method, rtol=tol, atol=tol)
        ratio = sol.nfe / n[0]
        assert 0.75 < ratio < 1.15, (method, problem, tol, sol.nfe, n[0])


def test_reverse_time_and_tuple_state_with_per_leaf_tolerances():
    # y' = -y backwards from t = 2 to 0 on two leaves; the loose leaf does not slow the solve
    t = torch.tensor([2.0, 1.0, 0.0], dtype=D64)
    y0 = (torch.ones(3, dtype=D64), torch.ones(2, dtype=D64))
    f = lambda t, y: (-y[0], -y[1])  # noqa: E731
    sol = odeflow.solve(f, y0, t, method="dopri5", rtol=(1e-9, 1e-3), atol=(1e-9, 1e-3))
    tight = odeflow.solve(f, y0, t, method="dopri5", rtol=1e-9, atol=1e-9)
    exact = torch.exp(torch.tensor([0.0, 1.0, 2.0], dtype=D64))
    assert (sol.ys[0][:, 0] - exact).abs().max() < 1e-7
    assert sol.steps < tight.steps
    loose = odeflow.solve(f, y0, t, method="dopri5", rtol=1e-3, atol=1e-3)
    assert loose.steps < sol.steps


def test_max_steps_status_and_error():
    t = torch.tensor([0.0, 10.0], dtype=D64)
    y0 = torch.tensor([2.0, 0.0], dtype=D64)
    sol = odeflow.solve(_vdp, y0, t, method="dopri5", rtol=1e-8, atol=1e-8, max_steps=5)
    assert sol.status is odeflow.ode.SolveStatus.MAX_STEPS_REACHED
    assert sol.steps <= 5 and torch.isnan(sol.ys[-1]).all()  # unreached: NaN, flagged
    with pytest.raises(RuntimeError, match="max_steps=5"):
        odeflow.odeint(_vdp, y0, t, method="dopri5", rtol=1e-8, atol=1e-8, max_steps=5)
    # torchdiffeq's name for it, in options
    with pytest.raises(RuntimeError, match="max_steps=5"):
        odeflow.odeint(_vdp, y0, t, method="dopri5", options={"max_num_steps": 5})


def test_torchdiffeq_options_and_controller():
    t = torch.tensor([0.0, 3.0], dtype=D64)
    y0 = torch.tensor([2.0, 0.0], dtype=D64)
    a = odeflow.solve(_vdp, y0, t, method="dopri5", options={"first_step": 1e-6})
    b = odeflow.solve(_vdp, y0, t, method="dopri5")
    assert a.steps > b.steps  # a tiny first step takes steps to grow (at most 10x per step)
    big = odeflow.solve(_vdp, y0, t, method="dopri5", options={"first_step": 3.0})
    assert big.rejected >= 1 and big.status is odeflow.ode.SolveStatus.SUCCESS
    c = odeflow.solve(_vdp, y0, t, method="dopri5", options={"ifactor": 1.2, "safety": 0.5})
    assert c.steps > b.steps  # a shy controller takes more steps
    pi = odeflow.solve(_vdp, y0, t, method="dopri5", options={"controller": PIController(0.0, 1.0)})
    assert (pi.ys[-1] - b.ys[-1]).abs().max() < 1e-4


BAD = [
    (dict(rtol=0.0), ValueError, "rtol must be positive and finite"),
    (dict(rtol=-1e-3), ValueError, "rtol must be positive and finite"),
    (dict(atol=float("nan")), ValueError, "atol must be positive and finite"),
    (dict(atol=float("inf")), ValueError, "atol must be positive and finite"),
    (dict(atol=torch.tensor([1e-6, -1.0])), ValueError, "atol must be positive and finite"),
    (dict(rtol=(1e-6, 1e-6)), ValueError, "rtol per leaf needs 1 values"),
    (dict(rtol="1e-6"), TypeError, "rtol must be a positive number"),
    (dict(max_steps=0), ValueError, "max_steps must be at least 1"),
    (dict(max_steps=-3), ValueError, "max_steps must be at least 1"),
    (dict(max_steps=2.5), TypeError, "max_steps must be an int"),
    (dict(method="rk4", rtol=1e-6), ValueError, "bosh3, dopri5, tsit5, dopri8"),
    (dict(method="euler", atol=1e-6), ValueError, "no embedded error estimate"),
    (dict(method=odeflow.ode.TABLEAUS["rk4"], max_steps=10), ValueError, "bosh3, dopri5"),
    (dict(rtol=1e-6, step_size=0.1), ValueError, "give one or the other"),
    (dict(options={"step_size": 0.1}, step_size=0.1), ValueError, "give step_size once"),
    (dict(options=[("first_step", 0.1)]), TypeError, "options must be a dict"),
    (dict(options={"norm": max}), ValueError, "torchdiffeq's, not supported"),
    (dict(options={"grid": 1}), ValueError, "unknown option 'grid'"),
    (dict(options={"first_step": -0.1}), ValueError, "first_step"),
    (dict(options={"controller": "pi"}), TypeError, "PIController"),
]


@pytest.mark.parametrize("kwargs, err, match", BAD)
def test_bad_input(kwargs, err, match):
    kwargs = {"method": "dopri5", **kwargs}
    with pytest.raises(err, match=match):
        odeflow.odeint(_expsin, torch.ones(1, dtype=D64), torch.tensor([0.0, 1.0]).double(),
                       **kwargs)  # fmt: skip


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(pcoeff=-0.1), "pcoeff"),
        (dict(icoeff=0.0), "icoeff"),
        (dict(safety=1.5), "safety"),
        (dict(factor_min=1.0), "factor_min"),
        (dict(factor_max=1.0), "factor_max must exceed 1"),
        (dict(factor_max=math.inf), "factor_max must be a positive finite"),
    ],
)
def test_bad_controller(kw, match):
    with pytest.raises(ValueError, match=match):
        PIController(**kw)


def test_embedded_pair_with_fixed_steps_and_torchdiffeq_step_size_option():
    # an embedded pair given step_size takes fixed steps (torchdiffeq's options spelling too)
    t = torch.tensor([0.0, 1.0], dtype=D64)
    a = odeflow.solve(_expsin, torch.ones(1, dtype=D64), t, method="dopri5", step_size=0.25)
    b = odeflow.solve(_expsin, torch.ones(1, dtype=D64), t, method="dopri5",
                      options={"step_size": 0.25})  # fmt: skip
    assert a.steps == b.steps == 4 and torch.equal(a.ys, b.ys)


def test_blow_up_ends_with_step_size_too_small():
    # y' = y², y(0) = 1 blows up at t = 1: the steps shrink to the round-off of t there
    t = torch.tensor([0.0, 0.5, 2.0], dtype=D64)
    sol = odeflow.solve(lambda t, y: y * y, torch.ones(1, dtype=D64), t, method="dopri5")
    assert sol.status is odeflow.ode.SolveStatus.STEP_SIZE_TOO_SMALL
    assert abs(sol.ys[1].item() - 2.0) < 1e-6 and torch.isnan(sol.ys[2]).all()
    with pytest.raises(RuntimeError, match="round-off of t at t = 1"):
        odeflow.odeint(lambda t, y: y * y, torch.ones(1, dtype=D64), t, method="dopri5")
