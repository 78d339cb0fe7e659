"""Inputs outside the model: negative or empty intensities, implausible weights.

The mass-preserving model ρ(x) = I₊(x + bv)(1 + ∂_v b) = I₋(x − bv)(1 − ∂_v b) treats the
intensities as a density: it assumes I ≥ 0. A constant negative offset (a background that
is not zero) or a signed image breaks mass conservation and gives a wrong field without any
other sign of trouble, so negative mass is refused unless the caller chooses how to remove
it (``negative="clip"`` or ``"shift"``).
"""

from __future__ import annotations

import torch

#: what ``negative=`` accepts
NEGATIVE_MODES = ("error", "clip", "shift")
#: negative mass up to this fraction of the total (noise around a zero background,
#: interpolation ringing) is accepted as it is under ``negative="error"``
NEGATIVE_TOLERANCE = 1e-3
#: largest accepted ``alpha``/``beta``: far larger weights only force b = 0 (alpha) or
#: ∂_v b = 0 (beta), and overflow single precision in the objective
MAX_WEIGHT = 1e10


def negative_fraction(t: torch.Tensor) -> float:
    """Negative mass over total absolute mass, ``Σ max(−I, 0) / Σ |I|`` (0 for all zeros)."""
    t = t.double()
    total = float(t.abs().sum())
    return float((-t).clamp(min=0).sum()) / total if total > 0 else 0.0


def check_weights(alpha: float, beta: float) -> None:
    """Refuse ``alpha``/``beta`` outside ``[0, MAX_WEIGHT]`` / ``(0, MAX_WEIGHT]``."""
    for name, v, low in (("alpha", alpha, "0 <="), ("beta", beta, "0 <")):
        try:
            big = float(v) > MAX_WEIGHT
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {v!r}.") from None
        if big:
            raise ValueError(
                f"{name} = {float(v):g} is too large: a weight above {MAX_WEIGHT:g} only forces "
                f"the field to {'zero' if name == 'alpha' else 'a constant along PE'} (and "
                f"overflows single precision); use {low} {name} <= {MAX_WEIGHT:g} (defaults: "
                "alpha 300, beta 1e-4)."
            )


def prepare_intensities(
    up: torch.Tensor, down: torch.Tensor, negative: str
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float | str]]:
    """Refuse an empty image and handle negative intensities as ``negative`` says.

    ``"error"``: refuse (ValueError stating each image's fraction of negative mass and
    minimum) when either image's negative mass exceeds :data:`NEGATIVE_TOLERANCE` of its
    total; ``"clip"``: set negative values to 0 (for noise around a zero background);
    ``"shift"``: subtract the pair's common minimum from both (for a constant offset; the
    difference of the two images is unchanged).

    Returns:
        ``(up, down, info)`` with ``info`` the fractions, the mode and the shift applied.
    """
    if negative not in NEGATIVE_MODES:
        raise ValueError(
            f"negative must be one of {', '.join(map(repr, NEGATIVE_MODES))}, got {negative!r}."
        )
    for name, t in (("up", up), ("down", down)):
        if not bool((t != 0).any()):
            raise ValueError(
                f"{name} is zero everywhere (an empty image): there is no signal to match; "
                "check that the right file or volume was given."
            )
    fu, fd = negative_fraction(up), negative_fraction(down)
    info: dict[str, float | str] = {"negative": negative, "negative_mass_up": fu,
                                    "negative_mass_down": fd, "intensity_shift": 0.0}  # fmt: skip
    if max(fu, fd) == 0.0:
        return up, down, info
    if negative == "error":
        if max(fu, fd) <= NEGATIVE_TOLERANCE:
            return up, down, info
        lo_u, lo_d = float(up.min()), float(down.min())
        raise ValueError(
            f"the images have negative intensities (up: {100 * fu:.3g} % of its mass, minimum "
            f"{lo_u:.4g}; down: {100 * fd:.3g} %, minimum {lo_d:.4g}); the mass-preserving "
            "model assumes intensities >= 0 and would give a wrong field. For a constant "
            "offset (a background that is not 0) pass negative='shift' (--negative shift), "
            "which subtracts the common minimum; for noise around a zero background pass "
            "negative='clip' (--negative clip), which sets negative values to 0."
        )
    if negative == "clip":
        up, down = up.clamp(min=0), down.clamp(min=0)
        for name, t in (("up", up), ("down", down)):
            if not bool((t != 0).any()):
                raise ValueError(
                    f"{name} has no positive intensity: clipping its negative values leaves "
                    "an empty image; use negative='shift' (--negative shift) for an offset."
                )
        return up, down, info
    m = float(torch.minimum(up.min(), down.min()))
    info["intensity_shift"] = -m
    return up - m, down - m, info
