"""Mixed precision (fp32 accumulators) and torch.compile(fullgraph=True) equivalence."""

from __future__ import annotations

import pytest
import torch

import odeflow.derivatives as D

from ._nets import build, otflow_phi


@pytest.mark.parametrize("kind,m", [("otflow", 1), ("hessquik", 3)])
def test_bf16_autocast_accumulates_in_float32(kind, m):
    torch.manual_seed(0)
    net = build(kind, 17, m, dtype=torch.float64)
    x = torch.randn(64, 17, dtype=torch.float64)
    refs = {w: D.compute(net, x, want=w) for w in ("laplacian", "hessian")}
    net = net.float()
    for want, modes in (
        ("laplacian", ("forward", "mixed", "backward")),
        ("hessian", ("mixed", "backward")),
    ):
        for mode in modes:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = D.compute(net, x.float(), want=want, mode=mode)
            got = getattr(out, want)
            ref = getattr(refs[want], want)
            assert got.dtype == torch.float32 and out.gradient.dtype == torch.float32
            err = float((got.double() - ref).detach().norm() / ref.detach().norm())
            assert err < 2e-2, (want, mode, err)  # bf16 has 8 mantissa bits (eps 7.8e-3)


def test_bf16_storage_returns_float32_derivatives():
    torch.manual_seed(1)
    net = otflow_phi(4, m=16, dtype=torch.float64)
    x = torch.randn(32, 5, dtype=torch.float64)
    ref = D.compute(net, x, want="laplacian", exclude_last=1).laplacian
    out = D.compute(net.bfloat16(), x.bfloat16(), want="laplacian", exclude_last=1)
    assert out.value.dtype == torch.bfloat16 and out.laplacian.dtype == torch.float32
    err = (out.laplacian.detach().double() - ref.detach()).norm() / ref.detach().norm()
    assert float(err) < 2e-2


def _lap_fn(net):
    def f(x):
        out = D.compute(net, x, want="laplacian", exclude_last=1)
        return out.value, out.gradient, out.laplacian

    return f


def test_compile_fullgraph_capture_matches_eager():
    """fullgraph=True raises on any graph break; aot_eager keeps the test fast on CPU."""
    torch.manual_seed(2)
    net = otflow_phi(3, m=16, depth=2, dtype=torch.float32)
    x = torch.randn(8, 4)
    torch._dynamo.reset()
    compiled = torch.compile(_lap_fn(net), fullgraph=True, backend="aot_eager")
    for a, b in zip(compiled(x), _lap_fn(net)(x)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["forward", "mixed", "backward"])
def test_compile_inductor_matches_eager(mode):
    torch.manual_seed(3)
    net = build("hessquik", 9, 1, dtype=torch.float32)
    x = torch.randn(16, 9)

    def f(z):
        return D.compute(net, z, want="laplacian", mode=mode).laplacian

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(x), f(x), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_cuda_matches_cpu(cuda):
    torch.manual_seed(4)
    net = otflow_phi(5, m=32, dtype=torch.float64)
    x = torch.randn(64, 6, dtype=torch.float64)
    cpu = D.compute(net, x, want="hessian", exclude_last=1)
    gpu = D.compute(net.to(cuda), x.to(cuda), want="hessian", exclude_last=1)
    torch.testing.assert_close(gpu.hessian.cpu(), cpu.hessian, rtol=1e-10, atol=1e-12)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        lap = D.compute(net.float(), x.float().to(cuda), want="laplacian", exclude_last=1).laplacian
    assert lap.dtype == torch.float32


def test_vmap_over_chunks_matches_one_batch():
    """Blocks hold no per-call state: vmapping compute over chunks of the batch is exact."""
    torch.manual_seed(5)
    phi = otflow_phi(3)
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    for mode in ("forward", "mixed", "backward"):

        def lap(xb, mode=mode):
            return D.compute(phi, xb, want="laplacian", mode=mode, exclude_last=1).laplacian

        got = torch.func.vmap(lap)(x)
        ref = lap(x.reshape(10, 4)).reshape(2, 5)
        torch.testing.assert_close(got, ref, rtol=1e-13, atol=1e-13)
