"""(P)CG against torch.linalg.solve; preconditioning; batching; bad input."""

from __future__ import annotations

import pytest
import torch

from odeflow.optim import CGStatus as Status
from odeflow.optim import (
    DiagonalOperator,
    LinearOperator,
    MatrixOperator,
    cg,
    jacobi_preconditioner,
)

F64 = torch.float64


def _spd(n=30, seed=0, spread=1e3):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    ev = torch.logspace(0, torch.log10(torch.tensor(spread)).item(), n, dtype=F64)
    A = Q @ torch.diag(ev) @ Q.T
    return A, torch.randn(n, generator=g, dtype=F64)


def test_cg_solves_spd_system():
    A, b = _spd()
    res = cg(MatrixOperator(A, psd=True), b, rtol=1e-12, maxiter=500)
    assert res.status is Status.CONVERGED
    torch.testing.assert_close(res.x, torch.linalg.solve(A, b), rtol=1e-8, atol=1e-9)
    assert float(res.residual_norms[-1]) <= 1e-12 * float(torch.linalg.vector_norm(b))
    assert res.residual_norms.shape[0] == res.iterations + 1


def test_scipy_stopping_rule_and_atol():
    A, b = _spd(seed=1)
    res = cg(A, b, rtol=1e-3)
    r = torch.linalg.vector_norm(b - A @ res.x)
    assert float(r) <= 1e-3 * float(torch.linalg.vector_norm(b)) * (1 + 1e-8)
    # the previous iterate had not met it (stops at the first iterate that does)
    assert float(res.residual_norms[-2]) > 1e-3 * float(torch.linalg.vector_norm(b))
    res = cg(A, b, rtol=0.0, atol=1e-2)
    assert float(torch.linalg.vector_norm(b - A @ res.x)) <= 1e-2 * (1 + 1e-8)


def test_jacobi_reduces_iterations_on_badly_scaled_system():
    A, b = _spd(seed=2, spread=10.0)
    s = torch.logspace(0, 3, A.shape[0], dtype=F64)
    As = s[:, None] * A * s[None, :]  # badly row/column scaled SPD
    op = MatrixOperator(As, psd=True)
    plain = cg(op, b, rtol=1e-10, maxiter=2000)
    pre = cg(op, b, rtol=1e-10, maxiter=2000, M=jacobi_preconditioner(op))
    assert plain.status.ok and pre.status.ok
    assert pre.iterations < plain.iterations / 2
    torch.testing.assert_close(pre.x, torch.linalg.solve(As, b), rtol=1e-6, atol=1e-8)


def test_batched_systems_match_individual_solves():
    d = torch.rand(4, 10, dtype=F64) + 0.5
    g = torch.Generator().manual_seed(3)
    b = torch.randn(4, 10, generator=g, dtype=F64)
    T = (
        torch.diag(torch.full((10,), 2.0, dtype=F64))
        - torch.diag(torch.ones(9, dtype=F64), 1)
        - torch.diag(torch.ones(9, dtype=F64), -1)
    )

    def mv(x):  # block-diagonal: (diag(d_i) + T) per batch row
        return d * x + x @ T.T

    res = cg(LinearOperator(mv, (4, 10), psd=True), b, rtol=1e-12, batch_dims=1, check_every=3)
    assert res.converged.shape == (4,) and bool(res.converged.all())
    for i in range(4):
        torch.testing.assert_close(res.x[i], torch.linalg.solve(torch.diag(d[i]) + T, b[i]))


def test_x0_and_zero_rhs():
    A, b = _spd(seed=4)
    x = torch.linalg.solve(A, b)
    res = cg(A, b, x0=x.clone(), rtol=1e-8)
    assert res.iterations == 0 and res.status.ok
    res = cg(A, torch.zeros_like(b))
    assert res.iterations == 0 and float(res.x.abs().max()) == 0
    # b = 0 with a nonzero guess: x = 0 at once, converged (as scipy)
    res = cg(A, torch.zeros_like(b), x0=torch.ones_like(b))
    assert res.status.ok and res.iterations == 0 and float(res.x.abs().max()) == 0


@pytest.mark.parametrize("where", ["A", "M", "inf"])
def test_non_finite_operator_is_a_breakdown_never_converged(where):
    A, b = _spd(n=4, seed=5)
    nan = float("nan")
    if where == "A":
        res = cg(lambda x: A @ x * nan, b)
    elif where == "M":
        res = cg(A, b, M=lambda r: r * nan)
    else:
        res = cg(lambda x: A @ x * float("inf"), b)
    assert res.status is Status.BREAKDOWN and not bool(res.converged)


def test_dense_matrix_with_batched_vectors():
    A, _ = _spd(n=3, seed=6)
    B = torch.randn(5, 3, dtype=F64)
    res = cg(A, B, batch_dims=1, rtol=1e-12)
    assert res.status.ok and bool(res.converged.all())
    torch.testing.assert_close(res.x, torch.linalg.solve(A, B.T).T)
    with pytest.raises(ValueError, match="acts on vectors"):
        cg(A, torch.randn(3, 3, dtype=F64))  # one system whose state is a 3×3 tensor


def test_breakdown_on_indefinite():
    A = torch.diag(torch.tensor([1.0, -1.0], dtype=F64))
    res = cg(lambda x: A @ x, torch.tensor([0.0, 1.0], dtype=F64))
    assert res.status is Status.BREAKDOWN


def test_bad_input():
    A, b = _spd(n=4)
    with pytest.raises(ValueError, match="non-symmetric"):
        cg(LinearOperator(lambda x: A @ x, (4,)), b)
    with pytest.raises(ValueError, match="NaN"):
        cg(A, torch.full((4,), float("nan"), dtype=F64))
    with pytest.raises(ValueError, match="rtol"):
        cg(A, b, rtol=-1.0)
    with pytest.raises(ValueError, match="x0"):
        cg(A, b, x0=torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="x0 contains NaN"):
        cg(A, b, x0=torch.full((4,), float("nan"), dtype=F64))
    with pytest.raises(ValueError, match="square"):
        cg(torch.ones(3, 4, dtype=F64), b)
    with pytest.raises(TypeError):
        cg("A", b)
    _ = DiagonalOperator(torch.ones(2))
