"""odeflow's ODE engine against torchdiffeq and torchode, side by side (issue 3, §6).

Workloads (RK4 on [0, 1], loss = mean of the squared final state):
  conv: state B×C×H×W, f = conv3×3 → GroupNorm(8) → ReLU → conv3×3, 4 steps
        (full: 64×128×32×32; --quick: 8×32×16×16)
  mlp:  state N×64, f = tanh MLP [y, t] → W → W → 64, 16 steps
        (full: N=4096, W=1024; --quick: N=512, W=128)
Solvers: odeflow (discrete adjoint rebuilding one step's graph at a time, the default;
"-stage": DiscreteAdjoint(recompute="stage"), one stage's graph at a time; "+compile": the
vector field wrapped in torch.compile (inductor), compiled in the untimed warm-up call, the
number of compiled graphs is reported; "+graphs": DiscreteAdjoint(cuda_graphs=True), each
step's forward and rebuild+VJP captured as CUDA graphs in the warm-up call and replayed, the
captures' private pool counted in the peak, CUDA only; backprop), torchdiffeq (odeint =
backprop; odeint_adjoint = continuous adjoint), torchode (AutoDiffAdjoint, fixed step,
classical RK4 tableau).
Precisions: fp32, tf32, bf16, fp16. odeflow takes precision=...; peers run under
torch.autocast(device, dtype) (how their users get mixed precision), fp16 without loss scaling.
Note torchdiffeq's "rk4" is the 3/8 rule; odeflow and torchode use classical RK4 here, so each
solver's gradient error is measured against *its own* fp32 and fp64 runs.

What is measured, per (workload, solver, precision), each in a fresh subprocess:
  ms      forward+backward time, median of --repeats (CUDA-synchronized) after a warm-up;
          with --clock cpu, one thread per run and the process's CPU time (a shared CPU's
          load from other processes then changes the figures little; wall time on a busy
          machine does not measure the work);
  peak    extra memory of one forward+backward (after a warm-up call) over the set-up state:
          CUDA: torch.cuda.max_memory_allocated() - memory_allocated() before the call;
          CPU:  peak resident set size (VmHWM, reset through /proc/self/clear_refs just
                before the call) - RSS before the call, measured in a second subprocess run
                with MALLOC_MMAP_THRESHOLD_=65536 so that freed blocks >= 64 KiB leave the
                process (smaller blocks and allocator slack make it coarse, but it is the same
                for every solver); the times come from a subprocess with glibc's default
                allocator, since the fixed threshold turns every large allocation into a fresh
                mmap and its page faults (it doubled the CPU times of every solver);
  err32 / err64  relative 2-norm error of the parameter gradient vs the same solver in fp32 /
          fp64 (fp64 runs on CPU for the full-size conv workload only when --fp64-ref is set).

Checkpointing table (--checkpoints, issue 19 §3): on the same workloads, fp32 by default,
torchdiffeq's and odeflow's backprop against odeflow's DiscreteAdjoint(checkpoints=...) with
"steps", K = ceil(sqrt(steps)) (binomial), "all", a MemoryBudget of 40 % of
torchdiffeq-backprop's measured peak and an unlimited budget (time, peak, and the adjoint's
stored states, recomputed steps and kept graphs; each call's forward and backward parts,
fwd_ms and bwd_ms; from odeflow backprop's F = fwd_ms and B = bwd_ms, the least time of a
policy that rebuilds a fraction ρ of the steps, F + B + ρ F, as a ratio to backprop's and to
torchdiffeq's time); then memory flatness: a long solve (euler, 8×32 state, tanh MLP field)
with K = 20 checkpoints at n = 10³, 10⁴, 10⁵ steps (and "steps" for contrast): peak RSS over
the set-up state, the adjoint's stored states and their bytes, time.
Slim step graphs (selective activation checkpointing) for the budget: ode_slim_steps.py.

Usage:
  python benchmarks/ode_peers.py --quick --json ode.json        # CPU-sized, a few minutes
  python benchmarks/ode_peers.py --quick --checkpoints --json ck.json  # checkpointing table
  python benchmarks/ode_peers.py --device cuda --json ode.json  # full sizes
  python benchmarks/ode_peers.py --compile ...                  # + torch.compile rows
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

SOLVERS = (
    "odeflow-adjoint",
    "odeflow-adjoint-stage",
    "odeflow-adjoint+graphs",
    "odeflow-adjoint+compile",
    "odeflow-adjoint-stage+compile",
    "odeflow-backprop",
    "torchdiffeq",
    "torchdiffeq-adjoint",
    "torchode",
)
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


def sizes(workload: str, quick: bool) -> dict:
    if workload == "conv":
        return dict(b=8, c=32, hw=16, steps=4) if quick else dict(b=64, c=128, hw=32, steps=4)
    return dict(n=512, w=128, steps=16) if quick else dict(n=4096, w=1024, steps=16)


def workload(name: str, sz: dict, dev, dt):
    """The vector field (an ``nn.Module`` taking ``(t, y)``) and initial state of a workload
    (``sizes(name, quick)``) on ``dev`` in ``dt``, seeded by the caller."""
    import torch
    from torch import nn

    if name == "conv":
        c = sz["c"]

        class F(nn.Module):
            def __init__(self):
                super().__init__()
                self.c1 = nn.Conv2d(c, c, 3, padding=1)
                self.n = nn.GroupNorm(8, c)
                self.c2 = nn.Conv2d(c, c, 3, padding=1)

            def forward(self, t, y):
                return self.c2(torch.relu(self.n(self.c1(y))))

        y0 = torch.randn(sz["b"], c, sz["hw"], sz["hw"])
    else:
        w = sz["w"]

        class F(nn.Module):
            def __init__(self):
                super().__init__()
                self.l1 = nn.Linear(65, w)
                self.l2 = nn.Linear(w, w)
                self.l3 = nn.Linear(w, 64)

            def forward(self, t, y):
                tt = torch.ones_like(y[:, :1]) * t.reshape(-1, 1).to(y.dtype)
                h = torch.tanh(self.l1(torch.cat([y, tt], 1)))
                return self.l3(torch.tanh(self.l2(h)))

        y0 = torch.randn(sz["n"], 64)
    return F().to(dev, dt), y0.to(dev, dt)


# ----------------------------------------------------------------------------- child process
def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; Linux >= 4.0."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def child(spec: dict) -> dict:
    import torch

    torch.manual_seed(0)
    if spec.get("clock") == "cpu":
        torch.set_num_threads(1)  # one thread: the process's CPU time is the work done
    dev = torch.device(spec["device"])
    prec = spec["precision"]
    dt = torch.float64 if prec == "fp64" else torch.float32
    sz = spec["sizes"]
    f, y0 = workload(spec["workload"], sz, dev, dt)
    steps = sz["steps"]
    t = torch.tensor([0.0, 1.0], device=dev, dtype=dt)
    solver = spec["solver"]
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec)
    tf32 = prec == "tf32"
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32

    def amp():
        return torch.autocast(dev.type, dtype=low or torch.bfloat16, enabled=low is not None)

    if solver.startswith("odeflow"):
        import odeflow

        kind = solver.removesuffix("+compile").removesuffix("+graphs")
        ck = spec.get("checkpoints", "steps")
        ck = odeflow.ode.MemoryBudget(ck[1]) if isinstance(ck, list) else ck  # ["budget", B]
        stats = []
        grad = {
            "odeflow-adjoint": odeflow.DiscreteAdjoint(
                recompute="step", cuda_graphs=solver.endswith("+graphs"), checkpoints=ck
            ),
            "odeflow-adjoint-stage": odeflow.DiscreteAdjoint(recompute="stage"),
            "odeflow-backprop": odeflow.Backprop(),
        }[kind]
        p = "fp32" if prec == "fp64" else prec
        # torch.compile(f) is an nn.Module sharing f's parameters; dynamo guards on grad mode,
        # so the adjoint needs two graphs (no-grad forward, rebuild under enable_grad)
        func = torch.compile(f) if solver.endswith("+compile") else f
        # one AdjointScaler across the calls, as in a training loop: the fp16 scale learnt in
        # the warm-up call persists (a fresh scaler per call may pay overflow retries each time)
        scaler = odeflow.AdjointScaler() if p == "fp16" else None

        def run():
            sol = odeflow.solve(func, y0, t, method="rk4", gradient=grad, precision=p,
                                steps_per_interval=steps, scaler=scaler)  # fmt: skip
            stats[:] = [sol.stats]
            return sol.ys[-1]
    elif solver.startswith("torchdiffeq"):
        import torchdiffeq

        fn = torchdiffeq.odeint_adjoint if solver.endswith("adjoint") else torchdiffeq.odeint
        kw = dict(method="rk4", options=dict(step_size=1.0 / steps))
        if solver.endswith("adjoint"):
            kw["adjoint_params"] = tuple(f.parameters())
            kw["adjoint_options"] = dict(step_size=1.0 / steps)

        def run():
            with amp():
                return fn(f, y0, t, **kw)[-1]
    else:
        import torchode as to
        from torchode.interpolation import ThirdOrderPolynomialInterpolation
        from torchode.single_step_methods.runge_kutta import ButcherTableau, ExplicitRungeKutta

        class RK4(ExplicitRungeKutta):
            TABLEAU = ButcherTableau.from_lists(
                c=[0.0, 0.5, 0.5, 1.0], a=[[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]],
                b=[1 / 6, 1 / 3, 1 / 3, 1 / 6], b_low_order=[1 / 6, 1 / 3, 1 / 3, 1 / 6],
            )  # fmt: skip

            def __init__(self, term=None):
                super().__init__(term, RK4.TABLEAU)

            def convergence_order(self):
                return 4

            def build_interpolation(self, data):
                return ThirdOrderPolynomialInterpolation.from_k(
                    data.t0, data.dt, data.y0, data.y1, data.k
                )

        shape = y0.shape
        batch = shape[0]

        def g(tt, yy):
            return f(tt[:1] if spec["workload"] == "conv" else tt, yy.view(shape)).reshape(
                batch, -1
            )

        term = to.ODETerm(g)
        solver_obj = to.AutoDiffAdjoint(RK4(term), to.FixedStepController())

        def run():
            y = y0.reshape(batch, -1)
            prob = to.InitialValueProblem(y0=y, t_eval=t.expand(batch, 2).contiguous())
            with amp():
                sol = solver_obj.solve(
                    prob, dt0=torch.full((batch,), 1.0 / steps, device=dev, dtype=dt)
                )
            return sol.ys[:, -1].view(shape)

    params = list(f.parameters())

    split = []  # (forward, backward) clock readings of the timed calls

    def fwd_bwd(clock=None):
        for q in params:
            q.grad = None
        yT = run()
        loss = (yT.float() ** 2).mean()
        if clock is not None:
            sync()
            split.append(clock())
        loss.backward()
        return loss

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    sync()
    t_first = time.perf_counter()
    fwd_bwd()  # warm-up: lazy initialisation (kernels, workspaces, compilation) is not counted
    sync()
    first_ms = (time.perf_counter() - t_first) * 1000
    # memory of one forward+backward
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss = fwd_bwd()
        sync()
        peak = torch.cuda.max_memory_allocated() - base
        if solver.endswith("+graphs"):  # the captures' pool stays reserved between calls
            import odeflow

            pool = odeflow.ode.graph_memory_bytes()
            peak += pool
    else:
        import gc

        gc.collect()
        if _reset_peak_rss():
            base = _status_kb("VmRSS")
            loss = fwd_bwd()
            peak = (_status_kb("VmHWM") - base) * 1024
        else:  # coarse fallback: lifetime peak minus current RSS
            base = _status_kb("VmRSS")
            loss = fwd_bwd()
            peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
    g = torch.cat([q.grad.detach().double().flatten().cpu() for q in params])
    times = []
    clock = time.process_time if spec.get("clock") == "cpu" else time.perf_counter
    fb = []  # (forward ms, backward ms) of each timed call
    for _ in range(spec["repeats"]):
        sync()
        t0 = clock()
        fwd_bwd(clock)
        sync()
        t1 = clock()
        times.append((t1 - t0) * 1000)
        fb.append(((split[-1] - t0) * 1000, (t1 - split[-1]) * 1000))
    torch.save(g, spec["grad_path"])
    fastest = min(range(len(times)), key=times.__getitem__) if times else None
    out = {"ms": statistics.median(times) if times else None,
           "ms_min": min(times) if times else None, "first_ms": first_ms,
           # the forward and backward parts of the fastest call
           "fwd_ms": fb[fastest][0] if times else None,
           "bwd_ms": fb[fastest][1] if times else None,
           "peak_mb": peak / 2**20, "loss": float(loss),
           "finite": bool(torch.isfinite(g).all())}  # fmt: skip
    if solver.startswith("odeflow") and "checkpoints" in spec:
        st = stats[0]
        out.update(stored_states=st.stored_states, recomputed_steps=st.recomputed_steps,
                   kept_graphs=st.kept_graphs)  # fmt: skip
    if solver.startswith("odeflow") and scaler is not None:
        out["fp16_overflows"] = scaler.total_overflows  # retries, all calls (warm-up included)
    if solver.endswith("+graphs") and dev.type == "cuda":
        out["graph_pool_mb"] = pool / 2**20
    if solver.endswith("+compile"):
        from torch._dynamo.utils import counters

        # unique graphs after warm-up + all timed calls: 2 means no per-step recompilation
        out["compiled_graphs"] = int(counters["stats"]["unique_graphs"])
    return out


# ----------------------------------------------------------------------------- parent
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--quick", action="store_true", help="CPU-sized workloads")
    ap.add_argument("--json", default=None, help="write results to this JSON file")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--workloads", nargs="+", default=["conv", "mlp"])
    ap.add_argument("--solvers", nargs="+", default=None, choices=SOLVERS,
                    help="default: all but the +compile rows (+graphs: CUDA only)")  # fmt: skip
    ap.add_argument("--compile", action="store_true", help="add the +compile rows")
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS))
    ap.add_argument("--fp64-ref", action="store_true", help="fp64 reference also at full size")
    ap.add_argument("--checkpoints", action="store_true",
                    help="the checkpointing table and the memory-flatness run instead")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=4,
                    help="interleaved timing rounds of the checkpointing table")  # fmt: skip
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu (CPU only): one thread per run, timed by the process's "
                    "CPU time, little changed by other processes' load")  # fmt: skip
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        out = flat_child(spec) if spec.get("flat") else child(spec)
        print("RESULT " + json.dumps(out))
        return 0

    import torch

    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    repeats = args.repeats or (2 if args.quick else 10)
    meta = {
        "device": torch.cuda.get_device_name() if dev == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "quick": args.quick,
        "repeats": repeats,
        "clock": args.clock,
    }
    if args.clock == "cpu":
        if dev != "cpu":
            ap.error("--clock cpu times CPU runs only; use --device cpu")
        meta["cpu_threads"] = 1
    if dev == "cpu":  # False: this CPU emulates 16-bit products, so its bf16/fp16 rows are slow
        from odeflow.ode._precision import _cpu_native

        meta["cpu_native_16bit"] = {"bf16": _cpu_native(torch.bfloat16),
                                    "fp16": _cpu_native(torch.float16)}  # fmt: skip
        print(f"native 16-bit matrix products on this CPU: {meta['cpu_native_16bit']}")
    for mod in ("odeflow", "torchdiffeq", "torchode"):
        try:
            meta[mod] = __import__(mod).__version__
        except Exception:  # a missing peer is reported, not fatal
            meta[mod] = None
    rows = []
    tmp = tempfile.mkdtemp(prefix="odeflow-bench-")
    if args.checkpoints:
        return checkpoint_tables(args, dev, meta, repeats, tmp)
    for wl in args.workloads:
        sz = sizes(wl, args.quick)
        plain = [s for s in SOLVERS if args.compile or not s.endswith("+compile")]
        if dev != "cuda":  # CUDA graphs: no effect elsewhere
            plain = [s for s in plain if not s.endswith("+graphs")]
        solvers = args.solvers or plain
        for solver in solvers:
            lib = solver.split("-")[0]
            if meta.get(lib) is None:
                print(f"skip {solver}: not installed")
                continue
            precs = list(args.precisions)
            if dev == "cpu" and "tf32" in precs:
                precs.remove("tf32")  # TF32 is a CUDA tensor-core mode: on CPU it is fp32
            if args.quick or args.fp64_ref or wl == "mlp":
                precs.append("fp64")
            res = {}
            for prec in precs:
                gp = os.path.join(tmp, f"{wl}-{solver}-{prec}.pt")
                spec = dict(workload=wl, solver=solver, precision=prec, device=dev, sizes=sz,
                            repeats=1 if prec == "fp64" else repeats, grad_path=gp,
                            clock=args.clock)  # fmt: skip
                # on a CPU, time and memory come from two children: the fixed mmap threshold
                # that makes peak RSS track live tensors also makes every large allocation a
                # fresh mmap (page faults), which doubled the measured times
                r = _run_child(spec, memory=False)
                if "error" not in r and dev == "cpu" and prec != "fp64":
                    m = _run_child(dict(spec, repeats=0, grad_path=gp + ".mem"), memory=True)
                    r = m if "error" in m else dict(r, peak_mb=m["peak_mb"])
                if "error" in r:
                    res[prec] = r
                    print(f"{wl:5s} {solver:29s} {prec:5s} ERROR {r['error']}")
                    continue
                res[prec] = r
                res[prec]["grad_path"] = gp
            for prec, r in res.items():
                if "error" in r or prec == "fp64":
                    continue
                g = torch.load(r["grad_path"])
                for ref, key in (("fp32", "err32"), ("fp64", "err64")):
                    if ref in res and "error" not in res[ref] and ref != prec:
                        gr = torch.load(res[ref]["grad_path"])
                        r[key] = float((g - gr).norm() / gr.norm())
                row = {"workload": wl, "sizes": sz, "solver": solver, "precision": prec}
                row.update({k: v for k, v in r.items() if k != "grad_path"})
                rows.append(row)
                print(_fmt(row), flush=True)
            if args.json:  # after every solver: a run stopped at a time limit keeps its rows
                _write(args.json, dict(meta, complete=False), rows)
    _table(rows)
    if args.json:
        _write(args.json, dict(meta, complete=True), rows)
        print(f"wrote {args.json}")
    return 0


# ----------------------------------------------------------------------------- checkpointing
def checkpoint_tables(args, dev: str, meta: dict, repeats: int, tmp: str) -> int:
    """torchdiffeq backprop vs DiscreteAdjoint(checkpoints=...) per workload, then flatness.

    Peaks come from one memory child per configuration; times from ``--rounds`` rounds that
    run every configuration's timing child in turn (the fastest round counts: on a shared
    CPU, interleaving spreads load changes over all configurations alike)."""
    import torch

    rows, precs = [], [p for p in args.precisions if p != "tf32"]
    precs = precs if args.precisions != list(PRECISIONS) else ["fp32"]
    meta = dict(meta, table="checkpointing", timing_rounds=args.rounds)
    for wl, prec in [(w, p) for w in args.workloads for p in precs]:
        sz = sizes(wl, args.quick)
        base = dict(workload=wl, precision=prec, device=dev, sizes=sz, repeats=repeats,
                    clock=args.clock)  # fmt: skip
        specs = {"torchdiffeq": dict(base, solver="torchdiffeq"),
                 "backprop": dict(base, solver="odeflow-backprop")}  # fmt: skip
        mem = {"torchdiffeq": _peak(specs["torchdiffeq"], f"{tmp}/{wl}-{prec}-tde.pt"),
               "backprop": _peak(specs["backprop"], f"{tmp}/{wl}-{prec}-bp.pt")}  # fmt: skip
        budget = int(0.4 * mem["torchdiffeq"].get("peak_mb", 0) * 2**20) or None
        k = max(1, round(sz["steps"] ** 0.5))
        options = {"steps": "steps", str(k): k, "all": "all", "budget 40%": ["budget", budget],
                   "unlimited": ["budget", 2**50]}  # fmt: skip
        for name, ck in options.items():
            if ck != ["budget", None]:
                specs[name] = dict(base, solver="odeflow-adjoint", checkpoints=ck)
                mem[name] = _peak(specs[name], f"{tmp}/{wl}-{prec}-{len(mem)}.pt")
        times: dict[str, list[float]] = {name: [] for name in specs}
        parts: dict[str, list[tuple]] = {name: [] for name in specs}  # (ms, fwd, bwd)
        for _ in range(args.rounds):
            for name, spec in specs.items():
                r = _run_child(dict(spec, grad_path=f"{tmp}/t.pt"), memory=False)
                times[name] += [r["ms_min"]] if "ms_min" in r else []
                parts[name] += [(r["ms_min"], r["fwd_ms"], r["bwd_ms"])] if "ms_min" in r else []
        # backprop's forward (F) and backward (B) work, from its fastest call: a step rebuilt
        # in the backward pass costs F / n once more
        fb = min(parts["backprop"], default=(None, None, None))[1:]
        # (torchdiffeq's "rk4" is the 3/8 rule: gradients are compared with odeflow's "steps")
        gref = torch.load(mem["steps"]["grad_path"]) if "grad_path" in mem["steps"] else None
        ref_ms = min(times["torchdiffeq"], default=None)
        for name, r in mem.items():
            drop = ("grad_path", "ms", "ms_min", "fwd_ms", "bwd_ms")
            row = {k_: v for k_, v in r.items() if k_ not in drop}
            best = min(parts[name], default=(None, None, None))
            row.update(workload=wl, sizes=sz, precision=prec, solver=specs[name]["solver"],
                       checkpoints=name, ms=min(times[name], default=None),
                       ms_rounds=times[name], fwd_ms=best[1], bwd_ms=best[2])  # fmt: skip
            if "kept_graphs" in r and None not in fb and ref_ms:
                # at least backprop's F + B and the rebuilt steps' share of F
                F, B = fb
                rebuilt = (sz["steps"] - r["kept_graphs"]) / sz["steps"]
                row["rebuilt_fraction"] = rebuilt
                row["time_bound_vs_backprop"] = 1 + rebuilt * F / (F + B)
                row["time_bound_vs_torchdiffeq"] = (F + B + rebuilt * F) / ref_ms
            if name == "budget 40%":
                row["budget_mb"] = budget / 2**20
            if name != "torchdiffeq" and "grad_path" in r and row["ms"] and ref_ms:
                row["time_vs_torchdiffeq"] = row["ms"] / ref_ms
                row["peak_vs_torchdiffeq"] = r["peak_mb"] / mem["torchdiffeq"]["peak_mb"]
                if gref is not None:
                    g = torch.load(r["grad_path"])
                    row["grad_diff_vs_steps"] = float((g - gref).norm() / gref.norm())
            rows.append(row)
            print(_fmt(row) + f"  checkpoints={name}", flush=True)
        if args.json:
            _write(args.json, dict(meta, complete=False), rows)
    flat = []
    ns = (10**3, 10**4, 10**5)
    for ck, n in [(20, n) for n in ns] + [("steps", n) for n in ns[:2]]:
        r = _run_child(dict(flat=True, checkpoints=ck, n=n, device=dev), memory=True)
        flat.append(dict(r, checkpoints=ck, n=n))
        print(f"flatness checkpoints={ck!s:5s} n={n:6d} " + json.dumps(r), flush=True)
    _table(rows)
    if args.json:
        _write(args.json, dict(meta, complete=True), rows, flatness=flat)
        print(f"wrote {args.json}")
    return 0


def _peak(spec: dict, grad_path: str) -> dict:
    """One memory child (CPU: peak RSS with the mmap threshold; CUDA: the allocator's)."""
    r = _run_child(dict(spec, repeats=0, grad_path=grad_path), memory=True)
    return dict(r, grad_path=grad_path) if "error" not in r else r


def flat_child(spec: dict) -> dict:
    """One long solve's forward+backward: peak RSS over the set-up state and stored states."""
    import gc

    import torch

    import odeflow

    torch.manual_seed(0)
    torch.set_num_threads(1)  # (tiny ops: thread hand-offs would dominate on a shared CPU)
    dev = torch.device(spec["device"])
    f = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32))
    f = f.to(dev)
    y0 = torch.randn(8, 32, device=dev)
    grad = odeflow.DiscreteAdjoint(checkpoints=spec["checkpoints"])

    def solve(n):
        sol = odeflow.solve(lambda t, y: f(y), y0, torch.tensor([0.0, 1.0], device=dev),
                            method="euler", steps_per_interval=n, gradient=grad,
                            params=list(f.parameters()))  # fmt: skip
        (sol.ys[-1] ** 2).mean().backward()
        return sol

    solve(50)  # warm-up: lazy initialisation is not counted
    gc.collect()
    _reset_peak_rss()
    base = _status_kb("VmRSS")
    t0 = time.perf_counter()
    sol = solve(spec["n"])
    st = sol.stats
    return {"s": time.perf_counter() - t0, "peak_mb": (_status_kb("VmHWM") - base) / 1024,
            "stored_states": st.stored_states, "recomputed_steps": st.recomputed_steps,
            "stored_mb": st.stored_states * y0.numel() * y0.element_size() / 2**20}  # fmt: skip


def _write(path: str, meta: dict, rows: list[dict], **extra) -> None:
    """Write the results (through a temporary file: never a half-written JSON)."""
    part = path + ".part"
    with open(part, "w") as fh:
        json.dump({"meta": meta, "results": rows, **extra}, fh, indent=2)
    os.replace(part, path)


def _child_env(memory: bool) -> dict:
    env = dict(os.environ)
    if memory:
        # A fixed mmap threshold makes glibc serve every block >= 64 KiB by mmap and return it
        # on free, so the CPU peak-RSS delta tracks live tensor memory instead of heap reuse.
        env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    return env


def _run_child(spec: dict, memory: bool) -> dict:
    """One measurement in a fresh interpreter: its RESULT dict, or {"error": last stderr line}."""
    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                       capture_output=True, text=True, env=_child_env(memory))  # fmt: skip
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode or not line:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:120]}
    return json.loads(line[0][7:])


def _fmt(r: dict) -> str:
    def num(k, f):
        v = r.get(k)
        return f.format(v) if isinstance(v, float) else "-"

    return (f"{r['workload']:5s} {r['solver']:29s} {r['precision']:5s} "
            f"{num('ms', '{:9.1f}')} ms {num('peak_mb', '{:9.1f}')} MB "
            f"err32 {num('err32', '{:8.1e}')} err64 {num('err64', '{:8.1e}')}"
            + ("" if r.get("finite", True) else "  NONFINITE"))  # fmt: skip


def _table(rows: list[dict]) -> None:
    print("\n| workload | solver | precision | fwd+bwd ms | peak MB | grad err vs fp32 | vs fp64 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        e32 = f"{r['err32']:.1e}" if "err32" in r else "-"
        e64 = f"{r['err64']:.1e}" if "err64" in r else "-"
        print(f"| {r['workload']} | {r['solver']} | {r['precision']} | {r.get('ms', 0):.1f} | "
              f"{r.get('peak_mb', 0):.1f} | {e32} | {e64} |")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
