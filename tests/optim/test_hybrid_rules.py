"""The λ rules of hybrid_lsqr on the inverse heat problem, as documented in its docstring.

GCV undersmooths there, and so does the textbook dense GCV (the miss is GCV's, not the
hybrid's); weighted GCV and the discrepancy principle stay near the error-optimal λ.
"""

from __future__ import annotations

import pytest
import torch

from odeflow.optim import hybrid_lsqr

from ._illposed import heat, noisy, optimal_lambda, tikhonov_dense

F64 = torch.float64


def _dense_gcv_lambda(A, b):
    """The global minimizer of the dense GCV function on a wide log grid (the textbook)."""
    U, s, _ = torch.linalg.svd(A, full_matrices=False)
    beta = U.T @ b
    lams = s[0] * torch.logspace(-12, 1, 2000, dtype=F64)[:, None]
    f = lams**2 / (s**2 + lams**2)
    G = (((f * beta) ** 2).sum(1) + (b @ b - beta @ beta)) / (A.shape[0] - (1 - f).sum(1)) ** 2
    return float(lams[G.argmin(), 0])


@pytest.mark.parametrize("level", [0.01, 0.05])
def test_heat_gcv_undersmooths_weighted_gcv_and_discrepancy_do_not(level):
    A, x = heat(256)
    for seed in range(3):
        b = noisy(A, x, level, seed=seed)
        lam_opt, err_opt = optimal_lambda(A, b, x, points=2000)
        assert _dense_gcv_lambda(A, b) <= 0.6 * lam_opt  # GCV's own bias on this problem
        w = hybrid_lsqr(A, b, regularization="wgcv")
        assert 1 / 3 <= float(w.lam) / lam_opt <= 3
        assert float((w.x - x).norm()) <= 1.55 * err_opt
        d = hybrid_lsqr(A, b, regularization="discrepancy", noise_level=level)
        assert 1 / 3 <= float(d.lam) / lam_opt <= 3
        assert float((d.x - x).norm()) <= 1.15 * err_opt


@pytest.mark.parametrize("level", [0.01, 0.05])
def test_heat_draw_1_gcv_follows_the_dense_gcv(level):
    """Regression: on this draw the projected GCV is lowest at the floor of its λ range
    (``s_min(B_k)``, where the projected trace falls short of the full one) at every k; taking
    that boundary point drove λ → 0 (error ×10⁶). The hybrid takes the interior minimum."""
    A, x = heat(256)
    b = noisy(A, x, level, seed=1)
    lam_d = _dense_gcv_lambda(A, b)
    err_d = float((tikhonov_dense(A, b, lam_d) - x).norm())
    res = hybrid_lsqr(A, b)
    assert res.status.ok, res.reason
    assert 1 / 3 <= float(res.lam) / lam_d <= 3
    assert float((res.x - x).norm()) <= 1.1 * err_d
