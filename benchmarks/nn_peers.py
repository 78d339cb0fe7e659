"""PDE-motivated networks side by side: plain ResNet (autograd), torchdiffeq's odeint_adjoint
neural ODE, and odeflow's Hamiltonian (memory-free), parabolic and antisymmetric blocks.

Parts (all data ships offline or is generated):

* ``depth``: activation memory and time per training iteration vs depth (8 … 1024 steps) on
  flattened 8×8 digits, width 32, batch 64. Memory = bytes of the distinct tensors autograd
  holds for the backward pass after the forward (``saved_tensors_hooks``; parameters
  excluded), i.e. the activation memory; time = median wall time of forward + backward + Adam
  step. Every model uses the same weights-in-time: 8 constant pieces on [0, 1].
* ``accuracy``: the same models trained at ``--train-depth`` steps, test accuracy there and,
  by depth continuation (same weights, more steps), at every depth of the sweep.
* ``lean``: LeanResNet vs plain ResNet (convolutional, two stages) on digits at 8×8, 16×16 and
  (full mode) 32×32: accuracy and parameters (all, and in the residual blocks).
* ``toy``: peaks (5 classes) and Swiss roll (2 classes), 2-D, dense width 8, depth 8.

Usage::

    python benchmarks/nn_peers.py --quick --json benchmarks/results/cpu_nn_peers.json
    python benchmarks/nn_peers.py --json full.json          # more depths, epochs, 32×32

torchdiffeq is optional (``pip install torchdiffeq --no-deps``); without it its rows are
reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import odeflow.nn as onn

try:  # the peer is optional
    from torchdiffeq import odeint_adjoint

    TORCHDIFFEQ = None
except Exception as exc:  # pragma: no cover - depends on the environment
    odeint_adjoint = None
    TORCHDIFFEQ = f"not importable: {type(exc).__name__}: {exc}"

PIECES = 8  # weights-in-time: 8 constant pieces for every model and depth


class TorchdiffeqBlock(nn.Module):
    """The plain ResNet's layer as a neural ODE, fixed-grid Euler by torchdiffeq's adjoint."""

    def __init__(self, layer: nn.Module, n_steps: int):
        super().__init__()
        self.layer, self.n_steps = layer, n_steps

    def forward(self, x):
        t = torch.tensor([0.0, 1.0], dtype=x.dtype)  # output at T only; n_steps Euler steps
        opts = {"step_size": 1.0 / self.n_steps}
        return odeint_adjoint(self.layer, x, t, method="euler", options=opts)[-1]


def make_model(kind: str, depth: int, width: int = 32, features: int = 64) -> nn.Sequential:
    """Connector → block → classifier for flattened digits."""
    kw = {
        "image": False,
        "widths": (width,),
        "n_steps": depth,
        "basis": "constant",
        "basis_size": PIECES,
    }
    if kind == "torchdiffeq":
        net = onn.build_network("plain", features, 10, **kw)
        net[1] = TorchdiffeqBlock(net[1].layer, depth)
        return net
    return onn.build_network(kind, features, 10, **kw)


def set_depth(net: nn.Module, depth: int) -> None:
    for m in net.modules():
        if hasattr(m, "n_steps"):
            m.n_steps = depth


KINDS = ("plain", "torchdiffeq", "hamiltonian", "parabolic", "antisymmetric")


def _available(kind):
    return kind != "torchdiffeq" or TORCHDIFFEQ is None


def depth_sweep(depths, repeats, data):
    """Per depth: every model built, then timed round-robin (``repeats`` rounds) so that a
    change of machine load hits all models alike; medians are reported."""
    xtr, ytr = data[0][:64].clone(), data[1][:64].clone()  # own storage, not the data set
    kinds = [k for k in KINDS if _available(k)]
    rows = [{"model": k, "skipped": TORCHDIFFEQ} for k in KINDS if not _available(k)]
    for depth in depths:
        steps, times, mem = {}, {k: [] for k in kinds}, {}
        for kind in kinds:
            torch.manual_seed(0)
            net = make_model(kind, depth)
            opt = torch.optim.Adam(net.parameters(), lr=1e-3)
            mem[kind] = onn.saved_tensor_bytes(lambda net=net: F.cross_entropy(net(xtr), ytr))

            def step(net=net, opt=opt):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(net(xtr), ytr).backward()
                opt.step()

            step()  # warm-up
            steps[kind] = step
        for _ in range(repeats):
            for kind in kinds:
                t0 = time.perf_counter()
                steps[kind]()
                times[kind].append(time.perf_counter() - t0)
        for kind in kinds:
            med = statistics.median(times[kind])
            rows.append(
                {
                    "model": kind,
                    "depth": depth,
                    "activation_bytes": mem[kind],
                    "seconds_per_iteration": med,
                    "seconds_all": times[kind],
                }
            )
            print(
                f"  depth  {kind:13s} {depth:5d}  {mem[kind] / 2**20:8.3f} MiB  "
                f"{med * 1e3:8.1f} ms/it",
                flush=True,
            )
    return rows


def accuracy_sweep(train_depth, depths, epochs, data):
    rows = []
    for kind in KINDS:
        if not _available(kind):
            rows.append({"model": kind, "skipped": TORCHDIFFEQ})
            continue
        torch.manual_seed(0)
        net = make_model(kind, train_depth)
        res = onn.train_classifier(net, data, epochs=epochs, lr=1e-2)
        cont = {}
        for d in depths:
            set_depth(net, d)
            cont[str(d)] = onn.accuracy(net, data[2], data[3])
        rows.append(
            {
                "model": kind,
                "train_depth": train_depth,
                "epochs": epochs,
                "test_accuracy": res.test_accuracy,
                "train_seconds_per_iteration": res.seconds_per_iteration,
                "test_accuracy_at_depth": cont,
            }
        )
        print(
            f"  acc    {kind:13s} trained at {train_depth}: {res.test_accuracy:.4f}; at depth "
            + ", ".join(f"{d}: {a:.4f}" for d, a in cont.items()),
            flush=True,
        )
    return rows


def _params(m):
    return sum(p.numel() for p in m.parameters())


def lean_vs_plain(sizes, epochs):
    rows = []
    for size in sizes:
        data = onn.digits_data(size)
        for kind in ("plain", "lean"):
            torch.manual_seed(0)
            net = onn.build_network(
                kind,
                1,
                10,
                widths=(16, 32),
                n_steps=4,
                basis="constant",
                basis_size=4,
                image_size=size,
            )
            res = onn.train_classifier(net, data, epochs=epochs, lr=5e-3)
            blocks = sum(_params(m) for m in net if isinstance(m, onn.ExplicitBlock))
            rows.append(
                {
                    "model": kind,
                    "size": size,
                    "test_accuracy": res.test_accuracy,
                    "parameters": _params(net),
                    "block_parameters": blocks,
                    "seconds_per_iteration": res.seconds_per_iteration,
                }
            )
            print(
                f"  lean   {kind:6s} {size:2d}×{size:<2d} acc {res.test_accuracy:.4f}  params "
                f"{_params(net):7d} (blocks {blocks:6d})",
                flush=True,
            )
    return rows


def toy_tasks(epochs):
    rows = []
    for name, gen in (("peaks", onn.peaks_data), ("swiss_roll", onn.swiss_roll_data)):
        x, y = gen(2500, seed=0)
        n_classes = int(y.max()) + 1
        data = (x[:2000], y[:2000], x[2000:], y[2000:])
        for kind in ("plain", "hamiltonian", "parabolic", "antisymmetric"):
            torch.manual_seed(0)
            net = onn.build_network(
                kind, 2, n_classes, image=False, widths=(8,), n_steps=8, horizon=4.0
            )
            res = onn.train_classifier(net, data, epochs=epochs, batch_size=100, lr=1e-2)
            rows.append({"task": name, "model": kind, "test_accuracy": res.test_accuracy})
            print(f"  toy    {name:10s} {kind:13s} acc {res.test_accuracy:.4f}", flush=True)
    return rows


def goals(depth_rows, acc_rows, lean_rows):
    """The issue's goals, evaluated on this run."""
    out = {}
    dmax = max(r["depth"] for r in depth_rows if "depth" in r)
    at = {r["model"]: r for r in depth_rows if r.get("depth") == dmax}
    acc = {r["model"]: r for r in acc_rows if "test_accuracy" in r}
    if "plain" in at and "hamiltonian" in at:
        out["depth"] = dmax
        out["hamiltonian_memory_fraction_of_plain"] = (
            at["hamiltonian"]["activation_bytes"] / at["plain"]["activation_bytes"]
        )
        out["hamiltonian_time_ratio_to_plain"] = (
            at["hamiltonian"]["seconds_per_iteration"] / at["plain"]["seconds_per_iteration"]
        )
        a_h = acc["hamiltonian"]["test_accuracy_at_depth"][str(dmax)]
        a_p = acc["plain"]["test_accuracy_at_depth"][str(dmax)]
        out["accuracy_difference_hamiltonian_minus_plain_at_depth"] = a_h - a_p
        # "at equal accuracy (± 1 %)": not more than 1 % below the plain ResNet
        out["memory_goal_met"] = (
            out["hamiltonian_memory_fraction_of_plain"] <= 0.05 and a_h >= a_p - 0.01
        )
        out["time_goal_met"] = out["hamiltonian_time_ratio_to_plain"] <= 1.5
    lean = {}
    for size in sorted({r["size"] for r in lean_rows}):
        p = next(r for r in lean_rows if r["size"] == size and r["model"] == "plain")
        q = next(r for r in lean_rows if r["size"] == size and r["model"] == "lean")
        lean[str(size)] = {
            "accuracy_difference": q["test_accuracy"] - p["test_accuracy"],
            "block_parameter_fraction": q["block_parameters"] / p["block_parameters"],
            "total_parameter_fraction": q["parameters"] / p["parameters"],
            "goal_met_on_block_parameters": abs(q["test_accuracy"] - p["test_accuracy"]) <= 0.01
            and q["block_parameters"] <= 0.3 * p["block_parameters"],
        }
    out["lean"] = lean
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU-sized run (about 3 minutes)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        depths, repeats, train_depth, epochs = (8, 64, 256, 1024), 3, 16, 10
        sizes, lean_epochs, toy_epochs = (8, 16), 3, 10
    else:
        depths, repeats, train_depth, epochs = (8, 16, 32, 64, 128, 256, 512, 1024), 3, 64, 15
        sizes, lean_epochs, toy_epochs = (8, 16, 32), 10, 40
    t0 = time.perf_counter()
    data = onn.digits_data(image=False)
    print("== activation memory and time per iteration vs depth (digits 8×8, width 32)")
    depth_rows = depth_sweep(depths, repeats, data)
    print(f"== accuracy: trained at depth {train_depth}, evaluated at every depth")
    acc_rows = accuracy_sweep(train_depth, depths, epochs, data)
    print("== LeanResNet vs plain ResNet (convolutional, digits)")
    lean_rows = lean_vs_plain(sizes, lean_epochs)
    print("== peaks and Swiss roll")
    toy_rows = toy_tasks(toy_epochs)
    result = {
        "benchmark": "nn_peers",
        "mode": "quick" if args.quick else "full",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "threads": args.threads,
        },
        "torchdiffeq": TORCHDIFFEQ or "available",
        "memory_measure": "bytes of distinct tensors saved for backward (parameters excluded)",
        "depth": depth_rows,
        "accuracy": acc_rows,
        "lean": lean_rows,
        "toy": toy_rows,
        "goals": goals(depth_rows, acc_rows, lean_rows),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print("== goals:", json.dumps(result["goals"], indent=2))
    print(f"== done in {result['seconds']} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
