"""``odeflow demo``: run the built-in demonstrations end to end on generated data."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import time
from pathlib import Path

#: (name, module, function) — each function takes (out_dir: Path, verbose: bool) -> dict.
DEMOS: tuple[tuple[str, str, str], ...] = (
    ("neural-ode", "odeflow.cli._demo_ode", "run_demo"),
    ("epi", "odeflow.cli._demo_epi", "run_demo"),
    ("otflow", "odeflow.cli._demo_otflow", "run_demo"),
    ("nn-hamiltonian", "odeflow.cli._demo_nn", "run_demo"),
    ("corridor", "odeflow.cli._demo_agents", "run_demo"),
    ("crowd", "odeflow.cli._demo_control", "run_demo"),
    ("sbi-two-moons", "odeflow.cli._demo_sbi", "run_demo"),
)


@contextlib.contextmanager
def single_thread():
    """One torch intra-op thread within the block (restored after): the demos' small
    matrices run fastest so, and immune to OpenMP spin-waiting on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    chosen = [d for d in DEMOS if args.only is None or d[0] in args.only]
    unknown = [n for n in args.only or () if n not in {d[0] for d in DEMOS}]
    if not chosen or unknown:
        valid = ", ".join(d[0] for d in DEMOS) or "(none yet)"
        what = f"unknown demo {', '.join(unknown)}" if unknown else "no demo selected"
        raise ValueError(f"{what}; valid names are: {valid}")
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, module, func in chosen:
        print(f"== odeflow demo: {name}")
        t0 = time.perf_counter()
        run = getattr(importlib.import_module(module), func)
        kw = (
            {"overwrite": True}
            if args.overwrite and "overwrite" in inspect.signature(run).parameters
            else {}
        )
        result = run(out / name, verbose=not args.quiet, **kw)
        result = dict(result or {})
        result["seconds"] = round(time.perf_counter() - t0, 2)
        summary[name] = result
        print(f"   done in {result['seconds']:.1f} s -> {out / name}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"== all demos done; summary in {out / 'summary.json'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the built-in demos (neural ODE, OT-Flow, EPI phantom) on generated data",
        description="Run odeflow's demonstrations end to end on generated data and write "
        "their plots and metrics under --out.",
    )
    p.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="run only these demos by name: " + ", ".join(d[0] for d in DEMOS),
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier demo run's files under --out")  # fmt: skip
    p.set_defaults(func=_run)
