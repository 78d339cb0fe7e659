"""Benchmark pages of ``odeflow.optim``, optimal control and the forward Laplacian, made from
the committed JSON in ``benchmarks/results/``; the adaptive-ODE, checkpointing and SDE pages
come from ``bench_pages_ode`` and are rendered here too.

``render_pages(results_dir)`` yields ``(uri, content)`` pairs, the markdown pages and their PNG
plots, for ``bench_pages.render_all``; ``used_files()`` lists the JSON they read. Each page
names the machine and the command from its JSON. A JSON file that is missing (a benchmark not
yet run on this branch) leaves its page with a note and the command instead of failing the build.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import bench_optim
import bench_pages as _bp
from bench_n2 import _n2_header, _n2_machine, _n2_missing, _n2_read
from bench_pages_ode import _page_ode_checkpointing, _page_ode_workprecision, _page_sde

_N2_FILES = {
    "ode-workprecision": ["cpu_ode_workprecision.json"],
    "ode-checkpointing": ["cpu_ode_checkpointing.json"],
    "sde": ["cpu_sde_peers.json"],
    "optim": ["cpu_optim_peers.json"],
    "control": ["cpu_control_peers.json"],
    "laplacian": ["cpu_laplacian_any_module.json"],
}
_N2_OPTIONAL = {
    "cpu_ode_checkpointing.json",
    "cpu_control_peers.json",
    "cpu_laplacian_any_module.json",
}


# --------------------------------------------------------------------------- optimization
def _page_optim(results: Path):
    src = "cpu_optim_peers.json"
    data = _n2_read(results, src)
    env = data.get("env", {})
    cmd = "python benchmarks/optim_peers.py " + " ".join(env.get("argv") or ["--quick"])
    intro = (
        "`odeflow.optim` against its peers, in three parts: hybrid regularization of "
        "ill-posed least squares, bound-constrained minimization, and training a separable "
        "network by variable projection."
    )
    lines = _n2_header("Optimization", intro, _n2_machine(env), src, cmd)
    hyb = data.get("hybrid") or []
    if hyb:
        lines += [
            "## Hybrid LSQR against an oracle λ and the dense method",
            "",
            "1-D Gaussian deblurring, the inverse heat equation (both Toeplitz, applied "
            "matrix-free by FFT) and Shaw's problem at n unknowns with white noise: "
            "`hybrid_lsqr` (λ by GCV during the iteration) against scipy's `lsqr` with "
            "the best fixed damping λ found by a sweep against the true solution "
            "(*oracle*: the single run's time and the sweep's) and the textbook dense "
            "SVD + GCV. error = relative error against the true solution; "
            "error ratio = hybrid / oracle (wgcv: the same with weighted GCV, "
            '`regularization="wgcv"`); dense times marked * are extrapolated as '
            "n³ from the largest measured size, those marked ≥ are a measured lower bound "
            "(forming the dense matrix and one AᵀA product, less work than its SVD).",
            "",
        ]
        header = [
            "problem",
            "n",
            "noise",
            "hybrid error",
            "hybrid λ",
            "iterations",
            "hybrid s",
            "oracle error",
            "oracle λ",
            "oracle s",
            "sweep s",
            "dense error",
            "dense s",
            "error ratio",
            "wgcv error ratio",
            "speed-up vs dense",
        ]
        table = []
        for r in hyb:
            h, o, d = r["hybrid"], r["lsqr_oracle"], r.get("dense_svd_gcv") or {}
            dense_s = d.get("seconds")
            speed = r.get("speedup_vs_dense")
            if dense_s is None and r.get("dense_seconds_lower_bound"):
                dense_s = f"≥ {_bp._fmt(r['dense_seconds_lower_bound'])}"
                speed = f"≥ {_bp._fmt(r.get('speedup_vs_dense_at_least'))}"
            elif dense_s is None and r.get("dense_seconds_extrapolated"):
                dense_s = f"{_bp._fmt(r['dense_seconds_extrapolated'])}*"
                speed = f"{_bp._fmt(r.get('speedup_vs_dense_extrapolated'))}*"
            table.append(
                [
                    r["problem"],
                    r["n"],
                    r["noise"],
                    h["error"],
                    h["lam"],
                    h["iterations"],
                    h["seconds"],
                    o["error"],
                    o["lam"],
                    o["seconds"],
                    o.get("sweep_seconds"),
                    d.get("error"),
                    dense_s,
                    r.get("error_ratio_vs_oracle"),
                    r.get("error_ratio_wgcv_vs_oracle"),
                    speed,
                ]
            )
        lines += [*_bp._table(header, table), ""]
        plt = _bp._plt()
        problems = list(dict.fromkeys(r["problem"] for r in hyb))
        fig, axes = plt.subplots(
            1, len(problems), figsize=(4.2 * len(problems), 3.2), squeeze=False
        )
        for ax, p in zip(axes[0], problems):
            rs = sorted(
                (r for r in hyb if r["problem"] == p and r["noise"] == hyb[0]["noise"]),
                key=lambda r: r["n"],
            )
            ns = [r["n"] for r in rs]
            ax.loglog(ns, [r["hybrid"]["seconds"] for r in rs], marker="o", label="hybrid_lsqr")
            ax.loglog(
                ns,
                [r["lsqr_oracle"]["sweep_seconds"] for r in rs],
                marker="s",
                label="lsqr λ sweep",
            )
            dn = [
                (
                    r["n"],
                    (r.get("dense_svd_gcv") or {}).get("seconds")
                    or r.get("dense_seconds_extrapolated"),
                )
                for r in rs
            ]
            dn = [(a, b) for a, b in dn if b]
            ax.loglog(
                [a for a, _ in dn], [b for _, b in dn], marker="^", ls="--", label="dense SVD + GCV"
            )
            ax.set_title(p)
            ax.set_xlabel("n")
            ax.set_ylabel("seconds")
        axes[0][0].legend(fontsize=7)
        yield "benchmarks/img/optim-0.png", _bp._png(fig)
        lines += [
            f"Seconds against n at noise {_bp._fmt(hyb[0]['noise'])} (dense points beyond the "
            "measured sizes are the extrapolated ones):",
            "",
            "![time against n](img/optim-0.png)",
            "",
        ]
    bd = data.get("bounds")
    if bd:
        lines += [
            "## Bound constraints: PNKH-B against scipy",
            "",
            f"ℓ²-regularized (λ = {_bp._fmt(bd.get('lam'))}) multinomial logistic "
            f"regression on scikit-learn's digits ({bd.get('samples')} samples, "
            f"{bd.get('unknowns')} unknowns) with |w| ≤ {_bp._fmt(bd.get('bound'))}: "
            "`minimize_bounded` (projected Newton–Krylov) against scipy's L-BFGS-B and "
            "trust-constr. value gap = objective above the best of the three.",
            "",
        ]
        methods = [k for k, v in bd.items() if isinstance(v, dict)]
        lines += _bp._table(
            [
                "method",
                "objective",
                "value gap",
                "f evaluations",
                "Hessian-vector products",
                "iterations",
                "seconds",
                "status",
            ],
            [
                [
                    ("PNKH-B (odeflow)" if m == "pnkhb" else m),
                    bd[m].get("value"),
                    bd[m].get("value_gap"),
                    bd[m].get("f_evals"),
                    bd[m].get("hv_products"),
                    bd[m].get("iterations"),
                    bd[m].get("seconds"),
                    bd[m].get("status"),
                ]
                for m in methods
            ],
        )
        lines.append("")
    gv = data.get("gnvpro") or []
    if gv:
        lines += [
            "## GNvpro against Adam",
            "",
            "A tanh network whose last layer is solved for (`VarPro`) on the peaks "
            "regression and a 1-D convection–diffusion–reaction surrogate (3 parameters → "
            "32 solution values; full batch): `gnvpro` (Gauss–Newton–Krylov on the reduced "
            "objective) against Adam (lr 1e-2, the same network with a trained last "
            "layer), iterations and seconds until the training loss reaches a target "
            "(a fraction of ½var(y)).",
            "",
        ]
        lines += _bp._table(
            [
                "problem",
                "n",
                "width",
                "target (× ½var y)",
                "target loss",
                "GNvpro iterations",
                "GNvpro s",
                "GNvpro loss at its cap",
                "Adam iterations",
                "Adam s",
                "Adam loss at stop",
            ],
            [
                [
                    r.get("problem", "peaks"),
                    r["n"],
                    r["width"],
                    r["rel_target"],
                    r["target_mse"],
                    r["gnvpro"].get("iterations_to_target"),
                    r["gnvpro"].get("seconds_to_target"),
                    r["gnvpro"].get("final_after_max_iterations"),
                    r["adam"].get("iterations_to_target"),
                    r["adam"].get("seconds_to_target"),
                    r["adam"].get("final"),
                ]
                for r in gv
            ],
        )
        lines += [
            "",
            "loss = ½ mean squared training error. GNvpro's last loss is after its "
            f"iteration cap ({gv[0]['gnvpro'].get('max_iterations')}); Adam stops at the "
            f"target or at {gv[0]['adam'].get('max_iterations')} iterations.",
            "",
        ]
    more, images = bench_optim.sections(data)
    lines += more
    yield from images
    yield "benchmarks/optim.md", "\n".join(lines)


# --------------------------------------------------------------------------- optimal control
def _page_control(results: Path):
    src, title = "cpu_control_peers.json", "optimal control (100-D HJB)"
    cmd = "python benchmarks/control_peers.py --quick --out benchmarks/results/" + src
    data = _n2_read(results, src)
    if data is None:
        yield "benchmarks/control.md", _n2_missing(title, src, cmd)
        return
    meta = {"machine": data.get("machine"), "torch": data.get("torch"),
            "threads": data.get("threads")}  # fmt: skip
    intro = (
        "The HJB benchmark of Han, Jentzen and E in d = 100 (dX = 2u dt + √2 dW, L = |u|², "
        "g(x) = log((1 + |x|²)/2), T = 1): the relative error of u(0, 0) against the "
        f"Cole–Hopf reference {data['reference']:.5f} ± {data['reference_stderr']:.1e} "
        "(Monte Carlo, 10⁶ samples) while training. odeflow's value network "
        "(`odeflow.control.fit` on the `hjb` preset) races DeepBSDE- and FBSNN-style solvers "
        "written in the script from their published algorithms, each in its own process "
        f"under the same wall-clock cap ({data['cap_seconds']:.0f} s), batch "
        f"{data['batch']}, {data['steps']} time steps and a comparable parameter budget "
        "(DeepBSDE has one network per time step). The cap measures the early race, far "
        "from the peers' published iteration counts."
    )
    lines = _n2_header(title, intro, _n2_machine(meta), src, cmd)
    solvers = data["solvers"]
    lines += ["## Time to accuracy", ""]
    lines += _bp._table(
        ["solver", "parameters", "iterations", "final rel. error", "s to 1e-2", "s to 3e-3",
         "peak RSS MiB"],
        [[k, v["parameters"], v["iterations"], v["final_relative_error"],
          v.get("seconds_to_1e-2") or "not reached", v.get("seconds_to_3e-3") or "not reached",
          v.get("peak_rss_mib")] for k, v in solvers.items()],
    )  # fmt: skip
    plt = _bp._plt()
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for k, v in solvers.items():
        tr = v.get("trace") or []
        ax.semilogy([t for t, _, _ in tr], [e for _, _, e in tr], marker="o", ms=3, label=k)
    ax.axhline(3e-3, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("relative error of u(0, 0)")
    ax.legend()
    yield "benchmarks/img/control-0.png", _bp._png(fig)
    lines += [
        "",
        "![relative error against wall time](img/control-0.png)",
        "",
        "The error is measured every 25 iterations (the dashed line is 3e-3). odeflow's "
        "error oscillates at the constant learning rate 1e-2, which drops only after 300 "
        "iterations, past this cap; the slow test trains the full recipe (2000 iterations) "
        "to ≤ 3e-3.",
        "",
    ]
    yield "benchmarks/control.md", "\n".join(lines)


# --------------------------------------------------------------------------- forward Laplacian
def _page_laplacian(results: Path):
    src, title = "cpu_laplacian_any_module.json", "Laplacians of any module"
    cmd = "python benchmarks/laplacian_peers.py --quick --json benchmarks/results/" + src
    data = _n2_read(results, src)
    if data is None:
        yield "benchmarks/laplacian.md", _n2_missing(title, src, cmd)
        return
    intro = (
        "The exact Laplacian Δf = tr ∇²f of plain `nn.Module`s on n samples in d dimensions: "
        "`odeflow.derivatives.forward_laplacian` (value, gradient and Laplacian in one "
        "forward pass) against `vmap(hessian(f))` and the sum of d forward-over-reverse "
        "Hessian–vector products (`torch.func hvp`). **mlp**: `depth` GELU layers of width "
        "`width`, d → 1; **transformer**: 8 tokens of width 16, two pre-LayerNorm blocks "
        "(2 heads, GELU MLP), mean over tokens, linear read-out. "
        f"{data['meta'].get('dtype', 'float32')}, {data['meta'].get('note', '')}. "
        "speed-up = peer ms / odeflow ms (medians); rel. error = relative 2-norm difference "
        "from the trace of torch.func's Hessian."
    )
    lines = _n2_header(title, intro, _n2_machine(data["meta"]), src, cmd)
    rows = data["results"]
    lines += ["## Time and agreement", ""]
    lines += _bp._table(
        ["net", "d", "n", "width", "depth", "method", "ms (median)", "ms (min)",
         "odeflow speed-up", "rel. error"],
        [[r["net"], r["d"], r["n"], r["width"], r["depth"], r["method"], r["ms"],
          r["ms_min"], r.get("odeflow_speedup"), r.get("rel_err_vs_hessian")]
         for r in rows],
    )  # fmt: skip
    plt = _bp._plt()
    mlp = [r for r in rows if r["net"] == "mlp" and r.get("odeflow_speedup")]
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    for m in dict.fromkeys(r["method"] for r in mlp):
        rs = [r for r in mlp if r["method"] == m]
        ax.plot(range(len(rs)), [r["odeflow_speedup"] for r in rs], marker="o", label=m)
        ax.set_xticks(range(len(rs)), [f"d={r['d']}\nn={r['n']}" for r in rs], fontsize=7)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_ylabel("odeflow speed-up (×)")
    ax.set_title("mlp")
    ax.legend()
    yield "benchmarks/img/laplacian-0.png", _bp._png(fig)
    lines += ["", "![odeflow's speed-up over torch.func on the MLP](img/laplacian-0.png)", ""]
    yield "benchmarks/laplacian.md", "\n".join(lines)


_N2_PAGES = {
    "ode-workprecision": _page_ode_workprecision,
    "ode-checkpointing": _page_ode_checkpointing,
    "sde": _page_sde,
    "optim": _page_optim,
    "control": _page_control,
    "laplacian": _page_laplacian,
}


def render_pages(results: Path) -> Iterator[tuple[str, str | bytes]]:
    """The adaptive-ODE, checkpointing, SDE, optimization, control and Laplacian pages."""
    for page in _N2_PAGES.values():
        yield from page(results)


def used_files() -> list[str]:
    """The JSON these pages read (an optional one only where it exists)."""
    res = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    files = [f for fs in _N2_FILES.values() for f in fs]
    return [f for f in files if f not in _N2_OPTIONAL or (res / f).exists()]
