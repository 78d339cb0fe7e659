"""The batched 1-D optimal-transport (Chang–Fitzpatrick) start."""

from __future__ import annotations

import math

import pytest
import torch

from odeflow.imaging.epi import ot_displacement
from odeflow.imaging.epi._model import face_diff, push_forward_lines
from odeflow.imaging.epi._ot1d import gaussian_smooth, ot_lines

F64 = torch.float64


def _lines(n=128, amp=5.0, batch=(4, 3)):
    xc = torch.arange(n, dtype=F64) + 0.5
    rho = (
        0.3 + torch.exp(-0.5 * ((xc - 50) / 10) ** 2) + 0.7 * torch.exp(-0.5 * ((xc - 85) / 6) ** 2)
    ).expand(*batch, n)
    xf = torch.arange(n + 1, dtype=F64)
    scale = torch.linspace(0.4, 1.0, math.prod(batch), dtype=F64).reshape(*batch, 1)
    b = scale * amp * torch.sin(math.pi * xf / n) ** 2 * torch.sin(2 * math.pi * xf / n)
    up = push_forward_lines(rho, xf + b)
    dn = push_forward_lines(rho, xf - b)
    return rho, b, up, dn


def test_recovers_pure_1d_distortion_below_0p01_voxel():
    _, b, up, dn = _lines()
    assert float(b.abs().max()) > 3.0
    est = ot_lines(up, dn, shift=0.0)
    assert float((est - b).abs().max()) < 0.01


def test_swapping_inputs_negates_the_estimate():
    _, _, up, dn = _lines(amp=2.0)
    torch.testing.assert_close(ot_lines(dn, up, shift=1e-3), -ot_lines(up, dn, shift=1e-3))


def test_identical_inputs_give_zero_and_jacobians_stay_positive():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 6, 30, generator=g, dtype=F64)
    c = torch.rand(5, 6, 30, generator=g, dtype=F64)
    assert float(ot_lines(a, a, shift=0.1).abs().max()) < 1e-12
    est = ot_lines(a, c, shift=0.01)  # arbitrary unrelated pairs: still a diffeomorphism
    assert float(face_diff(est).abs().max()) < 1.0
    assert float(est[..., 0].abs().max()) == 0 and float(est[..., -1].abs().max()) == 0


def test_empty_lines_need_a_shift():
    z = torch.zeros(2, 2, 8, dtype=F64)
    with pytest.raises(ValueError, match="shift"):
        ot_lines(z, z, shift=0.0)
    assert float(ot_lines(z, z, shift=1.0).abs().max()) == 0


def test_ot_displacement_any_axis_agrees():
    _, b, up, dn = _lines(n=64, amp=2.0, batch=(5, 6))
    ref = ot_displacement(up, dn, pe_axis=2, shift=0.0)
    for ax in (0, 1):
        out = ot_displacement(up.movedim(2, ax), dn.movedim(2, ax), pe_axis=ax, shift=0.0)
        torch.testing.assert_close(out, ref.movedim(2, ax))
    cell = 0.5 * (b[..., 1:] + b[..., :-1])
    assert float((ref - cell).abs().max()) < 0.01


def test_gaussian_smooth_preserves_constants_and_mean():
    c = torch.full((6, 7, 8), 2.5, dtype=F64)
    torch.testing.assert_close(gaussian_smooth(c, (1.0, 2.0, 0.5)), c)
    x = torch.randn(6, 7, 8, dtype=F64)
    assert float(gaussian_smooth(x, (1.0, 1.0, 1.0)).std()) < float(x.std())


def test_ot_displacement_rejects_bad_shapes():
    with pytest.raises(ValueError, match="3-D"):
        ot_displacement(torch.rand(4, 4), torch.rand(4, 4), pe_axis=0)
