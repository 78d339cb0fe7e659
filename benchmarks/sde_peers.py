"""odeflow.sdeint against torchsde, side by side (issue 23).

SDEs (Itô, diagonal noise, Euler–Maruyama, T = 1, loss = mean of the squared final state):
  gbm:    dY = μY dt + σY dW (μ, σ learnable), batch 4096 × 4 (--quick: 2048 × 4)
  ou:     dX = −θX dt + σ dW (θ, σ learnable), batch 4096 × 4 (--quick: 2048 × 4)
  neural: drift MLP [y, t] → 256 → 256 → d (tanh), diffusion 0.1·sigmoid(MLP y → 256 → d),
          d = 32, batch 1024, width 256 (both modes)
Solvers: odeflow-adjoint (sdeint's exact discrete adjoint: step states stored, increments
regenerated from the Brownian tree, one step's graph rebuilt at a time), odeflow-adjoint-K
(the same with checkpoints=K, binomial checkpointing: at most K + 1 states held whatever the
number of steps, the others recomputed in the backward pass; K = --checkpoints, default 8),
odeflow-backprop,
torchsde (sdeint, backprop through the solver), torchsde-adjoint (sdeint_adjoint, its
continuous stochastic adjoint with its default adjoint method). Each library drives its own
Brownian motion (odeflow.BrownianPath / torchsde.BrownianInterval), created inside the
timed call as each library's sdeint does by default.

What is measured per (SDE, solver):
  fwd_ms   forward time per step, no graph (median of --repeats; the solvers are timed in
           turn, one call each per round, so that load changes hit them alike);
  fb_ms    forward+backward time per step (gradient for the parameters and y0);
  grad_rel relative 2-norm difference of the parameter gradient from backpropagation through
           the same library's solver on the same Brownian path (odeflow-backprop for the
           odeflow adjoints: the exact discrete adjoint gives round-off; torchsde for
           torchsde-adjoint: the continuous adjoint's error at this dt);
  strong   mean |y_T − reference| at the benchmark's dt, on each library's own Brownian path:
           the exact solution for gbm, the same solver with dt/16 on the same path otherwise
           (same scheme, so equal in expectation: the check that speed is compared at equal
           error);
  saved    bytes the autograd graph of the output holds for the backward pass after the
           forward pass (its nodes' saved tensors, each storage once, the parameters and y0
           not counted), for several step counts (neural only): the memory of the gradient
           that grows with the number of steps. The discrete adjoint's backward adds one
           step's graph on top of it; the continuous adjoint solves an augmented SDE.
           (Not for odeflow-adjoint-K, which keeps its checkpoints in its own record, not
           in the graph: see the memory table.)

Memory against the number of steps (table "memory_steps"; ou, batch 2048 × 4, float32,
N = 100, 1000, 10000 steps; peers, odeflow-backprop and the stored-states adjoint up to
--memory-max-peer steps, 1000 by default): one forward+backward pass each, with
  peak_mb        the growth of the bytes in use over the start of the call, sampled at every
                 4th drift evaluation (forward, recompute, rebuild, adjoint SDE): on CPU the
                 C allocator's bytes in use (glibc's mallinfo2, which sees torch's CPU
                 tensors), on CUDA torch.cuda.max_memory_allocated;
  stored_states  odeflow's count of states held at once (checkpoints and the working state);
  s              the time of the same call made again without the sampling (the clock of
                 the timing table).

Timing clock: --clock wall (default: perf_counter) or cpu (process_time: the CPU time of
this process, with --threads 1 the single-thread run time, little disturbed by other load
on a shared machine; the stored CPU JSON uses it).

Usage:
  python benchmarks/sde_peers.py --quick --threads 1 --clock cpu \
      --json benchmarks/results/cpu_sde_peers.json
  python benchmarks/sde_peers.py --device cuda --json sde.json
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import platform
import statistics
import sys
import time

import torch
from torch import nn

import odeflow

SOLVERS = (
    "odeflow-adjoint",
    "odeflow-adjoint-K",
    "odeflow-backprop",
    "torchsde",
    "torchsde-adjoint",
)


class GBM(nn.Module):
    noise_type, sde_type = "diagonal", "ito"

    def __init__(self):
        super().__init__()
        self.mu, self.sigma = nn.Parameter(torch.tensor(0.5)), nn.Parameter(torch.tensor(0.4))

    def f(self, t, y):
        return self.mu * y

    def g(self, t, y):
        return self.sigma * y


class OU(nn.Module):
    noise_type, sde_type = "diagonal", "ito"

    def __init__(self):
        super().__init__()
        self.theta, self.sigma = nn.Parameter(torch.tensor(1.0)), nn.Parameter(torch.tensor(0.5))
        self.probe = None  # the memory table's sampler, called at every drift evaluation

    def f(self, t, y):
        if self.probe is not None:
            self.probe()
        return -self.theta * y

    def g(self, t, y):
        return self.sigma.expand_as(y)


class Neural(nn.Module):
    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, d: int = 32, width: int = 256):
        super().__init__()
        self.drift = nn.Sequential(
            nn.Linear(d + 1, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
            nn.Linear(width, d),
        )  # fmt: skip
        self.diff = nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, d))

    def f(self, t, y):
        return self.drift(torch.cat([y, t.expand(y.shape[0], 1)], 1))

    def g(self, t, y):
        return 0.1 * torch.sigmoid(self.diff(y))


def problem(name: str, quick: bool, device, dtype):
    torch.manual_seed(0)
    if name == "neural":
        sde, y0 = Neural(), 0.5 * torch.randn(1024, 32)
    else:
        sde, y0 = (GBM() if name == "gbm" else OU()), torch.ones(2048 if quick else 4096, 4)
    return sde.to(device, dtype), y0.to(device, dtype)


# --------------------------------------------------------------------------- one solve
CHECKPOINTS = 8  # K of odeflow-adjoint-K (--checkpoints)


def solve(solver, sde, y0, ts, dt, bm=None, grad=True, sol=False):
    """One solve; ``sol``: odeflow's SDESolution (its stats) instead of the trajectory."""
    import torchsde

    if solver.startswith("odeflow"):
        gradient = "backprop" if solver == "odeflow-backprop" else "adjoint"
        ck = CHECKPOINTS if solver.endswith("-K") else "steps"
        run = odeflow.sdesolve if sol else odeflow.sdeint
        return run(sde, y0, ts, bm=bm, dt=dt, method="euler", gradient=gradient, checkpoints=ck)
    if solver == "torchsde-adjoint" and grad:
        return torchsde.sdeint_adjoint(sde, y0, ts, bm=bm, dt=dt, method="euler")
    return torchsde.sdeint(sde, y0, ts, bm=bm, dt=dt, method="euler")


def brownian(solver, y0, t1, seed, dt):
    import torchsde

    if solver.startswith("odeflow"):
        return odeflow.BrownianPath(0.0, t1, y0.shape, seed=seed, dtype=y0.dtype,
                                    device=y0.device, dt=dt)  # fmt: skip
    return torchsde.BrownianInterval(0.0, t1, size=y0.shape, dtype=y0.dtype, device=y0.device,
                                     entropy=seed)  # fmt: skip


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


CLOCK = time.perf_counter  # (--clock cpu: time.process_time)
PROBE_EVERY = 4  # the memory table samples the bytes in use at every 4th drift evaluation


def timed_round_robin(fns: dict, repeats: int, device) -> dict:
    """Median time of each callable, the callables timed in turn (one call of each per
    round, after a warm-up round) so that a change of load on a shared machine hits every
    solver alike."""
    for fn in fns.values():
        fn()
    times: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync(device)
            t = CLOCK()
            fn()
            sync(device)
            times[k].append(CLOCK() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def fwd_bwd(solver, sde, y0, ts, dt, bm=None):
    y = y0.clone().requires_grad_(True)
    ys = solve(solver, sde, y, ts, dt, bm)
    params = [p for p in sde.parameters()]
    return torch.autograd.grad(ys[-1].square().mean(), [y, *params])


def graph_bytes(out: torch.Tensor, exclude: list[torch.Tensor]) -> int:
    """Bytes of the tensors the autograd graph of ``out`` saved for backward (each storage
    once; the storages of ``exclude``, the parameters and the input, not counted)."""
    skip = {x.untyped_storage().data_ptr() for x in exclude}
    held: dict[int, int] = {}
    stack, seen = [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names = [a for a in dir(node) if a.startswith("_saved_")]
        vals = [getattr(node, a) for a in names]
        if hasattr(node, "saved_tensors"):  # a custom autograd.Function
            vals.extend(node.saved_tensors)
        for v in vals:
            for x in v if isinstance(v, (tuple, list)) else [v]:
                if isinstance(x, torch.Tensor) and x.layout == torch.strided:
                    ptr = x.untyped_storage().data_ptr()
                    if ptr not in skip:
                        held[ptr] = x.untyped_storage().nbytes()
        stack.extend(n for n, _ in node.next_functions)
    return sum(held.values())


def saved_bytes(solver, sde, y0, ts, dt) -> int:
    y = y0.clone().requires_grad_(True)
    ys = solve(solver, sde, y, ts, dt)
    total = graph_bytes(ys, [y, *sde.parameters()])
    torch.autograd.grad(ys[-1].square().mean(), [y, *sde.parameters()])
    return total


def strong_error(solver, name, sde, y0, dt, seed=123) -> float:
    ts = torch.tensor([0.0, 1.0], dtype=y0.dtype, device=y0.device)
    bm = brownian(solver, y0, 1.0, seed, dt / 16)
    with torch.no_grad():
        yT = solve(solver, sde, y0, ts, dt, bm, grad=False)[-1]
        if name == "gbm":
            ref = y0 * torch.exp((sde.mu - sde.sigma**2 / 2) + sde.sigma * bm(0.0, 1.0))
        else:
            ref = solve(solver, sde, y0, ts, dt / 16, bm, grad=False)[-1]
    return (yT - ref).abs().mean().item()


def run_sde(name, args, device, dtype) -> list[dict]:
    sde, y0 = problem(name, args.quick, device, dtype)
    steps = args.steps
    dt = 1.0 / steps
    ts = torch.tensor([0.0, 1.0], dtype=dtype, device=device)

    def fwd(solver):
        with torch.no_grad():
            solve(solver, sde, y0, ts, dt, grad=False)

    fns = {}
    for solver in args.solvers:
        fns[(solver, "fwd_ms")] = lambda solver=solver: fwd(solver)
        fns[(solver, "fb_ms")] = lambda solver=solver: fwd_bwd(solver, sde, y0, ts, dt)
    times = timed_round_robin(fns, args.repeats, device)
    rows = []
    for solver in args.solvers:
        row = {"sde": name, "solver": solver, "steps": steps, "batch": list(y0.shape)}
        row["fwd_ms"] = 1e3 * times[(solver, "fwd_ms")] / steps
        row["fb_ms"] = 1e3 * times[(solver, "fb_ms")] / steps
        ref = "odeflow-backprop" if solver.startswith("odeflow") else "torchsde"
        if ref in args.solvers and solver != ref:
            bm = brownian(solver, y0, 1.0, 7, dt)
            g = torch.cat([x.flatten() for x in fwd_bwd(solver, sde, y0, ts, dt, bm)[1:]])
            bm = brownian(solver, y0, 1.0, 7, dt)
            r = torch.cat([x.flatten() for x in fwd_bwd(ref, sde, y0, ts, dt, bm)[1:]])
            row["grad_rel"] = ((g - r).norm() / r.norm()).item()
        row["strong"] = strong_error(solver, name, sde, y0[: args.error_batch], dt)
        if name == "neural" and args.memory_steps and not solver.endswith("-K"):
            row["saved"] = {n: saved_bytes(solver, sde, y0, ts, 1.0 / n) for n in args.memory_steps}
        rows.append(row)
    return rows


def _allocated_fn(device):
    """A function giving the bytes in use now: the C allocator's (CPU, glibc's mallinfo2),
    torch's (CUDA); None where neither is available."""
    if device.type == "cuda":
        return lambda: torch.cuda.memory_allocated(device)
    name = ctypes.util.find_library("c")
    lib = ctypes.CDLL(name) if name else None
    if lib is None or not hasattr(lib, "mallinfo2"):
        return None

    class Info(ctypes.Structure):
        _fields_ = [
            (k, ctypes.c_size_t)
            for k in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                      "uordblks", "fordblks", "keepcost")
        ]  # fmt: skip

    lib.mallinfo2.restype = Info

    def used() -> int:
        info = lib.mallinfo2()
        return info.uordblks + info.hblkhd

    return used


def memory_vs_steps(args, device, dtype) -> list[dict]:
    """One forward+backward pass of ou (2048 × 4) per (solver, N): peak growth of the bytes in
    use (sampled at every 4th drift evaluation), stored states, time."""
    used = _allocated_fn(device)
    if used is None:
        print("memory table skipped: no allocator statistics on this platform")
        return []
    sde, y0 = problem("ou", True, device, dtype)
    ts = torch.tensor([0.0, 1.0], dtype=dtype, device=device)
    peak, calls = [0], [0]

    def probe():  # every PROBE_EVERY-th drift evaluation: mallinfo2 walks the heap's bins
        calls[0] += 1
        if calls[0] % PROBE_EVERY == 0:
            peak[0] = max(peak[0], used())

    def call(solver, n, probed):
        y = y0.clone().requires_grad_(True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        peak[0] = base = used()
        sde.probe = probe if probed else None
        t = CLOCK()
        try:
            out = solve(solver, sde, y, ts, 1.0 / n, sol=True)
            ys = out.ys if isinstance(out, odeflow.ode.SDESolution) else out
            torch.autograd.grad(ys[-1].square().mean(), [y, *sde.parameters()])
        finally:
            sde.probe = None
        sync(device)
        sec = CLOCK() - t
        if device.type == "cuda":
            peak[0] = max(peak[0], torch.cuda.max_memory_allocated(device))
        return out, peak[0] - base, sec

    rows = []
    for n in args.memory_table_steps:
        for solver in args.solvers:
            if n > args.memory_max_peer and solver != "odeflow-adjoint-K":
                continue
            sec = call(solver, n, False)[2]  # the time without the probe
            out, grown, _ = call(solver, n, True)
            row = {"solver": solver, "n": n, "peak_mb": grown / 2**20, "s": sec}
            if isinstance(out, odeflow.ode.SDESolution) and solver != "odeflow-backprop":
                row["stored_states"] = out.stats.stored_states
                row["recomputed_steps"] = out.stats.recomputed_steps
            del out
            rows.append(row)
            print(f"memory {solver:22s} N={n:6d} " + json.dumps(row), flush=True)
    return rows


def decimal_dt(device, dtype) -> dict:
    """Forward time per step on gbm with dt = 0.01 (not a power of two), per library."""
    sde, y0 = problem("gbm", True, device, dtype)
    ts = torch.tensor([0.0, 1.0], dtype=dtype, device=device)
    out = {}
    for solver in ("odeflow-adjoint", "torchsde"):

        def fwd(solver=solver):
            with torch.no_grad():
                solve(solver, sde, y0, ts, 0.01, grad=False)

        out[solver] = fwd
    return {k: 1e3 * v / 100 for k, v in timed_round_robin(out, 3, device).items()}


def table(rows: list[dict]) -> str:
    head = "| SDE | solver | fwd ms/step | fwd+bwd ms/step | strong error | saved MB by steps |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        saved = ", ".join(f"{n}: {b / 2**20:.1f}" for n, b in r.get("saved", {}).items())
        lines.append(
            f"| {r['sde']} | {r['solver']} | {r['fwd_ms']:.3f} | {r['fb_ms']:.3f} | "
            f"{r['strong']:.2e} | {saved or '–'} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="CPU-sized (about 2 minutes)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--sdes", nargs="+", default=["gbm", "ou", "neural"])
    ap.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: perf_counter; cpu: process_time (use with --threads 1)",
    )
    ap.add_argument(
        "--checkpoints",
        type=int,
        default=8,
        help="K of odeflow-adjoint-K and the memory table",
    )
    ap.add_argument("--repeats", type=int, default=None, help="timing rounds (3 quick, 7)")
    ap.add_argument("--memory-table-steps", type=int, nargs="*", default=[100, 1000, 10000])
    ap.add_argument("--memory-max-peer", type=int, default=1000,
                    help="largest N of the memory table for the solvers other than "
                         "odeflow-adjoint-K")  # fmt: skip
    args = ap.parse_args()
    global CHECKPOINTS, CLOCK
    CHECKPOINTS = args.checkpoints
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    args.steps = 32 if args.quick else 128  # dt = 1/32, 1/128 (see decimal_dt for 0.01)
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.error_batch = 256 if args.quick else 1024
    args.memory_steps = [8, 16, 32] if args.quick else [32, 64, 128, 256]
    if args.threads:
        torch.set_num_threads(args.threads)
    import torchsde

    device, dtype = torch.device(args.device), torch.float32
    meta = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchsde": torchsde.__version__,
        "python": sys.version.split()[0],
        "quick": args.quick,
        "steps": args.steps,
        "dtype": "float32",
        "command": " ".join(sys.argv),
        "clock": args.clock,
        "checkpoints": args.checkpoints,
        "memory_sde": "ou 2048x4 float32",
    }
    rows = []
    for name in args.sdes:
        t = time.perf_counter()
        rows.extend(run_sde(name, args, device, dtype))
        print(f"{name:7s} {time.perf_counter() - t:6.1f}s", flush=True)
    print(table(rows))
    decimal = decimal_dt(device, dtype) if "gbm" in args.sdes else {}
    print("forward ms/step on gbm with dt = 0.01 (100 steps):", decimal)
    memory = memory_vs_steps(args, device, dtype) if args.memory_table_steps else []
    if args.json:
        out = {"meta": meta, "results": rows, "decimal_dt": decimal, "memory_steps": memory}
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
