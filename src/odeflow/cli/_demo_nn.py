"""``odeflow demo --only nn-hamiltonian``: a reversible Hamiltonian network on digits (< 1 min)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from odeflow.cli._demo import single_thread

__all__ = ["run_demo"]


def run_demo(out_dir: Path, verbose: bool = True) -> dict:
    """Train a memory-free Hamiltonian network on scikit-learn's digits; print accuracy and
    the activation memory autograd holds (memory-free vs storing every layer).

    Args:
        out_dir: folder for ``metrics.json`` (created).
        verbose: per-epoch losses and the summary lines.

    Returns:
        A dict with the test accuracy (at the trained depth and at 4× the depth by depth
        continuation) and the activation bytes of both training modes at two depths.

    Example:
        >>> import tempfile
        >>> r = run_demo(Path(tempfile.mkdtemp()), verbose=False)  # doctest: +SKIP
    """
    from odeflow.nn import (
        accuracy,
        digits_data,
        hamiltonian_resnet,
        saved_tensor_bytes,
        train_classifier,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with single_thread():
        torch.manual_seed(0)
        data = digits_data(image=False)
        depth = 16
        net = hamiltonian_resnet(
            64, 10, image=False, widths=(32,), n_steps=depth, basis="linear", basis_size=4
        )
        t0 = time.perf_counter()
        res = train_classifier(net, data, epochs=8, lr=1e-2, verbose=verbose)
        seconds = time.perf_counter() - t0
        block = net[1]
        x, y = data[0][:64].clone(), data[1][:64].clone()  # not a view of the data set
        memory = {}
        for n in (depth, 16 * depth):
            block.n_steps = n
            for free in (True, False):
                block.memory_free = free
                key = f"depth_{n}_{'memory_free' if free else 'stored'}_bytes"
                memory[key] = saved_tensor_bytes(lambda: F.cross_entropy(net(x), y))
        block.memory_free = True
        block.n_steps = 4 * depth
        acc_cont = accuracy(net, data[2], data[3])
        block.n_steps = depth
    result = {
        "test_accuracy": round(res.test_accuracy, 4),
        f"test_accuracy_at_depth_{4 * depth}": round(acc_cont, 4),
        "train_seconds": round(seconds, 2),
        **memory,
    }
    if verbose:
        print(
            f"   test accuracy {res.test_accuracy:.4f} at depth {depth}, {acc_cont:.4f} at "
            f"depth {4 * depth} (same weights); trained in {seconds:.1f} s"
        )
        for n in (depth, 16 * depth):
            free = memory[f"depth_{n}_memory_free_bytes"] / 2**10
            stored = memory[f"depth_{n}_stored_bytes"] / 2**10
            print(
                f"   activation memory at depth {n:4d}: memory-free {free:8.1f} KiB, "
                f"storing activations {stored:8.1f} KiB"
            )
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    return result
