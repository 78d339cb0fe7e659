"""sbibm's observations and reference posteriors read from its wheel, and corner plots.

sbibm (Lueckmann et al., arXiv 2101.04653) ships, inside its wheel, ten observations and
10 000 reference posterior samples per task (``sbibm/tasks/<task>/files/num_observation_<k>/``).
They are read here straight from the wheel file (a zip archive; nothing of sbibm is
imported, nothing is downloaded): ``pip download sbibm==1.1.0 --no-deps -d DIR``.
"""

from __future__ import annotations

import bz2
import io
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["plot_corner", "sbibm_reference"]


def sbibm_reference(wheel: str | Path, task: str, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """sbibm's observation ``k`` (1..10) of ``task`` and its reference posterior samples.

    Returns:
        ``(y_dim,)`` observation and ``(10000, theta_dim)`` reference samples (float64).

    Args:
        wheel: path of ``sbibm-1.1.0-py2.py3-none-any.whl``.
        task: sbibm task name (e.g. ``"two_moons"``); k: the observation, 1 to 10.

    Raises:
        FileNotFoundError: no such wheel.
        ValueError: not a zip file, or no such task or observation in it.

    Reference: Lueckmann et al., arXiv 2101.04653.

    Example:
        >>> sbibm_reference("no-such.whl", "two_moons")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        FileNotFoundError: no-such.whl: no such file; get it with `pip download sbibm==1.1.0 ...
    """
    wheel = Path(wheel)
    if not wheel.is_file():
        raise FileNotFoundError(
            f"{wheel}: no such file; get it with `pip download sbibm==1.1.0 --no-deps -d DIR`"
        )
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 10:
        raise ValueError(f"k must be an observation number from 1 to 10, got {k!r}")
    base = f"sbibm/tasks/{task}/files/num_observation_{k}/"
    try:
        with zipfile.ZipFile(wheel) as z:
            obs_txt = z.read(base + "observation.csv").decode()
            raw = bz2.decompress(z.read(base + "reference_posterior_samples.csv.bz2")).decode()
    except zipfile.BadZipFile:
        raise ValueError(f"{wheel} is not a wheel (zip) file") from None
    except KeyError:
        raise ValueError(f"{wheel} holds no observation {k} of task {task!r}") from None
    obs = np.loadtxt(io.StringIO(obs_txt), delimiter=",", skiprows=1, ndmin=2)[0]
    ref = np.loadtxt(io.StringIO(raw), delimiter=",", skiprows=1, ndmin=2)
    return obs, ref


def plot_corner(
    samples: np.ndarray,
    path: str | Path,
    *,
    reference: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    labels: list[str] | None = None,
    title: str = "",
    max_points: int = 5000,
) -> Path:
    """Save a corner plot (histograms on the diagonal, scatter below) of ``samples: (n, d)``,
    over ``reference: (m, d)`` samples if given, with ``truth: (d,)`` marked.

    Args:
        samples: ``(n, d)`` model samples; path: the image file written.
        reference, truth, labels, title: see above; max_points: samples drawn per set.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: samples not a finite (n, d) array, or a reference of another width.
        ImportError: matplotlib is missing (install the ``viz`` extra).

    Example:
        >>> import tempfile
        >>> rng = np.random.default_rng(0)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     plot_corner(rng.normal(size=(200, 2)), Path(d) / "c.png").name
        'c.png'
    """
    s = np.asarray(samples, dtype=float)
    if s.ndim != 2 or s.shape[0] < 2 or not np.isfinite(s).all():
        raise ValueError(f"samples must be a finite (n, d) array with n >= 2, got {s.shape}")
    d = s.shape[1]
    r = None if reference is None else np.asarray(reference, dtype=float)
    if r is not None and (r.ndim != 2 or r.shape[1] != d):
        raise ValueError(f"reference must have shape (m, {d}), got {r.shape}")
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover
        raise ImportError("plots need matplotlib: pip install 'odeflow[viz]'") from exc
    s = s[:max_points]
    r = None if r is None else r[:max_points]
    labels = labels or [f"θ{i + 1}" for i in range(d)]
    both = s if r is None else np.concatenate([s, r])
    lo, hi = np.quantile(both, 0.002, axis=0), np.quantile(both, 0.998, axis=0)
    pad = 0.05 * np.maximum(hi - lo, 1e-12)
    lo, hi = lo - pad, hi + pad
    size = min(max(2.2 * d, 5.0), 14.0)
    fig, ax = plt.subplots(d, d, figsize=(size, size), squeeze=False)
    for i in range(d):
        for j in range(d):
            a = ax[i, j]
            if j > i:
                a.axis("off")
                continue
            if i == j:
                bins = np.linspace(lo[i], hi[i], 40)
                if r is not None:
                    a.hist(r[:, i], bins, density=True, color="0.6", label="reference")
                a.hist(s[:, i], bins, density=True, histtype="step", color="C1", label="model")
                a.set_yticks([])
            else:
                if r is not None:
                    a.scatter(r[:, j], r[:, i], s=1, alpha=0.3, color="0.6", rasterized=True)
                a.scatter(s[:, j], s[:, i], s=1, alpha=0.3, color="C1", rasterized=True)
                a.set_ylim(lo[i], hi[i])
                if truth is not None:
                    a.plot(truth[j], truth[i], "k+", ms=10)
            a.set_xlim(lo[j], hi[j])
            a.tick_params(labelsize=6)
            if i == d - 1:
                a.set_xlabel(labels[j])
            if j == 0 and i > 0:
                a.set_ylabel(labels[i])
    if r is not None:
        ax[0, 0].legend(fontsize=6, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
