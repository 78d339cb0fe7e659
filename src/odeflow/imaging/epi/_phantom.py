"""Offline blip-up/blip-down phantom from nilearn's MNI152 maps and a susceptibility model."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ._apply import distort
from ._nifti import _nibabel

__all__ = ["Phantom", "make_phantom"]

#: χ(tissue) − χ(air) in ppm (water −9.05, air +0.36).
_DELTA_CHI_PPM = -9.41
#: γ̄·B0 at 3 T in Hz per ppm.
_HZ_PER_PPM_3T = 127.74


@dataclass
class Phantom:
    """A synthetic blip-up/blip-down pair with ground truth.

    Attributes:
        up: ``(X, Y, Z)`` float32 tensor acquired with PE sign ``polarity`` along ``pe_axis``.
        down: the opposite-polarity acquisition.
        truth: the undistorted (noise-free) image ρ.
        displacement: the true ``b`` in voxels along ``+pe_axis`` in :func:`estimate_field`'s
            convention (``up`` sampled at ``x + b``): ``polarity · field_hz · readout_time``.
        field_hz: the off-resonance field (Hz) on the image grid.
        mask: boolean brain mask.
        voxel_size: voxel sizes (mm).
        affine: 4×4 numpy voxel→RAS mm.
        pe_axis: the phase-encoding axis.
        polarity: the PE sign of ``up`` (+1 or −1).
        readout_time: the total readout time (s).
        snr: the signal-to-noise ratio (None = noise-free).
        seed: the noise seed.
        orientation: the axis codes of the image grid.
    """

    up: torch.Tensor
    down: torch.Tensor
    truth: torch.Tensor
    displacement: torch.Tensor
    field_hz: torch.Tensor
    mask: torch.Tensor
    voxel_size: tuple[float, float, float]
    affine: np.ndarray
    pe_axis: int
    polarity: int
    readout_time: float
    snr: float | None
    seed: int
    orientation: str


def _block_mean(a: np.ndarray, k: Sequence[int]) -> np.ndarray:
    s = a.shape
    return a.reshape(s[0] // k[0], k[0], s[1] // k[1], k[1], s[2] // k[2], k[2]).mean((1, 3, 5))


@functools.lru_cache(maxsize=1)
def _base_ras() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ρ, brain mask, unit field (Hz at 3 T for Δχ = −9.41 ppm) at 1 mm RAS, and the affine."""
    try:
        from nilearn import datasets
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "make_phantom needs nilearn (it ships the MNI152 maps); pip install 'odeflow[epi]'."
        ) from e
    from scipy import ndimage

    gm_img = datasets.load_mni152_gm_template(resolution=1)
    gm = np.asarray(gm_img.dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0.5
    affine = np.asarray(gm_img.affine, dtype=float)
    gm, wm = np.clip(gm, 0, 1), np.clip(wm, 0, 1)
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0, 1)
    # b0-like contrast: CSF bright, GM > WM
    rho = (1.0 * csf + 0.6 * gm + 0.45 * wm) * brain
    rho = ndimage.gaussian_filter(rho, 0.5).astype(np.float32)

    # susceptibility model on a 2 mm grid (smooth field; cheap FFT)
    shp = brain.shape
    pad = [(0, s % 2) for s in shp]
    b2 = _block_mean(np.pad(brain.astype(np.float32), pad), (2, 2, 2)) > 0.5
    head = ndimage.binary_dilation(b2, ndimage.generate_binary_structure(3, 1), iterations=5)
    aff2 = affine @ np.array([[2, 0, 0, 0.5], [0, 2, 0, 0.5], [0, 0, 2, 0.5], [0, 0, 0, 1.0]])
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in b2.shape], indexing="ij"), -1)
    xyz = ijk @ aff2[:3, :3].T + aff2[:3, 3]
    air = ~head
    # air cavities (RAS mm): sphenoid/ethmoid sinus, frontal sinus, ear canals/mastoids
    for c, r in (
        ((0.0, 22.0, -40.0), (14.0, 16.0, 9.0)),
        ((0.0, 62.0, -8.0), (10.0, 6.0, 8.0)),
        ((-62.0, -20.0, -42.0), (9.0, 9.0, 8.0)),
        ((62.0, -20.0, -42.0), (9.0, 9.0, 8.0)),
    ):
        air |= (((xyz - np.asarray(c)) / np.asarray(r)) ** 2).sum(-1) <= 1.0
    # cavities stay at least 6 mm away from the brain (bone/soft tissue in between)
    air &= ~ndimage.binary_dilation(b2, ndimage.generate_binary_structure(3, 1), iterations=3)
    chi = np.where(air, 0.0, _DELTA_CHI_PPM).astype(np.float32)
    # dipole kernel on a 2× zero-padded grid (padding = air, since χ is relative to air)
    big = [2 * s for s in chi.shape]
    chi_t = torch.zeros(big, dtype=torch.float64)
    chi_t[: chi.shape[0], : chi.shape[1], : chi.shape[2]] = torch.from_numpy(chi)
    kx = torch.fft.fftfreq(big[0], dtype=torch.float64)[:, None, None]
    ky = torch.fft.fftfreq(big[1], dtype=torch.float64)[None, :, None]
    kz = torch.fft.rfftfreq(big[2], dtype=torch.float64)[None, None, :]
    k2 = kx**2 + ky**2 + kz**2
    dk = 1.0 / 3.0 - kz**2 / torch.where(k2 > 0, k2, torch.ones_like(k2))
    dk[0, 0, 0] = 0.0
    ppm = torch.fft.irfftn(dk * torch.fft.rfftn(chi_t), s=big)
    hz2 = (ppm[: chi.shape[0], : chi.shape[1], : chi.shape[2]] * _HZ_PER_PPM_3T).numpy()
    # signal lives in the head only: taper the field to 0 outside (keeps |∂b| < 1 in air)
    taper = ndimage.gaussian_filter(head.astype(np.float64), 1.5)
    hz2 = ndimage.gaussian_filter((hz2 - np.median(hz2[b2])) * taper, 1.5)  # 3 mm: no sharp rims
    hz1 = F.interpolate(
        torch.from_numpy(hz2)[None, None], scale_factor=2, mode="trilinear", align_corners=False
    )[0, 0, : shp[0], : shp[1], : shp[2]].numpy()
    return rho, brain, hz1.astype(np.float32), affine


def make_phantom(
    *,
    shape: Sequence[int] | None = None,
    voxel_size: float | Sequence[float] = 2.0,
    pe_axis: int = 1,
    polarity: int = +1,
    peak_displacement: float = 4.0,
    readout_time: float = 0.05,
    snr: float | None = 30.0,
    seed: int = 0,
    orientation: str = "RAS",
) -> Phantom:
    r"""Build a blip-up/blip-down pair with known field from the MNI152 maps (offline).

    1. **Image**: a b0-like contrast ``ρ = 1.0·CSF + 0.6·GM + 0.45·WM`` from nilearn's
       MNI152 (2009) GM/WM/brain maps at 1 mm (shipped in the nilearn wheel).
    2. **Field**: susceptibility ``Δχ = −9.41 ppm`` in tissue (the brain dilated by 10 mm)
       relative to air outside and in ellipsoidal sinus and ear cavities; ``ΔB/B0`` from the
       k-space dipole kernel ``1/3 − k_z²/|k|²`` (2× zero padded, B0 along world z), at
       127.74 Hz/ppm (3 T), tapered outside the head and scaled so that the peak
       displacement in the brain mask is ``peak_displacement`` voxels for ``readout_time``.
    3. **Distortion**: the exact mass-conserving push-forward along PE (per-line cumulative
       mass, :func:`distort`) at 1 mm, then block-averaged to ``voxel_size`` (no inverse crime).
    4. **Noise**: Rician, ``σ = mean(ρ in the brain)/snr``, seeded.

    Args:
        shape: output shape (voxels) — a crop centred on the brain, for fast tests;
            default the brain's bounding box plus a 12 mm margin.
        voxel_size: integer mm per axis (1–4), scalar or 3 values.
        pe_axis: PE array axis (of the *output* orientation).
        polarity: PE sign of ``up`` along ``pe_axis`` (+1 like BIDS ``j``, −1 like ``j-``).
        peak_displacement: target peak |b| in the brain (voxels).
        readout_time: total readout time (s); ``displacement = polarity·field_hz·readout_time``.
        snr: signal-to-noise ratio of the Rician noise, or None for noise-free images.
        seed: noise seed.
        orientation: output axis codes (nibabel convention), e.g. ``"RAS"``, ``"LPS"``, ``"PIR"``.

    Returns:
        :class:`Phantom`.

    Raises:
        ValueError: for non-integer voxel sizes, a bad axis/polarity/orientation, a crop larger
            than the template, or a severity that folds the field (``|∂b| ≥ 0.9``).
        ImportError: if nilearn is not installed.

    Reference:
        Salomir et al., "A fast calculation method for magnetic field inhomogeneity due to an
        arbitrary distribution of bulk susceptibility", Concepts Magn. Reson. B 19 (2003);
        Julian et al., PyHySCO, arXiv:2403.10706 (simulation protocol).

    Example:
        >>> ph = make_phantom(voxel_size=4.0, shape=(16, 16, 16), peak_displacement=2.0, snr=None)
        >>> tuple(ph.up.shape), ph.pe_axis
        ((16, 16, 16), 1)
    """
    pe_axis, k = _check_arguments(pe_axis, polarity, voxel_size, peak_displacement,
                                  readout_time, snr)  # fmt: skip
    rho, brain, hz, aff = _template_crop(k, shape, orientation)
    kk = tuple(int(v) for v in k)
    mask = _block_mean(brain.astype(np.float64), kk) > 0.5
    field_hz, d_1mm = _scaled_field(hz, mask, k, pe_axis, polarity, peak_displacement,
                                    readout_time)  # fmt: skip
    rho_t = torch.from_numpy(np.ascontiguousarray(rho, dtype=np.float64))
    d_t = torch.from_numpy(np.ascontiguousarray(d_1mm, dtype=np.float64))
    up1 = distort(rho_t, d_t, pe_axis=pe_axis, polarity=+1).numpy()
    dn1 = distort(rho_t, d_t, pe_axis=pe_axis, polarity=-1).numpy()

    truth = _block_mean(rho.astype(np.float64), kk)
    up, dn = _block_mean(up1, kk), _block_mean(dn1, kk)
    disp = _block_mean(d_1mm.astype(np.float64), kk) / k[pe_axis]
    fhz = _block_mean(field_hz.astype(np.float64), kk)
    if snr is not None:
        rng = np.random.default_rng(seed)
        sigma = float(truth[mask].mean()) / float(snr) if mask.any() else float(truth.mean()) / snr
        up = np.hypot(
            up + sigma * rng.standard_normal(up.shape), sigma * rng.standard_normal(up.shape)
        )
        dn = np.hypot(
            dn + sigma * rng.standard_normal(dn.shape), sigma * rng.standard_normal(dn.shape)
        )
    aff_out = aff @ np.array(
        [
            [k[0], 0, 0, (k[0] - 1) / 2],
            [0, k[1], 0, (k[1] - 1) / 2],
            [0, 0, k[2], (k[2] - 1) / 2],
            [0, 0, 0, 1.0],
        ]
    )

    def t32(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    return Phantom(
        up=t32(up),
        down=t32(dn),
        truth=t32(truth),
        displacement=t32(disp),
        field_hz=t32(fhz),
        mask=torch.from_numpy(np.ascontiguousarray(mask)),
        voxel_size=tuple(float(v) for v in k),
        affine=aff_out,
        pe_axis=pe_axis,
        polarity=int(polarity),
        readout_time=float(readout_time),
        snr=None if snr is None else float(snr),
        seed=int(seed),
        orientation=orientation.upper(),
    )


def _check_arguments(pe_axis, polarity, voxel_size, peak_displacement, readout_time, snr):
    """Validate make_phantom's arguments; return the PE axis (0..2) and the integer voxel
    sizes (mm)."""
    if pe_axis not in (0, 1, 2, -1, -2, -3):
        raise ValueError(f"pe_axis must be 0, 1 or 2, got {pe_axis!r}.")
    if polarity not in (1, -1):
        raise ValueError(f"polarity must be +1 or -1, got {polarity!r}.")
    vs = np.broadcast_to(np.asarray(voxel_size, dtype=float), (3,))
    k = np.rint(vs).astype(int)
    if not (np.allclose(vs, k) and np.all((k >= 1) & (k <= 4))):
        raise ValueError(
            f"voxel_size must be whole millimetres between 1 and 4 (the phantom block-averages a "
            f"1 mm template), got {voxel_size!r}."
        )
    if not (np.isfinite(peak_displacement) and peak_displacement >= 0):
        raise ValueError("peak_displacement must be >= 0 (voxels).")
    if not readout_time > 0:
        raise ValueError("readout_time must be > 0 (seconds).")
    if snr is not None and not snr > 0:
        raise ValueError("snr must be > 0 or None (noise-free).")
    return pe_axis % 3, k


def _template_crop(k: np.ndarray, shape, orientation: str):
    """The 1 mm template (density, brain mask, field shape, affine) cropped around the brain
    to a whole number of output voxels and reoriented to ``orientation``."""
    nib = _nibabel()
    try:
        target = nib.orientations.axcodes2ornt(tuple(orientation.upper()))
    except Exception as e:
        raise ValueError(
            f"orientation {orientation!r} is not a valid axis code such as 'RAS', 'LPS', 'PIR'."
        ) from e

    rho, brain, hz, aff = _base_ras()
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(aff), target)
    out_of = ornt[:, 0].astype(int)  # template axis a becomes output axis out_of[a]

    # crop (1 mm, in the template's axes so that every orientation sees the same voxels)
    idx = np.argwhere(brain)
    lo_b, hi_b = idx.min(0), idx.max(0) + 1
    full = np.asarray(rho.shape)
    k_t = k[out_of]
    if shape is None:
        size = ((hi_b - lo_b) + 24 + k_t - 1) // k_t * k_t
    else:
        shp = np.asarray(tuple(shape), dtype=int)
        if shp.shape != (3,) or np.any(shp < 4):
            raise ValueError(f"shape must be 3 sizes >= 4, got {shape!r}.")
        size = shp[out_of] * k_t
    if np.any(size > full):
        raise ValueError(
            f"the requested crop ({(size // k_t).tolist()} voxels of {k_t.tolist()} mm, template "
            f"axes) exceeds the template ({full.tolist()} mm); pass a smaller shape."
        )
    centre = (lo_b + hi_b) // 2
    start = np.clip(centre - size // 2, 0, full - size)
    sl = tuple(slice(int(a), int(a + s)) for a, s in zip(start, size))
    rho, brain, hz = rho[sl], brain[sl], hz[sl]
    aff = aff @ np.block([[np.eye(3), start[:, None].astype(float)], [np.zeros((1, 3)), 1.0]])
    aff = aff @ nib.orientations.inv_ornt_aff(ornt, rho.shape)
    rho = nib.orientations.apply_orientation(rho, ornt)
    brain = nib.orientations.apply_orientation(brain, ornt)
    hz = nib.orientations.apply_orientation(hz, ornt)
    return rho, brain, hz, aff


def _scaled_field(hz, mask, k, pe_axis, polarity, peak_displacement, readout_time):
    """The field (Hz, 1 mm grid) scaled to ``peak_displacement`` output voxels in the brain,
    and the displacement (1 mm voxels along +PE); refuse a field that folds."""
    kk = tuple(int(v) for v in k)
    hz_out = _block_mean(hz.astype(np.float64), kk)
    peak = float(np.abs(hz_out[mask]).max()) if mask.any() else float(np.abs(hz_out).max())
    if peak <= 0:
        peak = 1.0
    field_hz = hz * (peak_displacement / (peak * readout_time))
    d_out = polarity * field_hz * readout_time  # output voxels along +pe_axis
    d_1mm = d_out * k[pe_axis]
    grad = np.abs(np.diff(d_1mm, axis=pe_axis)).max() if d_1mm.shape[pe_axis] > 1 else 0.0
    if grad >= 0.9:
        raise ValueError(
            f"peak_displacement={peak_displacement} folds the field "
            f"(max |∂b| = {grad:.2f} >= 0.9); "
            "use a smaller peak_displacement (it counts output voxels, so coarser voxels mean a "
            "larger field in mm)."
        )
    return field_hz, d_1mm
