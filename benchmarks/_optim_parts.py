"""Parts of ``optim_peers.py``: λ rules over seeds, slimTrain vs Adam, a dense lower bound.

* ``rules``: on each ill-posed problem (n = 256, dense), noise 1 % and 5 %, three noise
  draws: ``λ/λ_opt`` and ``error/error_opt`` of hybrid_lsqr with GCV, weighted GCV and the
  discrepancy principle (true noise level), and of the textbook dense SVD + GCV; ``λ_opt``
  and ``error_opt`` by a 2000-point sweep with the true solution.
* ``rule_frequencies``: the same problems and rules over many noise draws (default 50): the
  fraction of draws in which each rule misses the acceptance criterion of issue 28 (λ within a
  factor 3 of ``λ_opt`` and error within 10 % of the optimal error), with the fraction that
  misses each half and of ``λ < λ_opt``, the median ``λ/λ_opt``, the median and 90 % quantile
  of ``error/error_opt``, and the fraction of draws where the hybrid's GCV λ is the dense GCV
  λ (within 5 %).
* ``slimtrain``: digits (1437 train / 360 test), the same two-hidden-layer tanh network
  (width 32), batches of 64, 10 epochs, Adam at several learning rates: test accuracy per
  epoch of Adam on all weights and of slimTrain (Adam on the features, the last layer by
  slimTik with λ by sampled GCV), three seeds.
* ``double_descent``: random features ``ReLU(Ky + b)`` on a teacher–student problem (N = 40
  samples, d = 5, 10 % noise), widths m from N/4 to 4N, mean relative test error over four
  draws of the data and features: the min-norm fit against ``hybrid_lsqr`` (λ by GCV).
* ``dense_lower_bound``: the time to form the dense ``n × n`` matrix and one ``AᵀA`` GEMM
  (2n³ flops), a measured lower bound for the dense SVD (whose bidiagonalization alone costs
  more than 2n³ flops, at lower speed than a GEMM).
"""

from __future__ import annotations

import time

import torch

F64 = torch.float64


def _noisy(b0, level, seed):
    e = torch.randn(b0.shape[0], generator=torch.Generator().manual_seed(seed), dtype=F64)
    return b0 + level * b0.norm() * e / e.norm()


def _sweep(U, s, Vh, b, x, points=2000):
    beta = U.T @ b
    lams = s[0] * torch.logspace(-12, 1, points, dtype=F64)
    f = lams[:, None] ** 2 / (s**2 + lams[:, None] ** 2)
    X = ((1 - f) / s * beta) @ Vh
    err = torch.linalg.vector_norm(X - x, dim=1)
    G = ((f * beta) ** 2).sum(1) / (len(b) - (1 - f).sum(1)) ** 2
    i, j = int(err.argmin()), int(G.argmin())
    curve = {  # every 20th point: the GCV function and the error against λ
        "lam": lams[::20].tolist(),
        "gcv": G[::20].tolist(),
        "error": (err[::20] / x.norm()).tolist(),
    }
    return float(lams[i]), float(err[i]), float(lams[j]), float(err[j]), curve


def part_rules(problems, dense, n=256, seeds=(0, 1, 2), levels=(0.01, 0.05)):
    """λ/λ_opt and error/error_opt per rule (module docstring)."""
    from odeflow.optim import hybrid_lsqr

    rows = []
    for name, make in problems.items():
        op, x = make(n)
        A = dense(op)
        U, s, Vh = torch.linalg.svd(A)
        for level in levels:
            for seed in seeds:
                b = _noisy(A @ x, level, seed)
                lam_opt, err_opt, lam_gcv, err_gcv, curve = _sweep(U, s, Vh, b, x)
                row = {"problem": name, "n": n, "noise": level, "seed": seed}
                row["lam_opt"], row["lam_dense_gcv"] = lam_opt, lam_gcv
                if seed == seeds[0]:
                    row["curve"] = curve
                row["dense_gcv"] = {"lam_ratio": lam_gcv / lam_opt, "err_ratio": err_gcv / err_opt}
                for rule in ("gcv", "wgcv", "discrepancy"):
                    kw = {"noise_level": level} if rule == "discrepancy" else {}
                    r = hybrid_lsqr(A, b, regularization=rule, **kw)
                    row[rule] = {
                        "lam": float(r.lam),
                        "lam_ratio": float(r.lam) / lam_opt,
                        "err_ratio": float((r.x - x).norm()) / err_opt,
                        "iterations": r.iterations,
                    }
                rows.append(row)
                print(
                    f"rules {name:7s} noise={level:.2f} seed={seed} | "
                    + " | ".join(
                        f"{k} λ/λopt {row[k]['lam_ratio']:.2f} err/opt {row[k]['err_ratio']:.3g}"
                        for k in ("gcv", "wgcv", "discrepancy", "dense_gcv")
                    ),
                    flush=True,
                )
    return rows


def _summary(pairs):
    lam = torch.tensor([a for a, _ in pairs], dtype=F64)
    err = torch.tensor([e for _, e in pairs], dtype=F64)
    off, high = (lam < 1 / 3) | (lam > 3), err > 1.1
    return {
        "missed": float((off | high).double().mean()),
        "lam_off_factor_3": float(off.double().mean()),
        "lam_below_opt": float((lam < 1).double().mean()),
        "err_over_1_1": float(high.double().mean()),
        "lam_ratio_median": float(lam.median()),
        "err_ratio_median": float(err.median()),
        "err_ratio_q90": float(err.quantile(0.9)),
    }


def part_rule_frequencies(problems, dense, n=256, draws=50, levels=(0.01, 0.05)):
    """How often each λ rule misses the criterion over many draws (module docstring)."""
    from odeflow.optim import hybrid_lsqr

    rows = []
    for name, make in problems.items():
        op, x = make(n)
        A = dense(op)
        U, s, Vh = torch.linalg.svd(A)
        for level in levels:
            pairs = {k: [] for k in ("gcv", "wgcv", "discrepancy", "dense_gcv")}
            same = 0
            for seed in range(draws):
                b = _noisy(A @ x, level, seed)
                lam_opt, err_opt, lam_gcv, err_gcv, _ = _sweep(U, s, Vh, b, x)
                pairs["dense_gcv"].append((lam_gcv / lam_opt, err_gcv / err_opt))
                for rule in ("gcv", "wgcv", "discrepancy"):
                    kw = {"noise_level": level} if rule == "discrepancy" else {}
                    r = hybrid_lsqr(A, b, regularization=rule, **kw)
                    pairs[rule].append((float(r.lam) / lam_opt, float((r.x - x).norm()) / err_opt))
                same += abs(pairs["gcv"][-1][0] / pairs["dense_gcv"][-1][0] - 1) <= 0.05
            row = {"problem": name, "n": n, "noise": level, "draws": draws}
            row.update({k: _summary(v) for k, v in pairs.items()})
            row["gcv_equals_dense_gcv"] = same / draws
            rows.append(row)
            print(
                f"rule frequencies {name:7s} noise={level:.2f} ({draws} draws) | "
                + " | ".join(
                    f"{k} missed {row[k]['missed']:.2f} median err/opt "
                    f"{row[k]['err_ratio_median']:.3g}"
                    for k in pairs
                )
                + f" | hybrid GCV λ = dense GCV λ in {row['gcv_equals_dense_gcv']:.2f}",
                flush=True,
            )
    return rows


def _digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return X, y, perm[:1437], perm[1437:]


def _train(method, seed, data, lr, epochs, batch, width):
    from torch import nn

    from odeflow.optim import SlimTrain

    X, y, train, test = data
    torch.manual_seed(seed)
    feats = nn.Sequential(nn.Linear(64, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh())
    Y = torch.nn.functional.one_hot(y, 10).float()
    if method == "slimtrain":
        model = SlimTrain(feats, 10, memory=5)
        opt = torch.optim.Adam(model.features.parameters(), lr=lr)
    else:
        model = nn.Sequential(feats, nn.Linear(width, 10))
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(1000 + seed)
    accs, t0 = [], time.process_time()
    for _ in range(epochs):
        order = train[torch.randperm(len(train), generator=g)]
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            if method == "slimtrain":
                loss = model.step(X[idx], Y[idx]).loss
            else:
                loss = 0.5 / len(idx) * ((model(X[idx]) - Y[idx]) ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            accs.append(float((model(X[test]).argmax(1) == y[test]).float().mean()))
    return {"test_accuracy": accs, "seconds": time.process_time() - t0}


def part_slimtrain(seeds=(0, 1, 2), lrs=(1e-3, 3e-3, 1e-2), epochs=10, batch=64, width=32):
    """Test accuracy per epoch, slimTrain vs Adam (module docstring)."""
    data = _digits()
    rows = []
    for lr in lrs:
        for seed in seeds:
            row = {"lr": lr, "seed": seed, "epochs": epochs, "batch": batch, "width": width}
            for method in ("slimtrain", "adam"):
                row[method] = _train(method, seed, data, lr, epochs, batch, width)
            rows.append(row)
            s, a = row["slimtrain"], row["adam"]
            print(
                f"slimtrain lr={lr:g} seed={seed}: test accuracy after {epochs} epochs "
                f"slimTrain {s['test_accuracy'][-1]:.4f} ({s['seconds']:.1f}s), Adam "
                f"{a['test_accuracy'][-1]:.4f} ({a['seconds']:.1f}s); after 1 epoch "
                f"{s['test_accuracy'][0]:.4f} vs {a['test_accuracy'][0]:.4f}",
                flush=True,
            )
    return rows


def dense_lower_bound(op, dense):
    """Seconds to form the dense matrix and one ``AᵀA`` (module docstring)."""
    t0 = time.process_time()
    A = dense(op)
    _ = A.T @ A
    return time.process_time() - t0


def cdr_data(n=200, m=32, seed=0):
    """A 1-D convection–diffusion–reaction surrogate: parameters ``(D, v, r)`` → the solution
    of ``−D u'' + v u' + r u = 1`` on (0, 1), ``u(0) = u(1) = 0``, at ``m`` interior points
    (central differences), for ``D ∈ [0.05, 0.5]``, ``v ∈ [−2, 2]``, ``r ∈ [0, 2]``; inputs
    scaled to [−1, 1], outputs to max |u| = 1."""
    g = torch.Generator().manual_seed(seed)
    P = torch.rand(n, 3, generator=g, dtype=F64)
    D, v, r = 0.05 + 0.45 * P[:, 0], 4 * P[:, 1] - 2, 2 * P[:, 2]
    h = 1.0 / (m + 1)
    eye = torch.eye(m, dtype=F64)
    off = torch.diag(torch.ones(m - 1, dtype=F64), 1)
    lap = (2 * eye - off - off.T) / h**2
    grad = (off - off.T) / (2 * h)
    A = D[:, None, None] * lap + v[:, None, None] * grad + r[:, None, None] * eye
    U = torch.linalg.solve(A, torch.ones(n, m, dtype=F64))
    return 2 * P - 1, U / U.abs().max()


def part_double_descent(n=40, d=5, widths=(10, 20, 30, 36, 40, 44, 50, 60, 80, 120, 160), seeds=4):
    """Mean relative test error against the width (module docstring)."""
    from odeflow.optim import RandomFeatures

    err = {"min_norm": [0.0] * len(widths), "hybrid": [0.0] * len(widths)}
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        teacher = RandomFeatures(d, 10, generator=g, dtype=F64)
        teacher.weight = torch.randn(10, 1, generator=g, dtype=F64)
        y, y_test = (
            torch.randn(n, d, generator=g, dtype=F64),
            torch.randn(500, d, generator=g, dtype=F64),
        )
        t, t_test = teacher(y), teacher(y_test)
        t = t + 0.1 * t.std() * torch.randn(n, 1, generator=g, dtype=F64)
        for i, m in enumerate(widths):
            for method in err:
                rf = RandomFeatures(
                    d, m, generator=torch.Generator().manual_seed(100 + seed), dtype=F64
                )
                rf.fit(y, t, method=method)
                e = float(((rf(y_test) - t_test) ** 2).mean() / (t_test**2).mean())
                err[method][i] += e / seeds
    print(
        "double descent (test error, min-norm / hybrid): "
        + ", ".join(
            f"m={m}: {a:.3g}/{b:.3g}" for m, a, b in zip(widths, err["min_norm"], err["hybrid"])
        ),
        flush=True,
    )
    return {"samples": n, "dim": d, "widths": list(widths), "seeds": seeds, **err}
