"""Benchmark page of the control applications (learned feedback against IPOPT), made from the
committed ``benchmarks/results/cpu_control_apps.json`` by ``benchmarks/control_apps.py``.

``render_pages(results_dir)`` yields ``(uri, markdown)``; a missing JSON gives a page with the
command instead of failing the build.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import bench_pages as _bp

SOURCE = "cpu_control_apps.json"
COMMAND = "python benchmarks/control_apps.py"
URI = "benchmarks/control-apps.md"

_INTRO = (
    "A value network trained once gives the feedback u* = −∇Φ(x, t) for every start; a "
    "direct method (IPOPT on a multiple-shooting transcription of the same discrete "
    "problem, built with CasADi) solves again for each start. For each problem: the "
    "training time, the closed-loop cost from the nominal start against the IPOPT optimum "
    "(the better of a cold and a warm start), the perturbed closed-loop rollouts with a "
    "collision or an obstacle violation (at the true, uninflated sizes), the milliseconds of "
    "one feedback evaluation at batch 1 and 1024, the whole closed-loop rollout (RK4, four "
    "feedback evaluations per step, states only) against one IPOPT solve, and the same per "
    "start when 1024 starts fly at once. The feedback and rollouts are timed in their "
    "deployment form, `odeflow.control.OnlineFeedback` (the trained weights fused into plain "
    "matrix products: numpy float64 at batch 1, torch inference mode at batch 1024, equal to "
    "the training path to round-off); the training path's `phi.jet` + `problem.feedback` "
    "at batch 1 is shown for comparison. Times are CPU seconds of the benchmark's process "
    "with one torch thread "
    "(IPOPT with MUMPS runs on one thread too): the machine is shared, so its wall times, "
    "also in the JSON, count other processes' turns. The problems are described in the guide "
    "[Multi-agent path finding](../guides/control-agents.md)."
)

_COLS = [
    ("problem", "problem"),
    ("dim", "d"),
    ("train_seconds", "training s"),
    ("closed_loop_cost", "closed-loop cost"),
    ("ipopt_cost", "IPOPT cost"),
    ("relative_gap", "gap"),
    ("rollouts", "rollouts"),
    ("collisions", "with collisions"),
    ("violations", "with violations"),
    ("feedback_ms_batch1", "ms / feedback, batch 1"),
    ("feedback_ms_batch1_jet", "ms / feedback, batch 1, training path"),
    ("feedback_ms_batch1024", "ms / feedback, batch 1024"),
    ("rollout_seconds", "closed-loop rollout s"),
    ("ipopt_seconds", "IPOPT s / solve"),
    ("speedup_vs_ipopt", "IPOPT / rollout"),
    ("rollout_ms_per_start_batch1024", "rollout ms per start, 1024 starts at once"),
    ("speedup_vs_ipopt_batch1024", "IPOPT / rollout per start, batch 1024"),
]


def _cell(key: str, v):
    if key == "relative_gap" and isinstance(v, float):
        return f"{v:+.2%}"
    return v


def render_pages(results: Path) -> Iterator[tuple[str, str]]:
    path = Path(results) / SOURCE
    if not path.exists():
        yield URI, "\n".join(
            ["# Benchmark: control applications", "", f"`benchmarks/results/{SOURCE}` is not "
             "in this checkout yet. It is made by", "", "```bash", COMMAND, "```", ""]
        )  # fmt: skip
        return
    data = json.loads(path.read_text())
    meta, rows = data["meta"], data["rows"]
    machine = ", ".join(
        str(x)
        for x in (
            f"CPU ({meta.get('cpu')})",
            f"{meta.get('cpus')} cores",
            f"{meta.get('torch_threads')} torch thread(s)",
            f"torch {meta.get('torch')}",
            f"CasADi {meta.get('casadi', '?')}",
        )
    )
    lines = [
        "# Benchmark: control applications",
        "",
        _INTRO,
        "",
        "The table is generated when the documentation is built, from "
        f"`benchmarks/results/{SOURCE}`. Timings come from a shared CPU and vary between runs.",
        "",
        f"**Machine:** {machine}  ",
        f"**Recorded:** {meta.get('date', '?')}{' (quick mode)' if meta.get('quick') else ''}",
        "",
        "```bash",
        meta.get("command") or COMMAND,
        "```",
        "",
    ]
    lines += _bp._table(
        [h for _, h in _COLS], [[_cell(k, r.get(k)) for k, _ in _COLS] for r in rows]
    )
    notes = [f"- **{r['problem']}**: {r['note']}" for r in rows if r.get("note")]
    if meta.get("note"):
        notes.insert(0, f"- {meta['note']}")
    if notes:
        lines += ["", "*Recorded with the run:*", "", *notes]
    lines.append("")
    yield URI, "\n".join(lines)


def used_files() -> list[str]:
    """The JSON this page reads, where it exists."""
    res = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    return [SOURCE] if (res / SOURCE).exists() else []
