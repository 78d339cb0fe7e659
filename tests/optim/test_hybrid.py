"""hybrid_lsqr, golub_kahan and solve_tikhonov on standard discrete ill-posed problems."""

from __future__ import annotations

import pytest
import torch

from odeflow.optim import (
    HybridStatus,
    LinearOperator,
    MatrixOperator,
    golub_kahan,
    hybrid_lsqr,
    solve_tikhonov,
)

from ._illposed import PROBLEMS, deblur, noisy, optimal_lambda, shaw, tikhonov_dense

F64 = torch.float64
CASES = [(p, lvl) for p in PROBLEMS for lvl in (0.01, 0.05)]


def _dense_gcv(A, b, lam):
    U, s, _ = torch.linalg.svd(A, full_matrices=False)
    beta = U.T @ b
    lam = torch.as_tensor(lam, dtype=F64).reshape(-1, 1)
    f = lam**2 / (s**2 + lam**2)
    r2 = ((f * beta) ** 2).sum(1) + (b @ b - beta @ beta)
    return r2 / (A.shape[0] - (1 - f).sum(1)) ** 2


@pytest.mark.parametrize(("name", "level"), CASES)
def test_equals_dense_tikhonov_at_its_lambda(name, level):
    A, x = PROBLEMS[name](128)
    b = noisy(A, x, level)
    res = hybrid_lsqr(A, b, rtol=1e-12)
    assert res.status.ok, res.reason
    xd = tikhonov_dense(A, b, float(res.lam))
    assert float((res.x - xd).norm() / xd.norm()) <= 1e-8
    # its λ minimizes the (dense) GCV function of the full problem
    grid = float(res.lam) * torch.logspace(-2, 2, 401, dtype=F64)
    assert float(_dense_gcv(A, b, res.lam)) <= float(_dense_gcv(A, b, grid).min()) * (1 + 1e-8)
    assert res.lam_history.shape == (res.iterations,)
    assert res.gcv_values.shape == res.gcv_lambdas.shape


@pytest.mark.parametrize(("name", "level"), CASES)
def test_gcv_lambda_near_the_error_optimal_lambda(name, level):
    """The acceptance criterion on the first noise draw (seed 0) of each case. It is one draw:
    over 50 draws GCV, dense and hybrid alike, misses it often on Shaw and heat
    (test_hybrid_rules.py, ``optim_peers.py --parts rule_frequencies``)."""
    A, x = PROBLEMS[name](256)
    b = noisy(A, x, level)
    lam_opt, err_opt = optimal_lambda(A, b, x)
    res = hybrid_lsqr(A, b)
    assert 1 / 3 <= float(res.lam) / lam_opt <= 3
    assert float((res.x - x).norm()) <= 1.1 * err_opt


@pytest.mark.parametrize("level", [0.01, 0.05])
def test_weighted_gcv_and_discrepancy_near_optimal(level):
    A, x = deblur(256)
    b = noisy(A, x, level)
    _, err_opt = optimal_lambda(A, b, x)
    w = hybrid_lsqr(A, b, regularization="wgcv")
    assert w.status.ok and 0 < float(w.omega) <= 1
    assert float((w.x - x).norm()) <= 1.1 * err_opt
    d = hybrid_lsqr(A, b, regularization="discrepancy", noise_level=level)
    assert d.status is HybridStatus.CONVERGED
    # the discrepancy principle's defining property: ‖b − Ax‖ = τ·δ·‖b‖
    assert float((A @ d.x - b).norm()) == pytest.approx(1.01 * level * float(b.norm()), rel=1e-6)
    assert float((d.x - x).norm()) <= 1.1 * err_opt  # (its λ errs on the large side)


def test_fixed_lambda_and_batched_rhs():
    A, x = shaw(96)
    B = noisy(A, x, 0.01, batch=3)
    res = hybrid_lsqr(A, B, batch_dims=1, rtol=1e-12)
    assert res.x.shape == (3, 96) and res.lam.shape == (3,)
    for i in range(3):
        one = hybrid_lsqr(A, B[i], rtol=1e-12)
        assert float(res.lam[i]) == pytest.approx(float(one.lam), rel=1e-6)
        assert torch.allclose(res.x[i], one.x, rtol=1e-7, atol=1e-9)
    fixed = hybrid_lsqr(A, B[0], regularization=0.05, rtol=1e-12)
    assert fixed.gcv_values is None and float(fixed.lam) == 0.05
    assert torch.allclose(fixed.x, tikhonov_dense(A, B[0], 0.05), rtol=1e-8, atol=1e-10)


def test_matrix_free_operator_on_images():
    """A separable blur on 24×24 images, X ↦ K X Kᵀ, against the dense Kronecker matrix."""
    K, _ = deblur(24, width=0.05)
    op = LinearOperator(lambda X: K @ X @ K.T, (24, 24), rmatvec=lambda Y: K.T @ Y @ K, dtype=F64)
    X = torch.zeros(24, 24, dtype=F64)
    X[6:14, 8:18] = 1.0
    b = noisy(op.to_dense(), X.reshape(-1), 0.01).reshape(24, 24)
    res = hybrid_lsqr(op, b, regularization=0.05, rtol=1e-12)
    assert res.status is HybridStatus.CONVERGED and res.x.shape == (24, 24)
    xd = tikhonov_dense(torch.kron(K, K), b.reshape(-1), 0.05)
    assert torch.allclose(res.x.reshape(-1), xd, rtol=1e-8, atol=1e-10)


def test_float32_follows_float64():
    A, x = deblur(128)
    b = noisy(A, x, 0.01)
    r64 = hybrid_lsqr(A, b)
    r32 = hybrid_lsqr(A.float(), b.float())
    assert r32.x.dtype == torch.float32 and r32.lam.dtype == torch.float32
    assert float((r32.x.double() - r64.x).norm() / r64.x.norm()) < 1e-3


def test_reorthogonalization_keeps_the_basis_orthogonal():
    A, x = deblur(300)
    b = noisy(A, x, 0.01)
    eye = torch.eye(200, dtype=F64)

    def loss(gk):
        V = gk.V[0, :200]
        return float((V @ V.T - eye).abs().max())

    plain = golub_kahan(A, b, 200, reorth="none")
    full = golub_kahan(A, b, 200, reorth="full")
    partial = golub_kahan(A, b, 200, reorth="partial")
    assert loss(plain) > 0.1  # the plain recurrence has lost orthogonality completely
    assert loss(full) <= 1e-10
    assert loss(partial) <= 1e-6  # semi-orthogonal (√ε level) ...
    assert partial.reorthogonalizations < full.reorthogonalizations  # ... at a lower cost
    for gk in (full, partial):  # A V_k = U_{k+1} B_k holds throughout
        lhs = A @ gk.V[0, :200].T
        rhs = gk.U[0, :201].T @ gk.B()[0, :201, :200]
        assert float((lhs - rhs).abs().max()) <= 1e-8 * float(torch.linalg.matrix_norm(A, 2))


def test_solve_tikhonov_general_form_dense_and_matrix_free():
    A, x = shaw(64)
    b = noisy(A, x, 0.01)
    D = torch.diff(torch.eye(64, dtype=F64), dim=0)  # first differences (63, 64)
    lam = 0.05
    ref = torch.linalg.solve(A.T @ A + lam**2 * D.T @ D, A.T @ b)
    dense = solve_tikhonov(A, b, lam, L=D)
    assert dense.method == "direct" and torch.allclose(dense.x, ref, rtol=1e-9, atol=1e-11)
    Lop = LinearOperator(lambda v: D @ v, (64,), (63,), rmatvec=lambda w: D.T @ w)
    free = solve_tikhonov(MatrixOperator(A), b, lam, L=Lop, rtol=1e-13, maxiter=2000)
    assert free.method == "cg" and free.status.ok
    assert torch.allclose(free.x, ref, rtol=1e-6, atol=1e-8)


def test_bad_input():
    A, x = shaw(32)
    b = A @ x
    with pytest.raises(ValueError, match="out_shape"):
        hybrid_lsqr(A, torch.ones(31, dtype=F64))
    with pytest.raises(ValueError, match="NaN or Inf"):
        hybrid_lsqr(A, torch.where(b > 1, float("nan"), b))
    with pytest.raises(ValueError, match="noise_level"):
        hybrid_lsqr(A, b, regularization="discrepancy", noise_level=-0.01)
    with pytest.raises(ValueError, match="noise_level"):
        hybrid_lsqr(A, b, regularization="discrepancy")
    with pytest.raises(ValueError, match="noise_level is used only"):
        hybrid_lsqr(A, b, noise_level=0.01)
    with pytest.raises(ValueError, match="regularization"):
        hybrid_lsqr(A, b, regularization="lcurve")
    with pytest.raises(ValueError, match="regularization"):
        hybrid_lsqr(A, b, regularization=-1.0)
    with pytest.raises(ValueError, match="reorth"):
        hybrid_lsqr(A, b, reorth="sometimes")
    with pytest.raises(ValueError, match="rmatvec"):
        hybrid_lsqr(LinearOperator(lambda v: A @ v, (32,), (32,)), b)
    with pytest.raises(ValueError, match="L acts on"):
        solve_tikhonov(MatrixOperator(A), b, 0.1, L=LinearOperator(lambda v: v, (3,), (3,)))
    with pytest.raises(ValueError, match="lam"):
        solve_tikhonov(A, b, -0.1)
    with pytest.raises(TypeError, match="LinearOperator"):
        hybrid_lsqr([[1.0]], b)
    assert hybrid_lsqr(A, torch.zeros_like(b)).status is HybridStatus.BREAKDOWN
    b0 = b.clone()
    hybrid_lsqr(A, b)
    assert torch.equal(b, b0)  # inputs are not modified
