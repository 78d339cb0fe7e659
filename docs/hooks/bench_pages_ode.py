"""Benchmark pages of the adaptive ODE solvers (work-precision), the adjoint's checkpointing
and the SDE solver, made from the committed JSON in ``benchmarks/results/`` (rendered through
``bench_pages_extra.render_pages``)."""

from __future__ import annotations

from pathlib import Path

import bench_pages as _bp
from bench_n2 import _n2_header, _n2_machine, _n2_missing, _n2_read


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
def _fb_note(rows: list[dict]) -> str:
    """Measured F, B and F / (F + B) of odeflow's backprop per workload, and the least time
    of the budget row."""
    parts = []
    for r in rows:
        F, B = r.get("fwd_ms"), r.get("bwd_ms")
        if r.get("checkpoints") != "backprop" or not (F and B):
            continue
        budget = [q for q in rows if q["workload"] == r["workload"]
                  and q.get("checkpoints") == "budget 40%" and "rebuilt_fraction" in q]  # fmt: skip
        text = f"{r['workload']}: F = {F:.1f} ms, B = {B:.1f} ms, F/(F + B) = {F / (F + B):.2f}"
        if budget:
            q = budget[0]
            text += (
                f"; at 40 % of torchdiffeq's memory {1 - q['rebuilt_fraction']:.2f} of the "
                f"graphs are kept, so at least {q['time_bound_vs_backprop']:.2f}× backprop's "
                f"time ({q['time_bound_vs_torchdiffeq']:.2f}× torchdiffeq's)"
            )
        parts.append(text)
    return (" Measured here: " + "; ".join(parts) + ".") if parts else ""


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
    cmd += f"--repeats {meta['repeats']} " if meta.get("repeats") else ""
    cmd += f"--rounds {meta['timing_rounds']} " if meta.get("timing_rounds", 4) != 4 else ""
    cmd += f"--json benchmarks/results/{src}"
    clock = (
        " Times are the process's CPU time with one thread (`--clock cpu`): on a shared CPU "
        "that other processes load, wall time does not measure the work."
        if meta.get("clock") == "cpu"
        else ""
    )
    intro = (
        "What `DiscreteAdjoint(checkpoints=...)` keeps for the backward pass, against "
        "torchdiffeq's backprop and odeflow's (`backprop`), on the workloads of the "
        "[ODE benchmark](ode.md) (RK4, "
        "forward + backward): `steps` (one state per step, the default), an integer K "
        "(binomial checkpointing, K ≈ √steps), `all` (every step's graph kept), a "
        "`MemoryBudget` of 40 % of torchdiffeq's measured peak and an unlimited budget. "
        "ms = fastest of the interleaved timing rounds; MB = peak memory growth of one "
        "call; stored / recomputed / kept = the adjoint's `AdjointStats`; grad diff = the "
        'relative difference of the parameter gradient from `checkpoints="steps"`. A budget '
        "bounds what the forward pass keeps (step states and step graphs, a graph's size "
        "measured as the saved tensors of the first step); the backward pass's working "
        "memory (one rebuilt step's graph, the gradients) comes on top, so the 40 % row's "
        "peak is above 0.4× torchdiffeq's."
        + clock
        + " Kept step graphs are chained by the forward pass and differentiated in one "
        "autograd call, as backprop's graph is; a step rebuilt in the backward pass costs its "
        "share of backprop's forward work F once more, so a policy that keeps m of n step "
        "graphs needs at least F + B + (1 − m/n)·F (B: backprop's backward work; both "
        "measured, the forward and backward parts of odeflow backprop's fastest call): "
        "1 + (1 − m/n)·F/(F + B) times backprop's time, the least ratio to torchdiffeq's "
        "time in the table (binomial checkpointing's graph-free advances come on top)."
        + _fb_note(data["results"])
    )
    lines = _n2_header(title, intro, _n2_machine(meta), src, cmd)
    header = [
        "workload",
        "precision",
        "checkpoints",
        "ms",
        "× torchdiffeq time",
        "least × torchdiffeq",
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
            r.get("time_bound_vs_torchdiffeq"),
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
    lines += _slim_section(_n2_read(results, "cpu_ode_slim_steps.json"))
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


def _goal_note(r: dict) -> str:
    """What slim graphs free of overhead would need for the 1.15× goal."""
    if r.get("need_mb_for_goal") is None:
        return "Even every step kept slim and free of overhead would miss the goal 1.15×."
    return (
        f"The goal 1.15× needs {r['kept_for_goal']} of {r['steps']} graphs kept slim and free "
        f"of overhead: {r['need_mb_for_goal']:.2f} MiB, "
        f"{r['need_mb_for_goal'] / r['budget_mb']:.2f}× the budget."
    )


def _slim_section(data: dict | None) -> list[str]:
    """Why the budget keeps full step graphs, not slim ones (``benchmarks/ode_slim_steps.py``)."""
    if not data:
        return []
    rows = data["results"]
    by = {r["workload"]: r for r in rows}
    mib = 2**20
    worst = max(r["grad_diff_fp64"] for r in rows)
    diff = "are bitwise equal" if worst == 0 else f"differ by at most {worst:.1e} (relative)"
    text = (
        "A kept step graph holds every activation of the step. Selective activation "
        "checkpointing (`torch.utils.checkpoint` with `create_selective_checkpoint_contexts`: "
        "the outputs of convolution, mm, addmm, bmm saved, every other op recomputed in the "
        "backward pass) would keep a slim graph instead, so that a budget holds more of them. "
        "Measured per RK4 step on the workloads above (one thread, CPU time; the gradients "
        f"through slim and full graphs {diff} in float64), it does not pay:"
    )
    items = []
    if "mlp" in by:
        r = by["mlp"]
        items.append(
            f"- mlp: a linear layer's output is as wide as the tanh output that the full graph "
            f"saves, so the slim graph is no smaller ({r['b_slim'] / mib:.2f} against "
            f"{r['b_g'] / mib:.2f} MiB); and its cheap ops alone (c = {r['c']:.2f} ms a step, "
            f"the step without a graph less its matrix products) put even every step kept "
            f"slim at {1 + r['c'] / (r['F'] + r['B']):.2f}× backprop's time."
        )
    if "conv" in by:
        r = by["conv"]
        items.append(
            f"- conv: the slim graph is {r['slim_vs_full']:.2f}× the full one "
            f"({r['b_slim'] / mib:.2f} against {r['b_g'] / mib:.2f} MiB), but the backward pass "
            f"recomputes one step's activations next to the slim graphs it holds, so "
            f"{r['budget_mb']:.2f} MiB (40 %) keeps {r['kept_slim']} slim graph(s) against "
            f"{r['kept_full']} full one(s). Not counting that recomputation, it would keep "
            f"{r['kept_slim_optimistic']}: {r['time_slim_optimistic']:.2f}× backprop's time as "
            f"measured, {r['time_slim_ideal_optimistic']:.2f}× even if the dispatch cost nothing. "
            + _goal_note(r)
        )
    items.append(
        "- time: the recomputation reruns the step through a Python dispatch mode; a kept "
        "slim step costs F_slim + B_slim, against 2F + B for a step rebuilt outright: "
        + "; ".join(
            f"{r['workload']} {r['F_slim'] + r['B_slim']:.1f} against {2 * r['F'] + r['B']:.1f} ms"
            for r in rows
        )
        + "."
    )
    header = ["workload", "state MiB", "graph MiB", "slim MiB", "F ms", "B ms", "F_slim ms",
              "B_slim ms", "c ms", "budget MiB", "kept full / slim",
              "× backprop: full / slim / slim, no overhead"]  # fmt: skip
    table = [
        [r["workload"], r["b_s"] / mib, r["b_g"] / mib, r["b_slim"] / mib, r["F"], r["B"],
         r["F_slim"], r["B_slim"], r["c"], r.get("budget_mb"),
         f"{r.get('kept_full')} / {r.get('kept_slim')}",
         f"{r.get('time_full', 0):.2f} / {r.get('time_slim', 0):.2f} / "
         f"{r.get('time_slim_ideal', 0):.2f}"]
        for r in rows
    ]  # fmt: skip
    cmd = data["meta"].get("command", "python benchmarks/ode_slim_steps.py")
    return [
        "## Slim step graphs (measured, not offered)",
        "",
        text,
        "",
        *items,
        "",
        *_bp._table(header, table),
        "",
        "Predicted times: a kept graph costs F + B (full), F_slim + B_slim (slim) or "
        "F + B + c (slim without dispatch overhead), a rebuilt step 2F + B, over backprop's "
        f"n (F + B). Command: `{cmd}`.",
        "",
    ]


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
