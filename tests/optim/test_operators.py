"""LinearOperator algebra against dense matrices."""

from __future__ import annotations

import pytest
import torch

from odeflow.optim import (
    DiagonalOperator,
    IdentityOperator,
    LinearOperator,
    MatrixOperator,
    jacobi_preconditioner,
)

F64 = torch.float64


def _mats(seed=0, n=5):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=F64)
    B = torch.randn(n, n, generator=g, dtype=F64)
    x = torch.randn(n, generator=g, dtype=F64)
    return A, B, x


def test_algebra_matches_dense():
    A, B, x = _mats()
    oa, ob = MatrixOperator(A), MatrixOperator(B)
    torch.testing.assert_close((oa @ ob) @ x, A @ (B @ x))
    torch.testing.assert_close((oa + ob) @ x, (A + B) @ x)
    torch.testing.assert_close((2.5 * oa - ob) @ x, (2.5 * A - B) @ x)
    torch.testing.assert_close(oa.T @ x, A.T @ x)
    torch.testing.assert_close((oa @ ob).T @ x, B.T @ (A.T @ x))
    torch.testing.assert_close((oa + ob).to_dense(), A + B)
    torch.testing.assert_close((oa + 3.0 * ob).diagonal(), torch.diagonal(A + 3 * B))
    assert oa.shape == (5, 5)


def test_tags_and_diagonal_operator():
    d = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    D = DiagonalOperator(d)
    assert D.symmetric and D.psd
    assert not DiagonalOperator(-d).psd
    assert (D + IdentityOperator(3, dtype=F64)).psd
    assert not (-1.0 * D).psd
    torch.testing.assert_close(jacobi_preconditioner(D) @ d, torch.ones(3, dtype=F64))


def test_operator_on_tensor_shapes():
    op = LinearOperator(lambda x: 2 * x, (2, 3), symmetric=True)
    assert op.shape == (6, 6)
    torch.testing.assert_close(op @ torch.ones(2, 3), 2 * torch.ones(2, 3))


def test_errors():
    with pytest.raises(ValueError, match="square"):
        LinearOperator(lambda x: x, (2,), (3,), symmetric=True)
    with pytest.raises(ValueError, match="compose"):
        MatrixOperator(torch.ones(2, 3)) @ MatrixOperator(torch.ones(2, 3))
    with pytest.raises(NotImplementedError, match="diagonal"):
        LinearOperator(lambda x: x, (2,)).diagonal()
    with pytest.raises(NotImplementedError, match="rmatvec"):
        LinearOperator(lambda x: x[:2], (3,), (2,)).rmv(torch.ones(2))
