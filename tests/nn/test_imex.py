"""IMEX layer: implicit residual, stability beyond the explicit limit, implicit gradients."""

import pytest
import torch

from odeflow.nn import IMEXLayer
from odeflow.testing import taylor_test

from ._helpers import F64


@pytest.mark.parametrize("boundary", ["periodic", "zero"])
def test_implicit_solve_residual(boundary):
    torch.manual_seed(0)
    layer = IMEXLayer(3, h=5.0, boundary=boundary, rtol=1e-10).double()
    b = torch.randn(2, 3, 9, 8, dtype=F64)
    x = layer.implicit_solve(b)
    res = (layer.implicit_operator(x) - b).norm() / b.norm()
    assert res <= 1e-6
    assert (x - b).norm() > 1e-2 * b.norm()  # the solve did something


def test_periodic_adjoint_is_the_transpose():
    torch.manual_seed(1)
    layer = IMEXLayer(2, h=1.0).double()
    from odeflow.nn._imex import _conv, _conv_t

    for boundary in ("periodic", "zero"):
        u = torch.randn(1, 2, 6, 7, dtype=F64)
        v = torch.randn(1, 2, 6, 7, dtype=F64)
        lhs = (_conv(u, layer.weight.detach(), boundary) * v).sum()
        rhs = (u * _conv_t(v, layer.weight.detach(), boundary)).sum()
        assert abs(float(lhs - rhs)) <= 1e-12 * float(lhs.abs() + 1)


@pytest.mark.parametrize("boundary", ["periodic", "zero"])
def test_imex_stable_where_explicit_diverges(boundary):
    """f = 0 (a zero layer) and ‖L‖² h ≈ 8: 50 explicit steps y − h LᵀL y blow up, 50 IMEX
    steps contract (‖(I + h LᵀL)⁻¹‖ ≤ 1)."""
    torch.manual_seed(2)
    layer = IMEXLayer(2, h=1.0, boundary=boundary, rtol=1e-10).double()
    with torch.no_grad():
        for p in layer.layer.parameters():
            p.zero_()
        lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=F64)
        layer.weight.copy_(torch.eye(2, dtype=F64)[:, :, None, None] * lap / 2)
    y0 = torch.randn(1, 2, 8, 8, dtype=F64)
    ye, yi = y0, y0
    with torch.no_grad():
        for _ in range(50):
            ye = layer.explicit_step(ye)
            yi = layer(yi)
    assert ye.norm() > 1e6 * y0.norm()
    assert yi.norm() <= y0.norm()


@pytest.mark.parametrize("boundary", ["periodic", "zero"])
def test_imex_taylor_in_input_and_weight(boundary):
    torch.manual_seed(3)
    layer = IMEXLayer(2, h=0.7, boundary=boundary, rtol=1e-13).double()
    x = torch.randn(1, 2, 5, 5, dtype=F64)
    w = torch.randn(1, 2, 5, 5, dtype=F64)

    def grad_x(z):
        z = z.detach().requires_grad_(True)
        return torch.autograd.grad((layer(z) * w).sum(), z)[0]

    r = taylor_test(
        lambda z: (layer(z) * w).sum(),
        x,
        torch.randn_like(x),
        grad=grad_x,
        second=False,
        n=8,
        h0=0.5,
    )
    assert r.passed()

    base = layer.weight.detach().clone()

    def f_w(c):
        with torch.no_grad():
            layer.weight.copy_(c)
        return (layer(x) * w).sum()

    def grad_w(c):
        with torch.no_grad():
            layer.weight.copy_(c)
        return torch.autograd.grad((layer(x) * w).sum(), layer.weight)[0]

    try:
        r = taylor_test(f_w, base, torch.randn_like(base), grad=grad_w, second=False, n=8, h0=0.5)
    finally:
        with torch.no_grad():
            layer.weight.copy_(base)
    assert r.passed()
