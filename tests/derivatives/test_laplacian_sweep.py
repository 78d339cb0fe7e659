"""The Laplacian sweep (mixed mode for Single/ResNet/Linear/Quadratic networks) and its fused
row-norm function: float64 gradchecks, agreement with torch.func and with the generic paths,
double backward, autocast, and the auto-mode policy."""

from __future__ import annotations

import pytest
import torch

import odeflow.derivatives as D
from odeflow.derivatives._compute import _select
from odeflow.derivatives._laplacian import supports, weighted_row_norms
from odeflow.testing import taylor_test

from ._nets import derivative_loss, func_oracle, otflow_phi, weight_loss

f64 = torch.float64


def _row_norms_ref(J, K, c, scale=None):
    Jn = J if scale is None else scale.unsqueeze(-2) * J
    Q = (Jn @ K.T).pow(2).sum(-2)  # (n, w)
    return (c * Q.unsqueeze(-2)).sum(-1)


@pytest.mark.parametrize("scaled", [False, True])
def test_weighted_row_norms_matches_formula_and_gradchecks(scaled):
    gen = torch.Generator().manual_seed(0)
    n, p, w_in, w, s = 4, 3, 5, 6, 2
    K = torch.randn(w, w_in, dtype=f64, generator=gen, requires_grad=True)
    c = torch.randn(n, s, w, dtype=f64, generator=gen, requires_grad=True)
    if scaled:
        J = torch.randn(p, w_in, dtype=f64, generator=gen, requires_grad=True)
        scale = torch.randn(n, w_in, dtype=f64, generator=gen, requires_grad=True)
        args = (J, K, c, scale)
    else:
        J = torch.randn(n, p, w_in, dtype=f64, generator=gen, requires_grad=True)
        args = (J, K, c)
    torch.testing.assert_close(
        weighted_row_norms(*args), _row_norms_ref(*args), rtol=1e-13, atol=1e-13
    )
    assert torch.autograd.gradcheck(weighted_row_norms, args)
    assert torch.autograd.gradgradcheck(weighted_row_norms, args)


def test_weighted_row_norms_rejects_bad_shapes():
    J, K, c = torch.randn(3, 2, 4), torch.randn(5, 4), torch.randn(3, 1, 5)
    with pytest.raises(ValueError, match="J"):
        weighted_row_norms(J, torch.randn(5, 3), c)
    with pytest.raises(ValueError, match="c must be"):
        weighted_row_norms(J, K, torch.randn(3, 5))
    with pytest.raises(ValueError, match="scale"):
        weighted_row_norms(torch.randn(2, 4), K, c, torch.randn(3, 5))


def _nets(d: int):
    """Structures that exercise every branch of the sweep (shared / scaled / full Jacobians)."""
    act = D.LogCosh()
    return {
        "otflow_depth1": otflow_phi(d - 1, m=7, depth=1),
        "otflow_depth3": otflow_phi(d - 1, m=7, depth=3),
        "resnet_first": D.Sequential(
            D.Linear(d, 5), D.ResNet(5, depth=2, h=0.7, act=D.Tanh()), D.Linear(5, 2)
        ),
        "resnet_on_input": D.Sequential(D.ResNet(d, depth=2, h=0.3, act=act), D.Linear(d, 1)),
        "quadratic_after_layer": D.Sum(
            D.Sequential(D.Single(d, 6, act=D.SiLU()), D.Quadratic(6, rank=3)),
            D.Quadratic(d, rank=2),
        ),
        "sum_mid_chain": D.Sequential(
            D.Single(d, 6, act=D.Softplus()),
            D.Sum(D.ResNet(6, depth=1, h=0.5, act=act), D.Single(6, 6, act=D.Sigmoid())),
            D.Single(6, 3, act=D.Tanh()),
        ),
    }


@pytest.mark.parametrize("name", list(_nets(4)))
@pytest.mark.parametrize("exclude_last", [0, 1, 2])
def test_sweep_matches_torch_func(name, exclude_last):
    torch.manual_seed(3)
    d = 4
    net = _nets(d)[name].to(f64)
    assert supports(net)
    x = torch.randn(5, d, dtype=f64)
    ref = func_oracle(net, x, "laplacian", exclude_last=exclude_last)
    out = D.compute(net, x, want="laplacian", mode="mixed", exclude_last=exclude_last)
    torch.testing.assert_close(out.value, ref.value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.gradient, ref.gradient, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.laplacian, ref.laplacian, rtol=1e-10, atol=1e-12)
    V = torch.randn(d, 3, dtype=f64)
    ref = func_oracle(net, x, "laplacian", directions=V)
    out = D.compute(net, x, want="laplacian", mode="mixed", directions=V)
    torch.testing.assert_close(out.laplacian, ref.laplacian, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["otflow_depth1", "otflow_depth3", "sum_mid_chain"])
def test_sweep_weight_gradients_match_the_forward_jet(name):
    """Backprop through the fused function = backprop through the plain-op forward Laplacian."""
    torch.manual_seed(4)
    net = _nets(5)[name].to(f64)
    x = torch.randn(6, 5, dtype=f64)
    grads = {}
    for mode in ("forward", "mixed"):
        loss = derivative_loss(D.compute(net, x, want="laplacian", mode=mode, exclude_last=1))
        grads[mode] = torch.autograd.grad(loss, list(net.parameters()))
    for a, b in zip(grads["mixed"], grads["forward"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_sweep_taylor_in_weights():
    torch.manual_seed(5)
    phi = otflow_phi(3, m=8, depth=2)
    s = torch.randn(7, 4, dtype=f64)
    f, theta0 = weight_loss(phi, s, derivative_loss, want="laplacian", mode="mixed", exclude_last=1)
    theta = theta0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(theta), theta)
    r = taylor_test(f, theta0, torch.randn_like(theta0), grad=grad, second=False)
    assert r.passed(), (r.order0, r.order1)


def test_double_backward_through_the_sweep():
    """∇_θ of ‖∇_θ loss‖² (create_graph) agrees with the plain-op forward jet."""
    torch.manual_seed(6)
    phi = otflow_phi(3, m=6, depth=2)
    s = torch.randn(5, 4, dtype=f64)
    params = list(phi.parameters())
    out = {}
    for mode in ("forward", "mixed"):
        loss = derivative_loss(D.compute(phi, s, want="laplacian", mode=mode, exclude_last=1))
        g = torch.autograd.grad(loss, params, create_graph=True)
        gg = torch.autograd.grad(sum((gi**2).sum() for gi in g), params)
        out[mode] = gg
    for a, b in zip(out["mixed"], out["forward"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_sweep_under_bf16_autocast():
    """bf16 GEMMs, float32 Laplacian; value, Laplacian and weight gradients near float64."""
    torch.manual_seed(7)
    phi64 = otflow_phi(16, m=32, depth=2)
    x = torch.randn(64, 17, dtype=f64)
    ref = D.compute(phi64, x, want="laplacian", mode="mixed", exclude_last=1)
    ref_g = torch.autograd.grad(ref.laplacian.mean(), list(phi64.parameters()), allow_unused=True)
    phi = phi64.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = D.compute(phi, x.float(), want="laplacian", mode="mixed", exclude_last=1)
    assert out.laplacian.dtype == torch.float32 and out.gradient.dtype == torch.float32
    lap_err = (out.laplacian.detach().double() - ref.laplacian.detach()).norm()
    assert float(lap_err / ref.laplacian.detach().norm()) < 2e-2  # bf16: eps 7.8e-3
    got_g = torch.autograd.grad(out.laplacian.mean(), list(phi.parameters()), allow_unused=True)
    for a, b in zip(got_g, ref_g):
        assert (a is None) == (b is None)  # Δ does not depend on the quadratic's b and c
        if b is not None:
            assert a.dtype == torch.float32
            assert float((a.double() - b).norm() / b.norm()) < 5e-2


def test_vmap_and_compile_through_the_fused_function():
    torch.manual_seed(8)
    phi = otflow_phi(3, m=8, depth=1, dtype=torch.float32)
    x = torch.randn(2, 4, 4)

    def lap(xb):
        return D.compute(phi, xb, want="laplacian", mode="mixed", exclude_last=1).laplacian

    ref = lap(x.reshape(8, 4)).reshape(2, 4)
    torch.testing.assert_close(torch.func.vmap(lap)(x), ref, rtol=1e-6, atol=1e-6)
    torch._dynamo.reset()
    compiled = torch.compile(lap, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x.reshape(8, 4)), ref.reshape(8), rtol=1e-6, atol=1e-6)


def test_auto_policy():
    """The flop model of compute's docstring: sweep for OT-Flow, backward when the entry layer
    narrows the input, forward for tiny problems and for networks the sweep does not cover."""
    phi = otflow_phi(43, m=256, depth=2, dtype=torch.float32)  # MINIBOONE: d = 43, width 256
    assert _select(phi, "laplacian", 256, 1, 44, 43) == "mixed"
    toy = otflow_phi(2, m=16, depth=2, dtype=torch.float32)  # 2-D toy, few samples
    assert _select(toy, "laplacian", 10, 1, 3, 2) == "forward"
    narrow = D.Sequential(D.Single(256, 16), D.ResNet(16, depth=4), D.Linear(16, 1))
    assert _select(narrow, "laplacian", 1000, 1, 256, 256) == "backward"
    icnn = D.ICNN(8, width=16)
    assert not supports(icnn)
    assert _select(icnn, "laplacian", 1000, 1, 8, 8) == "forward"
