"""NIfTI I/O: geometry kept on write, clear errors on bad input."""

from __future__ import annotations

import gzip
import warnings

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from odeflow.imaging.epi._nifti import (  # noqa: E402
    EPIInputError,
    NiftiImage,
    load_nifti,
    save_nifti,
    voxel_sizes,
)


def _oblique_affine() -> np.ndarray:
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([-2.0, 2.5, 3.0])
    a[:3, 3] = [90.0, -120.0, -60.0]
    return a


def _write(path, data, affine, *, qcode=1, scode=2, klass=None):
    klass = klass or nib.Nifti1Image
    img = klass(np.asarray(data), affine)
    img.header.set_qform(affine, code=qcode)
    img.header.set_sform(affine, code=scode)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return path


def test_voxel_sizes_are_column_norms_of_oblique_affine():
    assert np.allclose(voxel_sizes(_oblique_affine()), (2.0, 2.5, 3.0))
    perm = _oblique_affine()[:, [2, 0, 1, 3]]
    assert np.allclose(voxel_sizes(perm), (3.0, 2.0, 2.5))


@pytest.mark.parametrize("klass", ["Nifti1Image", "Nifti2Image"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_round_trip_keeps_affine_codes_and_header(tmp_path, klass, suffix):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, size=(5, 6, 7)).astype(np.int16)
    aff = _oblique_affine()
    src = _write(tmp_path / f"in{suffix}", data, aff, qcode=1, scode=4, klass=getattr(nib, klass))
    img = load_nifti(src)
    assert img.data.dtype == np.float32 and img.shape == (5, 6, 7)
    assert np.array_equal(img.data, data.astype(np.float32))
    out = save_nifti(img.data * 2.5, img, tmp_path / f"out{suffix}")
    back = nib.load(str(out))
    assert type(back) is getattr(nib, klass)
    assert np.allclose(back.affine, aff, atol=1e-5)
    assert int(back.header["qform_code"]) == 1 and int(back.header["sform_code"]) == 4
    assert back.header.get_xyzt_units() == ("mm", "sec")
    assert back.get_data_dtype() == np.float32
    assert np.allclose(np.asarray(back.dataobj), data * 2.5)


def test_header_scaling_is_applied_on_read(tmp_path):
    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4))
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, str(tmp_path / "s.nii"))
    got = load_nifti(tmp_path / "s.nii")
    assert np.allclose(got.data, np.arange(24).reshape(2, 3, 4) * 0.5 + 10.0)


def test_four_d_needs_an_explicit_volume(tmp_path):
    data = np.stack([np.full((3, 4, 5), v, np.float32) for v in (1.0, 2.0, 6.0)], axis=-1)
    p = _write(tmp_path / "s.nii.gz", data, np.eye(4))
    with pytest.raises(EPIInputError, match="4-D series with 3 volumes"):
        load_nifti(p)
    assert load_nifti(p, volume=1).data.max() == 2.0
    assert load_nifti(p, volume=-1).data.max() == 6.0
    assert load_nifti(p, volume="mean").data.max() == pytest.approx(3.0)
    assert load_nifti(p, allow_4d=True).shape == (3, 4, 5, 3)
    with pytest.raises(EPIInputError, match="out of range"):
        load_nifti(p, volume=3)
    # a trailing singleton volume axis is a 3-D image
    q = _write(tmp_path / "one.nii.gz", data[..., :1], np.eye(4))
    assert load_nifti(q).shape == (3, 4, 5)


def test_four_d_output_keeps_geometry(tmp_path):
    data = np.zeros((3, 4, 5, 2), np.float32)
    ref = load_nifti(_write(tmp_path / "s.nii.gz", data, _oblique_affine()), allow_4d=True)
    out = save_nifti(np.ones((3, 4, 5, 2)), ref, tmp_path / "o.nii.gz")
    back = nib.load(str(out))
    assert back.shape == (3, 4, 5, 2) and np.allclose(back.affine, _oblique_affine(), atol=1e-5)
    # a 3-D output from a 4-D reference
    out3 = save_nifti(np.ones((3, 4, 5)), ref, tmp_path / "o3.nii.gz")
    assert nib.load(str(out3)).shape == (3, 4, 5)


def test_two_d_image_is_refused(tmp_path):
    p = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 9), np.float32), np.eye(4)), str(p))
    with pytest.raises(EPIInputError, match="2-D images"):
        load_nifti(p)


def test_non_finite_voxels_are_refused(tmp_path):
    data = np.ones((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    p = _write(tmp_path / "nan.nii.gz", data, np.eye(4))
    with pytest.raises(EPIInputError, match="2 non-finite"):
        load_nifti(p)
    assert np.isnan(load_nifti(p, check_finite=False).data[1, 2, 3])


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_data_is_refused_with_a_magnitude_hint(tmp_path, dtype):
    rng = np.random.default_rng(2)
    z = (rng.standard_normal((4, 5, 6)) + 1j * rng.standard_normal((4, 5, 6))).astype(dtype)
    p = tmp_path / "complex.nii.gz"
    nib.save(nib.Nifti1Image(z, np.eye(4)), str(p))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning: the data are not cast at all
        with pytest.raises(EPIInputError, match=r"complex-valued.*magnitude.*np\.abs"):
            load_nifti(p)
    # the suggested recipe gives a magnitude image that loads as |z|
    img = nib.load(str(p))
    mag = tmp_path / "magnitude.nii.gz"
    nib.save(
        nib.Nifti1Image(np.abs(np.asanyarray(img.dataobj)).astype(np.float32), img.affine), mag
    )
    np.testing.assert_allclose(load_nifti(mag).data, np.abs(z), rtol=1e-6)


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_nifti(tmp_path / "missing.nii.gz")
    bad = tmp_path / "garbage.nii.gz"
    bad.write_bytes(b"this is not a nifti file")
    with pytest.raises(EPIInputError, match="cannot read"):
        load_nifti(bad)
    truncated = tmp_path / "trunc.nii.gz"
    noise = np.random.default_rng(1).standard_normal((10, 10, 10)).astype(np.float32)
    full = _write(tmp_path / "full.nii", noise, np.eye(4))
    truncated.write_bytes(gzip.compress(full.read_bytes())[:1000])
    with pytest.raises(EPIInputError, match="cannot read"):
        load_nifti(truncated)
    other = tmp_path / "image.png"
    other.write_bytes(b"\x89PNG")
    with pytest.raises(EPIInputError, match="not a NIfTI"):
        load_nifti(other)
    with pytest.raises(EPIInputError, match="directory"):
        load_nifti(tmp_path)


def test_singular_affine_is_refused(tmp_path):
    img = nib.Nifti1Image(np.ones((3, 3, 3), np.float32), np.eye(4))
    img.header.set_qform(None, code=0)
    img.header.set_sform(np.eye(4), code=2)
    path = tmp_path / "sing.nii"
    nib.save(img, str(path))
    raw = bytearray(path.read_bytes())
    raw[312:328] = np.zeros(4, "<f4").tobytes()  # srow_z: a broken sform, third axis collapsed
    path.write_bytes(bytes(raw))
    with pytest.raises(EPIInputError, match="singular"):
        load_nifti(tmp_path / "sing.nii")


def test_save_refuses_wrong_grid_and_non_finite(tmp_path):
    ref = NiftiImage(np.zeros((3, 4, 5), np.float32), np.eye(4), header=None)
    with pytest.raises(EPIInputError, match="reference grid"):
        save_nifti(np.zeros((4, 3, 5)), ref, tmp_path / "x.nii.gz")
    with pytest.raises(EPIInputError, match="non-finite"):
        save_nifti(np.full((3, 4, 5), np.nan), ref, tmp_path / "x.nii.gz")
    assert not (tmp_path / "x.nii.gz").exists()


def test_single_volume_four_d_accepts_any_valid_index(tmp_path):
    # a (X, Y, Z, 1) file is 4-D with one volume: -1 is its last volume, 1 is out of range
    # (both used to be refused as "requested but ... is 3-D")
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5, 1)
    p = _write(tmp_path / "one.nii.gz", data, np.eye(4))
    for v in (0, -1, "mean"):
        got = load_nifti(p, volume=v)
        assert got.shape == (3, 4, 5) and np.array_equal(got.data, data[..., 0])
    assert load_nifti(p, volume=-1).volume == 0
    with pytest.raises(EPIInputError, match="out of range"):
        load_nifti(p, volume=1)


@pytest.mark.parametrize("unit, factor", [("mm", 1.0), ("micron", 1000.0), ("meter", 1e-3)])
def test_voxel_size_is_in_mm_whatever_the_spatial_unit(tmp_path, unit, factor):
    # the affine is in the header's unit: a micron file used to give voxel sizes 1000x too large
    # (displacement_mm off by 1000), a metre file stopped the solver at its start
    affine = _oblique_affine()
    affine[:3] *= factor
    img = nib.Nifti1Image(np.ones((3, 4, 5), np.float32), affine)
    img.header.set_xyzt_units(unit, "sec")
    nib.save(img, str(tmp_path / "u.nii.gz"))
    got = load_nifti(tmp_path / "u.nii.gz")
    assert np.allclose(got.voxel_size, (2.0, 2.5, 3.0))
    assert np.allclose(got.affine, affine)  # the file's geometry itself is kept as is
