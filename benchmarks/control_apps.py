"""Real-time feedback control with a learned value function against a direct method (IPOPT).

For each application problem: training time of odeflow's value network, the closed-loop cost
from the nominal start against the IPOPT optimum of a multiple-shooting transcription of the
same discrete problem (CasADi, the ``bench`` extra), collisions and obstacle violations in N
closed-loop rollouts from perturbed starts (true, uninflated sizes), milliseconds per
feedback evaluation at batch 1 and 1024, the time of the whole closed-loop rollout and IPOPT's
seconds per solve (times: CPU time of the process, one torch thread; wall times are in the
JSON too). Feedback and rollouts are timed in their deployment form,
:class:`odeflow.control.OnlineFeedback` (``*_jet`` keys: the training path ``phi.jet``).
Writes JSON (``benchmarks/results/``) and prints a table.

The problems come from the ``benchmarks/_apps_*.py`` modules; each exposes
``CASES = {name: run}`` with ``run(quick: bool) -> dict`` (flat numbers; see
``_apps_agents.run_case`` for the keys). ``_apps_agents`` (multi-agent path finding) is
always there; other modules (e.g. ``_apps_dynamics``) are picked up when present.

Usage::

    python benchmarks/control_apps.py [--quick] [--only corridor swap2] [--out JSON]

``--quick`` trains 30 iterations on 64 samples and runs 64 rollouts: it checks the plumbing,
not the acceptance figures.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MODULES = ("_apps_agents", "_apps_dynamics")

COLUMNS = [
    ("problem", "problem", "{}"),
    ("dim", "d", "{}"),
    ("train_seconds", "train s", "{:.0f}"),
    ("closed_loop_cost", "closed loop", "{:.4g}"),
    ("ipopt_cost", "IPOPT", "{:.4g}"),
    ("relative_gap", "gap", "{:+.2%}"),
    ("collisions", "coll.", "{}"),
    ("violations", "viol.", "{}"),
    ("rollouts", "N", "{}"),
    ("feedback_ms_batch1", "ms/step b=1", "{:.3f}"),
    ("feedback_ms_batch1024", "ms/step b=1024", "{:.2f}"),
    ("rollout_seconds", "rollout s", "{:.3f}"),
    ("ipopt_seconds", "IPOPT s", "{:.2f}"),
    ("speedup_vs_ipopt", "speed-up", "{:.1f}x"),
    ("rollout_ms_per_start_batch1024", "ms/start b=1024", "{:.2f}"),
    ("speedup_vs_ipopt_batch1024", "speed-up b=1024", "{:.0f}x"),
]


def cases() -> dict:
    """All ``CASES`` of the ``_apps_*`` modules that exist, in order."""
    sys.path.insert(0, str(HERE))
    out = {}
    for mod in MODULES:
        if (HERE / f"{mod}.py").exists():
            out.update(importlib.import_module(mod).CASES)
    return out


def table(rows: list[dict]) -> str:
    head = [h for _, h, _ in COLUMNS]
    body = [
        [fmt.format(r[k]) if r.get(k) is not None else "—" for k, _, fmt in COLUMNS] for r in rows
    ]
    w = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(str(x).rjust(n) for x, n in zip(row, w, strict=True)) for row in body]
    return "\n".join(["  ".join(h.rjust(n) for h, n in zip(head, w, strict=True)), *lines])


def main(argv=None) -> int:
    all_cases = cases()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny training and 64 rollouts")
    p.add_argument("--only", nargs="+", choices=sorted(all_cases), default=None)
    p.add_argument("--rollouts", type=int, default=None, help="perturbed rollouts (1000)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default=str(HERE / "results" / "cpu_control_apps.json"))
    p.add_argument("--save", default=None, help="folder for the trained networks (NAME.pt)")
    p.add_argument("--load", default=None, help="evaluate networks saved by --save instead "
                   "of training (their recorded training time is reported)")  # fmt: skip
    p.add_argument("--note", default=None, help="a note recorded in the JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.only or list(all_cases):
        t0 = time.perf_counter()
        kw = {} if args.rollouts is None else {"rollouts": args.rollouts}
        kw.update({k: Path(v) for k, v in (("load", args.load), ("save", args.save)) if v})
        row = all_cases[name](args.quick, **kw)
        row["wall_seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(f"{name}: done in {row['wall_seconds']:.0f} s", flush=True)
    meta = {
        "command": "python benchmarks/control_apps.py " + shlex.join(argv or sys.argv[1:]),
        "machine": platform.machine(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "quick": args.quick,
        "note": args.note,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    try:
        import casadi

        meta["casadi"] = casadi.__version__
    except ImportError:
        pass
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(table(rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
