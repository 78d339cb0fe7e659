"""Benchmark pages of the docs, made from the committed JSON in ``benchmarks/results/``.

Every number on these pages is read from a JSON file written by a ``benchmarks/*_peers.py``
run; nothing is copied by hand. ``render_all(results_dir)`` yields ``(uri, content)`` pairs:
the markdown pages and their PNG plots. Run this file directly to write them into a folder
(``python docs/hooks/bench_pages.py OUT``) for a look without MkDocs.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

# --------------------------------------------------------------------------- the sources
#: page -> sections; each section: the JSON files, the machine they were run on, the command
#: that reproduces them (run with ``--json benchmarks/results/FILE`` added) and a note.
PAGES = {
    "ode": {
        "title": "ODE engine",
        "intro": (
            "Forward + backward of one solve (RK4 on [0, 1], loss = mean squared final state) "
            "against torchdiffeq and torchode. **mlp**: state N×64, tanh MLP [y, t] → W → W → "
            "64, 16 steps (full: N = 4096, W = 1024; quick: N = 512, W = 128). **conv**: state "
            "B×C×H×W, conv3×3 → GroupNorm → ReLU → conv3×3, 4 steps (full: 64×128×32×32; "
            "quick: 8×32×16×16). ms = median forward+backward time after a warm-up; MB = the "
            "extra peak memory of one call (CUDA: `max_memory_allocated`; CPU: peak RSS "
            "growth); err = relative error of the parameter gradient against the same solver "
            "in float64. Time and memory are only comparable within one run."
        ),
        "sections": [
            {
                "title": "H200, full size (current)",
                "files": ["h200_ode_conv_shared_stream.json", "h200_ode_mlp_shared_stream.json"],
                "command": (
                    'S="odeflow-adjoint odeflow-adjoint-stage odeflow-adjoint+graphs '
                    'odeflow-backprop torchdiffeq torchdiffeq-adjoint"\n'
                    "python benchmarks/ode_peers.py --device cuda --workloads conv --solvers $S "
                    "--precisions fp32 bf16 fp16 --repeats 5\n"
                    "python benchmarks/ode_peers.py --device cuda --workloads mlp --solvers $S "
                    "--precisions fp32 bf16 fp16 --repeats 5"
                ),
                "note": (
                    "`+graphs` = `DiscreteAdjoint(cuda_graphs=True)`; its MB includes the "
                    "captures' memory pool, which stays reserved between calls."
                ),
            },
            {
                "title": "H100, full size (with tf32, torchode and torch.compile rows)",
                "files": ["h100_ode_conv.json", "h100_ode_mlp.json", "h100_ode_compile.json"],
                "command": (
                    "python benchmarks/ode_peers.py --device cuda --workloads conv --fp64-ref "
                    "--repeats 5\n"
                    "python benchmarks/ode_peers.py --device cuda --workloads mlp --fp64-ref "
                    "--repeats 5\n"
                    "python benchmarks/ode_peers.py --device cuda --solvers "
                    "odeflow-adjoint+compile --precisions fp32 bf16"
                ),
                "note": (
                    "An earlier run than the H200 one (before autocast's weight-cast cache was "
                    "kept across a solve, and with a fresh `AdjointScaler` per call, which "
                    "cost fp16 overflow retries)."
                ),
            },
            {
                "title": "CPU, quick sizes, fp32 timing",
                "files": ["cpu_quick_ode_fp32_default_malloc_run2.json"],
                "command": (
                    "python benchmarks/ode_peers.py --quick --workloads conv mlp --solvers "
                    "odeflow-adjoint odeflow-adjoint-stage odeflow-backprop torchdiffeq "
                    "torchdiffeq-adjoint torchode --precisions fp32 --repeats 7"
                ),
                "note": "This shared 2-core VM's timings vary by up to 45 % between runs.",
            },
            {
                "title": "CPU, quick sizes, every precision (`make bench`)",
                "files": ["cpu_quick_ode_make_bench.json"],
                "command": "python benchmarks/ode_peers.py --quick",
                "note": (
                    "Taken while other jobs loaded the CPU: read it for the gradient errors "
                    "and memory, not for the times. This CPU has no native bf16/fp16 products "
                    "(`odeflow.PerformanceWarning`), so 16-bit runs are slow here."
                ),
            },
            {
                "title": "CPU, full size, fp32",
                "files": [
                    "cpu_full_ode_fp32_default_malloc_partial.json",
                    "cpu_full_ode_mlp_fp32_peers.json",
                    "cpu_full_ode_mlp_fp32_odeflow.json",
                ],
                "command": (
                    "python benchmarks/ode_peers.py --device cpu --workloads conv mlp "
                    "--precisions fp32 --repeats 2"
                ),
                "note": (
                    "The conv rows and the first mlp rows come from one run, stopped for lack "
                    "of time; the remaining mlp rows from two later runs on one VM (`--solvers` "
                    "restricted to the peers, then to odeflow)."
                ),
            },
        ],
    },
    "derivatives": {
        "title": "Network derivatives",
        "intro": (
            "Hessian and Laplacian of a scalar network for a batch of n inputs in d "
            "dimensions, float32: odeflow against vmapped torch.func and hessQuik (each peer's "
            "fastest mode). Networks: the hessQuik paper's d → 16 → ResNet 16×4 → m, and "
            "OT-Flow's potential Φ at width 64. ms = median of the repeats; the speed-up is "
            "the peer's best time over odeflow's; MiB = peak RSS growth of odeflow's call."
        ),
        "sections": [
            {
                "title": "CPU, quick grid",
                "files": ["cpu_derivatives_after_transposed_jacobians.json"],
                "command": "python benchmarks/derivatives_peers.py --quick --threads 2 --repeats 7",
                "note": "",
            }
        ],
    },
    "flows": {
        "title": "OT-Flow",
        "intro": (
            "Seconds per training iteration (forward, exact log-density, backward, Adam step) "
            "of OT-Flow against continuous normalizing flows with a Hutchinson trace: the "
            "matched-step CNF (torchdiffeq, the same RK4 steps), an FFJORD-faithful adaptive "
            "CNF (dopri5, atol 1e-8, rtol 1e-6, adjoint), and zuko's CNF. Widths are the "
            "papers' (OT-Flow m = 256 at d = 43; the CNFs 860-860 tanh)."
        ),
        "sections": [
            {
                "title": "H200, d = 43, CUDA graphs and torch.compile (current)",
                "files": ["h200_flows_speed_graphs_run2.json", "h200_flows_compile_graphs.json"],
                "command": (
                    "python benchmarks/flows_peers.py --device cuda --dims 43 --parts speed "
                    '--models "OT-Flow,matched" --repeats 5\n'
                    "python benchmarks/flows_peers.py --device cuda --dims 43 --parts speed "
                    '--compile --models "+compile+graphs" --repeats 5'
                ),
                "note": "",
            },
            {
                "title": "H100, d = 2, 43, 63",
                "files": ["h100_flows_speed.json", "h100_flows_speed_compile.json"],
                "command": (
                    "python benchmarks/flows_peers.py --device cuda --threads 8 --parts speed "
                    "--repeats 5 --budget 40 --warm-iters 100\n"
                    "python benchmarks/flows_peers.py --device cuda --threads 8 --parts speed "
                    '--repeats 5 --compile --models "OT-Flow fp32,matched"'
                ),
                "note": "",
            },
            {
                "title": "CPU, d = 2, batch 1024",
                "files": ["cpu_flows_speed_d2.json"],
                "command": (
                    "python benchmarks/flows_peers.py --dims 2 --batch 1024 --parts speed "
                    '--repeats 5 --compile --models "OT-Flow fp32,matched"'
                ),
                "note": "",
            },
            {
                "title": "CPU, time to a target NLL on 8gaussians",
                "files": ["cpu_flows_time_to_target.json"],
                "command": "python benchmarks/flows_peers.py --parts ttt --compile",
                "note": (
                    "Training seconds until the validation NLL is within 0.1 nats of the true "
                    "entropy (batch 1024, a cap of 120 s per model)."
                ),
            },
        ],
    },
    "epi": {
        "title": "EPI distortion correction",
        "intro": (
            "Field estimation on the whole-brain MNI152 phantom (85×103×90 at 2 mm, peak "
            "displacement 4 voxels, SNR 30, `odeflow.imaging.epi.make_phantom`): seconds of "
            "the estimation (inputs in memory), CPU seconds, peak memory growth, field RMSE "
            "and 95th percentile against the truth in the brain (voxels), relative distance "
            "D(b)/D(0) (PyHySCO's metric) and the smallest Jacobian."
        ),
        "sections": [
            {
                "title": "CPU, 2 threads",
                "files": ["cpu_epi_lbfgs_ftol.json"],
                "command": (
                    "python benchmarks/epi_peers.py --threads 2 --repeats 2 "
                    "--methods odeflow-gn odeflow-lbfgs"
                ),
                "note": (
                    "L-BFGS stops at its iteration budget (status MAX_ITERATIONS, which "
                    "`odeflow epi correct` reports as NOT CONVERGED): Gauss–Newton is the "
                    "default. Add `pyhysco-default pyhysco-odeflow-settings` to `--methods` "
                    "(with `pip install pyhysco`) for PyHySCO's rows."
                ),
            }
        ],
    },
    "nn": {
        "title": "PDE-motivated networks",
        "intro": (
            "`odeflow.nn` against a plain ResNet trained by autograd and torchdiffeq's "
            "`odeint_adjoint` neural ODE, on scikit-learn's digits (offline). **Depth**: "
            "flattened 8×8 digits, width 32, batch 64; activation memory = bytes of the "
            "distinct tensors autograd saves for the backward pass (parameters excluded), "
            "time = median of forward + backward + Adam step. **Accuracy**: trained at one "
            "depth, evaluated at every depth with the same weights (depth continuation). "
            "**Lean**: LeanResNet vs plain convolutional ResNet. **Toy**: peaks and Swiss roll. "
            "**Scales**: trained on 8×8 digits, tested at 16×16 with the same kernels, with "
            "kernels prolonged by `odeflow.nn.prolong_conv`, and on the 16×16 images "
            "restricted back to 8×8."
        ),
        "sections": [
            {
                "title": "CPU, quick mode",
                "files": ["cpu_nn_peers.json"],
                "command": "python benchmarks/nn_peers.py --quick --scales",
                "note": (
                    "Quick mode trains for a few epochs on one shared CPU thread: accuracies "
                    "are indicative, timings noisy. torchdiffeq rows appear when it is "
                    "installed (`pip install torchdiffeq --no-deps`)."
                ),
            }
        ],
    },
}


# --------------------------------------------------------------------------- helpers
def _fmt(x, digits=3) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x != x:
            return "—"
        if x == 0:
            return "0"
        if abs(x) < 1e-2 or abs(x) >= 1e5:
            return f"{x:.1e}"
        return f"{x:.{digits}g}" if abs(x) < 100 else f"{x:.0f}"
    return str(x).replace("|", "\\|")


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return out


def _machine(meta: dict) -> str:
    dev = meta.get("device_name") or meta.get("device") or "?"
    if dev in ("cpu", "x86_64"):
        dev = f"CPU ({meta.get('cpu', 'x86_64')})"
    threads = meta.get("cpu_threads") or meta.get("threads")
    parts = [dev]
    if threads:
        parts.append(f"{threads} CPU threads")
    if meta.get("torch"):
        parts.append(f"torch {meta['torch']}")
    if meta.get("python"):
        parts.append(f"Python {meta['python']}")
    return ", ".join(parts)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------- ODE
_PREC = ["fp32", "tf32", "bf16", "fp16"]


def _ode_section(datas: list[dict], stem: str):
    rows = [r for d in datas for r in d["results"]]
    precs = [p for p in _PREC if any(r["precision"] == p for r in rows)]
    has_err = any("err64" in r for r in rows)
    keys = []
    for r in rows:
        k = (r["workload"], r["solver"])
        if k not in keys:
            keys.append(k)
    header = ["workload", "solver"]
    for p in precs:
        header += [f"{p} ms", f"{p} MB"] + ([f"{p} err"] if has_err and p != "fp32" else [])
    table = []
    for w, s in keys:
        line: list = [w, s]
        for p in precs:
            hit = [r for r in rows if (r["workload"], r["solver"], r["precision"]) == (w, s, p)]
            r = hit[-1] if hit else {}
            line += [r.get("ms"), r.get("peak_mb")]
            if has_err and p != "fp32":
                line.append(r.get("err64"))
        table.append(line)
    plt = _plt()
    workloads = list(dict.fromkeys(w for w, _ in keys))
    fig, axes = plt.subplots(1, len(workloads), figsize=(5.5 * len(workloads), 3.6), squeeze=False)
    for ax, w in zip(axes[0], workloads):
        sols = [s for ww, s in keys if ww == w]
        width = 0.8 / max(len(precs), 1)
        for i, p in enumerate(precs):
            ms = []
            for s in sols:
                hit = [r for r in rows if (r["workload"], r["solver"], r["precision"]) == (w, s, p)]
                ms.append(hit[-1]["ms"] if hit else 0.0)
            ax.barh([j + i * width for j in range(len(sols))], ms, height=width, label=p)
        ax.set_yticks([j + 0.4 - width / 2 for j in range(len(sols))], sols, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("ms per forward + backward")
        ax.set_title(w)
        ax.legend(fontsize=8)
    return _table(header, table), _png(fig)


# --------------------------------------------------------------------------- derivatives
def _derivatives_section(datas: list[dict], stem: str):
    rows = [r for d in datas for r in d["rows"]]
    cases = []
    for r in rows:
        k = (r["net"], r["quantity"], r["n"], r["d"], r["m"])
        if k not in cases:
            cases.append(k)

    def best(k, prefix):
        ts = [r.get("seconds") for r in rows if _key(r) == k and r["method"].startswith(prefix)]
        ts = [t for t in ts if t is not None]
        return min(ts) if ts else None

    def _key(r):
        return (r["net"], r["quantity"], r["n"], r["d"], r["m"])

    header = ["network", "quantity", "n", "d", "m", "odeflow ms", "torch.func ms (best)",
              "speed-up", "hessQuik ms (best)", "speed-up", "odeflow MiB"]  # fmt: skip
    table, speed = [], []
    for k in cases:
        ours = best(k, "odeflow")
        tf = best(k, "torch.func")
        hq = best(k, "hessquik")
        mem = [r.get("peak_bytes") for r in rows if _key(r) == k and r["method"][:7] == "odeflow"]
        line = [*k, _ms(ours), _ms(tf), _ratio(tf, ours), _ms(hq), _ratio(hq, ours)]
        line.append(mem[0] / 2**20 if mem and mem[0] is not None else None)
        table.append(line)
        speed.append((k, _ratio(tf, ours), _ratio(hq, ours)))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    nets = {"hessquik": "hessQuik net", "otflow": "OT-Flow Φ"}
    labels = [
        f"{nets.get(k[0], k[0])}, {'Hessian' if k[1] == 'hessian' else 'Laplacian'}, "
        f"n={k[2]} d={k[3]} m={k[4]}"
        for k, _, _ in speed
    ]
    x = range(len(speed))
    ax.bar([i - 0.2 for i in x], [s or 0 for _, s, _ in speed], width=0.4, label="vs torch.func")
    ax.bar([i + 0.2 for i in x], [s or 0 for _, _, s in speed], width=0.4, label="vs hessQuik")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("odeflow speed-up (×)")
    ax.set_xticks(list(x), labels, rotation=90, fontsize=7)
    ax.legend(fontsize=8)
    return _table(header, table), _png(fig)


def _ms(s):
    return None if s is None else 1e3 * s


def _ratio(peer, ours):
    return None if peer is None or not ours else peer / ours


# --------------------------------------------------------------------------- flows
def _flows_section(datas: list[dict], stem: str):
    speed = [r for d in datas for r in d.get("speed", [])]
    ttt = [r for d in datas for r in d.get("time_to_target", [])]
    plt = _plt()
    if speed:
        header = ["d", "batch", "model", "trace", "ms / iteration", "NFE fwd", "NFE bwd",
                  "parameters"]  # fmt: skip
        table = [
            [
                r["d"],
                r["batch"],
                r["model"],
                r["kind"],
                1e3 * r["train_iter_s"],
                r.get("nfe_fwd"),
                r.get("nfe_bwd"),
                r.get("params"),
            ]
            for r in speed
        ]
        dims = list(dict.fromkeys(r["d"] for r in speed))
        fig, axes = plt.subplots(1, len(dims), figsize=(5.5 * len(dims), 3.4), squeeze=False)
        for ax, d in zip(axes[0], dims):
            rs = [r for r in speed if r["d"] == d]
            ax.barh(range(len(rs)), [1e3 * r["train_iter_s"] for r in rs])
            ax.set_yticks(range(len(rs)), [r["model"] for r in rs], fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel("ms per training iteration")
            ax.set_title(f"d = {d}")
        return _table(header, table), _png(fig)
    header = ["model", "reached", "seconds to target", "iterations", "best val NLL", "target"]
    table = [
        [
            r["model"],
            r["reached"],
            r.get("time_to_target_s") if r["reached"] else None,
            r.get("iters_to_target") if r["reached"] else r.get("iters"),
            r["best_val_nll"],
            r["target"],
        ]
        for r in ttt
    ]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for r in ttt:
        tr = r.get("trace") or []
        xs, ys = [p["train_s"] for p in tr], [p["val_nll"] for p in tr]
        ax.plot(xs, ys, marker=".", label=r["model"])
    if ttt:
        ax.axhline(ttt[0]["target"], color="k", ls="--", lw=0.8, label="target")
        ax.axhline(ttt[0]["entropy"], color="gray", ls=":", lw=0.8, label="true entropy")
    ax.set_xlabel("training seconds")
    ax.set_ylabel("validation NLL (nats)")
    ax.set_ylim(top=min(6.0, ax.get_ylim()[1]))
    ax.legend(fontsize=7)
    return _table(header, table), _png(fig)


# --------------------------------------------------------------------------- EPI
def _epi_section(datas: list[dict], stem: str):
    rows = [r for d in datas for r in d["results"]]
    header = ["method", "seconds", "CPU s", "status", "iterations", "peak MiB",
              "field RMSE (voxel)", "p95 (voxel)", "rel. distance", "min Jacobian"]  # fmt: skip
    table = [
        [
            r["method"],
            r["seconds"],
            r.get("cpu_seconds"),
            r.get("status"),
            r.get("iterations"),
            r.get("peak_mem_mib"),
            r["field_rmse_vox"],
            r.get("field_p95_vox"),
            r.get("relative_distance"),
            r.get("min_jacobian"),
        ]
        for r in rows
    ]
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 2.6))
    names = [r["method"] for r in rows]
    a.barh(names, [r["seconds"] for r in rows])
    a.set_xlabel("seconds")
    b.barh(names, [r["field_rmse_vox"] for r in rows])
    b.set_xlabel("field RMSE (voxel)")
    for ax in (a, b):
        ax.invert_yaxis()
    return _table(header, table), _png(fig)


# --------------------------------------------------------------------------- nn
def _nn_tables(d: dict) -> list[str]:
    depth = [r for r in d["depth"] if "depth" in r]
    out = ["**Activation memory and time per iteration vs depth**", ""]
    out += _table(
        ["model", "depth", "activation MiB", "ms / iteration"],
        [[r["model"], r["depth"], r["activation_bytes"] / 2**20, _ms(r["seconds_per_iteration"])]
         for r in depth],
    )  # fmt: skip
    skipped = [r["model"] for r in d["depth"] if "skipped" in r]
    if skipped:
        out += ["", "Skipped (not installed): " + ", ".join(skipped) + "."]
    acc = [r for r in d["accuracy"] if "test_accuracy" in r]
    if acc:
        depths = list(acc[0]["test_accuracy_at_depth"])
        out += ["", "**Test accuracy: trained at one depth, evaluated at others**", ""]
        out += _table(
            ["model", "trained at", "epochs", *[f"at {k}" for k in depths]],
            [[r["model"], r["train_depth"], r["epochs"],
              *[r["test_accuracy_at_depth"][k] for k in depths]] for r in acc],
        )  # fmt: skip
    out += ["", "**LeanResNet vs plain ResNet (convolutional digits)**", ""]
    out += _table(
        ["model", "image", "test accuracy", "parameters", "block parameters"],
        [[r["model"], f"{r['size']}×{r['size']}", r["test_accuracy"], r["parameters"],
          r["block_parameters"]] for r in d["lean"]],
    )  # fmt: skip
    out += ["", "**Peaks and Swiss roll (2-D, width 8, depth 8)**", ""]
    out += _table(
        ["task", "model", "test accuracy"],
        [[r["task"], r["model"], r["test_accuracy"]] for r in d["toy"]],
    )
    if d.get("scales"):
        out += ["", "**Learning across scales: trained at 8×8, tested at 16×16**", ""]
        out += _table(
            ["model", "8×8", "16×16 same kernels", "16×16 prolonged",
             "prolonged, 4× steps", "16×16 restricted to 8×8"],
            [[r["model"], r["test_accuracy_8"], r["test_accuracy_16_same_kernels"],
              r["test_accuracy_16_prolonged"], r["test_accuracy_16_prolonged_4x_steps"],
              r["test_accuracy_16_restricted_to_8"]] for r in d["scales"]],
        )  # fmt: skip
    goals = d.get("goals", {})
    if "hamiltonian_memory_fraction_of_plain" in goals:
        out += ["", f"**Goals at depth {goals['depth']}**", ""]
        out += _table(
            ["Hamiltonian memory / plain", "goal ≤ 0.05", "time ratio", "goal ≤ 1.5",
             "accuracy difference"],
            [[goals["hamiltonian_memory_fraction_of_plain"], goals["memory_goal_met"],
              goals["hamiltonian_time_ratio_to_plain"], goals["time_goal_met"],
              goals["accuracy_difference_hamiltonian_minus_plain_at_depth"]]],
        )  # fmt: skip
    return out


def _nn_section(datas: list[dict], stem: str):
    d = datas[0]
    plt = _plt()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(12, 3.2))
    fig.subplots_adjust(wspace=0.4)
    depth = [r for r in d["depth"] if "depth" in r]
    for model in dict.fromkeys(r["model"] for r in depth):
        rs = sorted((r for r in depth if r["model"] == model), key=lambda r: r["depth"])
        xs = [r["depth"] for r in rs]
        a.loglog(xs, [r["activation_bytes"] / 2**20 for r in rs], "o-", label=model)
        b.loglog(xs, [r["seconds_per_iteration"] * 1e3 for r in rs], "o-", label=model)
    for r in (r for r in d["accuracy"] if "test_accuracy" in r):
        ks = list(r["test_accuracy_at_depth"])
        c.semilogx([int(k) for k in ks], [r["test_accuracy_at_depth"][k] for k in ks], "o-",
                   label=r["model"])  # fmt: skip
    a.set(xlabel="depth (steps)", ylabel="activation memory (MiB)")
    b.set(xlabel="depth (steps)", ylabel="ms / iteration")
    c.set(xlabel="evaluated at depth", ylabel="test accuracy")
    a.legend(fontsize=7)
    return _nn_tables(d), _png(fig)


_SECTION = {
    "ode": _ode_section,
    "derivatives": _derivatives_section,
    "flows": _flows_section,
    "epi": _epi_section,
    "nn": _nn_section,
}


def _meta(data: dict) -> dict:
    for k in ("meta", "environment"):
        if k in data:
            return data[k]
    if isinstance(data.get("info"), list) and data["info"]:
        return data["info"][0]
    return data


# --------------------------------------------------------------------------- pages
def render_page(name: str, results: Path) -> Iterator[tuple[str, str | bytes]]:
    spec = PAGES[name]
    lines = [f"# Benchmark: {spec['title']}", "", spec["intro"], ""]
    lines += [
        "Every table and plot on this page is generated when the documentation is built, "
        "from the JSON files named in each section (`benchmarks/results/`). To reproduce a "
        "section, run its command from a source checkout with `--json FILE` added "
        "(`make bench-setup` installs the peer libraries); `benchmarks/README.md` describes "
        "each script's flags and JSON schema.",
        "",
    ]
    for i, sec in enumerate(spec["sections"]):
        datas = [json.loads((results / f).read_text()) for f in sec["files"]]
        machines = list(dict.fromkeys(_machine(_meta(d)) for d in datas))
        table, png = _SECTION[name](datas, f"{name}-{i}")
        uri = f"benchmarks/img/{name}-{i}.png"
        yield uri, png
        lines += [f"## {sec['title']}", ""]
        lines += [f"**Machine:** {m}  " for m in machines]
        lines += ["**Source:** " + ", ".join(f"`{f}`" for f in sec["files"]), ""]
        lines += ["```bash", sec["command"], "```", ""]
        if sec["note"]:
            lines += [sec["note"], ""]
        lines += table
        lines += ["", f"![{sec['title']}](img/{name}-{i}.png)", ""]
        notes = [_meta(d).get("note") for d in datas if _meta(d).get("note")]
        lines += [f"*Recorded with the run:* {n}" for n in notes]
        lines.append("")
    yield f"benchmarks/{name}.md", "\n".join(lines)


def render_all(results: Path) -> Iterator[tuple[str, str | bytes]]:
    for name in PAGES:
        yield from render_page(name, results)
    yield from bench_pages_extra.render_pages(results)
    yield from bench_pages_control.render_pages(results)


def used_files() -> list[str]:
    """Every JSON file a page reads (the test suite checks that they exist and parse)."""
    files = [f for p in PAGES.values() for s in p["sections"] for f in s["files"]]
    return files + bench_pages_extra.used_files() + bench_pages_control.used_files()


# the adaptive-ODE, checkpointing, SDE and optimization pages live in their own module
import bench_pages_control  # noqa: E402
import bench_pages_extra  # noqa: E402

if __name__ == "__main__":  # write the pages into a folder, for a look without MkDocs
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-pages")
    res = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    for uri, content in render_all(res):
        p = out / uri
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    print(f"wrote {out}")
