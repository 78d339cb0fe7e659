"""odeflow.optim side by side: hybrid_lsqr vs scipy lsqr (oracle damping) vs dense SVD + GCV;
minimize_bounded (projected Newton–Krylov) vs scipy L-BFGS-B and trust-constr.

Part 1 (``hybrid``): the ill-posed test problems (1-D Gaussian deblurring and the inverse heat
equation as Toeplitz operators applied by FFT, matrix-free; Shaw's problem dense; ``heat`` and
``shaw`` as in Hansen's Regularization Tools, exact solutions included), white noise of 1 %
and 5 %. For each size:

* ``hybrid_lsqr`` (λ by GCV, on the fly, full reorthogonalization): error, iterations, time;
* scipy ``lsqr`` with a fixed damping ``λ``: the oracle λ is found by a sweep over 16 values
  (refined around the best) using the true solution; reported: the oracle error, the time
  of the single oracle run and of the whole sweep;
* the textbook method: dense SVD, GCV minimized on the SVD, the Tikhonov solution (sizes
  where a dense n×n SVD is affordable; ``--dense-max``).

Goals (DESIGN.md): hybrid error within 10 % of the oracle-λ error without a sweep, and ≥ 5×
faster than the dense method at n = 10⁴.

Part 2 (``bounds``): ℓ²-regularized multinomial logistic regression on scikit-learn's digits
(1797 × 64, 10 classes, 650 unknowns) with box bounds |w| ≤ 0.3: objective, function and
Hessian-vector evaluations, time.

Dense runs above ``--dense-max`` are not run; their time is extrapolated as n³ from the
largest measured size (``_extrapolated`` in the JSON) and, with ``--dense-lower-bound``,
bounded below by a measurement (``dense_seconds_lower_bound``).

Part 3 (``gnvpro``): Gauss–Newton VarPro against Adam (full batch, lr 1e-2, the same network
with a trained last layer) on the peaks regression (400 points) and on a 1-D
convection–diffusion–reaction surrogate (200 parameter samples → 32 solution values, data
generated here): iterations and seconds to a training MSE of 1 % and 0.1 % of ½var(y).

Part 4 (``rules``): λ/λ_opt and error/error_opt of GCV, weighted GCV, the discrepancy principle
and the dense textbook GCV over three noise draws (n = 256); ``rule_frequencies``: how often
each misses the issue-28 criterion over ``--draws`` draws. Part 5 (``slimtrain``): slimTrain
vs Adam on digits, test accuracy per epoch over learning rates and seeds. Part 6
(``double_descent``): random features, min-norm against hybrid (``_optim_parts.py``).
``--dense-lower-bound`` measures, above ``--dense-max``, the time to form the dense matrix and
one ``AᵀA`` product: a lower bound of the dense SVD's time.

Times are CPU seconds of the process (``time.process_time``; with ``--threads 1`` and
``OMP_NUM_THREADS=1`` they do not count the waits of a shared machine).

Usage::

    python benchmarks/optim_peers.py --quick --dense-lower-bound \
        --json benchmarks/results/cpu_optim_peers.json
    python benchmarks/optim_peers.py --sizes 1000 10000 --dense-max 10000   # dense at 10⁴ too
    python benchmarks/optim_peers.py --parts hybrid --sizes 10000 --dense-max 2000 \
        --dense-lower-bound --levels 0.01 0.05 --json benchmarks/results/cpu_optim_n1e4.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse.linalg as spla
import torch

from _optim_parts import (
    cdr_data,
    dense_lower_bound,
    part_double_descent,
    part_rule_frequencies,
    part_rules,
    part_slimtrain,
)
from odeflow._utils import write_json
from odeflow.optim import Evaluation, LinearOperator, hybrid_lsqr, minimize_bounded

F64 = torch.float64


# --- test problems ---------------------------------------------------------------------------
def _toeplitz_operator(col: torch.Tensor, row: torch.Tensor):
    """Matrix-free Toeplitz ``T`` (first column ``col``, first row ``row``) by FFT (2n)."""
    n = col.numel()
    circ = torch.cat([col, col.new_zeros(1), row[1:].flip(0)])
    fc = torch.fft.rfft(circ)
    circ_t = torch.cat([row, row.new_zeros(1), col[1:].flip(0)])
    fct = torch.fft.rfft(circ_t)

    def apply(f, v):
        return torch.fft.irfft(f * torch.fft.rfft(v, n=2 * n), n=2 * n)[..., :n]

    op = LinearOperator(
        lambda v: apply(fc, v), (n,), (n,), dtype=F64, rmatvec=lambda v: apply(fct, v)
    )
    return op


def deblur(n: int, width: float = 0.03):
    t = (torch.arange(n, dtype=F64) + 0.5) / n
    col = torch.exp(-((t - t[0]) ** 2) / (2 * width**2)) / (n * width * math.sqrt(2 * math.pi))
    x = torch.where((t > 0.2) & (t < 0.4), 1.0, 0.0) + torch.sin(2 * math.pi * t) ** 2 * (t > 0.5)
    return _toeplitz_operator(col, col), x + 0.5 * torch.exp(-((t - 0.75) ** 2) / 0.002)


def heat(n: int, kappa: float = 1.0):
    h = 1.0 / n
    d = torch.arange(n, dtype=F64) * h + h / 2
    col = h * d ** (-1.5) / (2 * kappa * math.sqrt(math.pi)) * torch.exp(-1 / (4 * kappa**2 * d))
    row = torch.zeros(n, dtype=F64)
    row[0] = col[0]
    return _toeplitz_operator(col, row), _heat_solution(n)


def _heat_solution(n: int):
    """Hansen's exact solution of ``heat`` (Regularization Tools; as in tests/optim)."""
    tau = 20 * torch.arange(1, n + 1, dtype=F64) / n
    x = torch.where(tau < 2, 0.75 * tau**2 / 4, 0.75 + (tau - 2) * (3 - tau))
    x = torch.where(tau >= 3, 0.75 * torch.exp(-2 * (tau - 3)), x)
    return torch.where(torch.arange(n) < n // 2, x, 0.0)


def shaw(n: int):
    h = math.pi / n
    s = -math.pi / 2 + (torch.arange(n, dtype=F64) + 0.5) * h
    u = math.pi * (torch.sin(s)[:, None] + torch.sin(s)[None, :])
    sinc = torch.where(u == 0, 1.0, torch.sin(u) / torch.where(u == 0, 1.0, u))
    A = h * (torch.cos(s)[:, None] + torch.cos(s)[None, :]) ** 2 * sinc**2
    x = 2 * torch.exp(-6 * (s - 0.8) ** 2) + torch.exp(-2 * (s + 0.5) ** 2)
    op = LinearOperator(lambda v: A @ v, (n,), (n,), dtype=F64, rmatvec=lambda v: A.T @ v)
    op.matrix = A
    return op, x


PROBLEMS = {"deblur": deblur, "heat": heat, "shaw": shaw}
DENSE_ONLY = {"shaw": 4000}  # shaw is dense: skip it beyond this size


def _dense(op) -> torch.Tensor:
    if hasattr(op, "matrix"):
        return op.matrix
    return op.mv(torch.eye(op.in_shape[0], dtype=F64)).T  # row i of the batch is A e_i


# --- methods ---------------------------------------------------------------------------------
def run_hybrid(op, b, x_true, regularization="gcv"):
    t0 = time.process_time()
    res = hybrid_lsqr(op, b, regularization=regularization)
    sec = time.process_time() - t0
    err = float((res.x - x_true).norm() / x_true.norm())
    return {
        "error": err,
        "lam": float(res.lam),
        "iterations": res.iterations,
        "seconds": sec,
        "status": res.status.name,
    }


def run_lsqr_oracle(op, b, x_true, lam_center):
    n = op.in_shape[0]
    A = spla.LinearOperator(
        (n, n),
        matvec=lambda v: op.mv(torch.from_numpy(np.ascontiguousarray(v).ravel())).numpy(),
        rmatvec=lambda v: op.rmv(torch.from_numpy(np.ascontiguousarray(v).ravel())).numpy(),
        dtype=np.float64,
    )
    bn, xt = b.numpy(), x_true.numpy()
    runs = {}

    def one(lam):
        t0 = time.process_time()
        out = spla.lsqr(A, bn, damp=lam, atol=1e-10, btol=1e-10, iter_lim=4 * n)
        runs[lam] = (
            np.linalg.norm(out[0] - xt) / np.linalg.norm(xt),
            time.process_time() - t0,
            int(out[2]),
        )

    t_sweep = time.process_time()
    for lam in lam_center * np.logspace(-2, 2, 9):  # coarse sweep, then refine around the best
        one(float(lam))
    best = min(runs, key=lambda k: runs[k][0])
    for lam in best * np.logspace(-0.5, 0.5, 7):
        one(float(lam))
    sweep = time.process_time() - t_sweep
    best = min(runs, key=lambda k: runs[k][0])
    err, sec, its = runs[best]
    return {
        "error": float(err),
        "lam": best,
        "iterations": its,
        "seconds": sec,
        "sweep_seconds": sweep,
        "sweep_runs": len(runs),
    }


def run_dense_gcv(op, b, x_true):
    t0 = time.process_time()
    A = _dense(op)
    U, s, Vh = torch.linalg.svd(A)
    beta = U.T @ b
    lams = s[0] * torch.logspace(-12, 0, 600, dtype=F64)
    f = lams[:, None] ** 2 / (s**2 + lams[:, None] ** 2)
    G = ((f * beta) ** 2).sum(1) / (len(b) - (1 - f).sum(1)) ** 2
    lam = float(lams[G.argmin()])
    x = Vh.T @ (s / (s**2 + lam**2) * beta)
    sec = time.process_time() - t0
    return {"error": float((x - x_true).norm() / x_true.norm()), "lam": lam, "seconds": sec}


def part_hybrid(sizes, levels, dense_max, problems, lower_bound=False):
    rows, bounds_at = [], {}
    for name in problems:
        for n in sizes:
            if name in DENSE_ONLY and n > DENSE_ONLY[name]:
                continue
            op, x = PROBLEMS[name](n)
            for level in levels:
                g = torch.Generator().manual_seed(0)
                b0 = op.mv(x)
                e = torch.randn(n, generator=g, dtype=F64)
                b = b0 + level * b0.norm() * e / e.norm()
                row = {"problem": name, "n": n, "noise": level}
                row["hybrid"] = run_hybrid(op, b, x)
                row["lsqr_oracle"] = run_lsqr_oracle(op, b, x, row["hybrid"]["lam"])
                if n <= dense_max:
                    row["dense_svd_gcv"] = run_dense_gcv(op, b, x)
                    row["speedup_vs_dense"] = (
                        row["dense_svd_gcv"]["seconds"] / row["hybrid"]["seconds"]
                    )
                elif lower_bound:  # measured once per n: forming A and one AᵀA GEMM
                    if n not in bounds_at:
                        bounds_at[n] = dense_lower_bound(op, _dense)
                    lb = bounds_at[n]
                    row["dense_seconds_lower_bound"] = lb
                    row["speedup_vs_dense_at_least"] = lb / row["hybrid"]["seconds"]
                    print(f"{name:7s} n={n:6d}: dense ≥ {lb:.1f}s (form A + one AᵀA GEMM)")
                row["error_ratio_vs_oracle"] = row["hybrid"]["error"] / row["lsqr_oracle"]["error"]
                # weighted GCV (Chung-Nagy-O'Leary), the λ rule made for hybrid methods
                row["hybrid_wgcv"] = run_hybrid(op, b, x, regularization="wgcv")
                row["error_ratio_wgcv_vs_oracle"] = (
                    row["hybrid_wgcv"]["error"] / row["lsqr_oracle"]["error"]
                )
                rows.append(row)
                h, o = row["hybrid"], row["lsqr_oracle"]
                d = row.get("dense_svd_gcv")
                print(
                    f"{name:7s} n={n:6d} noise={level:.2f} | hybrid err {h['error']:.4f} "
                    f"it {h['iterations']:3d} {h['seconds']:7.2f}s | lsqr-oracle err "
                    f"{o['error']:.4f} {o['seconds']:6.2f}s (sweep {o['sweep_seconds']:6.1f}s) | "
                    + (f"dense err {d['error']:.4f} {d['seconds']:7.2f}s" if d else "dense skipped")
                    + f" | err/oracle {row['error_ratio_vs_oracle']:.3f}"
                    + f" (wgcv {row['error_ratio_wgcv_vs_oracle']:.3f})",
                    flush=True,
                )
    return rows


def _extrapolate_dense(rows):
    """Beyond ``--dense-max`` the dense time is extrapolated as n³ from the largest measured
    size of the same problem (marked ``dense_seconds_extrapolated``; never measured there)."""
    for r in rows:
        if "dense_svd_gcv" in r:
            continue
        done = [q for q in rows if q["problem"] == r["problem"] and "dense_svd_gcv" in q]
        if not done:
            continue
        ref = max(done, key=lambda q: q["n"])
        est = ref["dense_svd_gcv"]["seconds"] * (r["n"] / ref["n"]) ** 3
        r["dense_seconds_extrapolated"] = est
        r["speedup_vs_dense_extrapolated"] = est / r["hybrid"]["seconds"]
        print(
            f"{r['problem']:7s} n={r['n']:6d}: dense SVD+GCV ≈ {est:.0f}s (n³ from n={ref['n']}),"
            f" hybrid {r['hybrid']['seconds']:.2f}s: ≈ {r['speedup_vs_dense_extrapolated']:.0f}×"
        )


# --- bounds ----------------------------------------------------------------------------------
def part_bounds(n_samples=None):
    from scipy.optimize import minimize as sp_minimize
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    if n_samples:
        X, y = X[:n_samples], y[:n_samples]
    n, d = X.shape
    C, lam, bound = 10, 1e-3, 0.3
    Xt = torch.cat([torch.tensor(X / 16.0), torch.ones(n, 1, dtype=F64)], 1)
    Y = torch.nn.functional.one_hot(torch.tensor(y), C).to(F64)
    count = {"f": 0, "hv": 0}

    def value(w):
        count["f"] += 1
        logits = Xt @ w.reshape(d + 1, C)
        return float(
            (torch.logsumexp(logits, 1) - (logits * Y).sum(1)).mean() + 0.5 * lam * (w @ w)
        )

    def fn(w):
        count["f"] += 1
        logits = Xt @ w.reshape(d + 1, C)
        f = (torch.logsumexp(logits, 1) - (logits * Y).sum(1)).mean() + 0.5 * lam * (w @ w)
        S = torch.softmax(logits, 1)
        grad = (Xt.T @ (S - Y) / n).reshape(-1) + lam * w

        def hv(v):
            count["hv"] += 1
            U = Xt @ v.reshape(d + 1, C)
            return (Xt.T @ (S * U - S * (S * U).sum(1, keepdim=True)) / n).reshape(-1) + lam * v

        return Evaluation(float(f), grad, LinearOperator(hv, w.shape, symmetric=True))

    w0 = torch.zeros((d + 1) * C, dtype=F64)
    rows = {}
    t0 = time.process_time()
    res = minimize_bounded(fn, w0, bounds=(-bound, bound), value=value)
    rows["pnkhb"] = {
        "value": res.value,
        "f_evals": count["f"],
        "hv_products": count["hv"],
        "iterations": res.iterations,
        "seconds": time.process_time() - t0,
        "status": res.status.name,
    }

    def sp_fun(w):
        ev = fn(torch.from_numpy(w))
        return ev.value, ev.grad.numpy()

    def sp_hessp(w, v):
        v = torch.from_numpy(np.asarray(v, dtype=np.float64).ravel())
        return fn(torch.from_numpy(w)).hessian.mv(v).numpy()

    for method, opts in (
        ("L-BFGS-B", {"ftol": 1e-14, "gtol": 1e-10, "maxiter": 10000}),
        ("trust-constr", {"gtol": 1e-10, "xtol": 1e-12, "maxiter": 2000}),
    ):
        count.update(f=0, hv=0)
        t0 = time.process_time()
        kw = {"hessp": sp_hessp} if method == "trust-constr" else {}
        out = sp_minimize(
            sp_fun,
            w0.numpy(),
            jac=True,
            method=method,
            bounds=[(-bound, bound)] * w0.numel(),
            options=opts,
            **kw,
        )
        rows[method] = {
            "value": float(out.fun),
            "f_evals": count["f"],
            "hv_products": count["hv"],
            "iterations": int(out.nit),
            "seconds": time.process_time() - t0,
        }
    best = min(r["value"] for r in rows.values())
    for k, r in rows.items():
        r["value_gap"] = r["value"] - best
        print(
            f"bounds {k:12s} f={r['value']:.12f} gap {r['value_gap']:.1e} "
            f"f-evals {r['f_evals']:5d} "
            f"Hv {r['hv_products']:5d} it {r['iterations']:5d} {r['seconds']:6.2f}s",
            flush=True,
        )
    return {"samples": n, "unknowns": w0.numel(), "bound": bound, "lam": lam, **rows}


# --- GNvpro vs Adam --------------------------------------------------------------------------
def _peaks(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = 6 * torch.rand(n, 2, generator=g, dtype=F64) - 3
    a, b = X[:, 0], X[:, 1]
    f = 3 * (1 - a) ** 2 * torch.exp(-(a**2) - (b + 1) ** 2)
    f = f - 10 * (a / 5 - a**3 - b**5) * torch.exp(-(a**2) - b**2)
    f = f - torch.exp(-((a + 1) ** 2) - b**2) / 3
    return X, f[:, None]


def part_gnvpro(
    n=400, width=16, rel_target=1e-2, adam_iters=5000, gn_iters=100, data=None, name="peaks"
):
    """Time and iterations to a training MSE of ``rel_target · ½var(y)`` on peaks (or on
    ``data = (X, y)``, e.g. the convection–diffusion–reaction surrogate)."""
    from torch import nn

    from odeflow.optim import VarPro, gnvpro

    X, y = _peaks(n) if data is None else data
    n, d_in, d_out = X.shape[0], X.shape[1], y.shape[1]
    target = rel_target * 0.5 * float(y.var(0).sum())

    def features():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh())

    out = {"problem": name, "n": n, "width": width, "target_mse": target}
    out["rel_target"] = rel_target
    gnvpro(VarPro(features().double(), lam=1e-4), X, y, maxiter=1)  # warm-up (torch.func)
    res = gnvpro(VarPro(features().double(), lam=1e-4), X, y, maxiter=gn_iters, gtol=0.0)
    vals = [h["value"] for h in res.history]
    hit = next((k for k, v in enumerate(vals) if v <= target), None)
    sec = None
    if hit is not None:  # time exactly the iterations to the target, in a fresh run
        t0 = time.process_time()
        gnvpro(VarPro(features().double(), lam=1e-4), X, y, maxiter=hit, gtol=0.0)
        sec = time.process_time() - t0
    out["gnvpro"] = {
        "iterations_to_target": hit,
        "seconds_to_target": sec,
        "final_after_max_iterations": vals[-1],
        "max_iterations": res.iterations,
    }
    net = nn.Sequential(features(), nn.Linear(width, d_out)).double()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    t0, hit, t_hit, loss = time.process_time(), None, None, float("nan")
    for k in range(1, adam_iters + 1):
        out_k = 0.5 * ((net(X) - y) ** 2).sum(1).mean()
        opt.zero_grad()
        out_k.backward()
        opt.step()
        loss = float(out_k.detach())
        if loss <= target:
            hit, t_hit = k, time.process_time() - t0
            break
    out["adam"] = {
        "iterations_to_target": hit,
        "seconds_to_target": t_hit,
        "final": loss,
        "max_iterations": adam_iters,
    }
    g, a = out["gnvpro"], out["adam"]
    print(
        f"gnvpro {name}: target MSE {target:.3e} ({rel_target:g}·½var y): GNvpro "
        f"{g['iterations_to_target']} it ({g['seconds_to_target']} s), Adam "
        f"{a['iterations_to_target']} it ({a['seconds_to_target']} s)",
        flush=True,
    )
    return out


PARTS = ["hybrid", "bounds", "gnvpro", "rules", "rule_frequencies", "slimtrain", "double_descent"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="n = 1000, 2000, 10000; dense ≤ 2000")
    p.add_argument("--sizes", type=int, nargs="+", default=None)
    p.add_argument("--levels", type=float, nargs="+", default=[0.01, 0.05])
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    p.add_argument("--dense-max", type=int, default=None, help="largest n for the dense SVD")
    p.add_argument(
        "--parts",
        nargs="+",
        default=PARTS,
        choices=PARTS,
    )
    p.add_argument("--draws", type=int, default=50, help="noise draws of rule_frequencies")
    p.add_argument(
        "--dense-lower-bound",
        action="store_true",
        help="above --dense-max, measure a lower bound of the dense time (form A, one AᵀA)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the other parts of an existing --json file (replace only the parts run)",
    )
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    sizes = a.sizes or ([1000, 2000, 10000] if a.quick else [1000, 3000, 10000, 30000, 100000])
    dense_max = a.dense_max if a.dense_max is not None else (2000 if a.quick else 10000)
    levels = [0.01] if a.quick and a.levels == [0.01, 0.05] else a.levels
    out = {
        "env": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "threads": a.threads,
            "clock": "time.process_time: CPU seconds of this process (one thread)",
            "argv": sys.argv[1:],
        }
    }
    if "hybrid" in a.parts:
        out["hybrid"] = part_hybrid(sizes, levels, dense_max, a.problems, a.dense_lower_bound)
        _extrapolate_dense(out["hybrid"])
    if "bounds" in a.parts:
        out["bounds"] = part_bounds()
    if "gnvpro" in a.parts:
        out["gnvpro"] = [part_gnvpro(rel_target=r) for r in (1e-2, 1e-3)]
        cdr = cdr_data()
        out["gnvpro"] += [part_gnvpro(data=cdr, name="cdr", rel_target=r) for r in (1e-2, 1e-3)]
    if "rules" in a.parts:
        out["rules"] = part_rules(PROBLEMS, _dense)
    if "rule_frequencies" in a.parts:
        out["rule_frequencies"] = part_rule_frequencies(PROBLEMS, _dense, draws=a.draws)
    if "double_descent" in a.parts:
        out["double_descent"] = part_double_descent()
    if "slimtrain" in a.parts:
        out["slimtrain"] = part_slimtrain(lrs=(1e-3, 1e-2) if a.quick else (1e-3, 3e-3, 1e-2))
    if a.json:
        if a.merge and Path(a.json).exists():
            old = json.loads(Path(a.json).read_text())
            before = {k: old["env"]["argv"] for k in old if k != "env"}
            out["env"]["argv_by_part"] = {
                **old["env"].get("argv_by_part", before),
                **{k: sys.argv[1:] for k in out if k != "env"},
            }
            out = {**old, **out}
        write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
