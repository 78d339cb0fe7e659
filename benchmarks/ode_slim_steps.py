"""Slim step graphs for DiscreteAdjoint's memory budget: measured, and not built (issue 19 §3).

A step graph kept by ``DiscreteAdjoint(checkpoints=MemoryBudget(...))`` saves every
activation of the step. Selective activation checkpointing (``torch.utils.checkpoint`` with
``create_selective_checkpoint_contexts``) would keep a "slim" graph instead: only the outputs
of the expensive ops (convolution, mm, addmm, bmm, baddbmm: MUST_SAVE) and the step's input,
the cheap ops (norms, activations, the RK combinations) recomputed in the backward pass. This
script measures whether that lets a budget keep enough more graphs to pay for itself.

Per workload of ``ode_peers.py`` (quick sizes, fp32, one RK4 step through odeflow's own step
function, one thread, CPU time, fastest of interleaved rounds):
  b_s, b_g, b_slim  bytes of one step state, one full step graph (its saved tensors, distinct
          storages, parameters excluded: as MemoryBudget measures a graph) and one slim graph
          (the cached op outputs and the step's input);
  F, B    the step's forward with its graph, and that graph's backward;
  F_slim, B_slim  the same through the slim graph (B_slim includes the recomputation);
  F_ng, E the step without a graph, and its expensive ops alone (replayed): the cheap ops
          cost c = F_ng - E, the least a dispatch-free slim graph could add to its backward;
  grad_diff_fp64  relative difference of the gradients (input and parameters) of two steps
          through slim and full graphs, in float64.
Then the budget arithmetic for n steps at the 40 % budget of the checkpointing table
(``--budgets``: the JSON of ``ode_peers.py --checkpoints``): the graphs the present policy keeps
(odeflow's own plan) and the slim graphs that fit with the recomputed activations of the one
step being differentiated counted ((n - m) b_s + m b_slim + (b_g - b_slim) <= budget), and
the predicted time as a multiple of backprop's n (F + B): a kept graph costs F + B (full),
F_slim + B_slim (slim, as measured) or F + B + c (slim without dispatch overhead), a rebuilt
step 2F + B; ``*_optimistic``: the same with the recomputed activations not counted.
``kept_for_goal``, ``need_mb_for_goal``: the fewest dispatch-free slim graphs that would
meet 1.15× backprop's time, and the budget they need (null: not even n of them).

Usage:
  python benchmarks/ode_slim_steps.py --json benchmarks/results/cpu_ode_slim_steps.json
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import sys
import time

from ode_peers import _write, sizes, workload  # (the script's folder is on sys.path)

GOAL = 1.15  # issue 19 §3: time at 40 % of torchdiffeq's memory, as a multiple of its time


def _expensive() -> set:
    import torch

    aten = torch.ops.aten
    return {aten.convolution.default, aten.mm.default, aten.addmm.default,
            aten.bmm.default, aten.baddbmm.default}  # fmt: skip


def _build(name: str, dt):
    """The workload's field, initial state and one RK4 step ``y -> y'`` (odeflow's own)."""
    import torch

    from odeflow.ode import TABLEAUS, _tree
    from odeflow.ode._field import _Field
    from odeflow.ode._precision import get_precision
    from odeflow.ode._rk import _coeffs, _rk_step

    sz = sizes(name, True)
    torch.manual_seed(0)
    f, y0 = workload(name, sz, torch.device("cpu"), dt)
    leaves, spec = _tree.flatten(y0)
    fld = _Field(f, spec, leaves, dt)
    pol = get_precision("fp32" if dt == torch.float32 else "fp64", y0.device)
    h = torch.tensor(1.0 / sz["steps"], dtype=dt)
    co = _coeffs(TABLEAUS["rk4"], torch.zeros((), dtype=dt), h)
    return f, y0, lambda y: _rk_step(fld, TABLEAUS["rk4"], co, [y], pol)[0]


def _slim(step):
    """``step`` through a slim graph: the expensive ops' outputs saved, the rest recomputed."""
    from torch.utils.checkpoint import (
        CheckpointPolicy,
        checkpoint,
        create_selective_checkpoint_contexts,
    )

    expensive = _expensive()

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in expensive else CheckpointPolicy.PREFER_RECOMPUTE

    ctx = functools.partial(create_selective_checkpoint_contexts, policy)
    return lambda y: checkpoint(step, y, use_reentrant=False, context_fn=ctx)


def _storages(ts, seen: set) -> int:
    """Bytes of the storages of ``ts`` not in ``seen`` (which gains them)."""
    tot = 0
    for x in ts:
        st = x.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            tot += st.nbytes()
    return tot


def _grad_diff(name: str) -> float:
    """Relative difference of two steps' gradients through slim and full graphs, float64."""
    import torch

    f, y0, step = _build(name, torch.float64)
    grads = []
    for run in (step, _slim(step)):
        y = y0.clone().requires_grad_()
        out = run(run(y))
        grads.append(torch.autograd.grad((out**2).sum(), [y, *f.parameters()]))
    return max(float((a - b).norm() / b.norm()) for a, b in zip(*grads))


def _sizes(f, y0, step) -> tuple[int, int, list]:
    """Bytes of one full step graph and one slim graph, and the expensive calls of a step."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    params = {p.untyped_storage().data_ptr() for p in f.parameters()}
    seen, b_g = set(params), [0]

    def pack(x):
        b_g[0] += _storages([x], seen)
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        step(y0.clone().requires_grad_())
    expensive = _expensive()

    class Record(TorchDispatchMode):  # the expensive ops' outputs, and the calls themselves
        def __init__(self):
            super().__init__()
            self.outs, self.calls = [], []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in expensive:
                self.outs.append(out)
                self.calls.append((func, args, kwargs or {}))
            return out

    with torch.no_grad(), Record() as rec:
        step(y0)
    return b_g[0], _storages([y0, *rec.outs], set(params)), rec.calls


def _timings(f, y0, step, calls, rounds: int, reps: int) -> dict:
    """Fastest CPU time (ms) of each part, over interleaved rounds (load changes on a shared
    CPU hit every part alike)."""
    import torch

    seed = torch.randn_like(y0)

    def fwd(run):
        def go():
            x = y0.clone().requires_grad_()
            t0 = time.process_time()
            out = run(x)
            dt = time.process_time() - t0
            del out  # (the graph is freed outside the timed part)
            return dt

        return go

    def bwd(run):  # a fresh graph per call; only the backward is timed
        def go():
            x = y0.clone().requires_grad_()
            out = run(x)
            t0 = time.process_time()
            torch.autograd.grad(out, [x, *f.parameters()], seed)
            return time.process_time() - t0

        return go

    def timed(fn):
        def go():
            t0 = time.process_time()
            fn()
            return time.process_time() - t0

        return go

    def no_grad():
        with torch.no_grad():
            step(y0)

    def replay():
        for func, args, kwargs in calls:
            func(*args, **kwargs)

    slim = _slim(step)
    jobs = {"F": fwd(step), "B": bwd(step), "F_slim": fwd(slim), "B_slim": bwd(slim),
            "F_ng": timed(no_grad), "E": timed(replay)}  # fmt: skip
    best = {k: math.inf for k in jobs}
    for _ in range(rounds):
        for k, job in jobs.items():
            for _ in range(reps):
                best[k] = min(best[k], job() * 1000)
    return {k: round(v, 4) for k, v in best.items()}


def probe(name: str, rounds: int, reps: int) -> dict:
    """One workload's bytes, times and gradient check (see the module docstring)."""
    import torch

    f, y0, step = _build(name, torch.float32)
    b_g, b_slim, calls = _sizes(f, y0, step)
    ms = _timings(f, y0, step, calls, rounds, reps)
    sz = sizes(name, True)
    return dict(workload=name, sizes=sz, steps=sz["steps"], b_s=y0.numel() * y0.element_size(),
                b_g=b_g, b_slim=b_slim, slim_vs_full=b_slim / b_g, ops_saved=len(calls),
                grad_diff_fp64=_grad_diff(name), c=ms["F_ng"] - ms["E"], **ms)  # fmt: skip


def predict(r: dict, budget: int) -> dict:
    """Graphs kept at ``budget`` and predicted times vs backprop (see the module docstring)."""
    from odeflow.ode._gradient._checkpoint import _budget_plan

    n, b_s, b_g, b_slim = r["steps"], r["b_s"], r["b_g"], r["b_slim"]
    F, B, c = r["F"], r["B"], r["c"]
    keep_from, _ = _budget_plan(budget, n, b_s, b_g)
    m_full = n - keep_from

    def fits(m):
        return (n - m) * b_s + m * b_slim + (b_g - b_slim) <= budget

    m_slim = max((m for m in range(n + 1) if fits(m)), default=0)
    # (not counting the one step's recomputed activations: an optimistic count)
    m_opt = max((m for m in range(n + 1) if (n - m) * b_s + m * b_slim <= budget), default=0)

    def ratio(m, kept):  # m kept graphs of cost ``kept``, n - m steps rebuilt
        return (m * kept + (n - m) * (2 * F + B)) / (n * (F + B))

    # the fewest slim, dispatch-free graphs to keep for GOAL (the other steps rebuilt), and
    # the budget they need (None: not even n such graphs meet GOAL)
    m_goal = next((m for m in range(n + 1) if ratio(m, F + B + c) <= GOAL), None)
    need = None if m_goal is None else (n - m_goal) * b_s + m_goal * b_slim + (b_g - b_slim)
    return dict(budget_mb=budget / 2**20, kept_full=m_full, kept_slim=m_slim,
                time_full=ratio(m_full, F + B), time_slim=ratio(m_slim, r["F_slim"] + r["B_slim"]),
                time_slim_ideal=ratio(m_slim, F + B + c), kept_slim_optimistic=m_opt,
                time_slim_optimistic=ratio(m_opt, r["F_slim"] + r["B_slim"]),
                time_slim_ideal_optimistic=ratio(m_opt, F + B + c), kept_for_goal=m_goal,
                need_mb_for_goal=None if need is None else need / 2**20)  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", default=None, help="write results to this JSON file")
    ap.add_argument("--budgets", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                    "results", "cpu_ode_checkpointing.json"),
                    help="checkpointing JSON whose 40 %% budgets are used")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    with open(args.budgets) as fh:
        ck = json.load(fh)["results"]
    rows = []
    for name in ("conv", "mlp"):
        r = probe(name, args.rounds, args.repeats)
        b = [q["budget_mb"] for q in ck if q["workload"] == name and "budget_mb" in q]
        if b:
            r.update(predict(r, int(b[0] * 2**20)))
        rows.append(r)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))
    meta = {"device": platform.processor() or "cpu", "cpu_threads": 1, "torch": torch.__version__,
            "python": platform.python_version(), "clock": "cpu", "rounds": args.rounds,
            "repeats": args.repeats, "goal": GOAL,
            "command": "python benchmarks/ode_slim_steps.py " + " ".join(sys.argv[1:])}  # fmt: skip
    if args.json:
        _write(args.json, meta, rows)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
