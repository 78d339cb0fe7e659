"""Exact network derivatives side by side: odeflow vs hessQuik vs vmapped torch.func (vs jet).

Networks (from the hessQuik paper and OT-Flow):

* ``hessquik``: single(d → 16, log 2cosh), ResNet(16, depth 4, h = ½, tanh), single(16 → m);
  the same weights are loaded into odeflow and hessQuik so all methods evaluate one function.
* ``otflow``: Φ(s) = wᵀN(s) + ½sᵀAᵀAs + bᵀs + c on s = (x, t) ∈ R^{d+1}, N a width-w ResNet
  with log 2cosh (one opening layer, one residual layer), Laplacian over x only.

Quantities: the full input Hessian (with value and gradient) and the Laplacian. For each case
the script prints median wall time over ``--repeats`` runs after one warm-up, the speed-up of
odeflow over each peer, the peak memory (CUDA: ``max_memory_allocated``; CPU on Linux: peak
RSS increase of one call, with large allocations forced to mmap so that frees are visible),
and the max relative difference to torch.func. Cases whose dense peer tensors would exceed
``--mem-budget-gb`` are reported as skipped instead of being run.

Usage::

    python benchmarks/derivatives_peers.py --quick --json out.json      # CPU-sized, minutes
    python benchmarks/derivatives_peers.py --device cuda --json gpu.json  # the issue's full grid

jet-for-pytorch (collapsed Taylor mode) needs Python ≥ 3.12; it is measured when importable
(``import jet``) and reported as not measurable otherwise.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch
from torch import func as tf

import odeflow.derivatives as D

try:  # peers are optional
    import hessQuik.activations as hq_act
    import hessQuik.layers as hq_lay
    import hessQuik.networks as hq_net

    HESSQUIK = None
except Exception as exc:  # pragma: no cover - depends on the environment
    HESSQUIK = f"not importable: {type(exc).__name__}: {exc}"

try:  # pragma: no cover - needs Python >= 3.12
    import jet  # noqa: F401

    JET = None
except Exception as exc:
    JET = (
        f"not measurable here (Python {platform.python_version()}; jet-for-pytorch needs "
        f"Python >= 3.12): {type(exc).__name__}"
    )


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_kb(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(field)


def _cpu_peak_setup() -> bool:
    """Linux only: mmap every allocation ≥ 1 MiB (returned to the OS on free) so that the
    peak-RSS high-water mark, reset through /proc/self/clear_refs, measures one call."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        _proc_kb("VmHWM")
        return True
    except (OSError, AttributeError):
        return False


CPU_PEAK = False


def _cpu_peak(fn):
    """Peak resident bytes above the current RSS during one call of fn (Linux)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = _proc_kb("VmRSS")
    fn()
    return max(_proc_kb("VmHWM") - base, 0) * 1024


def _measure(fn, device, repeats):
    """Median seconds and peak bytes of fn(); returns (median, peak, result).

    Peak memory: CUDA ``max_memory_allocated`` above the baseline; CPU the peak-RSS increase
    of one extra call (Linux; None elsewhere).
    """
    out = fn()  # warm-up
    _sync(device)
    cpu_peak = _cpu_peak(fn) if device.type == "cpu" and CPU_PEAK else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = cpu_peak
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    return statistics.median(times), peak, out


def _rel(a, b):
    a, b = a.detach().double().reshape(-1), b.detach().double().reshape(-1)
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def hessquik_pair(d, m, device, dtype):
    """The paper's timing network in odeflow and (same weights) in hessQuik."""
    ours = D.Sequential(
        D.Single(d, 16, act=D.LogCosh()),
        D.ResNet(16, depth=4, h=0.5, act=D.Tanh()),
        D.Single(16, m, act=D.Identity()),
    ).to(device=device, dtype=dtype)
    if HESSQUIK is not None:
        return ours, None
    theirs = hq_net.NN(
        hq_lay.singleLayer(d, 16, act=hq_act.antiTanhActivation()),
        hq_net.resnetNN(16, 4, h=0.5, act=hq_act.tanhActivation()),
        hq_lay.singleLayer(16, m, act=hq_act.identityActivation()),
    ).to(device=device, dtype=dtype)
    with torch.no_grad():  # hessQuik stores K as (in, out); odeflow as (out, in)
        theirs[0].K.copy_(ours.blocks[0].K.T)
        theirs[0].b.copy_(ours.blocks[0].b)
        for i, layer in enumerate(theirs[1]):
            layer.layer.K.copy_(ours.blocks[1].K[i].T)
            layer.layer.b.copy_(ours.blocks[1].b[i])
        theirs[2].K.copy_(ours.blocks[2].K.T)
        theirs[2].b.copy_(ours.blocks[2].b)
    return ours, theirs


def otflow_phi(d, width, device, dtype):
    phi = D.Sum(
        D.Sequential(
            D.Single(d + 1, width, act=D.LogCosh()),
            D.ResNet(width, depth=1, h=1.0, act=D.LogCosh()),
            D.Linear(width, 1, bias=False),
        ),
        D.Quadratic(d + 1, rank=min(10, d + 1)),
    ).to(device=device, dtype=dtype)
    with torch.no_grad():
        phi.blocks[0].blocks[2].K.fill_(1.0)  # OT-Flow starts from w = 1
    return phi


def func_methods(net, exclude_last):
    """Baselines: vmapped torch.func Hessian (jacfwd∘jacrev) and forward-over-reverse HVPs."""

    def f(xi):
        return net(xi.unsqueeze(0)).reshape(-1)

    hess = tf.vmap(tf.jacfwd(tf.jacrev(f)))

    def hessian(x):
        return hess(x)

    def lap_trace(x):
        dp = x.shape[1] - exclude_last
        return hess(x)[..., :dp, :dp].diagonal(dim1=-2, dim2=-1).sum(-1)

    g = tf.jacrev(f)

    def lap_hvp(x):
        d = x.shape[1]
        E = torch.eye(d, d - exclude_last, dtype=x.dtype, device=x.device)

        def one(xi):
            R = tf.vmap(lambda e: tf.jvp(g, (xi,), (e,))[1])(E.T)  # (d', m, d)
            return torch.einsum("cmd,dc->m", R, E)

        return tf.vmap(one)(x)

    return hessian, lap_trace, lap_hvp


def run_case(rows, net_name, n, d, m, device, dtype, args, width=16):
    gen = torch.Generator(device="cpu").manual_seed(0)
    if net_name == "hessquik":
        ours, theirs = hessquik_pair(d, m, device, dtype)
        ex, din = 0, d
    else:
        ours, theirs = otflow_phi(d, width, device, dtype), None
        ex, din = 1, d + 1
    x = torch.randn(n, din, generator=gen, dtype=dtype).to(device)
    f_hess, f_trace, f_hvp = func_methods(ours, ex)
    budget = args.mem_budget_gb * 2**30
    item = torch.finfo(dtype).bits // 8
    dense_out = n * din * din * m * item  # the Hessian itself
    dense_layer = n * din * din * 16 * item  # hessQuik's per-layer (n, d, d, width) tensor

    def add(quantity, method, fn, ref=None, skip=None):
        row = {
            "net": net_name,
            "n": n,
            "d": d,
            "m": m,
            "width": width,
            "quantity": quantity,
            "method": method,
        }
        if skip:
            row["skipped"] = skip
            rows.append(row)
            return None
        try:
            with torch.no_grad():
                t, peak, out = _measure(fn, device, args.repeats)
        except (RuntimeError, MemoryError) as exc:  # OOM and friends: recorded, not fatal
            row["skipped"] = f"{type(exc).__name__}: {str(exc)[:120]}"
            rows.append(row)
            return None
        row.update(seconds=t, peak_bytes=peak)
        if ref is not None:
            row["max_rel_diff_vs_torch_func"] = _rel(out, ref)
        rows.append(row)
        return out

    # ---- Hessian ----------------------------------------------------------------------------
    too_big = (
        f"dense Hessian needs {dense_out / 2**30:.1f} GiB > budget" if dense_out > budget else None
    )
    ref_h = add("hessian", "torch.func vmap(jacfwd(jacrev))", lambda: f_hess(x), skip=too_big)
    if ref_h is not None and ex:
        ref_h = ref_h[..., : din - ex, : din - ex]
    if ref_h is not None and m == 1:
        ref_h = ref_h[:, 0]
    add(
        "hessian",
        "odeflow (auto)",
        lambda: D.compute(ours, x, want="hessian", exclude_last=ex).hessian,
        ref=ref_h,
        skip=too_big,
    )
    if net_name == "hessquik":
        for fwd in (True, False):
            name = f"hessquik ({'forward' if fwd else 'backward'} mode)"
            if theirs is None:
                add("hessian", name, None, skip=HESSQUIK)
                continue
            big = fwd and dense_layer > budget
            skip = too_big or (
                f"(n, d, d, 16) layer tensors need {dense_layer / 2**30:.1f} GiB" if big else None
            )

            def hq(fwd=fwd):
                H = theirs(x, do_gradient=True, do_Hessian=True, forward_mode=fwd)[2]
                return H.permute(0, 3, 1, 2) if m > 1 else H[..., 0]

            add("hessian", name, hq, ref=ref_h, skip=skip)

    # ---- Laplacian --------------------------------------------------------------------------
    ref_l = add("laplacian", "torch.func trace of vmap(hessian)", lambda: f_trace(x), skip=too_big)
    if ref_l is None:
        ref_l = add(
            "laplacian",
            "torch.func vmap HVPs",
            lambda: f_hvp(x),
            skip="d·n HVPs too slow for the budget" if n * din > 2e6 else None,
        )
    else:
        add("laplacian", "torch.func vmap HVPs", lambda: f_hvp(x), ref=ref_l)
    if ref_l is not None and m == 1:
        ref_l = ref_l[:, 0]
    add(
        "laplacian",
        "odeflow (auto)",
        lambda: D.compute(ours, x, want="laplacian", exclude_last=ex).laplacian,
        ref=ref_l,
    )
    if net_name == "hessquik":
        if theirs is None:
            add("laplacian", "hessquik (do_Laplacian)", None, skip=HESSQUIK)
        else:
            big = dense_layer / 16 * m > budget
            add(
                "laplacian",
                "hessquik (do_Laplacian)",
                lambda: theirs(x, do_gradient=True, do_Laplacian=True)[2].reshape(n, m).squeeze(-1),
                ref=ref_l,
                skip="too big" if big else None,
            )
    add("laplacian", "jet-for-pytorch (collapsed Taylor)", None, skip=JET or "not wired up")


def _print(rows):
    groups = {}
    for r in rows:
        groups.setdefault((r["net"], r["quantity"], r["n"], r["d"], r["m"], r["width"]), []).append(
            r
        )
    hdr = (
        f"{'net':9} {'qty':9} {'n':>5} {'d':>5} {'m':>2} {'method':38} {'time':>10} "
        f"{'speed-up':>9} "
        f"{'peak MiB':>9} {'rel diff':>9}"
    )
    print(hdr)
    print("-" * len(hdr))
    for key, rs in groups.items():
        ours = next((r for r in rs if r["method"].startswith("odeflow") and "seconds" in r), None)
        for r in rs:
            if "seconds" not in r:
                print(
                    f"{key[0]:9} {key[1]:9} {key[2]:5d} {key[3]:5d} {key[4]:2d} {r['method']:38} "
                    f"skipped: {r['skipped']}"
                )
                continue
            sp = "" if ours is None or r is ours else f"{r['seconds'] / ours['seconds']:8.1f}x"
            r["odeflow_speedup"] = (
                None if ours is None or r is ours else r["seconds"] / ours["seconds"]
            )
            pk = "" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:9.1f}"
            rd = r.get("max_rel_diff_vs_torch_func")
            rd = "" if rd is None else f"{rd:9.1e}"
            print(
                f"{key[0]:9} {key[1]:9} {key[2]:5d} {key[3]:5d} {key[4]:2d} {r['method']:38} "
                f"{r['seconds'] * 1e3:8.2f}ms {sp:>9} {pk:>9} {rd:>9}"
            )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CPU-sized grid (minutes on 2 cores)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=None, help="timed runs per case (median)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1)")
    p.add_argument(
        "--mem-budget-gb",
        type=float,
        default=None,
        help="skip cases whose dense Hessians/layer tensors exceed this",
    )
    p.add_argument("--json", default=None, help="write all rows and the environment here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads or (1 if device.type == "cpu" else torch.get_num_threads()))
    args.repeats = args.repeats or (3 if args.quick else 10)
    if args.mem_budget_gb is None:
        args.mem_budget_gb = 1.0 if args.quick else 16.0
    torch.manual_seed(0)
    global CPU_PEAK
    CPU_PEAK = device.type == "cpu" and _cpu_peak_setup()

    if args.quick:
        hq_grid = [(n, d, m) for n in (10, 1000) for d in (2, 32, 256) for m in (1,)] + [
            (10, 32, 8)
        ]
        ot_grid = [(n, d) for n in (10, 1000) for d in (2, 32, 256)]
        ot_width = 64
    else:
        hq_grid = [
            (n, d, m) for n in (10, 1000) for d in (2, 8, 32, 128, 256, 1024) for m in (1, 8)
        ]
        ot_grid = [(n, d) for n in (10, 1000) for d in (2, 8, 32, 128, 256, 1024)]
        ot_width = 256
    rows: list[dict] = []
    for n, d, m in hq_grid:
        run_case(rows, "hessquik", n, d, m, device, dtype, args)
    for n, d in ot_grid:
        run_case(rows, "otflow", n, d, 1, device, dtype, args, width=ot_width)
    _print(rows)
    env = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "repeats": args.repeats,
        "quick": args.quick,
        "hessquik": HESSQUIK or "hessquik 0.0.6",
        "jet": JET or "importable",
        "peak_memory": "cuda max_memory_allocated"
        if device.type == "cuda"
        else ("peak RSS increase (VmHWM)" if CPU_PEAK else "not measured"),
    }
    print(json.dumps(env))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
