"""Benchmark pages of the adaptive ODE solvers, the adjoint's checkpointing, the SDE solver,
``odeflow.optim``, optimal control and the forward Laplacian, made from the committed JSON in
``benchmarks/results/``.

``render_pages(results_dir)`` yields ``(uri, content)`` pairs, the markdown pages and their PNG
plots, for ``bench_pages.render_all``; ``used_files()`` lists the JSON they read. Each page
names the machine and the command from its JSON. A JSON file that is missing (a benchmark not
yet run on this branch) leaves its page with a note and the command instead of failing the build.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import bench_optim
import bench_pages as _bp

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


def _n2_machine(meta: dict) -> str:
    """The machine from any of the scripts' metadata layouts."""
    dev = meta.get("device_name") or meta.get("device") or meta.get("machine") or "?"
    if dev in ("cpu", "x86_64", "aarch64", "arm64"):
        dev = f"CPU ({meta.get('cpu') or meta.get('machine') or 'x86_64'})"
    parts = [dev]
    if meta.get("cpus"):
        parts.append(f"{meta['cpus']} cores")
    threads = meta.get("cpu_threads") or meta.get("torch_threads") or meta.get("threads")
    if threads:
        parts.append(f"{threads} torch thread{'s' if threads != 1 else ''}")
    for k, name in (("torch", "torch"), ("python", "Python")):
        if meta.get(k):
            parts.append(f"{name} {meta[k]}")
    return ", ".join(parts)


def _n2_header(title: str, intro: str, machine: str, source: str, command: str) -> list[str]:
    return [
        f"# Benchmark: {title}",
        "",
        intro,
        "",
        "Every table and plot on this page is generated when the documentation is built, "
        f"from `benchmarks/results/{source}`; `benchmarks/README.md` describes the script's "
        "flags and JSON schema. Timings come from a shared CPU and vary between runs.",
        "",
        f"**Machine:** {machine}  ",
        f"**Source:** `{source}`",
        "",
        "```bash",
        command,
        "```",
        "",
    ]


def _n2_missing(title: str, source: str, command: str) -> str:
    return "\n".join(
        [
            f"# Benchmark: {title}",
            "",
            f"`benchmarks/results/{source}` is not in this checkout yet, so this page has no "
            "figures. It is made by",
            "",
            "```bash",
            command,
            "```",
            "",
        ]
    )


def _n2_read(results: Path, name: str):
    path = results / name
    return json.loads(path.read_text()) if path.exists() else None


# --------------------------------------------------------------------------- work-precision
def _page_ode_workprecision(results: Path):
    src = "cpu_ode_workprecision.json"
    data = _n2_read(results, src)
    meta = data["meta"]
    cmd = meta.get("command") or "python benchmarks/ode_workprecision.py --quick"
    intro = (
        "Adaptive embedded pairs (`odeflow.solve(method=..., rtol=tol, atol=tol)`) against "
        "torchdiffeq, torchode and scipy's `solve_ivp`, float64, no gradients: Lotka–Volterra "
        "(**lv**), Van der Pol μ = 1 (**vdp**), the Arenstorf orbit over one period "
        "(**arenstorf**) and a tanh-MLP neural ODE on a batch of 256 states (**node**). "
        "error = relative 2-norm error of the final state against a reference; NFE = calls "
        "of the vector field; ms = wall time of one solve. The step controller decides the "
        "NFE, so the NFE ratios at equal tolerances are the comparable figures; times on "
        "this shared CPU are not."
    )
    lines = _n2_header("ODE work-precision", intro, _n2_machine(meta), src, cmd)
    lines += [
        "## NFE at equal tolerances",
        "",
        "odeflow's NFE over the peer's at the same `rtol = atol`, over every problem "
        "and tolerance both ran.",
        "",
    ]
    lines += _bp._table(
        ["odeflow", "peer", "median ratio", "min", "max", "cases"],
        [
            [
                r["odeflow"],
                r["peer"],
                r["nfe_ratio_median"],
                r["nfe_ratio_min"],
                r["nfe_ratio_max"],
                r["cases"],
            ]
            for r in data["nfe_ratios"]
        ],
    )
    rows = data["results"]
    tols = sorted({r["rtol"] for r in rows}, reverse=True)
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    plt = _bp._plt()
    solvers = list(dict.fromkeys(r["solver"] for r in rows))
    colors = {s: plt.get_cmap("tab20")(i % 20) for i, s in enumerate(solvers)}
    ncol = min(2, len(problems))
    nrow = -(-len(problems) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 3.6 * nrow), squeeze=False)
    for ax, p in zip(axes.flat, problems):
        for s in dict.fromkeys(r["solver"] for r in rows if r["problem"] == p):
            pts = sorted(
                (r["nfe"], r["error"]) for r in rows if r["problem"] == p and r["solver"] == s
            )
            style = "-" if s.startswith("odeflow") else "--"
            ax.loglog(
                [a for a, _ in pts],
                [b for _, b in pts],
                style,
                marker="o",
                ms=3,
                color=colors[s],
                label=s,
            )
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_title(p)
        ax.set_xlabel("NFE")
        ax.set_ylabel("relative error")
    for ax in list(axes.flat)[len(problems) :]:
        ax.axis("off")
    handles = [
        plt.Line2D(
            [], [], color=colors[s], ls="-" if s.startswith("odeflow") else "--", marker="o", ms=3
        )
        for s in solvers
    ]
    fig.legend(handles, solvers, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    yield "benchmarks/img/ode-workprecision-0.png", _bp._png(fig)
    lines += [
        "",
        "## Error against NFE",
        "",
        "Solid lines: odeflow; dashed: the peers. Lower left is better.",
        "",
        "![error against NFE](img/ode-workprecision-0.png)",
        "",
    ]
    for p in problems:
        lines += [f"### {p}", ""]
        header = ["solver"] + [f"tol {t:.0e}: NFE" for t in tols]
        header += [f"tol {t:.0e}: error" for t in tols] + [f"tol {t:.0e}: ms" for t in tols]
        table = []
        for s in dict.fromkeys(r["solver"] for r in rows if r["problem"] == p):
            hit = {r["rtol"]: r for r in rows if r["problem"] == p and r["solver"] == s}
            line = [s] + [hit.get(t, {}).get("nfe") for t in tols]
            line += [hit.get(t, {}).get("error") for t in tols]
            table.append(line + [hit.get(t, {}).get("ms") for t in tols])
        lines += [*_bp._table(header, table), ""]
    yield "benchmarks/ode-workprecision.md", "\n".join(lines)


# --------------------------------------------------------------------------- checkpointing
def _page_ode_checkpointing(results: Path):
    src = "cpu_ode_checkpointing.json"
    title = "ODE checkpointing"
    data = _n2_read(results, src)
    if data is None:
        yield (
            "benchmarks/ode-checkpointing.md",
            _n2_missing(
                title,
                src,
                "python benchmarks/ode_peers.py --quick --checkpoints "
                f"--json benchmarks/results/{src}",
            ),
        )
        return
    meta = data["meta"]
    cmd = "python benchmarks/ode_peers.py " + ("--quick " if meta.get("quick") else "")
    cmd += "--checkpoints " + ("--clock cpu " if meta.get("clock") == "cpu" else "")
    cmd += f"--json benchmarks/results/{src}"
    clock = (
        " Times are the process's CPU time with one thread (`--clock cpu`): on a shared CPU "
        "that other processes load, wall time does not measure the work."
        if meta.get("clock") == "cpu"
        else ""
    )
    intro = (
        "What `DiscreteAdjoint(checkpoints=...)` keeps for the backward pass, against "
        "torchdiffeq's backprop, on the workloads of the [ODE benchmark](ode.md) (RK4, "
        "forward + backward): `steps` (one state per step, the default), an integer K "
        "(binomial checkpointing, K ≈ √steps), `all` (every step's graph kept), a "
        "`MemoryBudget` of 40 % of torchdiffeq's measured peak and an unlimited budget. "
        "ms = fastest of the interleaved timing rounds; MB = peak memory growth of one "
        "call; stored / recomputed / kept = the adjoint's `AdjointStats`; grad diff = the "
        'relative difference of the parameter gradient from `checkpoints="steps"`.'
        + clock
        + " A step rebuilt in the backward pass costs its forward work F once more, so with "
        "m of n step graphs kept the time is at least 1 + (1 − m/n)·F/(F + B) times "
        "backprop's (B: the step's backward work); with F ≈ B/2 and 40 % of backprop's "
        "memory (m/n < 0.4) that bound is 1.2×."
    )
    lines = _n2_header(title, intro, _n2_machine(meta), src, cmd)
    header = [
        "workload",
        "precision",
        "checkpoints",
        "ms",
        "× torchdiffeq time",
        "MB",
        "× torchdiffeq memory",
        "stored",
        "recomputed",
        "kept graphs",
        "grad diff",
    ]
    table = [
        [
            r["workload"],
            r["precision"],
            r["checkpoints"],
            r.get("ms"),
            r.get("time_vs_torchdiffeq"),
            r.get("peak_mb"),
            r.get("peak_vs_torchdiffeq"),
            r.get("stored_states"),
            r.get("recomputed_steps"),
            r.get("kept_graphs"),
            r.get("grad_diff_vs_steps"),
        ]
        for r in data["results"]
    ]
    lines += ["## Checkpoint options", "", *_bp._table(header, table), ""]
    flat = data.get("flatness") or []
    if flat:
        lines += [
            "## Memory flatness",
            "",
            "A long solve (euler, 8×32 state, tanh MLP field): peak memory growth and "
            "stored states as the number of steps n grows, with K = 20 checkpoints "
            "and with one state per step.",
            "",
        ]
        lines += _bp._table(
            [
                "checkpoints",
                "n",
                "seconds",
                "peak MB",
                "stored states",
                "stored MB",
                "recomputed steps",
            ],
            [
                [
                    r["checkpoints"],
                    r["n"],
                    r.get("s"),
                    r.get("peak_mb"),
                    r.get("stored_states"),
                    r.get("stored_mb"),
                    r.get("recomputed_steps"),
                ]
                for r in flat
            ],
        )
        plt = _bp._plt()
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        for ck in dict.fromkeys(str(r["checkpoints"]) for r in flat):
            pts = sorted((r["n"], r["peak_mb"]) for r in flat if str(r["checkpoints"]) == ck)
            ax.loglog([a for a, _ in pts], [b for _, b in pts], marker="o", label=f"{ck}")
        ax.set_xlabel("steps n")
        ax.set_ylabel("peak memory growth (MB)")
        ax.legend(title="checkpoints", fontsize=8)
        yield "benchmarks/img/ode-checkpointing-0.png", _bp._png(fig)
        lines += ["", "![memory flatness](img/ode-checkpointing-0.png)", ""]
    yield "benchmarks/ode-checkpointing.md", "\n".join(lines)


# --------------------------------------------------------------------------- SDE
def _page_sde(results: Path):
    src = "cpu_sde_peers.json"
    data = _n2_read(results, src)
    meta = data["meta"]
    cmd = meta.get("command") or f"benchmarks/sde_peers.py --quick --json benchmarks/results/{src}"
    cmd = cmd if cmd.startswith("python ") else "python " + cmd
    intro = (
        "`odeflow.sdeint` against torchsde (Itô, diagonal noise, Euler–Maruyama, T = 1, "
        "loss = mean squared final state): geometric Brownian motion (**gbm**), "
        "Ornstein–Uhlenbeck (**ou**) and a neural SDE (**neural**, MLP drift and diffusion). "
        "Solvers: odeflow's exact discrete adjoint (`-K`: with `checkpoints=K`, binomial "
        "checkpointing, at most K + 1 states held), "
        "odeflow's backprop, torchsde's `sdeint` (backprop) and `sdeint_adjoint` (continuous "
        "stochastic adjoint). fwd / fwd+bwd = ms per step; grad diff = relative difference "
        "of the parameter gradient from backprop through the same library's solver on the "
        "same Brownian path; strong error = mean |y_T − reference| (the exact solution for "
        "gbm, the same solver at dt/16 otherwise)."
    )
    if meta.get("clock") == "cpu":
        intro += (
            " Times are CPU time of the process (`process_time`, one torch thread): the "
            "single-thread run time, little disturbed by other load on a shared machine."
        )
    lines = _n2_header("SDEs against torchsde", intro, _n2_machine(meta), src, cmd)
    rows = data["results"]
    header = [
        "SDE",
        "solver",
        "batch",
        "steps",
        "fwd ms/step",
        "fwd+bwd ms/step",
        "grad diff",
        "strong error",
    ]
    lines += ["## Time and accuracy", ""]
    lines += _bp._table(
        header,
        [
            [
                r["sde"],
                r["solver"],
                "×".join(map(str, r["batch"])),
                r["steps"],
                r["fwd_ms"],
                r["fb_ms"],
                r.get("grad_rel"),
                r.get("strong"),
            ]
            for r in rows
        ],
    )
    # (odeflow-adjoint-K keeps its checkpoints in its own record, not in the graph: its
    # memory is in the memory-against-steps table)
    saved = [r for r in rows if r.get("saved") and not r["solver"].endswith("-K")]
    plt = _bp._plt()
    sdes = list(dict.fromkeys(r["sde"] for r in rows))
    fig, axes = plt.subplots(1, len(sdes), figsize=(4.2 * len(sdes), 3.0), squeeze=False)
    for ax, s in zip(axes[0], sdes):
        rs = [r for r in rows if r["sde"] == s]
        ax.barh(range(len(rs)), [r["fb_ms"] for r in rs])
        ax.set_yticks(range(len(rs)), [r["solver"] for r in rs], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("fwd+bwd ms per step")
        ax.set_title(s)
    yield "benchmarks/img/sde-0.png", _bp._png(fig)
    lines += ["", "![forward + backward time](img/sde-0.png)", ""]
    if saved:
        steps = sorted({int(k) for r in saved for k in r["saved"]})
        lines += [
            "## Memory of the gradient",
            "",
            "MiB the autograd record of the output holds for the backward pass after "
            "the forward pass, by number of steps (the discrete adjoint's backward adds "
            "one step's graph; torchsde's adjoint solves an augmented SDE instead).",
            "",
        ]
        lines += _bp._table(
            ["SDE", "solver"] + [f"{n} steps" for n in steps],
            [
                [r["sde"], r["solver"]] + [r["saved"].get(str(n), 0) / 2**20 for n in steps]
                for r in saved
            ],
        )
        lines.append("")
    if data.get("memory_steps"):
        lines += list(_sde_memory_steps(data["memory_steps"], meta))
        yield "benchmarks/img/sde-1.png", _sde_memory_figure(data["memory_steps"])
        lines += ["", "![peak memory against steps](img/sde-1.png)", ""]
    if data.get("decimal_dt"):
        lines += [
            "## A decimal step",
            "",
            "Forward ms per step on gbm with dt = 0.01 (100 steps, not a power of two):",
            "",
        ]
        lines += _bp._table(
            ["solver", "fwd ms/step"], [[k, v] for k, v in data["decimal_dt"].items()]
        )
        lines.append("")
    yield "benchmarks/sde.md", "\n".join(lines)


def _sde_memory_steps(rows: list[dict], meta: dict):
    """The memory-against-steps table: peak growth (MiB) and stored states per solver and N."""
    steps = sorted({r["n"] for r in rows})
    solvers = list(dict.fromkeys(r["solver"] for r in rows))
    at = {(r["solver"], r["n"]): r for r in rows}

    def cell(solver, n):
        r = at.get((solver, n))
        if r is None:
            return "–"
        held = f" ({r['stored_states']} states)" if "stored_states" in r else ""
        return f"{r['peak_mb']:.2f}{held}"

    yield from [
        "## Memory against the number of steps",
        "",
        f"One forward+backward pass of {meta.get('memory_sde', 'ou')}, by number of steps N: "
        "the growth of the bytes in use over the start of the call (MiB; on CPU the C "
        "allocator's bytes, which hold torch's tensors, sampled at every 4th drift evaluation), "
        "and for odeflow's adjoints the most states held at once. "
        f"`odeflow-adjoint-K` (K = {meta.get('checkpoints', '?')}) holds K + 1 states whatever "
        "N; what grows with it is the Brownian tree's branch (log₂ N values) and the time "
        "grid (16 bytes a step). The other solvers run up to the largest N shown for them.",
        "",
    ]
    yield from _bp._table(["solver"] + [f"N = {n}" for n in steps],
                          [[s] + [cell(s, n) for n in steps] for s in solvers])  # fmt: skip
    seconds = [[s] + [at[(s, n)]["s"] if (s, n) in at else None for n in steps] for s in solvers]
    yield from ["", "Time of the same calls (s):", ""]
    yield from _bp._table(["solver"] + [f"N = {n}" for n in steps], seconds)


def _sde_memory_figure(rows: list[dict]) -> bytes:
    plt = _bp._plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for solver in dict.fromkeys(r["solver"] for r in rows):
        pts = sorted((r["n"], max(r["peak_mb"], 1e-3)) for r in rows if r["solver"] == solver)
        ax.loglog([a for a, _ in pts], [b for _, b in pts], marker="o", label=solver)
    ax.set_xlabel("steps N")
    ax.set_ylabel("peak memory growth (MiB)")
    ax.legend(fontsize=8)
    return _bp._png(fig)


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
            "error ratio = hybrid / oracle; dense times marked * are extrapolated as "
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
