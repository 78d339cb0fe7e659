"""The trajectory fitter behind the spiral demo actually learns."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import odeflow
from odeflow.ode import AutonomousField, fit_trajectory, spiral_data


def test_spiral_data_is_the_cubic_spiral():
    t, ys = spiral_data(2001, 5.0, dtype=torch.float64)
    a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)
    assert torch.equal(ys[0], torch.tensor([2.0, 0.0], dtype=torch.float64))
    # central differences (error O(dt^2), dt = 2.5e-3) match the field
    dt = (t[1] - t[0]).item()
    fd = (ys[2:] - ys[:-2]) / (2 * dt)
    f = (ys[1:-1] ** 3) @ a
    assert ((fd - f).abs().max() / f.abs().max()).item() < 1e-3
    with pytest.raises(ValueError, match="n >= 2"):
        spiral_data(1)


def test_fit_reduces_window_error():
    torch.manual_seed(0)
    t, ys = spiral_data(1000, 25.0)
    t, ys = t[:300], ys[:300]
    func = AutonomousField(nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 2)))

    def window_error():  # mean abs error over every window of 10 samples
        with torch.no_grad():
            p = odeflow.odeint(func, ys[:-10], t[:10] - t[0])
        target = torch.stack([ys[k : len(ys) - 10 + k] for k in range(10)])
        return (p - target).abs().mean().item()

    e0 = window_error()
    res = fit_trajectory(func, t, ys, iters=80, batch_time=10, batch_size=20, verbose=False)
    assert window_error() < 0.6 * e0
    assert len(res.losses) == 80 and res.final_mse == res.final_mse  # not NaN


def test_fit_rejects_bad_shapes():
    func = AutonomousField(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="need t"):
        fit_trajectory(func, torch.zeros(5), torch.zeros(4, 2), verbose=False)
    with pytest.raises(ValueError, match="batch_time"):
        fit_trajectory(func, torch.zeros(5), torch.zeros(5, 2), batch_time=9, verbose=False)


def test_fit_rejects_non_uniform_t():
    """Every window is integrated on the first window's grid: a non-uniform t would fit the
    wrong times silently."""
    t, ys = spiral_data(40, 2.0)
    t = t.clone()
    t[20:] += 1.0  # one gap
    func = AutonomousField(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="uniformly spaced"):
        fit_trajectory(func, t, ys, iters=1, batch_time=4, verbose=False)


def test_uniform_check_tolerates_round_off():
    from odeflow.ode._fit import _check_uniform

    # float32 samples of a uniform grid: spacings differ by ~1e-2 relative (ulps of t_end)
    t = torch.linspace(0.0, 25.0, 100_000)
    assert (t.diff().max() - t.diff().min()) / t.diff().mean() > 1e-3
    _check_uniform(t)
    _check_uniform(torch.linspace(3.0, -1.0, 50, dtype=torch.float64))  # decreasing
    with pytest.raises(ValueError, match="uniformly spaced"):
        _check_uniform(torch.tensor([0.0, 1.0, 2.0, 3.1]))


@pytest.mark.parametrize("kw", [{"iters": 0}, {"iters": -2}, {"batch_size": 0}, {"batch_size": -1}])
def test_fit_rejects_empty_settings(kw):
    """iters < 1 returned no losses (callers index losses[0]); batch_size 0 trained on NaN
    losses; batch_size < 0 failed deep inside torch."""
    t, ys = spiral_data(20, 1.0)
    func = AutonomousField(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="iters >= 1 and batch_size >= 1"):
        fit_trajectory(func, t, ys, batch_time=4, verbose=False, **kw)


def test_demo_writes_png(tmp_path, monkeypatch):
    from odeflow.cli import _demo_ode as _demo
    from odeflow.ode import _fit

    real = _fit.fit_trajectory

    results = []

    def short(*a, **k):
        k["iters"] = 5
        results.append(real(*a, **k))
        return results[-1]

    monkeypatch.setattr(_demo, "fit_trajectory", short)
    out = _demo.run_demo(tmp_path / "d", verbose=False)
    assert (tmp_path / "d" / "spiral.png").stat().st_size > 1000
    assert set(out) >= {"loss_first", "loss_last", "rollout_mse", "png"}
    # the last loss is the mean of the final (up to 20) losses, not their sum over 20
    losses = results[0].losses
    assert out["loss_first"] == losses[0]
    assert out["loss_last"] == pytest.approx(sum(losses) / len(losses), rel=1e-12)
