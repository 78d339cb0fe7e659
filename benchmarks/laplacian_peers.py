"""Exact Laplacians of plain nn.Modules: odeflow's forward Laplacian vs vmapped torch.func.

Networks (plain PyTorch, no odeflow blocks):

* ``mlp``: ``depth`` nn.Linear layers of width ``width`` with GELU between them, d → 1;
* ``transformer``: x (n, 8·16) as 8 tokens of width 16, two pre-LayerNorm blocks (attention as
  matmul + softmax, 2 heads; GELU MLP), LayerNorm, mean over tokens, linear read-out → 1.

Methods, each computing the Laplacian Δf = tr ∇²f of the n samples:

* ``odeflow``: :func:`odeflow.derivatives.forward_laplacian` (also returns value and ∇f);
* ``torch.func hessian``: ``vmap(hessian(f))`` then the trace;
* ``torch.func hvp``: ``vmap`` over samples of the sum of the d forward-over-reverse
  Hessian–vector products eᵢᵀ∇²f eᵢ (``vmap`` over the d directions).

The script prints the median wall time of each method (float32, no autograd graph, after one
warm-up), the speed-ups of odeflow, and the max relative difference to torch.func's Laplacian.

Usage::

    python benchmarks/laplacian_peers.py --quick \
        --json benchmarks/results/cpu_laplacian_any_module.json
    python benchmarks/laplacian_peers.py --device cuda --json gpu.json   # the larger grid
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import torch
from torch import func as tf
from torch import nn
from torch.nn import functional as F

import odeflow
import odeflow.derivatives as D


def mlp(d: int, width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(d, width), nn.GELU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


class _Block(nn.Module):
    def __init__(self, w: int, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(w), nn.LayerNorm(w)
        self.qkv, self.proj = nn.Linear(w, 3 * w), nn.Linear(w, w)
        self.fc1, self.fc2 = nn.Linear(w, 2 * w), nn.Linear(2 * w, w)

    def forward(self, h):
        n, t, w = h.shape
        e = w // self.heads
        q, k, v = self.qkv(self.ln1(h)).chunk(3, dim=-1)
        q = q.reshape(n, t, self.heads, e).transpose(1, 2)
        k = k.reshape(n, t, self.heads, e).transpose(1, 2)
        v = v.reshape(n, t, self.heads, e).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(e), dim=-1)
        h = h + self.proj((a @ v).transpose(1, 2).reshape(n, t, w))
        return h + self.fc2(F.gelu(self.fc1(self.ln2(h))))


class Transformer(nn.Module):
    def __init__(self, tokens: int = 8, width: int = 16, depth: int = 2):
        super().__init__()
        self.tokens, self.width = tokens, width
        self.blocks = nn.ModuleList(_Block(width) for _ in range(depth))
        self.ln, self.head = nn.LayerNorm(width), nn.Linear(width, 1)

    def forward(self, x):
        h = x.reshape(x.shape[0], self.tokens, self.width)
        for b in self.blocks:
            h = b(h)
        return self.head(self.ln(h).mean(1))


def _scalar(net):
    return lambda xi: net(xi.unsqueeze(0)).reshape(())


def func_hessian(net, x):
    return tf.vmap(tf.hessian(_scalar(net)))(x).diagonal(dim1=-2, dim2=-1).sum(-1)


def func_hvp(net, x):
    g = tf.grad(_scalar(net))
    E = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)

    def one(xi):
        return tf.vmap(lambda e: (tf.jvp(g, (xi,), (e,))[1] * e).sum())(E).sum()

    return tf.vmap(one)(x)


def ours(net, x):
    return D.forward_laplacian(net, x).laplacian


METHODS = {"odeflow": ours, "torch.func hessian": func_hessian, "torch.func hvp": func_hvp}


def _time(fn, device, repeats, budget_s):
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    out = fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
        if sum(times) > budget_s:  # slow rows: fewer repeats
            break
    return statistics.median(times), min(times), out


def cases(quick: bool):
    if quick:
        for d in (16, 64, 256):
            for n in (10, 100):
                yield "mlp", {"d": d, "n": n, "width": 256, "depth": 4}
        yield "mlp", {"d": 64, "n": 1000, "width": 256, "depth": 4}
        for n in (10, 100):
            yield "transformer", {"d": 128, "n": n, "tokens": 8, "width": 16, "depth": 2}
        return
    for depth in (4, 8):
        for width in (256, 1024):
            for d in (16, 64, 256, 1024):
                for n in (10, 100, 1000, 4096):
                    yield "mlp", {"d": d, "n": n, "width": width, "depth": depth}
    for n in (10, 100, 1000):
        yield "transformer", {"d": 128, "n": n, "tokens": 8, "width": 16, "depth": 2}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="the CPU-sized grid (about 2 min)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget", type=float, default=4.0, help="seconds of timed calls per row")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "odeflow": getattr(odeflow, "__version__", "dev"),
        "quick": args.quick,
        "dtype": "float32",
        "note": "median seconds after one warm-up, no autograd graph (torch.no_grad)",
    }
    rows = []
    print(
        f"{'net':12s} {'d':>5s} {'n':>5s} {'method':20s} {'ms':>10s} {'speed-up':>9s} "
        f"{'rel.err':>9s}"
    )
    for name, sz in cases(args.quick):
        torch.manual_seed(0)
        if name == "mlp":
            net = mlp(sz["d"], sz["width"], sz["depth"])
        else:
            net = Transformer(sz["tokens"], sz["width"], sz["depth"])
        net = net.to(device)
        x = torch.randn(sz["n"], sz["d"], device=device)
        res = {}
        with torch.no_grad():
            for meth, fn in METHODS.items():
                try:
                    med, best, out = _time(
                        lambda fn=fn, net=net, x=x: fn(net, x), device, args.repeats, args.budget
                    )
                    res[meth] = (med, best, out)
                except RuntimeError as exc:  # e.g. out of memory
                    res[meth] = (None, None, None)
                    print(f"  {meth}: failed ({type(exc).__name__}: {str(exc)[:80]})")
        ref = res["torch.func hessian"][2]
        t_ours = res["odeflow"][0]
        for meth, (med, best, out) in res.items():
            if med is None:
                continue
            rel = None
            if ref is not None:
                rel = float((out.double() - ref.double()).norm() / ref.double().norm())
            speed = None if meth == "odeflow" else med / t_ours
            rows.append(
                {
                    "net": name,
                    **sz,
                    "method": meth,
                    "ms": 1e3 * med,
                    "ms_min": 1e3 * best,
                    "odeflow_speedup": speed,
                    "rel_err_vs_hessian": rel,
                }
            )
            sp = "" if speed is None else f"{speed:8.1f}x"
            er = "" if rel is None else f"{rel:9.1e}"
            print(
                f"{name:12s} {sz['d']:5d} {sz['n']:5d} {meth:20s} {1e3 * med:10.2f} {sp:>9s} {er}",
                flush=True,
            )
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"meta": meta, "results": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
