"""Quality-control report of a distortion correction: a PNG figure and a self-contained HTML page.

The figure shows, on one slice that contains the phase-encoding axis: the up and down images
and their absolute difference before correction (row 1), the same after correction on the same
grey scales (row 2), the field (Hz) over the corrected mean, the Jacobian ``1 + ∂_v b`` of the up
image with its range, and the convergence of the optimizer (row 3).  The HTML page embeds the
PNG (base64) and tabulates the metrics; it references nothing outside itself.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["choose_slice", "write_qc_report"]


def choose_slice(
    shape: Sequence[int], pe_axis: int, difference: np.ndarray | None = None
) -> tuple[int, int]:
    """The slice shown in the report: ``(slice_axis, index)``.

    The slice axis is the last array axis other than the PE axis (so the shown plane contains
    the PE direction, along which the distortion acts).  The index is the slice where
    ``difference`` (e.g. ``(up − down)²``) has the most energy — the most distorted one — or
    the middle slice without it.

    Example:
        >>> choose_slice((64, 64, 30), pe_axis=1)
        (2, 15)
        >>> choose_slice((64, 64, 30), pe_axis=2)
        (1, 32)
        >>> d = np.zeros((4, 5, 6)); d[:, :, 4] = 1.0
        >>> choose_slice(d.shape, pe_axis=1, difference=d)
        (2, 4)
    """
    axis = 2 if pe_axis != 2 else 1
    if difference is None:
        return axis, int(shape[axis]) // 2
    other = tuple(a for a in range(3) if a != axis)
    energy = np.asarray(difference, dtype=np.float64).sum(axis=other)
    return axis, int(np.argmax(energy))


def _plane(vol: np.ndarray, axis: int, index: int, pe_axis: int) -> np.ndarray:
    """2-D plane with the PE axis vertical (rows) and the other in-plane axis horizontal."""
    p = np.take(np.asarray(vol, dtype=np.float64), index, axis=axis)
    other = [a for a in range(3) if a not in (axis,)]  # the two in-plane axes, in order
    return p if other[0] == pe_axis else p.T  # rows = PE axis


def write_qc_report(
    png_path: str | os.PathLike[str],
    html_path: str | os.PathLike[str] | None,
    *,
    up: np.ndarray,
    down: np.ndarray,
    corrected_up: np.ndarray,
    corrected_down: np.ndarray,
    field_hz: np.ndarray,
    jacobian_up: np.ndarray,
    jacobian_down: np.ndarray,
    pe_axis: int,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    history: Mapping[str, Sequence[float | None]] | None = None,
    metrics: Mapping[str, Any] | None = None,
    title: str = "odeflow EPI distortion correction",
) -> dict[str, Path]:
    """Write the QC figure (PNG) and an HTML page embedding it with a table of metrics.

    Args:
        png_path: output PNG.
        html_path: output HTML, or ``None`` for the PNG only.
        up, down, corrected_up, corrected_down, field_hz, jacobian_up, jacobian_down:
            ``(X, Y, Z)`` arrays on the image grid.
        pe_axis: phase-encoding array axis (0, 1, 2).
        voxel_size: voxel sizes (mm) for the aspect ratio.
        history: per-iteration ``objective``/``distance``/``smoothness`` (lists).
        metrics: nested dictionary shown in the HTML (``metrics.json`` content).
        title: figure and page title.

    Returns:
        ``{"png": Path, "html": Path}`` (``"html"`` only when written).

    Raises:
        ValueError: if the arrays are not 3-D on one grid or ``pe_axis`` is not 0, 1 or 2.

    Example:
        >>> import tempfile, numpy as np
        >>> z = np.random.default_rng(0).random((8, 9, 6)); one = np.ones_like(z)
        >>> d = tempfile.mkdtemp()
        >>> out = write_qc_report(d + "/qc.png", d + "/qc.html", up=z, down=z, corrected_up=z,
        ...     corrected_down=z, field_hz=0 * z, jacobian_up=one, jacobian_down=one, pe_axis=1)
        >>> sorted(out), out["png"].stat().st_size > 0
        (['html', 'png'], True)
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    vols = {
        "up": up,
        "down": down,
        "corrected_up": corrected_up,
        "corrected_down": corrected_down,
        "field_hz": field_hz,
        "jacobian_up": jacobian_up,
        "jacobian_down": jacobian_down,
    }
    shape = np.shape(up)
    for k, v in vols.items():
        if np.ndim(v) != 3 or np.shape(v) != shape:
            raise ValueError(f"{k} has shape {np.shape(v)}; all QC volumes must be 3-D {shape}")
    if pe_axis not in (0, 1, 2):
        raise ValueError(f"pe_axis must be 0, 1 or 2, got {pe_axis!r}")
    diff2 = (np.asarray(up, dtype=np.float64) - np.asarray(down, dtype=np.float64)) ** 2
    axis, index = choose_slice(shape, pe_axis, diff2)
    pl = {k: _plane(v, axis, index, pe_axis) for k, v in vols.items()}
    in_plane = [a for a in range(3) if a != axis]
    col_axis = in_plane[0] if in_plane[1] == pe_axis else in_plane[1]
    aspect = float(voxel_size[pe_axis]) / float(voxel_size[col_axis])
    letters = "ijk"

    vmax = float(np.percentile(np.concatenate([pl["up"].ravel(), pl["down"].ravel()]), 99.5))
    vmax = vmax if vmax > 0 else 1.0
    diff_before = np.abs(pl["up"] - pl["down"])
    diff_after = np.abs(pl["corrected_up"] - pl["corrected_down"])
    dmax = float(np.percentile(diff_before, 99.5)) or 1.0

    fig = Figure(figsize=(12, 11), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 3)
    fig.suptitle(
        f"{title}\nslice {letters[axis]} = {index}, PE axis {letters[pe_axis]} vertical",
        fontsize=11,
    )
    rms_b = float(np.sqrt(np.mean(diff2)))
    rms_a = float(np.sqrt(np.mean((np.asarray(corrected_up) - np.asarray(corrected_down)) ** 2)))
    gray = {"aspect": aspect, "vmax": vmax}
    diff = {"aspect": aspect, "cmap": "magma", "vmax": dmax, "cbar": True}
    _panel(fig, axes[0, 0], pl["up"], "up (before)", **gray)
    _panel(fig, axes[0, 1], pl["down"], "down (before)", **gray)
    _panel(fig, axes[0, 2], diff_before, f"|up − down| before (RMS {rms_b:.3g})", **diff)
    _panel(fig, axes[1, 0], pl["corrected_up"], "up corrected", **gray)
    _panel(fig, axes[1, 1], pl["corrected_down"], "down corrected", **gray)
    _panel(fig, axes[1, 2], diff_after, f"|up − down| after (RMS {rms_a:.3g})", **diff)
    _draw_field(fig, axes[2, 0], pl, np.asarray(field_hz), **gray)
    _draw_jacobians(fig, axes[2, 1], pl["jacobian_up"], jacobian_up, jacobian_down, aspect)
    _draw_history(axes[2, 2], history)
    fig.tight_layout()

    png = Path(png_path)
    fig.savefig(png, format="png")
    out = {"png": png}
    if html_path is not None:
        out["html"] = Path(html_path)
        # the page declares UTF-8: write UTF-8 whatever the locale; file names that are not
        # valid UTF-8 (decoded by Python with surrogate escapes) go back to their own bytes
        out["html"].write_text(
            _html_page(png.read_bytes(), metrics or {}, title),
            encoding="utf-8",
            errors="surrogateescape",
        )
    return out


def _panel(fig, ax, img, name, *, aspect, cmap="gray", vmin=0.0, vmax=1.0, cbar=False):
    """One image panel (PE vertical, no ticks), with a colour bar if asked."""
    im = ax.imshow(
        img,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        origin="lower",
        aspect=aspect,
        interpolation="nearest",
    )
    ax.set_title(name, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if cbar:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    return im


def _draw_field(fig, ax, pl, field_hz: np.ndarray, *, aspect: float, vmax: float) -> None:
    """The field (Hz) over the corrected mean, more opaque where it is larger."""
    mean = 0.5 * (pl["corrected_up"] + pl["corrected_down"])
    _panel(fig, ax, mean, "", aspect=aspect, vmax=vmax)
    fmax = float(np.abs(field_hz).max()) or 1.0
    alpha_map = np.clip(np.abs(pl["field_hz"]) / fmax, 0.0, 1.0) * 0.8
    im = ax.imshow(
        pl["field_hz"],
        cmap="coolwarm",
        vmin=-fmax,
        vmax=fmax,
        origin="lower",
        aspect=aspect,
        alpha=alpha_map,
        interpolation="nearest",
    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="Hz")
    ax.set_title(
        f"field over corrected mean\n{float(np.min(field_hz)):.1f} … "
        f"{float(np.max(field_hz)):.1f} Hz",
        fontsize=9,
    )


def _draw_jacobians(fig, ax, plane, jacobian_up, jacobian_down, aspect: float) -> None:
    """The up image's Jacobian on the slice, titled with both Jacobians' ranges."""
    ju, jd = np.asarray(jacobian_up), np.asarray(jacobian_down)
    jr = max(float(np.abs(ju - 1).max()), float(np.abs(jd - 1).max()), 1e-3)
    _panel(
        fig,
        ax,
        plane,
        f"Jacobian up 1+∂b: [{ju.min():.2f}, {ju.max():.2f}]\n"
        f"down 1−∂b: [{jd.min():.2f}, {jd.max():.2f}]",
        aspect=aspect,
        cmap="PuOr_r",
        vmin=1 - jr,
        vmax=1 + jr,
        cbar=True,
    )


def _draw_history(ax, history: Mapping[str, Sequence[float | None]] | None) -> None:
    """The positive, finite parts of the convergence history on a log scale."""
    plotted = False
    for key in ("objective", "distance", "smoothness", "barrier"):
        vals = [v for v in (history or {}).get(key, []) if v is not None]
        vals_arr = np.asarray(vals, dtype=np.float64)
        if vals_arr.size and np.all(np.isfinite(vals_arr)) and np.all(vals_arr > 0):
            ax.semilogy(np.arange(vals_arr.size), vals_arr, marker="o", ms=3, label=key)
            plotted = True
    if plotted:
        ax.legend(fontsize=8)
        ax.set_xlabel("iteration (0 = 1-D OT start)")
        ax.grid(True, which="both", alpha=0.3)
    else:
        ax.text(0.5, 0.5, "no convergence history", ha="center", va="center")
    ax.set_title("convergence", fontsize=9)


def _rows(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            rows += _rows(v, name + ".")
        elif isinstance(v, float):
            rows.append((name, f"{v:.6g}"))
        elif isinstance(v, (list, tuple)) and len(v) > 12:
            rows.append((name, f"[{len(v)} values]"))
        else:
            rows.append((name, str(v)))
    return rows


def _html_page(png: bytes, metrics: Mapping[str, Any], title: str) -> str:
    b64 = base64.b64encode(png).decode("ascii")
    sections = []
    for key in ("result", "acquisition", "parameters", "timings_s", "inputs", "versions"):
        if key in metrics and isinstance(metrics[key], Mapping):
            body = "\n".join(
                f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                for k, v in _rows(metrics[key])
            )
            sections.append(f"<h2>{html.escape(key)}</h2>\n<table>\n{body}\n</table>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;font-size:13px}"
        "td{border:1px solid #ccc;padding:2px 6px;font-family:monospace}"
        "img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{style}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f'<img alt="QC figure" src="data:image/png;base64,{b64}">\n'
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
