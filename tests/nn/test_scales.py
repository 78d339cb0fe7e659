"""Learning across scales: prolonged convolutions apply the same differential operator on the
finer grid (exact on polynomials, second-order convergent on smooth images)."""

import pytest
import torch
import torch.nn.functional as F

from odeflow.nn import (
    IMEXLayer,
    LeanConvOperator,
    StandardLayer,
    build_network,
    prolong_conv,
    prolong_kernel,
)
from odeflow.testing import observed_order

from ._helpers import F64


def _grid(n):
    """Vertex-centred grid on [0, 1]² with n intervals: coarse node i is fine node 2i."""
    s = torch.linspace(0.0, 1.0, n + 1, dtype=F64)
    return torch.meshgrid(s, s, indexing="ij")


def _images(n, fn):
    y, x = _grid(n)
    return torch.stack([f(x, y) for f in fn]).unsqueeze(0)  # (1, channels, n+1, n+1)


POLY = [  # degree ≤ 2 in each variable: the moments of a 3×3 kernel see them exactly
    lambda x, y: (1 + 2 * x - 3 * x**2) * (2 - y + 0.5 * y**2),
    lambda x, y: x * y**2 - 0.7 * x**2 + y,
]
SMOOTH = [lambda x, y: torch.sin(2 * x + 1) * torch.cos(3 * y), lambda x, y: torch.exp(x - y)]


def _compare(kernel, n, fn, factor_kernel):
    """Max interior difference between the coarse result and the fine one at the same nodes."""
    coarse = F.conv2d(_images(n, fn), kernel, padding=1)[0, :, 1:-1, 1:-1]
    fine = F.conv2d(_images(2 * n, fn), factor_kernel, padding=1)[0, :, 2:-2:2, 2:-2:2]
    return float((fine - coarse).abs().max() / coarse.abs().max())


def _kernel():
    return torch.randn(3, 2, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(0))


def test_prolonged_kernel_is_exact_on_polynomials():
    w = _kernel()
    assert _compare(w, 8, POLY, prolong_kernel(w, 2.0)) < 1e-12
    assert _compare(w, 8, POLY, w) > 1e-2  # the same kernel on the fine grid is another operator


def test_prolonged_kernel_converges_at_second_order_on_smooth_images():
    w0, ns, errs, naive = _kernel(), [8, 16, 32, 64], [], []
    for k, n in enumerate(ns):
        wk = prolong_kernel(w0, 2.0**k)  # the operator w0 represents at n = 8, on grid n
        errs.append(_compare(wk, n, SMOOTH, prolong_kernel(w0, 2.0 ** (k + 1))))
        naive.append(_compare(wk, n, SMOOTH, wk))
    assert abs(observed_order(errs, [1.0 / n for n in ns]) - 2) <= 0.3, errs
    # without rescaling there is no convergence: the naive error stays O(1)
    assert abs(observed_order(naive, [1.0 / n for n in ns])) < 0.3, naive
    assert min(naive) > 50 * errs[-1], (naive, errs)


def test_round_trips_and_composition():
    w = torch.randn(2, 4, 5, 5, dtype=F64)
    torch.testing.assert_close(prolong_kernel(prolong_kernel(w, 2.0), 0.5), w, rtol=0, atol=1e-11)
    torch.testing.assert_close(
        prolong_kernel(prolong_kernel(w, 2.0), 2.0), prolong_kernel(w, 4.0), rtol=1e-12, atol=0
    )
    one = torch.randn(3, 3, 1, 1)
    assert torch.equal(prolong_kernel(one, 2.0), one)


def test_prolong_conv_rescales_every_kernel_and_keeps_the_input():
    torch.manual_seed(0)
    net = build_network("lean", 1, 10, widths=(4, 8), n_steps=2).double()
    before = [p.detach().clone() for p in net.parameters()]
    fine = prolong_conv(net, 2.0)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # input untouched
    torch.testing.assert_close(fine[0].map.weight, prolong_kernel(net[0].map.weight, 2.0))
    assert torch.equal(fine[2].map.weight, net[2].map.weight)  # 1×1 connector: unchanged
    # the lean stencil stays 5-point and equals the prolonged 3×3 kernel it stands for
    lean, lean_f = net[1].layer, fine[1].layer
    op, w, wf = lean.operator, lean.weights(0.3), lean_f.weights(0.3)
    kernel = op._kernel(w)
    torch.testing.assert_close(op._kernel(wf), prolong_kernel(kernel, 2.0))
    assert fine(torch.zeros(2, 1, 16, 16, dtype=F64)).shape == (2, 10)
    for kind in ("parabolic", "mgic", "hamiltonian"):
        m = build_network(kind, 1, 3, widths=(4,), n_steps=2)
        changed = [
            not torch.equal(a, b)
            for a, b in zip(m.parameters(), prolong_conv(m, 2.0).parameters())
            if a.ndim >= 4 and a.shape[-1] == 3
        ]
        assert changed and all(changed), kind
    imex = IMEXLayer(2)
    torch.testing.assert_close(prolong_conv(imex).weight, prolong_kernel(imex.weight))
    assert isinstance(LeanConvOperator(2), LeanConvOperator)


def test_prolong_errors():
    with pytest.raises(ValueError, match="positive finite"):
        prolong_kernel(torch.zeros(3, 3), 0.0)
    with pytest.raises(ValueError, match="odd side"):
        prolong_kernel(torch.zeros(2, 2), 2.0)
    with pytest.raises(TypeError, match="no rule"):
        prolong_conv(torch.nn.Conv1d(2, 2, 3))
    with pytest.raises(TypeError, match="an nn"):
        prolong_conv(StandardLayer(2).weight)
