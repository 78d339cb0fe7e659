"""Exact derivatives of the value network against torch.func (float64)."""

import pytest
import torch
from torch.func import grad, hessian, vmap

from odeflow.control import ValueJet, ValueNetwork, hessian_trace


def _oracle(phi, x, t):
    s = torch.cat([x, torch.full((x.shape[0], 1), t, dtype=x.dtype)], 1)
    f = lambda si: phi.net(si[None])[0].reshape(())  # noqa: E731
    g = vmap(grad(f))(s)
    H = vmap(hessian(f))(s)
    return g[:, :-1], g[:, -1], H[:, :-1, :-1]


@pytest.mark.parametrize("dim", [1, 3, 12])
def test_jet_matches_torch_func(dim):
    torch.manual_seed(dim)
    phi = ValueNetwork(dim, width=8, depth=3).double()
    with torch.no_grad():  # non-trivial quadratic and offsets
        for p in phi.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(6, dim, dtype=torch.float64)
    gx, gt, H = _oracle(phi, x, 0.37)
    for second in (None, "laplacian", "hessian"):
        jet = phi.jet(x, 0.37, second)
        torch.testing.assert_close(jet.grad, gx, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(jet.dt, gt, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(jet.value, phi(x, 0.37), rtol=0, atol=0)
    lap = phi.jet(x, 0.37, "laplacian").laplacian
    torch.testing.assert_close(lap, H.diagonal(dim1=-2, dim2=-1).sum(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(phi.jet(x, 0.37, "hessian").hessian, H, rtol=1e-12, atol=1e-12)
    M = torch.randn(dim, dim, dtype=torch.float64)
    M = M @ M.T
    jet = phi.jet(x, 0.37, "hessian")
    torch.testing.assert_close(hessian_trace(jet, M), (M * H).sum((-1, -2)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        hessian_trace(phi.jet(x, 0.37, "laplacian"), 0.7), 0.7 * lap, rtol=1e-14, atol=0
    )


def test_per_point_times():
    torch.manual_seed(0)
    phi = ValueNetwork(2, width=8).double()
    x = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor([0.0, 0.2, 0.5, 1.0], dtype=torch.float64)
    jet = phi.jet(x, t)
    for i in range(4):
        torch.testing.assert_close(phi.jet(x[i : i + 1], float(t[i])).dt, jet.dt[i : i + 1])


def test_hessian_trace_errors():
    jet = ValueJet(torch.zeros(1), torch.zeros(1, 2), torch.zeros(1), laplacian=torch.ones(1))
    with pytest.raises(ValueError, match="second='hessian'"):
        hessian_trace(jet, torch.eye(2))
