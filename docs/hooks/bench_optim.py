"""Sections of the optimization benchmark page from ``cpu_optim_peers.json``: the λ rules with
the GCV and error curves and their miss frequencies over many draws, slimTrain against Adam,
and the random-features double descent.

``sections(data)`` returns ``(lines, images)``; ``bench_pages_extra._page_optim`` appends the
lines to its page and yields the images (``(uri, png bytes)``).
"""

from __future__ import annotations

import bench_pages as _bp

_RULES = ("gcv", "wgcv", "discrepancy", "dense_gcv")
_NAMES = {
    "gcv": "GCV",
    "wgcv": "weighted GCV",
    "discrepancy": "discrepancy",
    "dense_gcv": "dense GCV",
}


def _rules(rows):
    lines = [
        "## Choosing λ: GCV, weighted GCV, the discrepancy principle",
        "",
        "n = 256, three noise draws per noise level: λ / λ_opt and error / optimal error "
        "(λ_opt by a 2000-point sweep against the true solution) of `hybrid_lsqr` with each "
        "rule (the discrepancy principle given the true noise level) and of the textbook "
        "dense SVD + GCV.",
        "",
    ]
    header = ["problem", "noise", "draw"]
    for k in _RULES:
        header += [f"{_NAMES[k]} λ/λ_opt", f"{_NAMES[k]} error ratio"]
    table = []
    for r in rows:
        row = [r["problem"], r["noise"], r["seed"]]
        for k in _RULES:
            row += [r[k]["lam_ratio"], r[k]["err_ratio"]]
        table.append(row)
    lines += [*_bp._table(header, table), ""]
    curves = [r for r in rows if r.get("curve") and r["noise"] == rows[0]["noise"]]
    if not curves:
        return lines, []
    plt = _bp._plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.2), squeeze=False)
    for ax, r in zip(axes[0], curves):
        c = r["curve"]
        g = [v / min(c["gcv"]) for v in c["gcv"]]
        ax.loglog(c["lam"], g, label="GCV (÷ its minimum)")
        ax.loglog(c["lam"], c["error"], label="relative error")
        marks = [("λ_opt", r["lam_opt"], "k"), ("dense GCV", r["lam_dense_gcv"], "C0")]
        marks += [("hybrid WGCV", r["wgcv"].get("lam"), "C2")]
        for label, lam, color in marks:
            if lam:
                ax.axvline(lam, color=color, ls=":", label=label)
        ax.set_ylim(min(c["error"]) / 3, 1e3)
        ax.set_title(f"{r['problem']}, noise {_bp._fmt(r['noise'])}")
        ax.set_xlabel("λ")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    lines += [
        "The GCV function and the error against λ (first draw): on the heat problem GCV's "
        "minimum lies left of the error-optimal λ.",
        "",
        "![GCV and error against λ](img/optim-gcv.png)",
        "",
    ]
    return lines, [("benchmarks/img/optim-gcv.png", _bp._png(fig))]


def _frequencies(rows):
    lines = [
        "## How often each rule misses",
        "",
        f"The same problems over {rows[0]['draws']} noise draws each: the fraction of draws in "
        "which a rule misses the acceptance criterion (λ within a factor 3 of λ_opt and error "
        "within 10 % of the optimal error), and the median error / optimal error. The last "
        "columns: the fraction of draws where the hybrid's GCV λ is below λ_opt, and where it "
        "is the dense GCV λ (within 5 %).",
        "",
    ]
    header = ["problem", "noise"]
    for k in _RULES:
        header += [f"{_NAMES[k]} missed", f"{_NAMES[k]} median error ratio"]
    header += ["GCV λ < λ_opt", "hybrid GCV = dense GCV"]
    table = []
    for r in rows:
        row = [r["problem"], r["noise"]]
        for k in _RULES:
            row += [r[k]["missed"], r[k]["err_ratio_median"]]
        table.append([*row, r["gcv"].get("lam_below_opt"), r["gcv_equals_dense_gcv"]])
    return [*lines, *_bp._table(header, table), ""], []


def _slimtrain(rows):
    epochs = rows[0]["epochs"]
    lines = [
        "## slimTrain against Adam on digits",
        "",
        f"The same two-hidden-layer tanh network (width {rows[0]['width']}), batches of "
        f"{rows[0]['batch']}, {epochs} epochs, MSE on one-hot targets: Adam on all weights "
        "against slimTrain (Adam at the same learning rate on the features, the last layer by "
        "sampled limited-memory Tikhonov with λ by sampled GCV). Test accuracy on 360 held-out "
        "digits.",
        "",
    ]
    header = ["lr", "seed", "slimTrain after 1 epoch", "Adam after 1 epoch"]
    header += [f"slimTrain after {epochs}", f"Adam after {epochs}", "slimTrain s", "Adam s"]
    table = []
    for r in rows:
        s, a = r["slimtrain"], r["adam"]
        table.append(
            [
                r["lr"],
                r["seed"],
                s["test_accuracy"][0],
                a["test_accuracy"][0],
                s["test_accuracy"][-1],
                a["test_accuracy"][-1],
                s["seconds"],
                a["seconds"],
            ]
        )
    lines += [*_bp._table(header, table), ""]
    plt = _bp._plt()
    lrs = list(dict.fromkeys(r["lr"] for r in rows))
    fig, axes = plt.subplots(1, len(lrs), figsize=(4.2 * len(lrs), 3.2), squeeze=False)
    for ax, lr in zip(axes[0], lrs):
        for r in (q for q in rows if q["lr"] == lr):
            ep = range(1, epochs + 1)
            ax.plot(ep, r["slimtrain"]["test_accuracy"], color="C2", alpha=0.8)
            ax.plot(ep, r["adam"]["test_accuracy"], color="C1", alpha=0.8, ls="--")
        ax.plot([], [], color="C2", label="slimTrain")
        ax.plot([], [], color="C1", ls="--", label="Adam")
        ax.set_title(f"lr {_bp._fmt(lr)}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    lines += ["![test accuracy per epoch](img/optim-slimtrain.png)", ""]
    return lines, [("benchmarks/img/optim-slimtrain.png", _bp._png(fig))]


def _double_descent(d):
    lines = [
        "## Random features: double descent",
        "",
        f"ReLU random features on a teacher–student problem (N = {d['samples']} samples, "
        f"d = {d['dim']}, 10 % noise), mean relative test error over {d['seeds']} draws: the "
        "min-norm fit peaks at width m = N; `hybrid_lsqr` (λ by GCV) does not.",
        "",
    ]
    lines += _bp._table(
        ["width m", "min-norm test error", "hybrid test error"],
        [[m, a, b] for m, a, b in zip(d["widths"], d["min_norm"], d["hybrid"])],
    )
    plt = _bp._plt()
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    ax.semilogy(d["widths"], d["min_norm"], marker="o", label="min-norm")
    ax.semilogy(d["widths"], d["hybrid"], marker="s", label="hybrid_lsqr (GCV)")
    ax.axvline(d["samples"], color="k", ls=":", label="m = N")
    ax.set_xlabel("width m")
    ax.set_ylabel("relative test error")
    ax.legend(fontsize=7)
    lines += ["", "![double descent](img/optim-double-descent.png)", ""]
    return lines, [("benchmarks/img/optim-double-descent.png", _bp._png(fig))]


def sections(data: dict):
    """``(lines, images)`` for the parts present in ``data``."""
    lines, images = [], []
    if str(data.get("env", {}).get("clock", "")).startswith("time.process_time"):
        lines += [
            "All times on this page, the tables above included, are CPU seconds of the "
            "benchmark process (`time.process_time`, one thread).",
            "",
        ]
    for key, make in (
        ("rules", _rules),
        ("rule_frequencies", _frequencies),
        ("slimtrain", _slimtrain),
        ("double_descent", _double_descent),
    ):
        if data.get(key):
            more, imgs = make(data[key])
            lines += more
            images += imgs
    return lines, images
