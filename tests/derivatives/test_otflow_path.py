"""OT-Flow's potential Φ(x, t): value, full gradient and spatial Laplacian (OT-Flow's path)."""

from __future__ import annotations

import pytest
import torch

import odeflow
import odeflow.derivatives as D
from odeflow.testing import taylor_test

from ._nets import derivative_loss, func_oracle, otflow_phi, weight_loss


@pytest.mark.parametrize("mode", ["auto", "forward", "mixed", "backward"])
@pytest.mark.parametrize("d", [1, 2, 7, 64])
def test_phi_laplacian_matches_torch_func(mode, d):
    torch.manual_seed(d)
    phi = otflow_phi(d, m=16, depth=2)
    s = torch.randn(6, d + 1, dtype=torch.float64)
    out = odeflow.derivatives(phi, s, want="laplacian", mode=mode, exclude_last=1)
    ref = func_oracle(phi, s, "laplacian", exclude_last=1)
    assert (
        out.value.shape == (6,) and out.gradient.shape == (6, d + 1) and out.laplacian.shape == (6,)
    )
    assert out.hessian is None
    torch.testing.assert_close(out.value, ref.value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.gradient, ref.gradient, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.laplacian, ref.laplacian, rtol=1e-10, atol=1e-12)


def test_exclude_last_removes_exactly_the_time_term():
    torch.manual_seed(0)
    phi = otflow_phi(3)
    s = torch.randn(5, 4, dtype=torch.float64)
    full = D.compute(phi, s, want="hessian", mode="func")
    spatial = D.compute(phi, s, want="laplacian", exclude_last=1)
    torch.testing.assert_close(
        spatial.laplacian, full.hessian.diagonal(dim1=-2, dim2=-1)[:, :3].sum(-1)
    )


def test_module_is_callable_and_compute_is_the_same():
    phi = otflow_phi(2)
    s = torch.randn(3, 3, dtype=torch.float64)
    a = odeflow.derivatives(phi, s, want="laplacian", exclude_last=1)
    b = odeflow.derivatives.compute(phi, s, want="laplacian", exclude_last=1)
    assert isinstance(a, D.Derivatives)
    torch.testing.assert_close(a.laplacian, b.laplacian, rtol=0, atol=0)


def test_phi_taylor_in_input():
    """value → gradient → Hessian: orders 1, 2, 3 in float64."""
    torch.manual_seed(1)
    phi = otflow_phi(3)
    x = torch.randn(1, 4, dtype=torch.float64)
    v = torch.randn(1, 4, dtype=torch.float64)
    g = D.compute(phi, x, want="gradient").gradient
    H = D.compute(phi, x, want="hessian").hessian
    r = taylor_test(lambda z: phi(z).sum(), x, v, grad=g, hvp=(H @ v.unsqueeze(-1)).squeeze(-1))
    assert r.passed(), (r.order0, r.order1, r.order2)


def test_phi_taylor_in_weights_through_laplacian():
    """Loss with f, ∇f and Δf: backprop through the derivative code is a true derivative."""
    torch.manual_seed(2)
    phi = otflow_phi(2, m=8)
    s = torch.randn(7, 3, dtype=torch.float64)
    f, theta0 = weight_loss(phi, s, derivative_loss, want="laplacian", exclude_last=1)
    theta = theta0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(theta), theta)
    r = taylor_test(f, theta0, torch.randn_like(theta0), grad=grad, second=False)
    assert r.passed(), (r.order0, r.order1)
