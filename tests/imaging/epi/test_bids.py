"""BIDS metadata: PE letters and signs, anatomical codes through the affine, readout time,
polarity validation with explicit overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from odeflow.imaging.epi._bids import (
    PhaseEncoding,
    parse_pe_direction,
    read_sidecar,
    readout_time_from_sidecar,
    resolve_acquisition,
    sidecar_path,
)
from odeflow.imaging.epi._nifti import EPIInputError

RAS = np.diag([2.0, 2.0, 2.0, 1.0])
LAS = np.diag([-2.0, 2.0, 2.0, 1.0])


def _reorient(
    affine: np.ndarray,
    perm: tuple[int, int, int],
    flips: tuple[bool, ...],
    shape: tuple[int, int, int],
) -> np.ndarray:
    """Affine of the array ``np.flip(np.transpose(x, perm), flipped axes)``."""
    new = np.eye(4)
    new[:, :3] = affine[:, list(perm)]
    new[:, 3] = affine[:, 3]
    for ax, f in enumerate(flips):
        if f:
            n = shape[perm[ax]]
            new[:3, 3] += new[:3, ax] * (n - 1)
            new[:3, ax] *= -1
    return new


@pytest.mark.parametrize(
    "letter,axis,sign",
    [
        ("i", 0, 1),
        ("i-", 0, -1),
        ("j", 1, 1),
        ("j-", 1, -1),
        ("k", 2, 1),
        ("k-", 2, -1),
        ("J+", 1, 1),
        (" k- ", 2, -1),
        ("-j", 1, -1),
    ],
)
def test_bids_letters(letter, axis, sign):
    pe = parse_pe_direction(letter)
    assert (pe.axis, pe.sign) == (axis, sign)
    assert parse_pe_direction(pe.code) == pe
    assert pe.opposite() == PhaseEncoding(axis, -sign)


@pytest.mark.parametrize("bad", ["x", "j--", "up", "", "AP-", "ij"])
def test_unknown_direction_is_refused(bad):
    with pytest.raises(EPIInputError, match="unknown phase-encoding direction"):
        parse_pe_direction(bad, RAS)


@pytest.mark.parametrize(
    "code,ras,las",
    [
        ("PA", "j", "j"),
        ("AP", "j-", "j-"),
        ("LR", "i", "i-"),
        ("RL", "i-", "i"),
        ("IS", "k", "k"),
        ("SI", "k-", "k-"),
    ],
)
def test_anatomical_codes_map_through_the_affine(code, ras, las):
    assert parse_pe_direction(code, RAS).code == ras
    assert parse_pe_direction(code.lower(), LAS).code == las
    with pytest.raises(EPIInputError, match="needs the image affine"):
        parse_pe_direction(code)


@pytest.mark.parametrize("perm", [(0, 1, 2), (1, 0, 2), (2, 0, 1), (1, 2, 0)])
@pytest.mark.parametrize(
    "flips", [(False, False, False), (True, False, True), (False, True, False)]
)
@pytest.mark.parametrize("code", ["AP", "PA", "LR", "SI"])
def test_world_direction_is_invariant_under_reorientation(perm, flips, code):
    shape = (20, 24, 18)
    base = RAS.copy()
    base[:3, 3] = [-20.0, -24.0, -18.0]
    new = _reorient(base, perm, flips, shape)
    pe_old = parse_pe_direction(code, base)
    pe_new = parse_pe_direction(code, new)
    # same physical direction...
    assert np.allclose(pe_old.world_direction(base), pe_new.world_direction(new))
    assert pe_new.anatomical(new) == code.upper()
    # ...and the letter follows the permuted array axis, its sign follows the flip
    assert perm[pe_new.axis] == pe_old.axis
    assert pe_new.sign == pe_old.sign * (-1 if flips[pe_new.axis] else 1)


def test_oblique_scan_maps_to_nearest_axis_or_refuses():
    def rot_x(t):
        c, s = np.cos(t), np.sin(t)
        a = np.eye(4)
        a[:3, :3] = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) * 2.0
        return a

    assert parse_pe_direction("PA", rot_x(np.deg2rad(25))).code == "j"
    assert parse_pe_direction("PA", rot_x(np.deg2rad(180 - 25))).code == "j-"
    with pytest.raises(EPIInputError, match="too oblique"):
        parse_pe_direction("PA", rot_x(np.deg2rad(45.5)))


def test_sidecar_path_and_reading(tmp_path):
    assert sidecar_path(tmp_path / "a_epi.nii.gz") == tmp_path / "a_epi.json"
    assert sidecar_path(tmp_path / "b.nii") == tmp_path / "b.json"
    assert read_sidecar(tmp_path / "a_epi.nii.gz") == {}
    (tmp_path / "a_epi.json").write_text(json.dumps({"PhaseEncodingDirection": "j-"}))
    assert read_sidecar(tmp_path / "a_epi.nii.gz") == {"PhaseEncodingDirection": "j-"}
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(EPIInputError, match="cannot read the BIDS sidecar"):
        read_sidecar(tmp_path / "c.nii.gz")
    (tmp_path / "d.json").write_text("[1, 2]")
    with pytest.raises(EPIInputError, match="not a JSON object"):
        read_sidecar(tmp_path / "d.nii.gz")


def test_readout_time_sources():
    assert readout_time_from_sidecar({"TotalReadoutTime": 0.0621}) == (0.0621, "TotalReadoutTime")
    t, src = readout_time_from_sidecar({"EffectiveEchoSpacing": 0.00058, "ReconMatrixPE": 104})
    assert t == pytest.approx(0.00058 * 103) and "ReconMatrixPE" in src
    # ReconMatrixPE defaults to the image's size along PE
    t, src = readout_time_from_sidecar({"EffectiveEchoSpacing": 0.0005}, n_pe=91)
    assert t == pytest.approx(0.045) and "image size" in src
    assert readout_time_from_sidecar({"EffectiveEchoSpacing": 0.0005}) is None
    # TotalReadoutTime wins over echo spacing
    both = {"TotalReadoutTime": 0.05, "EffectiveEchoSpacing": 0.001, "ReconMatrixPE": 90}
    assert readout_time_from_sidecar(both)[0] == 0.05
    assert readout_time_from_sidecar({"EstimatedTotalReadoutTime": 0.04})[0] == 0.04
    assert readout_time_from_sidecar({"RepetitionTime": 2.0}) is None
    with pytest.raises(EPIInputError, match="milliseconds"):
        readout_time_from_sidecar({"TotalReadoutTime": 50})
    with pytest.raises(EPIInputError, match="positive"):
        readout_time_from_sidecar({"TotalReadoutTime": -0.05})
    with pytest.raises(EPIInputError, match="number"):
        readout_time_from_sidecar({"TotalReadoutTime": "fast"})


SHAPE = (40, 48, 30)


def _meta(pe=None, trt=0.05):
    m = {}
    if pe is not None:
        m["PhaseEncodingDirection"] = pe
    if trt is not None:
        m["TotalReadoutTime"] = trt
    return m


@pytest.mark.parametrize("up,down", [("j", "j-"), ("j-", "j"), ("i", "i-"), ("k-", "k")])
def test_resolve_from_sidecars(up, down):
    acq = resolve_acquisition(SHAPE, RAS, _meta(up), _meta(down))
    assert acq.pe_up.code == up and acq.pe_down.code == down
    assert acq.pe_axis == "ijk".index(up[0])
    assert acq.readout_time == 0.05
    assert acq.sources == {
        "pe_up": "sidecar",
        "pe_down": "sidecar",
        "readout_time": "up sidecar TotalReadoutTime",
    }


def test_field_sign_convention():
    b = np.array([1.0, -2.0])
    up_plus = resolve_acquisition(SHAPE, RAS, _meta("j"), _meta("j-"))
    up_minus = resolve_acquisition(SHAPE, RAS, _meta("j-"), _meta("j"))
    # the up image moves by s_up * f * T voxels along +j
    assert np.allclose(up_plus.field_hz(b), b / 0.05)
    assert np.allclose(up_minus.field_hz(b), -b / 0.05)


@pytest.mark.parametrize("up,down", [("j", "j"), ("j-", "j-"), ("i", "i")])
def test_same_polarity_is_refused(up, down):
    with pytest.raises(EPIInputError, match="same phase-encoding polarity"):
        resolve_acquisition(SHAPE, RAS, _meta(up), _meta(down))


def test_different_axes_are_refused():
    with pytest.raises(EPIInputError, match="different axes"):
        resolve_acquisition(SHAPE, RAS, _meta("j"), _meta("i-"))


def test_explicit_direction_without_sidecars_takes_opposite_for_down():
    acq = resolve_acquisition(SHAPE, RAS, {}, {}, pe_dir="AP", readout_time=0.06)
    assert acq.pe_up.code == "j-" and acq.pe_down.code == "j"
    assert acq.sources["pe_down"] == "opposite of --pe-dir"
    acq = resolve_acquisition(SHAPE, LAS, {}, {}, pe_dir="LR", pe_dir_down="RL", readout_time=0.06)
    assert acq.pe_up.code == "i-" and acq.pe_down.code == "i"


def test_missing_direction_is_refused():
    with pytest.raises(EPIInputError, match=r"up image is unknown.*--pe-dir"):
        resolve_acquisition(SHAPE, RAS, _meta(None), _meta("j-"))
    # up known from its sidecar only: the down polarity is not guessed
    with pytest.raises(EPIInputError, match="down image is unknown"):
        resolve_acquisition(SHAPE, RAS, _meta("j"), _meta(None))


def test_explicit_direction_conflicting_with_sidecar_needs_override():
    with pytest.raises(EPIInputError, match=r"contradicts the up sidecar.*--ignore-sidecars"):
        resolve_acquisition(SHAPE, RAS, _meta("j"), _meta("j-"), pe_dir="j-")
    acq = resolve_acquisition(
        SHAPE, RAS, _meta("j"), _meta("j-"), pe_dir="j-", ignore_sidecars=True
    )
    assert acq.pe_up.code == "j-" and acq.pe_down.code == "j"
    # wrong sidecars saying the same polarity can be overridden explicitly
    acq = resolve_acquisition(SHAPE, RAS, _meta("j"), _meta("j"), pe_dir="j", ignore_sidecars=True)
    assert acq.pe_down.code == "j-"
    # an explicit up direction does not silence a same-polarity down sidecar
    with pytest.raises(EPIInputError, match="same phase-encoding polarity"):
        resolve_acquisition(SHAPE, RAS, _meta("j"), _meta("j"), pe_dir="j")


def test_readout_time_rules():
    with pytest.raises(EPIInputError, match=r"readout time is unknown.*--readout-time"):
        resolve_acquisition(SHAPE, RAS, _meta("j", None), _meta("j-", None))
    acq = resolve_acquisition(SHAPE, RAS, _meta("j", None), _meta("j-", None), readout_time=0.07)
    assert acq.readout_time == 0.07 and acq.sources["readout_time"] == "--readout-time"
    # only one sidecar has it: used
    acq = resolve_acquisition(SHAPE, RAS, _meta("j", None), _meta("j-", 0.04))
    assert acq.readout_time == 0.04 and acq.sources["readout_time"].startswith("down")
    with pytest.raises(EPIInputError, match="different readout times"):
        resolve_acquisition(SHAPE, RAS, _meta("j", 0.05), _meta("j-", 0.06))
    # explicit override wins over disagreeing sidecars
    acq = resolve_acquisition(SHAPE, RAS, _meta("j", 0.05), _meta("j-", 0.06), readout_time=0.055)
    assert acq.readout_time == 0.055
    with pytest.raises(EPIInputError, match="milliseconds"):
        resolve_acquisition(SHAPE, RAS, _meta("j"), _meta("j-"), readout_time=45.0)
    # echo spacing with the image's PE size
    acq = resolve_acquisition(
        SHAPE,
        RAS,
        {"PhaseEncodingDirection": "j", "EffectiveEchoSpacing": 0.001},
        _meta("j-", None),
    )
    assert acq.readout_time == pytest.approx(0.001 * (SHAPE[1] - 1))


def test_pe_axis_too_short_is_refused():
    with pytest.raises(EPIInputError, match="at least 2 voxels"):
        resolve_acquisition((40, 1, 30), RAS, _meta("j"), _meta("j-"))


@pytest.mark.parametrize("bad", [96.7, "96.5", float("nan"), True])
def test_recon_matrix_pe_must_be_a_whole_number(bad):
    # int() used to truncate 96.7 to 96 and return a silently wrong readout time
    with pytest.raises(EPIInputError, match="ReconMatrixPE"):
        readout_time_from_sidecar({"EffectiveEchoSpacing": 0.0005, "ReconMatrixPE": bad})
    t, _ = readout_time_from_sidecar({"EffectiveEchoSpacing": 0.0005, "ReconMatrixPE": 97.0})
    assert t == pytest.approx(0.048)


def test_explicit_readout_time_records_the_sidecar_it_overrides():
    acq = resolve_acquisition(SHAPE, RAS, _meta("j", 0.062), _meta("j-", 0.062), readout_time=0.031)
    assert acq.readout_time == 0.031
    src = acq.sources["readout_time"]
    assert src.startswith("--readout-time") and "0.062" in src and "up" in src and "down" in src
    # agreeing sidecars (within 1 %): nothing is overridden
    acq = resolve_acquisition(SHAPE, RAS, _meta("j", 0.0502), _meta("j-", None), readout_time=0.05)
    assert acq.sources["readout_time"] == "--readout-time"
    # a malformed sidecar value does not block an explicit override, and is named
    acq = resolve_acquisition(SHAPE, RAS, _meta("j", 50), _meta("j-", None), readout_time=0.05)
    assert acq.readout_time == 0.05 and "invalid" in acq.sources["readout_time"]


@pytest.mark.parametrize(
    "meta",
    [
        {"TotalReadoutTime": True},
        {"EstimatedTotalReadoutTime": True},
        {"EffectiveEchoSpacing": True, "ReconMatrixPE": 2},
    ],
)
def test_boolean_readout_fields_are_refused(meta):
    # float(True) used to give a silent 1 s readout time (the field in Hz off by ~20x)
    with pytest.raises(EPIInputError, match="number"):
        readout_time_from_sidecar(meta, n_pe=64)
    with pytest.raises(EPIInputError, match="number"):
        resolve_acquisition(SHAPE, RAS, _meta("j"), _meta("j-"), readout_time=True)


def test_sidecar_is_read_as_utf8_whatever_the_locale(tmp_path):
    # JSON is UTF-8; reading with the locale's encoding refused a valid dcm2niix sidecar
    # (e.g. "InstitutionName": "Universität") under an ASCII/Latin-1 locale
    text = '{"PhaseEncodingDirection": "j-", "InstitutionName": "Universität München"}'
    (tmp_path / "a.json").write_bytes(text.encode("utf-8"))
    code = (
        "import sys; from odeflow.imaging.epi._bids import read_sidecar; "
        "m = read_sidecar(sys.argv[1]); "
        "assert m['InstitutionName'] == 'Universit\\xe4t M\\xfcnchen'"
    )
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "a.nii.gz")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    # a byte-order mark (written by some Windows editors) is not a reason to refuse it
    (tmp_path / "b.json").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert read_sidecar(tmp_path / "b.nii.gz")["PhaseEncodingDirection"] == "j-"
