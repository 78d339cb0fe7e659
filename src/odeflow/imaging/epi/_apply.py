"""Jacobian-modulated correction with an estimated displacement field (3-D or 4-D)."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..._utils import outside_stacklevel
from ._model import face_average, face_diff, interp_lines, push_forward_lines

__all__ = ["apply_correction", "distort"]


def _as_tensor(x, name: str, device=None) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor or a numpy array, got {type(x).__name__}.")
    if device is not None:
        x = x.to(device)
    return x


def _check_axis(pe_axis: int) -> int:
    if not isinstance(pe_axis, int | np.integer) or not -3 <= int(pe_axis) <= 2:
        raise ValueError(f"pe_axis must be 0, 1 or 2 (or -3..-1), got {pe_axis!r}.")
    return int(pe_axis) % 3


def _cell_shift_and_jacobian(b: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell displacement and ``∂b`` (PE last) from a face field (n+1) or a cell field (n)."""
    if b.shape[-1] == n + 1:
        return face_average(b), face_diff(b)
    if n == 1:
        return b, torch.zeros_like(b)
    d = torch.empty_like(b)
    d[..., 1:-1] = 0.5 * (b[..., 2:] - b[..., :-2])
    d[..., 0] = b[..., 1] - b[..., 0]
    d[..., -1] = b[..., -1] - b[..., -2]
    return b, d


def apply_correction(
    volumes: torch.Tensor | np.ndarray,
    displacement: torch.Tensor | np.ndarray,
    *,
    pe_axis: int,
    polarity: int = +1,
    chunk: int = 16,
) -> torch.Tensor:
    r"""Correct volumes acquired with one PE polarity: ``ρ(x) = I(x + σ b v)·(1 + σ ∂_v b)``.

    ``σ = polarity`` (+1 for the ``up`` acquisition, −1 for ``down``), ``b`` the displacement
    in voxels along ``+pe_axis`` (as returned by :func:`estimate_field`), ``I`` linearly
    interpolated along the PE axis (clamped at the ends).

    ``displacement`` may be the image-grid (cell-centred) field ``(X, Y, Z)`` — then
    ``∂_v b`` is the central difference (one-sided at the ends) — or the staggered face field
    ``EPIResult.displacement_faces`` with ``n_PE + 1`` points along PE, which reproduces
    ``EPIResult.corrected_up``/``corrected_down`` exactly.

    Args:
        volumes: a 3-D volume ``(X, Y, Z)`` or a 4-D series ``(X, Y, Z, T)`` (NIfTI order, time
            last), tensor or numpy array. Computed on the device of ``volumes`` (move it to a
            GPU for batched GPU application), in its floating dtype (float32 for integers).
        displacement: field in voxels, ``(X, Y, Z)`` or the face field (see above).
        pe_axis: phase-encoding array axis (0, 1, 2).
        polarity: +1 or −1.
        chunk: volumes of a 4-D series processed per batch (memory bound).

    Returns:
        Tensor with the shape of ``volumes``: the corrected (Jacobian-modulated) images.

    Raises:
        ValueError: on a bad ``pe_axis``/``polarity``, a ``chunk`` that is not a positive
            integer, shapes that do not match, non-finite values in ``volumes`` or
            ``displacement``, or a volume that is not 3-D or 4-D.

    Warns:
        RuntimeWarning: if the displacement folds the image (``1 ± ∂b ≤ 0`` somewhere), e.g.
            a field scaled to a series with a much longer readout time.

    Reference:
        Chang & Fitzpatrick, IEEE TMI 11 (1992); Julian et al., PyHySCO, arXiv:2403.10706.

    Example:
        >>> vol = torch.rand(4, 5, 6)
        >>> out = apply_correction(vol, torch.zeros(4, 5, 6), pe_axis=1)
        >>> bool(torch.equal(out, vol))
        True
    """
    ax = _check_axis(pe_axis)
    if polarity not in (1, -1):
        raise ValueError(f"polarity must be +1 (up) or -1 (down), got {polarity!r}.")
    if isinstance(chunk, bool) or not isinstance(chunk, int | np.integer) or chunk < 1:
        # a zero or negative chunk would leave the output uninitialized (silent garbage)
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}.")
    chunk = int(chunk)
    vol = _as_tensor(volumes, "volumes")
    if vol.ndim not in (3, 4):
        raise ValueError(
            f"volumes must be 3-D (X, Y, Z) or 4-D (X, Y, Z, T), got shape {tuple(vol.shape)}."
        )
    if not vol.is_floating_point():
        vol = vol.float()
    b = _as_tensor(displacement, "displacement", device=vol.device).to(vol.dtype)
    spatial = tuple(vol.shape[:3])
    faces = list(spatial)
    faces[ax] += 1
    if b.ndim != 3 or tuple(b.shape) not in (spatial, tuple(faces)):
        raise ValueError(
            f"displacement has shape {tuple(b.shape)}; expected the image shape {spatial} "
            f"(or the face field {tuple(faces)})."
        )
    if not bool(torch.isfinite(b).all() & torch.isfinite(vol).all()):  # (one host sync)
        bad = "displacement" if not bool(torch.isfinite(b).all()) else "volumes"
        raise ValueError(
            f"{bad} contain(s) NaN or Inf; a non-finite voxel would spread to its neighbours "
            "along the phase-encoding axis. Clean or mask the input first."
        )
    n = spatial[ax]
    bl = b.movedim(ax, -1) * polarity
    shift, jac = _cell_shift_and_jacobian(bl, n)
    pos = torch.arange(n, dtype=vol.dtype, device=vol.device) + shift
    jac = 1.0 + jac
    folded = int((jac <= 0).sum())
    if folded:  # e.g. a field scaled from a short readout time to a much longer one
        warnings.warn(
            f"the displacement folds the image along the phase-encoding axis: the Jacobian "
            f"1 ± ∂b is ≤ 0 in {folded} voxel(s) (min {float(jac.min()):.3g}), where the "
            "corrected intensities are negative or zero and not meaningful; check the field's "
            "readout time and polarity for this series",
            RuntimeWarning,
            stacklevel=outside_stacklevel(),
        )

    def one(v3: torch.Tensor) -> torch.Tensor:  # (B, *spatial-with-PE-last)
        val, _ = interp_lines(v3, pos.expand_as(v3))
        return val * jac

    if vol.ndim == 3:
        return one(vol.movedim(ax, -1)).movedim(-1, ax)
    series = vol.movedim(3, 0).movedim(ax + 1, -1)  # (T, ..., n)
    out = torch.empty_like(series)
    for s in range(0, series.shape[0], chunk):
        out[s : s + chunk] = one(series[s : s + chunk])
    return out.movedim(-1, ax + 1).movedim(0, 3)


def distort(
    image: torch.Tensor | np.ndarray,
    displacement: torch.Tensor | np.ndarray,
    *,
    pe_axis: int,
    polarity: int = +1,
) -> torch.Tensor:
    r"""Mass-preserving forward distortion: the image ``I`` with ``I(x + σb)(1 + σ∂b) = ρ(x)``.

    Each PE line of ``ρ`` is pushed forward by ``T(x) = x + σ b(x)`` (``σ = polarity``) with
    the exact cumulative-mass construction ``C_I(y) = C_ρ(T^{-1}(y))``
    (:func:`~odeflow.imaging.epi._model.push_forward_lines`), so the mass of every line is
    conserved to round-off when the field keeps it inside the field of view.
    ``displacement`` is given on the faces along PE (``n_PE + 1``) or on the image grid
    (then linearly extended to the faces). ``|∂b| < 1`` is required (T monotone).

    Args:
        image: 3-D ``ρ`` (X, Y, Z).
        displacement: field in voxels along ``+pe_axis`` (image or face grid).
        pe_axis: PE array axis; polarity: +1 (up) or −1 (down).

    Returns:
        The distorted image (shape of ``image``).

    Raises:
        ValueError: on shape mismatch or a field with ``|∂b| ≥ 1`` (folding).

    Example:
        >>> rho = torch.rand(3, 4, 10, dtype=torch.float64)
        >>> b = 0.3 * torch.sin(torch.linspace(0, 3.1416, 11, dtype=torch.float64)).expand(3, 4, 11)
        >>> up = distort(rho, b, pe_axis=2)
        >>> bool(torch.allclose(up.sum(-1), rho.sum(-1)))
        True
    """
    ax = _check_axis(pe_axis)
    if polarity not in (1, -1):
        raise ValueError(f"polarity must be +1 or -1, got {polarity!r}.")
    rho = _as_tensor(image, "image")
    if not rho.is_floating_point():
        rho = rho.float()
    if rho.ndim != 3:
        raise ValueError(f"image must be 3-D, got shape {tuple(rho.shape)}.")
    b = _as_tensor(displacement, "displacement", device=rho.device).to(rho.dtype)
    n = rho.shape[ax]
    bl = b.movedim(ax, -1) * polarity
    if bl.shape[-1] == n:
        ext = torch.cat(
            [
                1.5 * bl[..., :1] - 0.5 * bl[..., 1:2],
                face_average(bl),
                1.5 * bl[..., -1:] - 0.5 * bl[..., -2:-1],
            ],
            -1,
        )
        bl = ext
    if bl.shape != (*rho.movedim(ax, -1).shape[:-1], n + 1):
        raise ValueError(
            f"displacement shape {tuple(b.shape)} does not match image {tuple(rho.shape)}."
        )
    if bool((face_diff(bl).abs() >= 1).any()):
        raise ValueError("distort: the field folds (|∂b| >= 1 somewhere); scale it down.")
    faces = torch.arange(n + 1, dtype=rho.dtype, device=rho.device) + bl
    return push_forward_lines(rho.movedim(ax, -1), faces).movedim(-1, ax)
