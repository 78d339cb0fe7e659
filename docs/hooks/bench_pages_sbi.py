"""Benchmark page of COT-Flow and PCP-Map on sbibm tasks (``benchmarks/sbi.md``), made from the
committed JSON of ``benchmarks/sbi_peers.py`` in ``benchmarks/results/``.

``render_pages(results_dir)`` yields ``(uri, content)`` pairs: the page, with one table per
JSON file (C2ST, training and sampling times per task, budget and method) and a corner plot
per task of the posterior samples the JSON keeps at sbibm's observation 1 over the
reference posterior's. A missing JSON file leaves a note and the command instead.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

#: (file, title) of the runs shown, in order
FILES: tuple[tuple[str, str], ...] = (
    ("cpu_sbi_1e5.json",
     "10⁵ simulations, library defaults, sbibm's 10 observations, 10 000 samples each "
     "(two_moons and lotka_volterra)"),
    ("cpu_sbi_defaults_pcpfix.json",
     "10³ simulations, library defaults (quick mode), after PCP-Map's Newton fix"),
    ("cpu_sbi_1e4.json",
     "10⁴ simulations, library defaults, sbibm's 10 observations, 2 000 samples each"),
    ("cpu_sbi_defaults.json",
     "10³ simulations, library defaults (quick mode), before PCP-Map's Newton fix"),
)  # fmt: skip
_COMMAND = (
    "pip download sbibm==1.1.0 --no-deps -d /tmp/sbibm\n"
    "python benchmarks/sbi_peers.py --wheel /tmp/sbibm/sbibm-1.1.0-py2.py3-none-any.whl \\\n"
    "    --quick --json benchmarks/results/cpu_sbi_defaults.json"
)


def _machine(meta: dict) -> str:
    parts = [f"CPU, {meta.get('cpu_threads', '?')} torch thread(s)"]
    for k in ("torch", "sbi", "zuko"):
        if meta.get(k):
            parts.append(f"{k} {meta[k]}")
    return ", ".join(parts)


def _table(rows: list[dict]) -> list[str]:
    out = [
        "| task | simulations | method | C2ST ↓ | per observation | train (s) "
        "| 10⁴-sample time (s) |",
        "|---|---:|---|---:|---|---:|---:|",
    ]
    for r in rows:
        each = ", ".join(f"{c:.3f}" for c in r["c2st_each"])
        per = r["sample_s"] * 10_000 / max(r.get("samples", 10_000), 1)
        out.append(
            f"| {r['task']} | {r['simulations']} | {r['method']} | **{r['c2st']:.3f}** | "
            f"{each} | {r['train_s']:.1f} | {per:.2f} |"
        )
    return out


def _goals(rows: list[dict]) -> list[str]:
    """Issue 26's goals per task and budget, from the rows at the library's defaults (methods
    without an ``@`` suffix): the better odeflow C2ST at or below NPE's, PCP-Map's training
    faster than NPE's, COT-Flow's sampling faster than PCP-Map's."""
    out = [
        "| task | simulations | odeflow C2ST (best) | NPE C2ST | C2ST goal | PCP-Map train "
        "/ NPE train | COT-Flow sample / PCP-Map sample |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    keys = dict.fromkeys((r["task"], r["simulations"]) for r in rows)
    for task, n_sim in keys:
        m = {r["method"]: r for r in rows if (r["task"], r["simulations"]) == (task, n_sim)}
        ours = [m[k] for k in ("pcp-map", "cot-flow") if k in m]
        if not ours or "sbi-npe" not in m:
            continue
        best, npe = min(ours, key=lambda r: r["c2st"]), m["sbi-npe"]
        goal = "met" if best["c2st"] <= npe["c2st"] else "not met"
        train = (f"{m['pcp-map']['train_s'] / npe['train_s']:.2f}" if "pcp-map" in m
                 else "–")  # fmt: skip
        samp = (f"{m['cot-flow']['sample_s'] / m['pcp-map']['sample_s']:.2f}"
                if "cot-flow" in m and "pcp-map" in m else "not measured")  # fmt: skip
        out.append(f"| {task} | {n_sim} | {best['c2st']:.3f} ({best['method']}) | "
                   f"{npe['c2st']:.3f} | {goal} | {train} | {samp} |")  # fmt: skip
    return out if len(out) > 2 else []


def _corner(task: str, rows: list[dict], ref: list) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in rows if r.get("samples_obs1")]
    fig, ax = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.2), squeeze=False)
    r0 = np.asarray(ref)[:, :2]
    # the frame: the reference's range, widened by half of it (samples outside are counted)
    lo, hi = r0.min(0), r0.max(0)
    lo, hi = lo - 0.5 * (hi - lo), hi + 0.5 * (hi - lo)
    for a, r in zip(ax[0], rows, strict=True):
        s = np.asarray(r["samples_obs1"])[:, :2]
        out = int((~((s >= lo) & (s <= hi)).all(1)).sum())
        a.scatter(r0[:, 0], r0[:, 1], s=2, color="0.6", label="reference")
        a.scatter(s[:, 0], s[:, 1], s=2, color="C1", alpha=0.6, label=r["method"])
        a.set_xlim(lo[0], hi[0])
        a.set_ylim(lo[1], hi[1])
        extra = f"\n{out} of {len(s)} samples outside the frame" if out else ""
        a.set_title(f"{r['method']}: C2ST {r['c2st']:.3f}{extra}", fontsize=9)
        a.set_xlabel("θ1")
        a.set_ylabel("θ2")
        a.tick_params(labelsize=7)
    ax[0, 0].legend(fontsize=7)
    fig.suptitle(f"{task}, {rows[0]['simulations']} simulations, observation 1 (θ1, θ2)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def render_pages(results: Path) -> Iterator[tuple[str, str | bytes]]:
    lines = [
        "# Benchmark: simulation-based inference (COT-Flow, PCP-Map)",
        "",
        "Posterior estimation θ | y on sbibm's tasks: odeflow's `COTFlow` and `PCPMap` at the "
        "library's defaults against sbi's NPE (its defaults) and zuko's conditional NSF "
        "(trained with NPE's default loop), all from the same simulations and seeds. Score: "
        "C2ST against sbibm's reference posterior samples (0.5 is perfect), averaged over the "
        "observations. Generated at build time from `benchmarks/results/`; timings come from "
        "a shared CPU and vary between runs.",
        "",
        "```bash",
        _COMMAND,
        "```",
        "",
    ]
    for i, (name, title) in enumerate(FILES):
        path = results / name
        lines += [f"## {title}", ""]
        if not path.is_file():
            lines += [f"`{name}` is not committed yet: run the command above.", ""]
            continue
        data = json.loads(path.read_text())
        meta = data.get("meta", {})
        lines += [f"**Machine:** {_machine(meta)}  ", f"**Source:** `{name}`", ""]
        if meta.get("command"):
            lines += ["```text", meta["command"], "```", ""]
        if meta.get("note"):
            lines += [f"*Recorded with the run:* {meta['note']}", ""]
        lines += [*_table(data["results"]), ""]
        goals = _goals(data["results"])
        if goals:
            head = ("Goals, from the rows without an `@` suffix (the library's defaults when "
                    "measured); a ratio below 1 meets a time goal:")  # fmt: skip
            lines += [head, "", *goals, ""]
        for task, ref in data.get("reference_obs1", {}).items():
            budgets = sorted({r["simulations"] for r in data["results"] if r["task"] == task})
            for n_sim in budgets:  # one figure per task and budget
                rows = [r for r in data["results"]
                        if r["task"] == task and r["simulations"] == n_sim]  # fmt: skip
                if not any(r.get("samples_obs1") for r in rows):
                    continue
                stem = f"sbi-{i}-{task}" + (f"-{n_sim}" if len(budgets) > 1 else "")
                yield f"benchmarks/img/{stem}.png", _corner(task, rows, ref)
                lines += [f"![{task}, {n_sim} simulations](img/{stem}.png)", ""]
    yield "benchmarks/sbi.md", "\n".join(lines)


def used_files() -> list[str]:
    """The JSON files the page reads (those committed)."""
    return [name for name, _ in FILES]
