"""Float64 Taylor tests for every block, activation and mode: in the input and in the weights."""

from __future__ import annotations

import pytest
import torch

import odeflow.derivatives as D
from odeflow.testing import taylor_test

from ._nets import ACTS, derivative_loss, weight_loss


def _blocks(name: str, d: int, m: int):
    if name == "single":
        return D.Sequential(D.Single(d, 6, act=D.LogCosh()), D.Single(6, m, act=D.Tanh()))
    if name == "resnet":
        return D.Sequential(
            D.Single(d, 5, act=D.Tanh()),
            D.ResNet(5, depth=3, h=0.4, act=D.LogCosh()),
            D.Linear(5, m),
        )
    if name == "icnn":
        return D.ICNN(d, width=6, out_features=m, depth=3)
    if name == "quadratic":
        q = D.Quadratic(d, rank=2)
        with torch.no_grad():
            q.b.normal_()
        return D.Sequential(D.Single(d, d, act=D.Sigmoid()), q)
    if name == "linear":
        return D.Sequential(D.Linear(d, 5), D.Single(5, 5, act=D.SiLU()), D.Linear(5, m))
    if name == "sum":
        return D.Sum(
            D.Sequential(D.Single(d, 4, act=D.Softplus()), D.Linear(4, m)),
            D.Sequential(D.Single(d, 3, act=D.Tanh()), D.Single(3, m, act=D.Square())),
        )
    raise ValueError(name)


BLOCKS = ["single", "resnet", "icnn", "quadratic", "linear", "sum"]


def _input_taylor(net, d, m, mode, second=True):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1, d, dtype=torch.float64, generator=gen)
    v = torch.randn(1, d, dtype=torch.float64, generator=gen)
    w = torch.randn(m, dtype=torch.float64, generator=gen)
    want = "hessian" if second else "gradient"
    out = D.compute(net, x, want=want, mode=mode)
    g, H = out.gradient.detach(), None if out.hessian is None else out.hessian.detach()
    if m == 1:  # scalar projection wᵀf
        g = w * g
        H = None if H is None else w * H
    else:
        g = torch.einsum("m,nmd->nd", w, g)
        H = None if H is None else torch.einsum("m,nmab->nab", w, H)
    hvp = None if H is None else (H @ v.unsqueeze(-1)).squeeze(-1)
    return taylor_test(
        lambda z: (net(z).reshape(1, m) @ w).sum(), x, v, grad=g, hvp=hvp, second=second
    )


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("block", BLOCKS)
def test_input_taylor_every_block_and_mode(block, m):
    if block == "quadratic" and m > 1:
        pytest.skip("Quadratic is scalar")
    torch.manual_seed(0)
    net = _blocks(block, 4, m).double()
    for mode in ("mixed", "backward"):
        r = _input_taylor(net, 4, m, mode)
        assert r.passed(), (mode, r.order0, r.order1, r.order2)
    r = _input_taylor(net, 4, m, "forward", second=False)
    assert r.passed(), ("forward", r.order0, r.order1)


@pytest.mark.parametrize("act", list(ACTS))
def test_input_taylor_every_activation(act):
    torch.manual_seed(1)
    net = D.Sequential(
        D.Single(3, 5, act=ACTS[act]()), D.Single(5, 4, act=D.Sigmoid()), D.Linear(4, 1)
    ).double()
    for mode in ("mixed", "backward"):
        r = _input_taylor(net, 3, 1, mode)
        assert r.passed(), (act, mode, r.order0, r.order1, r.order2)


def test_activation_derivatives_match_autograd():
    z = torch.linspace(-30, 30, 601, dtype=torch.float64)
    for name, cls in ACTS.items():
        act = cls()
        s, d1, d2 = act.derivatives(z)
        torch.testing.assert_close(s, act(z), rtol=0, atol=0)
        g1 = torch.func.vmap(torch.func.grad(act))(z)
        g2 = torch.func.vmap(torch.func.grad(torch.func.grad(act)))(z)
        torch.testing.assert_close(d1, g1, rtol=1e-12, atol=1e-12, msg=name)
        torch.testing.assert_close(d2, g2, rtol=1e-12, atol=1e-12, msg=name)
    # the stable log 2cosh neither overflows nor loses the linear tail
    big = torch.tensor([1e3, -1e3], dtype=torch.float64)
    torch.testing.assert_close(D.LogCosh()(big), big.abs())


@pytest.mark.parametrize(
    "want,mode",
    [
        ("laplacian", "forward"),
        ("laplacian", "mixed"),
        ("laplacian", "backward"),
        ("hessian", "mixed"),
        ("hessian", "backward"),
        ("gradient", "forward"),
    ],
)
@pytest.mark.parametrize("block", BLOCKS)
def test_weight_taylor_through_derivatives(block, want, mode):
    """Loss ½‖f‖² + ½‖∇f‖² + ½‖H or Δf‖² in the weights: orders 1 and 2."""
    m = 1 if block == "quadratic" else 2
    torch.manual_seed(2)
    net = _blocks(block, 3, m).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    f, theta0 = weight_loss(net, x, derivative_loss, want=want, mode=mode, exclude_last=1)
    theta = theta0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(theta), theta)
    r = taylor_test(f, theta0, torch.randn_like(theta0), grad=grad, second=False)
    assert r.passed(), (r.order0, r.order1)
