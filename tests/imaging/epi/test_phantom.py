"""The offline MNI152 phantom: ground truth, mass conservation, orientation, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

nib = pytest.importorskip("nibabel")
pytest.importorskip("nilearn")

from odeflow.imaging.epi import make_phantom  # noqa: E402

SMALL = {"voxel_size": 4.0, "shape": (24, 28, 24), "peak_displacement": 2.0}


def test_shapes_truth_and_peak():
    ph = make_phantom(**SMALL, snr=None)
    for t in (ph.up, ph.down, ph.truth, ph.displacement, ph.field_hz, ph.mask):
        assert tuple(t.shape) == (24, 28, 24)
    assert ph.mask.dtype == torch.bool and 0.2 < float(ph.mask.float().mean()) < 0.97
    assert abs(float(ph.displacement[ph.mask].abs().max()) - 2.0) < 1e-5
    torch.testing.assert_close(ph.displacement, ph.polarity * ph.field_hz * ph.readout_time)
    assert float(ph.displacement.diff(dim=ph.pe_axis).abs().max()) < 1.0
    np.testing.assert_allclose(np.linalg.norm(ph.affine[:3, :3], axis=0), ph.voxel_size)


def test_noise_free_pair_conserves_mass_per_pe_line():
    # the whole brain (the default crop) so that no signal leaves the field of view
    ph = make_phantom(voxel_size=4.0, peak_displacement=2.0, snr=None, pe_axis=1)
    s_t = ph.truth.double().sum(1)
    for img in (ph.up, ph.down):
        torch.testing.assert_close(img.double().sum(1), s_t, rtol=1e-5, atol=1e-4)
    assert float((ph.up - ph.down).abs().max()) > 0.05  # actually distorted


def test_polarity_flips_the_truth_and_swaps_the_pair():
    a = make_phantom(**SMALL, snr=None, polarity=+1)
    b = make_phantom(**SMALL, snr=None, polarity=-1)
    torch.testing.assert_close(b.displacement, -a.displacement)
    torch.testing.assert_close(b.up, a.down)
    torch.testing.assert_close(b.field_hz, a.field_hz)


def test_seeded_rician_noise():
    a = make_phantom(**SMALL, snr=30, seed=3)
    b = make_phantom(**SMALL, snr=30, seed=3)
    c = make_phantom(**SMALL, snr=30, seed=4)
    assert torch.equal(a.up, b.up) and not torch.equal(a.up, c.up)
    assert float(a.up.min()) >= 0  # Rician magnitude


def test_orientation_is_a_relabelling_of_the_same_world():
    ras = make_phantom(voxel_size=4.0, peak_displacement=2.0, snr=None, pe_axis=1)
    lps = make_phantom(
        voxel_size=4.0, peak_displacement=2.0, snr=None, pe_axis=1, orientation="LPS"
    )
    assert nib.orientations.aff2axcodes(lps.affine) == ("L", "P", "S")
    assert nib.orientations.aff2axcodes(ras.affine) == ("R", "A", "S")
    # the same voxel centres in world space carry the same truth and field magnitude
    ijk = np.argwhere(ras.mask.numpy())[::97]
    world = ijk @ ras.affine[:3, :3].T + ras.affine[:3, 3]
    ijk2 = np.rint((world - lps.affine[:3, 3]) @ np.linalg.inv(lps.affine[:3, :3]).T).astype(int)
    t1 = ras.truth.numpy()[tuple(ijk.T)]
    t2 = lps.truth.numpy()[tuple(ijk2.T)]
    np.testing.assert_allclose(t1, t2, rtol=1e-5, atol=1e-6)
    assert lps.up.shape == ras.up.shape
    np.testing.assert_allclose(
        ras.field_hz.numpy()[tuple(ijk.T)],
        lps.field_hz.numpy()[tuple(ijk2.T)],
        rtol=1e-4,
        atol=1e-3,
    )


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"voxel_size": 2.5}, "whole millimetres"),
        ({"pe_axis": 3}, "pe_axis"),
        ({"polarity": 0}, "polarity"),
        ({"orientation": "XYZ"}, "orientation"),
        ({"snr": -1.0}, "snr"),
        ({"shape": (500, 10, 10)}, "exceeds"),
        ({"voxel_size": 4.0, "peak_displacement": 8.0}, "folds"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        make_phantom(**kw)
