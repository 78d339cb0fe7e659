"""Agreement with the vmapped torch.func oracle across sizes, outputs, modes and options."""

from __future__ import annotations

import pytest
import torch

import odeflow.derivatives as D

from ._nets import build, func_oracle


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _check(out, ref, tol):
    for name in ("value", "gradient", "hessian", "laplacian"):
        a, b = getattr(out, name), getattr(ref, name)
        if b is None:
            continue
        assert a is not None, name
        assert a.shape == b.shape, (name, a.shape, b.shape)
        assert a.is_contiguous(), name  # no strided views handed to the user
        if b.norm() == 0:
            assert float(a.norm()) <= tol
        else:
            assert _rel(a, b) <= tol, (name, _rel(a, b))


CASES = [
    # (kind, m)
    ("otflow", 1),
    ("hessquik", 1),
    ("hessquik", 3),
    ("icnn", 1),
    ("icnn", 2),
    ("zoo", 1),
    ("zoo", 4),
]
MODES = {
    "gradient": ["auto", "forward", "mixed", "backward"],
    "laplacian": ["auto", "forward", "mixed", "backward"],
    "hessian": ["auto", "mixed", "backward"],
    "hvp": ["auto", "mixed", "backward"],
}


def _options(d, want, gen):
    """(directions, exclude_last) combinations."""
    opts = [(None, 0)]
    if d > 1:
        opts.append((None, 1))
    V = torch.randn(d, 3, dtype=torch.float64, generator=gen)
    if want == "hvp":
        return [(V, 0)] + ([(V, 1)] if d > 1 else [])
    opts.append((V, 0))
    return opts


@pytest.mark.parametrize("want", list(MODES))
@pytest.mark.parametrize("kind,m", CASES)
@pytest.mark.parametrize("d", [1, 2, 7, 64])
def test_float64_agreement(d, kind, m, want):
    gen = torch.Generator().manual_seed(100 * d + m)
    torch.manual_seed(d + 7 * m)
    net = build(kind, d, m)
    x = torch.randn(4, d, dtype=torch.float64, generator=gen)
    for V, ex in _options(d, want, gen):
        ref = func_oracle(net, x, want, directions=V, exclude_last=ex)
        for mode in MODES[want]:
            out = D.compute(net, x, want=want, mode=mode, directions=V, exclude_last=ex)
            _check(out, ref, 1e-10)


@pytest.mark.parametrize("kind,m", [("otflow", 1), ("hessquik", 2), ("zoo", 1)])
@pytest.mark.parametrize("want", ["laplacian", "hessian"])
def test_float64_agreement_d257(kind, m, want):
    torch.manual_seed(257)
    net = build(kind, 257, m)
    x = torch.randn(3, 257, dtype=torch.float64)
    V = torch.randn(257, 4, dtype=torch.float64)
    for V_, ex in ((None, 0), (None, 1), (V, 0)):
        ref = func_oracle(net, x, want, directions=V_, exclude_last=ex)
        for mode in MODES[want]:
            out = D.compute(net, x, want=want, mode=mode, directions=V_, exclude_last=ex)
            _check(out, ref, 1e-10)


@pytest.mark.parametrize("kind,m", [("otflow", 1), ("hessquik", 3), ("icnn", 1), ("zoo", 2)])
@pytest.mark.parametrize("d", [2, 64, 257])
def test_float32_agreement(kind, m, d):
    torch.manual_seed(d)
    net = build(kind, d, m, dtype=torch.float32)
    x = torch.randn(5, d)
    for want in ("gradient", "laplacian", "hessian"):
        ref = func_oracle(net, x, want, exclude_last=1)
        for mode in MODES[want]:
            _check(D.compute(net, x, want=want, mode=mode, exclude_last=1), ref, 1e-5)


@pytest.mark.parametrize("mode", ["mixed", "backward"])
@pytest.mark.parametrize("kind,m", [("otflow", 1), ("hessquik", 3), ("icnn", 2), ("zoo", 2)])
def test_hessian_symmetric_and_trace_is_laplacian(kind, m, mode):
    torch.manual_seed(3)
    net = build(kind, 9, m)
    x = torch.randn(6, 9, dtype=torch.float64)
    H = D.compute(net, x, want="hessian", mode=mode, exclude_last=2).hessian
    scale = float(H.detach().abs().max())
    torch.testing.assert_close(H, H.transpose(-1, -2), rtol=0, atol=1e-14 * scale)  # GEMM round-off
    for lmode in ("forward", "mixed", "backward"):
        lap = D.compute(net, x, want="laplacian", mode=lmode, exclude_last=2).laplacian
        torch.testing.assert_close(
            H.diagonal(dim1=-2, dim2=-1).sum(-1), lap, rtol=1e-12, atol=1e-12
        )


@pytest.mark.parametrize("mode", ["mixed", "backward"])
def test_directions_and_hvp_are_projections_of_the_full_hessian(mode):
    torch.manual_seed(4)
    net = build("zoo", 6, 2)
    x = torch.randn(5, 6, dtype=torch.float64)
    V = torch.randn(6, 2, dtype=torch.float64)
    full = D.compute(net, x, want="hessian", mode=mode)
    proj = D.compute(net, x, want="hessian", mode=mode, directions=V)
    torch.testing.assert_close(proj.hessian, V.T @ full.hessian @ V, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(proj.gradient, full.gradient @ V, rtol=1e-12, atol=1e-12)
    lap = D.compute(net, x, want="laplacian", mode=mode, directions=V).laplacian
    torch.testing.assert_close(lap, proj.hessian.diagonal(dim1=-2, dim2=-1).sum(-1))
    hvp = D.compute(net, x, want="hvp", mode=mode, directions=V, exclude_last=1)
    sub = full.hessian[..., :5, :5]
    torch.testing.assert_close(hvp.hessian, sub @ V[:5], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hvp.gradient, full.gradient)  # hvp keeps the full gradient


def test_icnn_is_convex():
    torch.manual_seed(5)
    net = D.ICNN(4, width=16, depth=3).double()
    with torch.no_grad():
        net.L.normal_(0.0, 3.0)  # any raw weights: softplus keeps L⁺ ≥ 0
    x = 3 * torch.randn(64, 4, dtype=torch.float64)
    H = D.compute(net, x, want="hessian").hessian
    assert float(torch.linalg.eigvalsh(H.detach()).min()) >= -1e-12


def test_arbitrary_module_uses_torch_func():
    torch.manual_seed(6)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.GELU(), torch.nn.Linear(8, 1)
    ).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    out = D.compute(net, x, want="laplacian")
    H = D.compute(net, x, want="hessian").hessian
    assert out.value.shape == (4,) and out.gradient.shape == (4, 3)
    torch.testing.assert_close(out.laplacian, H.diagonal(dim1=-2, dim2=-1).sum(-1))


def test_hutchinson_is_unbiased_around_the_exact_laplacian():
    torch.manual_seed(7)
    net = build("hessquik", 5, 1)
    x = torch.randn(3, 5, dtype=torch.float64)
    exact = D.compute(net, x, want="laplacian").laplacian
    gen = torch.Generator().manual_seed(0)
    est = D.hutchinson(net, x, num_probes=4000, generator=gen)
    H = D.compute(net, x, want="hessian").hessian
    off = H - torch.diag_embed(H.diagonal(dim1=-2, dim2=-1))
    sd = (2 * (off**2).sum((-1, -2)) / 4000).sqrt()  # std of the mean of Rademacher probes
    assert bool(((est - exact).abs() <= 5 * sd + 1e-12).all())
