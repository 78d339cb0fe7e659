"""Batched 1-D optimal-transport (Chang–Fitzpatrick) initial guess along PE lines."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._model import _interp_sorted

__all__ = ["gaussian_smooth", "ot_displacement", "ot_lines"]


def ot_lines(up: torch.Tensor, down: torch.Tensor, *, shift: float = 0.0) -> torch.Tensor:
    r"""Per-line 1-D OT estimate of the displacement on the cell faces (PE last).

    Densities ``p_± = max(I_±, 0) + shift`` are piecewise constant on cells, normalized to unit
    mass per line, with CDFs ``C_±`` (piecewise linear, knots at the faces) and quantile
    functions ``Q_± = C_±^{-1}``. If ``x ↦ x ± b(x)`` push the undistorted density ρ to
    ``p_±`` (the model ``ρ = I_±(x ± b)(1 ± ∂b)``), then ``Q_± = Q_ρ ± b∘Q_ρ``, hence
    ``Q_ρ = ½(Q₊ + Q₋)`` (the Wasserstein barycentre) and ``b(Q_ρ(t)) = ½(Q₊(t) − Q₋(t))``.
    Both are piecewise linear in ``t`` with knots at ``C₊(faces) ∪ C₋(faces)``, so ``b`` is
    evaluated exactly (for the piecewise-linear CDFs) at the faces by one batched
    ``searchsorted``. ``|Δb| < 1`` between faces follows from monotone ``Q_±``.

    Args:
        up, down: ``(…, n)`` line images (cells).
        shift: added to both densities (keeps ``Q_±`` well defined where the signal vanishes).

    Returns:
        ``(…, n + 1)`` displacement on the faces, in voxels (0 at both ends).

    Raises:
        ValueError: if a line has no mass and ``shift`` is 0.
    """
    pu = up.clamp(min=0) + shift
    pd = down.clamp(min=0) + shift
    cu = F.pad(torch.cumsum(pu, -1), (1, 0))
    cd = F.pad(torch.cumsum(pd, -1), (1, 0))
    mu, md = cu[..., -1:], cd[..., -1:]
    if bool(((mu <= 0) | (md <= 0)).any()):
        raise ValueError(
            "ot_lines: a PE line carries no mass; pass shift > 0 (done by estimate_field)."
        )
    cu, cd = cu / mu, cd / md
    n = up.shape[-1]
    x = torch.arange(n + 1, dtype=up.dtype, device=up.device).expand(cu.shape)
    t, _ = torch.sort(torch.cat([cu, cd], -1), -1)
    qu = _interp_sorted(t, cu, x)
    qd = _interp_sorted(t, cd, x)
    qmid = 0.5 * (qu + qd)
    half = 0.5 * (qu - qd)
    b = _interp_sorted(x.contiguous(), qmid, half)
    b[..., 0] = 0.0
    b[..., -1] = 0.0
    return b


def _gauss_kernel(sigma: float, dtype, device) -> torch.Tensor:
    r = max(1, int(np.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_smooth(u: torch.Tensor, sigma: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian smoothing of a 3-D tensor (sigma per axis in voxels, replicate ends)."""
    out = u
    for ax, s in enumerate(sigma):
        if s <= 0 or u.shape[ax] < 2:
            continue
        k = _gauss_kernel(float(s), u.dtype, u.device)
        r = (k.numel() - 1) // 2
        v = out.movedim(ax, -1)
        shp = v.shape
        v = v.reshape(-1, 1, shp[-1])
        v = F.pad(v, (r, r), mode="replicate")
        v = F.conv1d(v, k.view(1, 1, -1))
        out = v.reshape(shp).movedim(-1, ax)
    return out


def ot_displacement(
    up: torch.Tensor | np.ndarray,
    down: torch.Tensor | np.ndarray,
    *,
    pe_axis: int,
    shift: float | None = None,
    smoothing: float | Sequence[float] = 0.0,
) -> torch.Tensor:
    r"""1-D optimal-transport (Chang–Fitzpatrick) displacement estimate, on the image grid.

    Every PE line is solved independently and in one batch by :func:`ot_lines` (the
    Wasserstein-barycentre construction); the face field is optionally Gaussian-smoothed
    (``smoothing``: sigma in voxels, one value or one per axis) and averaged to the cell
    centres. The result ``b`` (voxels along ``+pe_axis``) satisfies
    ``up(x + b)(1 + ∂b) ≈ down(x − b)(1 − ∂b)``.

    Args:
        up, down: 3-D images of the same shape, ``up`` with +PE polarity along ``pe_axis``.
        pe_axis: the phase-encoding array axis (0, 1, 2 or negative).
        shift: density shift (default ``1e-3 ×`` the larger image maximum).
        smoothing: Gaussian sigma(s) in voxels (0 = none).

    Returns:
        ``(X, Y, Z)`` displacement in voxels, cell-centred.

    Raises:
        ValueError: on non-3-D or mismatched inputs.

    Reference:
        Chang & Fitzpatrick, "A technique for accurate magnetic resonance imaging in the presence
        of field inhomogeneities", IEEE TMI 11 (1992); Julian et al., arXiv:2403.10706.

    Example:
        >>> x = torch.arange(64, dtype=torch.float64)
        >>> img = torch.exp(-0.5 * ((x - 32) / 6) ** 2).repeat(2, 2, 1)
        >>> b = ot_displacement(img, img, pe_axis=2)
        >>> float(b.abs().max()) < 1e-9
        True
    """
    up_t = torch.as_tensor(up)
    down_t = torch.as_tensor(down, device=up_t.device)
    if up_t.ndim != 3 or up_t.shape != down_t.shape:
        raise ValueError(
            f"ot_displacement: up and down must be 3-D with the same shape, got "
            f"{tuple(up_t.shape)} and {tuple(down_t.shape)}."
        )
    if not up_t.is_floating_point():
        up_t, down_t = up_t.float(), down_t.float()
    down_t = down_t.to(up_t.dtype)
    ax = pe_axis % 3
    u_l, d_l = up_t.movedim(ax, -1), down_t.movedim(ax, -1)
    if shift is None:
        shift = 1e-3 * float(torch.maximum(u_l.abs().max(), d_l.abs().max()).clamp(min=1e-30))
    b = ot_lines(u_l, d_l, shift=shift)
    sig = (smoothing,) * 3 if np.isscalar(smoothing) else tuple(smoothing)
    if any(s > 0 for s in sig):
        sig_l = [sig[i] for i in range(3) if i != ax] + [sig[ax]]
        b = gaussian_smooth(b, sig_l)
    return (0.5 * (b[..., 1:] + b[..., :-1])).movedim(-1, ax)
