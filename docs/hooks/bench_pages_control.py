"""Benchmark page of optimal control at scale (LQR in d = 100, the PNAS mean-field games against
the dimension), made from the committed JSON of ``benchmarks/control_scaling.py``.

``render_pages(results_dir)`` yields ``(uri, content)`` pairs for ``bench_pages.render_all``;
``used_files()`` lists the JSON it reads (only those in the checkout). A missing JSON leaves a
note and the command on the page instead of failing the build.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import bench_pages as _bp
import bench_pages_extra as _ex

_FILES = ("cpu_control_lqr.json", "cpu_control_mfg.json")
_URI = "benchmarks/control-scaling.md"
_TITLE = "optimal control at scale"
_CMD = "python benchmarks/control_scaling.py"


def _quick_note(data: dict) -> str:
    if not data.get("quick"):
        return ""
    return ("This is a `--quick` run (small training budgets): its objectives are not "
            "converged, the timings are the point. ")  # fmt: skip


def _time_degree(data: dict) -> str:
    K = data.get("time_degree")
    return "" if K is None else f", time_degree={K}"


def _lqr_lines(data: dict) -> list[str]:
    lines = ["## LQR in d = 100 against Riccati", ""]
    lines += [
        "ż = u, L = ½|u|², G = ½|x|², ρ₀ = N(0, I), T = 1 (`LQR(dim=100)`). The learned "
        "feedback's closed-loop cost (RK4, "
        f"{data['eval_nt']} steps, {data['eval_samples']} fresh initial states) against the "
        "Riccati value E Φ*(x, 0) on the same states; the issue's acceptance is a gap within "
        f"1 %. Network `ValueNetwork({data['dim']}, width={data['width']}, "
        f"rank={data['rank']}{_time_degree(data)})` (the feedback x/(2 − t) is a gain that "
        "varies with t in every direction: the term ½xᵀS(t)x of `time_degree` gives it, "
        "without it the best constant gain sits 1.8 % above the optimum), "
        f"{data['optimizer']}, "
        f"{data['iterations']} iterations, batch {data['batch']}, {data['nt']} RK4 steps. "
        + _quick_note(data),
        "",
    ]
    lines += _bp._table(
        ["d", "Riccati value", "closed-loop cost", "relative gap", "training s"],
        [[data["dim"], f"{data['riccati_value']:.5f}", f"{data['closed_loop_cost']:.5f}",
          data["relative_gap"], data["train_seconds"]]],
    )  # fmt: skip
    return [*lines, ""]


def _mfg_lines(data: dict) -> Iterator[tuple[str, str | bytes]]:
    lines = ["## PNAS mean-field games against the dimension", ""]
    lines += [
        "The OT (`pnas-ot`) and crowd-motion (`pnas-crowd`) problems of Ruthotto et al. "
        "(arXiv 1912.01825) in d = " + ", ".join(map(str, data["dims"])) + ". Their data "
        "depend only on (x₁, x₂), so the optimal objective does not depend on d. Objective "
        "terms on 4000 fresh samples that share their first two coordinates across d; "
        "seconds per Adam iteration (batch 256, median after a warm-up; wall time and the "
        "process's CPU time, which a shared machine inflates less) with the least-squares "
        "line t = a + b·d through the CPU times. " + _quick_note(data),
        "",
    ]
    plt = _bp._plt()
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.2))
    for name, p in data["problems"].items():
        rows = p["rows"]
        fit = p["time_vs_dim"]
        lines += [f"### `{name}`", "",
                  f"Training: `fit(problem, ValueNetwork(d).double(), **{p['fit']})`. "
                  f"Spread of the objectives (max − min)/min = {p['objective_spread']:.2%}; "
                  f"time per iteration ≈ {fit['intercept'] * 1e3:.1f} ms + "
                  f"{fit['slope'] * 1e3:.3f} ms·d (R² = {fit['r2']:.3f}).", ""]  # fmt: skip
        lines += _bp._table(
            ["d", "objective", "running", "interaction", "terminal", "HJB residual",
             "CPU ms / iteration", "wall ms / iteration", "training s"],
            [[r["dim"], r["objective"], r["running"], r["interaction"], r["terminal"],
              r["hjb"], r["cpu_seconds_per_iteration"] * 1e3, r["seconds_per_iteration"] * 1e3,
              r["train_seconds"]] for r in rows],
        )  # fmt: skip
        lines.append("")
        ds = [r["dim"] for r in rows]
        axes[0].plot(ds, [r["objective"] for r in rows], marker="o", label=name)
        axes[1].plot(ds, [r["cpu_seconds_per_iteration"] * 1e3 for r in rows], marker="o",
                     label=name)  # fmt: skip
        axes[1].plot(ds, [(fit["intercept"] + fit["slope"] * d) * 1e3 for d in ds], ls="--",
                     color="gray", lw=0.8)  # fmt: skip
    axes[0].set_xlabel("d")
    axes[0].set_ylabel("final objective")
    axes[1].set_xlabel("d")
    axes[1].set_ylabel("CPU ms per iteration")
    axes[0].legend()
    yield "benchmarks/img/control-scaling-0.png", _bp._png(fig)
    lines += ["![objective and time per iteration against d](img/control-scaling-0.png)", ""]
    yield "lines", "\n".join(lines)


def render_pages(results: Path) -> Iterator[tuple[str, str | bytes]]:
    """The control-at-scale page (and its plot)."""
    lqr = _ex._n2_read(results, _FILES[0])
    mfg = _ex._n2_read(results, _FILES[1])
    if lqr is None and mfg is None:
        yield _URI, _ex._n2_missing(_TITLE, _FILES[1], _CMD)
        return
    meta = lqr or mfg
    intro = (
        "The LQR acceptance in d = 100 and the d-invariance and cost per iteration of the "
        "PNAS mean-field games (`odeflow.control`)."
    )
    src = " and ".join(f for f, d in zip(_FILES, (lqr, mfg), strict=True) if d is not None)
    cmd = _CMD + (" --quick" if meta.get("quick") else "")
    lines = _ex._n2_header(_TITLE, intro, _ex._n2_machine(meta), src, cmd)
    if lqr is not None:
        lines += _lqr_lines(lqr)
    if mfg is not None:
        for uri, content in _mfg_lines(mfg):
            if uri == "lines":
                lines += [content]
            else:
                yield uri, content
    yield _URI, "\n".join(lines)


def used_files() -> list[str]:
    """The JSON this page reads (each only where it exists)."""
    res = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    return [f for f in _FILES if (res / f).exists()]
