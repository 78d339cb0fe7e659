"""Bad input gets a clear error naming the problem."""

from __future__ import annotations

import pytest
import torch

import odeflow.derivatives as D

from ._nets import otflow_phi


@pytest.fixture
def phi():
    return otflow_phi(2)


def test_wrong_trailing_size(phi):
    with pytest.raises(ValueError, match=r"trailing size 5.*in_features=3"):
        D.compute(phi, torch.randn(4, 5, dtype=torch.float64), want="laplacian")


def test_not_a_batch(phi):
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        D.compute(phi, torch.randn(3, dtype=torch.float64))


def test_non_floating_dtype(phi):
    with pytest.raises(TypeError, match="floating dtype"):
        D.compute(phi, torch.ones(4, 3, dtype=torch.int64))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite(phi, bad):
    x = torch.randn(4, 3, dtype=torch.float64)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        D.compute(phi, x)


def test_check_finite_false_skips_the_check(phi):
    """check_finite=False (hot loops with inputs checked elsewhere): no error, NaN propagates."""
    x = torch.randn(4, 3, dtype=torch.float64)
    x[1, 2] = float("nan")
    out = D.compute(phi, x, want="laplacian", check_finite=False)
    assert out.laplacian[1].isnan() and out.laplacian[[0, 2, 3]].isfinite().all()


def test_unknown_want_and_mode(phi):
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown want='trace'"):
        D.compute(phi, x, want="trace")
    with pytest.raises(ValueError, match="unknown mode='reverse'"):
        D.compute(phi, x, mode="reverse")


def test_forward_mode_has_no_hessian(phi):
    with pytest.raises(ValueError, match=r"mode='forward'"):
        D.compute(phi, torch.randn(4, 3, dtype=torch.float64), want="hessian", mode="forward")


def test_directions_wrong_shape(phi):
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"pass V of shape \(3, k\)"):
        D.compute(phi, x, want="hessian", directions=torch.randn(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="2-D tensor V"):
        D.compute(phi, x, want="hessian", directions=torch.randn(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs directions"):
        D.compute(phi, x, want="hvp")


def test_exclude_last_out_of_range(phi):
    with pytest.raises(ValueError, match="exclude_last"):
        D.compute(phi, torch.randn(4, 3, dtype=torch.float64), exclude_last=3)
    with pytest.raises(ValueError, match="exclude_last must be an int"):
        D.compute(phi, torch.randn(4, 3, dtype=torch.float64), exclude_last=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_directions(phi, bad):
    x = torch.randn(4, 3, dtype=torch.float64)
    V = torch.randn(3, 2, dtype=torch.float64)
    V[0, 1] = bad
    with pytest.raises(ValueError, match="directions contains NaN or infinite"):
        D.compute(phi, x, want="hessian", directions=V)
    with pytest.raises(TypeError, match="directions must be real"):
        D.compute(phi, x, want="hessian", directions=V.to(torch.complex128))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_input_dtype_other_than_the_weights(phi, dtype):
    with pytest.raises(
        TypeError, match=r"x is torch\.(float32|bfloat16) but the network's weights"
    ):
        D.compute(phi, torch.randn(4, 3, dtype=dtype), want="laplacian")
    # under autocast the mixed dtypes are autocast's to reconcile
    net = otflow_phi(2).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = D.compute(net, torch.randn(4, 3), want="laplacian")
    assert out.laplacian.dtype == torch.float32 and out.laplacian.isfinite().all()


def test_mismatched_chain():
    with pytest.raises(ValueError, match=r"out_features=8 but block 1 .* in_features=4"):
        D.Sequential(D.Single(2, 8), D.Linear(4, 1))
    with pytest.raises(ValueError, match="same"):
        D.Sum(D.Linear(2, 1), D.Linear(3, 1))
    with pytest.raises(TypeError, match=r"not an odeflow\.derivatives block"):
        D.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="activation"):
        D.Single(2, 3, act=torch.nn.Tanh())
    with pytest.raises(ValueError, match="positive integer"):
        D.ResNet(0)


def test_block_modes_on_a_plain_module():
    net = torch.nn.Linear(3, 1)
    with pytest.raises(ValueError, match="mode='func'"):
        D.compute(net, torch.randn(2, 3), mode="mixed")


def test_inputs_not_modified(phi):
    x = torch.randn(4, 3, dtype=torch.float64)
    x0 = x.clone()
    D.compute(phi, x, want="hessian")
    assert torch.equal(x, x0)
