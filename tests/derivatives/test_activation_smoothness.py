"""Autograd through the activations' values is exact everywhere, including z = 0.

The stable forms |z| + log1p(exp(−2|z|)) and max(z, 0) + log1p(exp(−|z|)) have a kink of |z|
at 0 that autograd differentiates as sign(0) = 0, so torch.func (the oracle and the fallback
for ``mode="func"``) got σ″(0) = 0 for log 2cosh and σ′(0) = 1, σ″(0) = 0 for softplus.
"""

from __future__ import annotations

import pytest
import torch

import odeflow.derivatives as D

from ._nets import ACTS


@pytest.mark.parametrize("name", sorted(ACTS))
def test_autograd_of_the_value_matches_the_declared_derivatives_at_zero(name):
    act = ACTS[name]()
    z = torch.tensor([0.0, -0.0, 1e-300, -1e-300, 1e-8], dtype=torch.float64)
    _, d1, d2 = act.derivatives(z)
    g1 = torch.func.vmap(torch.func.grad(act))(z)
    g2 = torch.func.vmap(torch.func.grad(torch.func.grad(act)))(z)
    torch.testing.assert_close(g1, d1, rtol=1e-12, atol=1e-12, msg=name)
    torch.testing.assert_close(g2, d2, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("act", [D.LogCosh(), D.Softplus()], ids=["logcosh", "softplus"])
def test_func_mode_agrees_with_mixed_mode_at_a_zero_preactivation(act):
    torch.manual_seed(0)
    net = D.Sequential(D.Single(2, 3, act=act), D.Linear(3, 1, bias=False)).double()
    with torch.no_grad():
        net.blocks[0].b.zero_()
    x = torch.zeros(1, 2, dtype=torch.float64)  # every preactivation is exactly 0
    ref = D.compute(net, x, want="hessian", mode="mixed")
    out = D.compute(net, x, want="hessian", mode="func")
    assert float(ref.hessian.detach().abs().max()) > 1e-3  # a non-trivial Hessian
    torch.testing.assert_close(out.gradient, ref.gradient, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out.hessian, ref.hessian, rtol=1e-12, atol=1e-14)


def test_large_arguments_stay_finite_and_linear():
    big = torch.tensor([1e4, -1e4, 800.0, -800.0], dtype=torch.float64)
    torch.testing.assert_close(D.LogCosh()(big), big.abs())
    torch.testing.assert_close(D.Softplus()(big), big.clamp_min(0))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        z = torch.tensor([-100.0, -10.0, 0.0, 10.0, 100.0], dtype=dtype)
        for act in (D.LogCosh(), D.Softplus()):
            assert all(bool(torch.isfinite(t).all()) for t in act.derivatives(z))
