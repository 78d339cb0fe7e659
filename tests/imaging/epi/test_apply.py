"""Jacobian-modulated correction of 3-D volumes and 4-D series."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from odeflow.imaging.epi import apply_correction, distort, estimate_field

F64 = torch.float64


def _pair(ax=1, shape=(12, 40, 10), amp=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = shape[ax]
    other = [s for i, s in enumerate(shape) if i != ax]
    xf = torch.arange(n + 1, dtype=F64)
    c = 0.5 + torch.rand(*other, 1, generator=g, dtype=F64)
    b = amp * c * torch.sin(math.pi * xf / n) ** 2 * torch.sin(2 * math.pi * xf / n)
    xc = torch.arange(n, dtype=F64) + 0.5
    rho = (0.5 + torch.exp(-0.5 * ((xc - n / 2) / (n / 8)) ** 2)) * (
        1 + 0.2 * torch.rand(*other, 1, generator=g, dtype=F64)
    )
    return rho.movedim(-1, ax).contiguous(), b.movedim(-1, ax).contiguous()


@pytest.mark.parametrize("ax", [0, 1, 2])
def test_face_field_inverts_the_forward_model(ax):
    shape = [8, 9, 10]
    shape[ax] = 40
    rho, b = _pair(ax=ax, shape=tuple(shape))
    up = distort(rho, b, pe_axis=ax, polarity=+1)
    dn = distort(rho, b, pe_axis=ax, polarity=-1)
    cu = apply_correction(up, b, pe_axis=ax, polarity=+1)
    cd = apply_correction(dn, b, pe_axis=ax, polarity=-1)
    # linear interpolation of a piecewise-constant push-forward: small error, mass-level accurate
    for c in (cu, cd):
        assert float((c - rho).abs().max()) < 0.05 * float(rho.max())
        torch.testing.assert_close(c.sum(ax), rho.sum(ax), rtol=2e-2, atol=0)
    # and it is better than no correction
    assert float((cu - rho).abs().mean()) < 0.2 * float((up - rho).abs().mean())


def test_4d_series_matches_volume_by_volume_and_chunking():
    rho, b = _pair(ax=1, shape=(6, 20, 5))
    cell = 0.5 * (b.narrow(1, 1, 20) + b.narrow(1, 0, 20))
    series = torch.stack([rho * (1 + 0.1 * t) for t in range(5)], -1)
    out = apply_correction(series, cell, pe_axis=1, chunk=2)
    assert out.shape == series.shape
    for t in range(5):
        torch.testing.assert_close(out[..., t], apply_correction(series[..., t], cell, pe_axis=1))
    assert torch.equal(series[..., 0], rho)  # input untouched


def test_numpy_input_and_zero_field_identity():
    vol = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    out = apply_correction(vol, np.zeros((4, 5, 6), np.float32), pe_axis=2)
    np.testing.assert_array_equal(out.numpy(), vol)


def test_face_field_reproduces_estimate_outputs():
    rho, b = _pair(ax=2, shape=(6, 7, 32), amp=1.5)
    up = distort(rho, b, pe_axis=2)
    dn = distort(rho, b, pe_axis=2, polarity=-1)
    res = estimate_field(up, dn, pe_axis=2, max_iter=3, verbose=False, alpha=1.0)
    torch.testing.assert_close(
        apply_correction(up, res.displacement_faces, pe_axis=2), res.corrected_up
    )
    torch.testing.assert_close(
        apply_correction(dn, res.displacement_faces, pe_axis=2, polarity=-1), res.corrected_down
    )


def test_bad_inputs():
    vol = torch.rand(4, 5, 6)
    with pytest.raises(ValueError, match="pe_axis"):
        apply_correction(vol, torch.zeros(4, 5, 6), pe_axis=3)
    with pytest.raises(ValueError, match="polarity"):
        apply_correction(vol, torch.zeros(4, 5, 6), pe_axis=0, polarity=2)
    with pytest.raises(ValueError, match="shape"):
        apply_correction(vol, torch.zeros(4, 5, 7), pe_axis=0)
    with pytest.raises(ValueError, match="3-D"):
        apply_correction(torch.rand(4, 5), torch.zeros(4, 5), pe_axis=0)
    bad = torch.zeros(4, 5, 6)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^displacement contain.* NaN"):
        apply_correction(vol, bad, pe_axis=0)
    series = torch.rand(4, 5, 6, 3)
    series[1, 2, 3, 2] = float("inf")  # it would spread along the PE axis of volume 2
    with pytest.raises(ValueError, match=r"^volumes contain.* NaN or Inf"):
        apply_correction(series, torch.zeros(4, 5, 6), pe_axis=1)


@pytest.mark.parametrize("chunk", [0, -2, 2.5, True])
def test_chunk_must_be_a_positive_integer(chunk):
    # chunk=0 or < 0 used to skip every batch and return uninitialized memory (NaN/garbage)
    series = torch.rand(4, 5, 6, 3)
    with pytest.raises(ValueError, match="chunk"):
        apply_correction(series, torch.zeros(4, 5, 6), pe_axis=1, chunk=chunk)


@pytest.mark.parametrize("chunk", [1, 2, np.int64(3), 64])
def test_any_positive_chunk_gives_the_volume_by_volume_result(chunk):
    rho, b = _pair(ax=1, shape=(6, 20, 5))
    series = torch.stack([rho * (1 + 0.1 * t) for t in range(5)], -1)
    out = apply_correction(series, b, pe_axis=1, polarity=-1, chunk=chunk)
    for t in range(5):
        torch.testing.assert_close(
            out[..., t], apply_correction(series[..., t], b, pe_axis=1, polarity=-1)
        )


def test_a_folding_displacement_warns():
    # dB/dy = 1.5 on part of each line: 1 - 1.5 < 0 for polarity -1 (a field scaled from a
    # short readout time to a much longer one folds the image)
    b = torch.zeros(2, 2, 10, dtype=torch.float64)
    b[..., 3:7] = 1.5 * torch.arange(4, dtype=torch.float64)
    b[..., 7:] = 4.5
    vol = torch.ones(2, 2, 10, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="folds the image"):
        out = apply_correction(vol, b, pe_axis=2, polarity=-1)
    assert float(out.min()) < 0  # what the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_correction(vol, 0.1 * b, pe_axis=2, polarity=-1)  # no fold: silent
