"""Random feature models: min-norm double descent against hybrid regularization."""

from __future__ import annotations

import pytest
import torch

from odeflow.optim import RandomFeatures

F64 = torch.float64


def _teacher_student(seed, n=40, d=5, n_test=500):
    g = torch.Generator().manual_seed(seed)
    teacher = RandomFeatures(d, 10, generator=g, dtype=F64)
    teacher.weight = torch.randn(10, 1, generator=g, dtype=F64)
    y, y_test = (
        torch.randn(n, d, generator=g, dtype=F64),
        torch.randn(n_test, d, generator=g, dtype=F64),
    )
    t = teacher(y)
    t = t + 0.1 * t.std() * torch.randn(n, 1, generator=g, dtype=F64)  # 10 % noise
    return y, t, y_test, teacher(y_test)


def test_min_norm_peaks_at_width_n_and_hybrid_does_not():
    n, widths, seeds = 40, (20, 40, 80), range(4)
    err = {"min_norm": dict.fromkeys(widths, 0.0), "hybrid": dict.fromkeys(widths, 0.0)}
    for seed in seeds:
        y, t, y_test, t_test = _teacher_student(seed, n=n)
        for m in widths:
            for method in err:
                rf = RandomFeatures(
                    5, m, generator=torch.Generator().manual_seed(100 + seed), dtype=F64
                )
                rf.fit(y, t, method=method)
                e = float(((rf(y_test) - t_test) ** 2).mean() / (t_test**2).mean())
                err[method][m] += e / len(seeds)
    mn, hy = err["min_norm"], err["hybrid"]
    assert mn[n] >= 5 * max(mn[n // 2], mn[2 * n])  # the double-descent peak at m = n
    assert hy[n] <= hy[n // 2]  # no rise towards the interpolation threshold
    assert hy[n] <= 0.1 * mn[n]
    assert hy[2 * n] <= 1.1 * mn[2 * n]  # and no loss away from it


def test_features_fit_and_bad_input():
    g = torch.Generator().manual_seed(0)
    rf = RandomFeatures(3, 25, generator=g, dtype=F64)
    assert torch.allclose(rf.K.norm(dim=1), torch.ones(25, dtype=F64))  # rows on the sphere
    assert bool((rf.b.abs() <= 1).all())
    y = torch.randn(20, 3, generator=g, dtype=F64)
    t = y[:, :1] ** 2
    fit = rf.fit(y, t, method="min_norm")  # m > N: interpolates, with the smallest norm
    assert torch.allclose(rf(y), t, atol=1e-8)
    Phi = rf.features(y)
    assert torch.allclose(
        fit.weight, torch.linalg.lstsq(Phi, t, driver="gelsd").solution, atol=1e-8
    )
    fit = rf.fit(y, t)
    assert fit.hybrid is not None and fit.hybrid.status.ok
    with pytest.raises(ValueError, match="method"):
        rf.fit(y, t, method="ridge")
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        rf.features(torch.ones(4, 2, dtype=F64))
    with pytest.raises(ValueError, match="NaN"):
        rf.fit(y, torch.full_like(t, float("nan")))
    with pytest.raises(RuntimeError, match="fit"):
        RandomFeatures(3, 5)(y.float())
