"""Does the quadcopter's position goal (1e-2) conflict with its cost goal (3 % of IPOPT)?

IPOPT (``_apps_dynamics.ipopt_quadcopter``, 50 RK4 intervals) on the paper's problem
(α₀ = 5000), then by continuation in the terminal weight α (each solve warm-started from the
previous one). For each α the path is scored with the paper's objective,
J₅₀₀₀ = cost_α − ½(α − 5000)|X_N − y|², next to its position miss |X_N[:3] − y[:3]|.
A path with a stiffer terminal weight reaches the target within 1e-2 for a few percent more
of the paper's cost, so the two goals are compatible; a feedback that realises it needs
the stiff terminal gains (about α/2 near T) that a uniform RK4 closed loop integrates only
with very many steps. Needs CasADi (the ``bench`` extra)::

    OMP_NUM_THREADS=1 PYTHONPATH=src:benchmarks python benchmarks/quadcopter_terminal_weight.py \\
        --json benchmarks/results/cpu_quadcopter_terminal_weight.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

import numpy as np
import torch

from _apps_dynamics import _with_weight, ipopt_quadcopter
from odeflow.control._quadcopter import Quadcopter

WEIGHTS = (5e3, 1e4, 2e4, 5e4, 1e5, 3e5, 1e6)


def sweep(nt: int = 50, weights=WEIGHTS) -> list[dict]:
    """Rows (α, cost_α, J₅₀₀₀, J₅₀₀₀ / J₅₀₀₀(α = 5000) − 1, position miss, full-state miss)."""
    pb = Quadcopter()
    x0, y = pb.start.numpy(), pb.target.numpy()
    prev, rows = ipopt_quadcopter(pb, x0, nt), []
    for a in weights:
        r = ipopt_quadcopter(_with_weight(pb, float(a)), x0, nt, init=prev)
        miss = r["states"][-1] - y
        J = r["cost"] - 0.5 * (a - pb.alpha0) * float(miss @ miss)
        rows.append({"alpha": a, "cost_alpha": r["cost"], "paper_cost": J,
                     "position_miss": float(np.linalg.norm(miss[:3])),
                     "state_miss": float(np.linalg.norm(miss)),
                     "seconds": r["seconds"]})  # fmt: skip
        prev = r
    base = rows[0]["paper_cost"]
    for r in rows:
        r["paper_cost_gap"] = r["paper_cost"] / base - 1
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nt", type=int, default=50)
    p.add_argument("--json")
    args = p.parse_args()
    rows = sweep(args.nt)
    print(f"{'alpha':>9} {'J_5000':>9} {'gap':>7} {'pos. miss':>9}")
    for r in rows:
        print(f"{r['alpha']:9.0f} {r['paper_cost']:9.2f} {100 * r['paper_cost_gap']:6.2f}% "
              f"{r['position_miss']:9.4f}")  # fmt: skip
    if args.json:
        cmd = "python benchmarks/quadcopter_terminal_weight.py " + " ".join(sys.argv[1:])
        meta = {"command": cmd,
                "device": "cpu", "torch_threads": torch.get_num_threads(),
                "python": platform.python_version(), "nt": args.nt}  # fmt: skip
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
