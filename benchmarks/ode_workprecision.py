"""Work-precision of odeflow's adaptive solvers against torchdiffeq, torchode and scipy
(issue 19, §5): error vs function evaluations (NFE) and vs wall time.

Problems (float64):
  lv        Lotka–Volterra, y' = (1.5 x − x y, −3 y + x y), y0 = (1, 1), t ∈ [0, 10]
  vdp       Van der Pol, μ = 1 (non-stiff), y0 = (2, 0), t ∈ [0, 10]
  arenstorf the restricted 3-body problem's Arenstorf orbit (Hairer–Nørsett–Wanner I,
            §II.0), one period T = 17.0652…: the exact end state is the initial state
  node      a neural ODE: dy/dt = tanh MLP 2 → 64 → 64 → 2 (seeded weights), a batch of 256
            initial states solved as one system, t ∈ [0, 2]
Error: relative 2-norm error of the final state against a reference (the initial state for
arenstorf; scipy DOP853 at rtol = atol = 1e-13 otherwise). NFE: calls of the vector field
(torchode: calls of the batched field). Time: median wall time of --repeats solves after a
warm-up solve (no gradients).
Solvers: odeflow bosh3 / dopri5 / tsit5 / dopri8 (odeflow.solve(method=..., rtol, atol));
torchdiffeq dopri5 / dopri8 (odeint); torchode tsit5 / dopri5 (AutoDiffAdjoint with an
IntegralController; skipped when torchode does not import); scipy solve_ivp RK45 / DOP853
(the neural ODE as numpy calls of the same network). On the batched neural ODE also
per-sample steps: odeflow tsit5 with options={"per_sample_steps": True} against torchode
tsit5 solving the 256 samples as independent problems (its batch semantics).
Quick mode: rtol = atol in {1e-4, 1e-6, 1e-8} (bosh3 not below 1e-6), one timed repeat.

Usage:
  python benchmarks/ode_workprecision.py --quick                 # ~1-2 minutes on a CPU
  python benchmarks/ode_workprecision.py --json out.json --plot /tmp/wp
Writes benchmarks/results/cpu_ode_workprecision.json by default; PNGs only with --plot DIR.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

import odeflow

D64 = torch.float64
ARENSTORF_T = 17.0652165601579625588917206249
ARENSTORF_MU = 0.012277471


# --------------------------------------------------------------------------- problems
def _lv(t, y):
    x, v = y[..., 0], y[..., 1]
    return torch.stack([1.5 * x - x * v, -3.0 * v + x * v], -1)


def _vdp(t, y):
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, (1 - x * x) * v - x], -1)


def _arenstorf(t, y):
    mu, nu = ARENSTORF_MU, 1 - ARENSTORF_MU
    y1, y2, v1, v2 = y[..., 0], y[..., 1], y[..., 2], y[..., 3]
    d1 = ((y1 + mu) ** 2 + y2**2) ** 1.5
    d2 = ((y1 - nu) ** 2 + y2**2) ** 1.5
    a1 = y1 + 2 * v2 - nu * (y1 + mu) / d1 - mu * (y1 - nu) / d2
    a2 = y2 - 2 * v1 - nu * y2 / d1 - mu * y2 / d2
    return torch.stack([v1, v2, a1, a2], -1)


def _node():
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
        torch.nn.Linear(64, 2),
    ).double()  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=D64) / math.sqrt(p.shape[-1]))
    y0 = torch.randn(256, 2, generator=g, dtype=D64)
    return (lambda t, y: net(y)), y0


def problems() -> dict:
    node_f, node_y0 = _node()
    return {
        "lv": (_lv, torch.tensor([1.0, 1.0], dtype=D64), 10.0),
        "vdp": (_vdp, torch.tensor([2.0, 0.0], dtype=D64), 10.0),
        "arenstorf": (
            _arenstorf,
            torch.tensor([0.994, 0.0, 0.0, -2.00158510637908252240537862224], dtype=D64),
            ARENSTORF_T,
        ),
        "node": (node_f, node_y0, 2.0),
    }


def reference(name: str, f, y0: torch.Tensor, T: float) -> torch.Tensor:
    if name == "arenstorf":
        return y0.clone()
    from scipy.integrate import solve_ivp

    def fun(t, y):
        with torch.no_grad():
            return f(torch.tensor(t), torch.from_numpy(y).reshape(y0.shape)).reshape(-1).numpy()

    r = solve_ivp(fun, (0.0, T), y0.reshape(-1).numpy(), method="DOP853", rtol=1e-13, atol=1e-13)
    return torch.from_numpy(r.y[:, -1]).reshape(y0.shape)


# --------------------------------------------------------------------------- solvers
class Counted:
    def __init__(self, f):
        self.f, self.n = f, 0

    def __call__(self, t, y):
        self.n += 1
        return self.f(t, y)


def run_odeflow(method, per_sample=False):
    opts = {"per_sample_steps": True} if per_sample else None

    def go(f, y0, T, tol):
        fc = Counted(f)
        sol = odeflow.solve(fc, y0, torch.tensor([0.0, T], dtype=D64), method=method,
                            rtol=tol, atol=tol, max_steps=10**6, options=opts)  # fmt: skip
        return sol.ys[-1], fc.n

    return go


def run_torchdiffeq(method):
    import torchdiffeq

    def go(f, y0, T, tol):
        fc = Counted(f)
        ys = torchdiffeq.odeint(fc, y0, torch.tensor([0.0, T], dtype=D64), method=method,
                                rtol=tol, atol=tol)  # fmt: skip
        return ys[-1], fc.n

    return go


def run_torchode(method, per_sample=False):
    import torchode as to

    def go(f, y0, T, tol):
        fc = Counted(f)
        # one system, or (per_sample) torchode's batch of independent problems
        flat = y0 if per_sample else y0.reshape(1, -1)
        if per_sample:
            term = to.ODETerm(lambda t, y: fc(t, y))
        else:
            term = to.ODETerm(lambda t, y: fc(t, y.reshape(y0.shape)).reshape(1, -1))
        step = {"tsit5": to.Tsit5, "dopri5": to.Dopri5}[method](term=term)
        ctrl = to.IntegralController(atol=tol, rtol=tol, term=term)
        solver = to.AutoDiffAdjoint(step, ctrl)
        t_eval = torch.tensor([[0.0, T]], dtype=D64).expand(flat.shape[0], 2)
        sol = solver.solve(to.InitialValueProblem(y0=flat, t_eval=t_eval))
        return sol.ys[:, -1].reshape(y0.shape), fc.n

    return go


def run_scipy(method):
    from scipy.integrate import solve_ivp

    def go(f, y0, T, tol):
        def fun(t, y):
            with torch.no_grad():
                return f(torch.tensor(t), torch.from_numpy(y).reshape(y0.shape)).reshape(-1).numpy()

        r = solve_ivp(fun, (0.0, T), y0.reshape(-1).numpy(), method=method, rtol=tol, atol=tol)
        return torch.from_numpy(r.y[:, -1]).reshape(y0.shape), int(r.nfev)

    return go


def solvers() -> dict:
    out = {f"odeflow-{m}": run_odeflow(m) for m in ("bosh3", "dopri5", "tsit5", "dopri8")}
    out["odeflow-tsit5-per-sample"] = run_odeflow("tsit5", per_sample=True)
    try:
        import torchdiffeq  # noqa: F401

        out |= {f"torchdiffeq-{m}": run_torchdiffeq(m) for m in ("dopri5", "dopri8")}
    except ImportError:
        print("torchdiffeq not importable: skipped", file=sys.stderr)
    try:
        import torchode  # noqa: F401

        out |= {f"torchode-{m}": run_torchode(m) for m in ("tsit5", "dopri5")}
        out["torchode-tsit5-per-sample"] = run_torchode("tsit5", per_sample=True)
    except Exception as e:  # torchode's dependencies (torchtyping, ...) may be missing
        print(f"torchode not importable ({type(e).__name__}: {e}): skipped", file=sys.stderr)
    out |= {f"scipy-{m}": run_scipy(m) for m in ("RK45", "DOP853")}
    return out


# --------------------------------------------------------------------------- driver
def measure(go, f, y0, T, tol, ref, repeats):
    with torch.no_grad():
        y, nfe = go(f, y0, T, tol)  # warm-up, and the values
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            go(f, y0, T, tol)
            times.append(time.perf_counter() - t0)
    err = ((y - ref).norm() / ref.norm()).item()
    return {"error": err, "nfe": nfe, "ms": 1e3 * statistics.median(times)}


def plot(rows, folder):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    for prob in sorted({r["problem"] for r in rows}):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for sol in sorted({r["solver"] for r in rows}):
            rs = sorted((r for r in rows if r["problem"] == prob and r["solver"] == sol),
                        key=lambda r: r["rtol"])  # fmt: skip
            if not rs:
                continue
            style = "-o" if sol.startswith("odeflow") else "--s"
            for ax, key in zip(axes, ("nfe", "ms")):
                ax.loglog([r[key] for r in rs], [max(r["error"], 1e-16) for r in rs], style,
                          label=sol, ms=4)  # fmt: skip
        for ax, lab in zip(axes, ("function evaluations", "wall time [ms]")):
            ax.set_xlabel(lab)
            ax.set_ylabel("relative error at the final time")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_title(f"{prob}: error vs NFE")
        axes[1].set_title(f"{prob}: error vs time")
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(folder, f"workprecision_{prob}.png"), dpi=120)
        plt.close(fig)


def nfe_table(rows) -> list[dict]:
    """odeflow's NFE over each peer's at the same problem and tolerance."""
    pairs = [("odeflow-dopri5", "torchdiffeq-dopri5"), ("odeflow-dopri8", "torchdiffeq-dopri8"),
             ("odeflow-tsit5", "torchode-tsit5"), ("odeflow-dopri5", "torchode-dopri5"),
             ("odeflow-dopri5", "scipy-RK45"), ("odeflow-dopri8", "scipy-DOP853"),
             ("odeflow-tsit5-per-sample", "torchode-tsit5-per-sample")]  # fmt: skip
    index = {(r["problem"], r["solver"], r["rtol"]): r for r in rows}
    out = []
    for ours, peer in pairs:
        ratios = [index[p, ours, tol]["nfe"] / index[p, peer, tol]["nfe"]
                  for (p, s, tol) in index if s == peer and (p, ours, tol) in index]  # fmt: skip
        if ratios:
            out.append({"odeflow": ours, "peer": peer, "nfe_ratio_median": statistics.median(
                ratios), "nfe_ratio_min": min(ratios), "nfe_ratio_max": max(ratios),
                "cases": len(ratios)})  # fmt: skip
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 tolerances, 1 repeat")
    ap.add_argument("--json", default="benchmarks/results/cpu_ode_workprecision.json")
    ap.add_argument("--plot", default=None, help="folder for the PNG diagrams (not written else)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--problems", nargs="+", default=None)
    args = ap.parse_args()
    tols = [1e-4, 1e-6, 1e-8] if args.quick else [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10]
    repeats = args.repeats or (1 if args.quick else 5)
    probs = problems()
    names = args.problems or list(probs)
    runners = solvers()
    rows = []
    t_start = time.perf_counter()
    for name in names:
        f, y0, T = probs[name]
        ref = reference(name, f, y0, T)
        for sol, go in runners.items():
            if sol.endswith("per-sample") and name != "node":
                continue  # (per-sample steps: the batched problem only)
            for tol in tols:
                if args.quick and sol == "odeflow-bosh3" and tol < 1e-6:
                    continue  # (thousands of steps; bosh3 has no peer here)
                r = measure(go, f, y0, T, tol, ref, repeats)
                rows.append({"problem": name, "solver": sol, "rtol": tol, "atol": tol, **r})
                print(f"{name:10s} {sol:20s} tol={tol:.0e}  err={r['error']:.2e}  "
                      f"nfe={r['nfe']:6d}  {r['ms']:9.2f} ms", flush=True)  # fmt: skip
    table = nfe_table(rows)
    print("\nNFE of odeflow / peer at equal rtol = atol (median [min, max] over cases):")
    for r in table:
        print(
            f"  {r['odeflow']:16s} / {r['peer']:20s} {r['nfe_ratio_median']:.3f} "
            f"[{r['nfe_ratio_min']:.3f}, {r['nfe_ratio_max']:.3f}]  ({r['cases']} cases)"
        )
    meta = {
        "command": " ".join(["python", *sys.argv]),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "quick": args.quick,
        "repeats": repeats,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "nfe_ratios": table, "results": rows}, fh, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        plot(rows, args.plot)
        print(f"plots in {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
