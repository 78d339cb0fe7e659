"""BIDS metadata for a blip-up/blip-down pair: phase-encoding direction, readout time, polarity.

BIDS (https://bids-specification.readthedocs.io, "Magnetic resonance imaging data") stores the
acquisition in a JSON sidecar next to each image:

* ``PhaseEncodingDirection`` is one of ``i, i-, j, j-, k, k-``: the letter names the *array*
  (voxel) axis of the stored NIfTI data (i = first, j = second, k = third) and ``-`` means the
  encoding runs towards decreasing index along it.  Its direction in the world is the
  corresponding column of the affine, so a reoriented copy of a scan (axes permuted, an axis
  flipped) carries a different letter for the same physical direction.
* ``TotalReadoutTime`` (s) is the time from the centre of the first to the centre of the last
  echo; when absent, ``EffectiveEchoSpacing × (ReconMatrixPE − 1)`` (with ``ReconMatrixPE``
  defaulting to the image's size along the PE axis, as the specification defines it).

A voxel in an image with PE direction ``(axis a, sign s)`` and readout time ``T`` is displaced by
``s · Δf · T`` voxels along increasing index of array axis ``a``, where ``Δf`` (Hz) is the
off-resonance field (the FSL topup / SDCFlows convention).

Anatomical from–to codes are also accepted where a letter is asked for: ``AP`` (anterior to
posterior), ``PA``, ``LR``, ``RL``, ``IS``, ``SI``; they are mapped through the affine (NIfTI
world space is RAS+) to the array axis most aligned with that direction.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._nifti import EPIInputError

__all__ = [
    "READOUT_TIME_RANGE",
    "Acquisition",
    "PhaseEncoding",
    "parse_pe_direction",
    "read_sidecar",
    "readout_time_from_sidecar",
    "resolve_acquisition",
    "sidecar_path",
]

_LETTERS = "ijk"
#: world (RAS+) unit vectors of the anatomical from-to codes
_ANATOMICAL = {
    "LR": (1.0, 0.0, 0.0),
    "RL": (-1.0, 0.0, 0.0),
    "PA": (0.0, 1.0, 0.0),
    "AP": (0.0, -1.0, 0.0),
    "IS": (0.0, 0.0, 1.0),
    "SI": (0.0, 0.0, -1.0),
}
#: smallest |cos| between an anatomical direction and an array axis accepted as "along it"
#: (40°: clearly closer to one axis than to any other; typical obliquities are 10–30°)
_MIN_ALIGNMENT = math.cos(math.radians(40.0))
#: plausible total readout times (s), the default ``readout_time_range``: above 1 s a time
#: is almost surely given in milliseconds, below 0.1 ms the field in Hz would be absurd
#: (a 2-voxel shift at 1e-9 s is 2e9 Hz)
READOUT_TIME_RANGE = (1e-4, 1.0)


@dataclass(frozen=True)
class PhaseEncoding:
    """A phase-encoding direction on the voxel grid: array ``axis`` (0, 1, 2) and ``sign`` (±1).

    Example:
        >>> pe = PhaseEncoding(axis=1, sign=-1)
        >>> pe.code, pe.opposite().code
        ('j-', 'j')
    """

    axis: int
    sign: int

    def __post_init__(self) -> None:
        if self.axis not in (0, 1, 2) or self.sign not in (-1, 1):
            raise EPIInputError(
                f"invalid phase encoding axis={self.axis!r}, sign={self.sign!r}; "
                "axis must be 0, 1 or 2 and sign ±1"
            )

    @property
    def code(self) -> str:
        """The BIDS ``PhaseEncodingDirection`` string (``"j-"``)."""
        return _LETTERS[self.axis] + ("-" if self.sign < 0 else "")

    def opposite(self) -> PhaseEncoding:
        """The same axis with the opposite polarity."""
        return PhaseEncoding(self.axis, -self.sign)

    def world_direction(self, affine: np.ndarray) -> np.ndarray:
        """Unit vector (3,) of the encoding direction in world (RAS+) coordinates."""
        col = np.asarray(affine, dtype=np.float64)[:3, self.axis] * self.sign
        return col / np.linalg.norm(col)

    def anatomical(self, affine: np.ndarray) -> str:
        """The nearest anatomical from–to code (``"PA"``, ``"AP"``, …) of this direction."""
        w = self.world_direction(affine)
        return max(_ANATOMICAL, key=lambda c: float(np.dot(_ANATOMICAL[c], w)))


def parse_pe_direction(text: str, affine: np.ndarray | None = None) -> PhaseEncoding:
    """Parse a phase-encoding direction: a BIDS letter or an anatomical from–to code.

    ``i``, ``j``, ``k`` (optionally followed by ``-``; ``+`` is accepted and ignored, ``-j`` is
    read as ``j-``) name the first, second, third array axis of the NIfTI data.  ``AP``,
    ``PA``, ``LR``, ``RL``, ``IS``, ``SI`` name a world direction (RAS+); with the scan's
    ``affine`` (voxel → world) the array axis is the column ``a`` of ``affine[:3, :3]`` with
    the largest ``|cos|`` to that direction and the sign is the sign of that cosine.

    Args:
        text: the direction string (case-insensitive for anatomical codes).
        affine: (4, 4) voxel-to-world matrix; required for anatomical codes.

    Returns:
        The :class:`PhaseEncoding`.

    Raises:
        EPIInputError: for an unknown string, an anatomical code without an affine, or an
            oblique scan where no array axis is within 40° of the anatomical direction.

    Example:
        >>> import numpy as np
        >>> parse_pe_direction("j-").code
        'j-'
        >>> las = np.diag([-2.0, 2.0, 2.0, 1.0])       # x flipped: i runs right-to-left
        >>> parse_pe_direction("LR", las).code
        'i-'
    """
    if not isinstance(text, str):
        raise EPIInputError(f"phase-encoding direction must be a string, got {text!r}")
    t = text.strip()
    low = t.lower()
    if len(low) == 2 and low[0] == "-" and low[1] in _LETTERS:  # "-j", written by some tools
        low = low[1] + "-"
    if len(low) in (1, 2) and low[0] in _LETTERS and low[1:] in ("", "-", "+"):
        return PhaseEncoding(_LETTERS.index(low[0]), -1 if low.endswith("-") else 1)
    up = t.upper()
    if up in _ANATOMICAL:
        if affine is None:
            raise EPIInputError(
                f"the anatomical direction {t!r} needs the image affine to be mapped to an "
                "array axis"
            )
        a = np.asarray(affine, dtype=np.float64)[:3, :3]
        cos = (a.T @ np.asarray(_ANATOMICAL[up])) / np.linalg.norm(a, axis=0)
        axis = int(np.argmax(np.abs(cos)))
        if abs(cos[axis]) < _MIN_ALIGNMENT:
            raise EPIInputError(
                f"the scan is too oblique to map {t!r} to an array axis (best |cos| = "
                f"{abs(cos[axis]):.2f}); give the BIDS letter instead (i, j, k with - sign)"
            )
        return PhaseEncoding(axis, 1 if cos[axis] > 0 else -1)
    raise EPIInputError(
        f"unknown phase-encoding direction {text!r}; use a BIDS PhaseEncodingDirection "
        "(i, i-, j, j-, k, k-) or an anatomical code (AP, PA, LR, RL, IS, SI)"
    )


def sidecar_path(image: str | os.PathLike[str]) -> Path:
    """The BIDS JSON sidecar of an image: ``sub-01_dir-AP_epi.nii.gz`` → ``…_epi.json``.

    Example:
        >>> sidecar_path("/data/sub-01_dir-AP_epi.nii.gz").name
        'sub-01_dir-AP_epi.json'
    """
    p = Path(image)
    name = p.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return p.with_name(name[: -len(suffix)] + ".json")
    return p.with_suffix(".json")


def read_sidecar(image: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the JSON sidecar next to ``image``; ``{}`` if there is none.

    Raises:
        EPIInputError: if the sidecar exists but is not a JSON object.
    """
    path = sidecar_path(image)
    if not path.is_file():
        return {}
    try:
        # JSON is UTF-8 (RFC 8259), whatever the locale; "-sig" also accepts a BOM
        meta = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EPIInputError(f"cannot read the BIDS sidecar '{path}': {exc}") from exc
    if not isinstance(meta, dict):
        raise EPIInputError(f"the BIDS sidecar '{path}' is not a JSON object")
    return meta


def _check_range(bounds: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise EPIInputError(
            f"readout_time_range must be two numbers (min, max) in seconds, got {bounds!r}"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo < hi):
        raise EPIInputError(
            f"readout_time_range must satisfy 0 < min < max (seconds), got {bounds!r}"
        )
    return lo, hi


def _check_readout(
    value: Any, what: str, bounds: tuple[float, float] = READOUT_TIME_RANGE
) -> float:
    if isinstance(value, bool):  # float(True) would silently read as a 1 s readout
        raise EPIInputError(f"{what} must be a number in seconds, got {value!r}")
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise EPIInputError(f"{what} must be a number in seconds, got {value!r}") from None
    if not math.isfinite(t) or t <= 0.0:
        raise EPIInputError(f"{what} must be a positive number of seconds, got {value!r}")
    lo, hi = bounds
    widen = (
        "; if it is right, widen the accepted range with --readout-time-range MIN MAX "
        f"(readout_time_range=(min, max); now {lo:g} .. {hi:g} s)"
    )
    if t > hi:
        raise EPIInputError(
            f"{what} = {t:g} s is implausibly long for an EPI readout (typical 0.02–0.15 s); "
            "BIDS times are in seconds, not milliseconds" + widen
        )
    if t < lo:
        raise EPIInputError(
            f"{what} = {t:g} s is implausibly short for an EPI readout (typical 0.02–0.15 s; "
            f"the field in Hz scales as 1/time, so it would be ~{1.0 / t:.2g} Hz per voxel of "
            "displacement)" + widen
        )
    return t


def readout_time_from_sidecar(
    meta: dict[str, Any],
    n_pe: int | None = None,
    *,
    readout_time_range: tuple[float, float] = READOUT_TIME_RANGE,
) -> tuple[float, str] | None:
    """Total readout time (s) from BIDS metadata, and the fields it came from.

    ``TotalReadoutTime`` if present, else ``EffectiveEchoSpacing × (ReconMatrixPE − 1)`` with
    ``ReconMatrixPE`` defaulting to ``n_pe`` (the image's size along the PE axis); then the
    ``Estimated…`` variants of both.

    Args:
        meta: the sidecar dictionary.
        n_pe: number of voxels along the PE axis (used when ``ReconMatrixPE`` is absent).
        readout_time_range: ``(min, max)`` plausible seconds (default 1e-4 .. 1).

    Returns:
        ``(seconds, source)`` or ``None`` if the metadata do not determine it.

    Raises:
        EPIInputError: if a present field is not a positive number of seconds within
            ``readout_time_range``.

    Example:
        >>> readout_time_from_sidecar({"EffectiveEchoSpacing": 0.0005, "ReconMatrixPE": 101})
        (0.05, 'EffectiveEchoSpacing*(ReconMatrixPE-1)')
    """
    for prefix in ("", "Estimated"):
        key = prefix + "TotalReadoutTime"
        if key in meta:
            return _check_readout(meta[key], key, _check_range(readout_time_range)), key
        key = prefix + "EffectiveEchoSpacing"
        if key in meta:
            ees = meta[key]
            if "ReconMatrixPE" in meta:
                n, src = meta["ReconMatrixPE"], f"{key}*(ReconMatrixPE-1)"
            elif n_pe is not None:
                n, src = n_pe, f"{key}*(image size along PE-1)"
            else:
                continue
            try:
                if isinstance(ees, bool):  # float(True) = 1 s per echo, not a spacing
                    raise TypeError
                n_f = float(n)
                ees_f = float(ees)
            except (TypeError, ValueError):
                raise EPIInputError(
                    f"{key}={ees!r} / ReconMatrixPE={n!r} are not numbers"
                ) from None
            if isinstance(n, bool) or not (math.isfinite(n_f) and n_f.is_integer()):
                # int() would silently truncate 96.7 to 96 (a wrong readout time)
                raise EPIInputError(f"ReconMatrixPE must be a whole number of voxels, got {n!r}")
            n = int(n_f)
            if n < 2:
                raise EPIInputError(f"ReconMatrixPE must be at least 2, got {n}")
            trt = round(ees_f * (n - 1), 12)
            return _check_readout(trt, src, _check_range(readout_time_range)), src
    return None


@dataclass(frozen=True)
class Acquisition:
    """The resolved acquisition of a blip-up/blip-down pair.

    Attributes:
        pe_up: phase encoding of the ``up`` image.
        pe_down: phase encoding of the ``down`` image (same axis, opposite sign).
        readout_time: total readout time (s) shared by both.
        sources: where each value came from (``"--pe-dir"``, ``"sidecar"``, …), for the record.
    """

    pe_up: PhaseEncoding
    pe_down: PhaseEncoding
    readout_time: float
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def pe_axis(self) -> int:
        """The array axis of phase encoding."""
        return self.pe_up.axis

    def field_hz(self, displacement_up_vox: np.ndarray) -> np.ndarray:
        """Off-resonance field Δf (Hz) from the ``up`` image's displacement (voxels, +axis).

        The up image is displaced by ``s_up · Δf · T`` voxels along increasing index of the PE
        axis, hence ``Δf = s_up · b / T``.
        """
        return self.pe_up.sign * np.asarray(displacement_up_vox) / self.readout_time


def _pe_from_sidecar(meta: dict[str, Any], which: str) -> PhaseEncoding | None:
    if "PhaseEncodingDirection" in meta:
        try:
            return parse_pe_direction(str(meta["PhaseEncodingDirection"]))
        except EPIInputError as exc:
            raise EPIInputError(f"the {which} sidecar's PhaseEncodingDirection: {exc}") from None
    return None


def resolve_acquisition(
    shape: tuple[int, ...],
    affine: np.ndarray,
    meta_up: dict[str, Any] | None,
    meta_down: dict[str, Any] | None,
    *,
    pe_dir: str | None = None,
    pe_dir_down: str | None = None,
    readout_time: float | None = None,
    ignore_sidecars: bool = False,
    readout_time_range: tuple[float, float] = READOUT_TIME_RANGE,
) -> Acquisition:
    """Decide the PE directions and readout time of a pair, refusing to guess.

    Rules (each value from an explicit option, else from the BIDS sidecars):

    * ``up``: ``pe_dir`` if given, else the up sidecar's ``PhaseEncodingDirection``.
    * ``down``: ``pe_dir_down`` if given, else the down sidecar's, else — only when ``pe_dir``
      was given explicitly — the opposite of ``pe_dir``.
    * An explicit direction (``pe_dir``, ``pe_dir_down``) that contradicts a sidecar's
      ``PhaseEncodingDirection`` is an error unless ``ignore_sidecars`` (use it when the
      sidecars are known to be wrong); with ``ignore_sidecars`` the sidecars' PE fields are not
      used at all.
    * Both must share the PE axis and have opposite signs (a same-polarity pair is refused).
    * Readout time: ``readout_time`` if given — it overrides the sidecars even where they
      disagree with it (a wrong readout time only rescales the field in Hz, never the
      correction), and the overridden sidecar value is named in ``sources["readout_time"]`` —
      else from the sidecars (both must agree to 1 %).  Either way it must lie in
      ``readout_time_range`` (default 1e-4 .. 1 s: a value outside is almost surely in the
      wrong unit); widen the range to accept an unusual but correct value.

    Args:
        shape: spatial shape (X, Y, Z) of the pair.
        affine: (4, 4) voxel-to-world matrix of the pair (for anatomical codes).
        meta_up, meta_down: the sidecars (``None`` or ``{}`` when absent / not applicable).
        pe_dir, pe_dir_down: explicit directions (BIDS letters or anatomical codes).
        readout_time: explicit total readout time (s).
        ignore_sidecars: do not use the sidecars' PE fields.
        readout_time_range: ``(min, max)`` plausible readout times in seconds.

    Returns:
        The :class:`Acquisition`.

    Raises:
        EPIInputError: for a missing or contradictory direction, a same-polarity or
            different-axis pair, or a missing, implausible or inconsistent readout time.

    Example:
        >>> import numpy as np
        >>> acq = resolve_acquisition((64, 64, 30), np.eye(4), {"PhaseEncodingDirection": "j",
        ...     "TotalReadoutTime": 0.05}, {"PhaseEncodingDirection": "j-",
        ...     "TotalReadoutTime": 0.05})
        >>> acq.pe_up.code, acq.pe_down.code, acq.readout_time
        ('j', 'j-', 0.05)
    """
    meta_up = dict(meta_up or {})
    meta_down = dict(meta_down or {})
    sources: dict[str, str] = {}
    side_up = None if ignore_sidecars else _pe_from_sidecar(meta_up, "up")
    side_down = None if ignore_sidecars else _pe_from_sidecar(meta_down, "down")

    def _explicit(text: str, option: str, side: PhaseEncoding | None, which: str) -> PhaseEncoding:
        pe = parse_pe_direction(text, affine)
        if side is not None and side != pe:
            raise EPIInputError(
                f"{option} {text} (= {pe.code}) contradicts the {which} sidecar's "
                f"PhaseEncodingDirection {side.code}; if the sidecar is wrong, add "
                "--ignore-sidecars"
            )
        return pe

    if pe_dir is not None:
        pe_up = _explicit(pe_dir, "--pe-dir", side_up, "up")
        sources["pe_up"] = "--pe-dir"
    elif side_up is not None:
        pe_up = side_up
        sources["pe_up"] = "sidecar"
    else:
        raise EPIInputError(
            "the phase-encoding direction of the up image is unknown: no BIDS sidecar with "
            "PhaseEncodingDirection next to it; give it with --pe-dir (e.g. --pe-dir j-)"
        )
    if pe_dir_down is not None:
        pe_down = _explicit(pe_dir_down, "--pe-dir-down", side_down, "down")
        sources["pe_down"] = "--pe-dir-down"
    elif side_down is not None:
        pe_down = side_down
        sources["pe_down"] = "sidecar"
    elif pe_dir is not None:
        pe_down = pe_up.opposite()
        sources["pe_down"] = "opposite of --pe-dir"
    else:
        raise EPIInputError(
            "the phase-encoding direction of the down image is unknown: no BIDS sidecar with "
            "PhaseEncodingDirection next to it; give --pe-dir for the up image (down is then "
            "taken as its opposite) or --pe-dir-down"
        )
    if pe_up.axis != pe_down.axis:
        raise EPIInputError(
            f"up ({pe_up.code}) and down ({pe_down.code}) are phase-encoded along different "
            "axes; a blip-up/blip-down pair needs the same axis with opposite polarity"
        )
    if pe_up.sign == pe_down.sign:
        raise EPIInputError(
            f"up and down have the same phase-encoding polarity ({pe_up.code}); the pair must "
            "have opposite polarity (e.g. AP and PA). Refusing to guess: if the metadata are "
            "wrong, pass --pe-dir (and --ignore-sidecars)"
        )
    if len(shape) < 3 or shape[pe_up.axis] < 2:
        raise EPIInputError(
            f"the image has shape {tuple(shape)}: at least 2 voxels are needed along the "
            f"phase-encoding axis {pe_up.code[0]}"
        )

    n_pe = int(shape[pe_up.axis])
    bounds = _check_range(readout_time_range)
    if readout_time is not None:
        trt = _check_readout(readout_time, "--readout-time", bounds)
        sources["readout_time"] = "--readout-time"
        differ = []
        for w, m in (("up", meta_up), ("down", meta_down)):
            try:  # an explicit value also overrides a malformed sidecar field
                side = readout_time_from_sidecar(m, n_pe, readout_time_range=bounds)
            except EPIInputError:
                differ.append(f"the {w} sidecar's invalid value")
                continue
            if side is not None and abs(side[0] - trt) > 0.01 * max(side[0], trt):
                differ.append(f"the {w} sidecar's {side[0]:g} s")
        if differ:
            sources["readout_time"] += " (overrides " + " and ".join(differ) + ")"
    else:
        got = {
            w: readout_time_from_sidecar(m, n_pe, readout_time_range=bounds)
            for w, m in (("up", meta_up), ("down", meta_down))
        }
        vals = {w: v for w, v in got.items() if v is not None}
        if not vals:
            raise EPIInputError(
                "the total readout time is unknown: the sidecars have neither TotalReadoutTime "
                "nor EffectiveEchoSpacing; give it with --readout-time SECONDS (e.g. 0.05)"
            )
        if len(vals) == 2:
            (tu, _), (td, _) = vals["up"], vals["down"]
            if abs(tu - td) > 0.01 * max(tu, td):
                raise EPIInputError(
                    f"the up and down sidecars give different readout times ({tu} s, {td} s); "
                    "the model assumes one readout time; give it with --readout-time"
                )
        which, (trt, src) = next(iter(vals.items()))
        sources["readout_time"] = f"{which} sidecar {src}"
    return Acquisition(pe_up, pe_down, trt, sources)
