"""Offline data (scikit-learn's digits, generated peaks and Swiss roll), a small training
loop, and a measure of the memory autograd holds for the backward pass."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TrainResult",
    "accuracy",
    "digits_data",
    "peaks_data",
    "saved_tensor_bytes",
    "swiss_roll_data",
    "train_classifier",
]


def _digits_array() -> np.ndarray:
    """The ``(1797, 65)`` digits table (64 pixels in 0…16, then the label) that scikit-learn
    ships; read from its package data without importing scikit-learn (a slow import)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("digits_data needs scikit-learn installed (it ships the data set).")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():  # another layout: use the public loader
        from sklearn.datasets import load_digits

        d = load_digits()
        return np.concatenate([d.data, d.target[:, None]], axis=1)
    return np.loadtxt(path, delimiter=",")


def digits_data(
    size: int = 8,
    *,
    image: bool = True,
    test_fraction: float = 0.25,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """scikit-learn's bundled 8×8 digits (1797 images, no download), optionally upsampled.

    Args:
        size: image side (8, or e.g. 16, 32: bilinear upsampling).
        image: ``(n, 1, size, size)`` images, else flattened ``(n, size²)`` features.
        test_fraction: share of the shuffled samples held out; ``seed``: the shuffle.
        dtype: of the images (labels are int64).

    Returns:
        ``(x_train, y_train, x_test, y_test)``, pixel values in [0, 1].

    Example:
        >>> xtr, ytr, xte, yte = digits_data()
        >>> xtr.shape[1:], int(ytr.max())
        (torch.Size([1, 8, 8]), 9)
    """
    raw = _digits_array()
    x = torch.as_tensor(raw[:, :64], dtype=dtype).reshape(-1, 1, 8, 8) / 16.0
    y = torch.as_tensor(raw[:, 64], dtype=torch.long)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if not image:
        x = x.flatten(1)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(y))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def peaks_data(n: int = 2000, *, classes: int = 5, seed: int = 0, dtype=torch.float32):
    """Points of [−3, 3]² labelled by the level of MATLAB's ``peaks`` function (quantiles).

    Example:
        >>> x, y = peaks_data(100)
        >>> tuple(x.shape), int(y.max())
        ((100, 2), 4)
    """
    g = np.random.default_rng(seed)
    p = g.uniform(-3, 3, size=(n, 2))
    a, b = p[:, 0], p[:, 1]
    z = (
        3 * (1 - a) ** 2 * np.exp(-(a**2) - (b + 1) ** 2)
        - 10 * (a / 5 - a**3 - b**5) * np.exp(-(a**2) - b**2)
        - np.exp(-((a + 1) ** 2) - b**2) / 3
    )
    edges = np.quantile(z, np.linspace(0, 1, classes + 1)[1:-1])
    return torch.as_tensor(p, dtype=dtype), torch.as_tensor(np.digitize(z, edges), dtype=torch.long)


def swiss_roll_data(n: int = 2000, *, noise: float = 0.05, seed: int = 0, dtype=torch.float32):
    """Two interleaved 2-D spirals (the Swiss-roll classification task), labels 0/1.

    Example:
        >>> x, y = swiss_roll_data(10)
        >>> tuple(x.shape), sorted(set(y.tolist()))
        ((10, 2), [0, 1])
    """
    g = np.random.default_rng(seed)
    t = np.sqrt(g.uniform(0, 1, n)) * 3 * math.pi
    lab = np.arange(n) % 2
    r = t / (3 * math.pi)
    ang = t + math.pi * lab
    p = np.stack([r * np.cos(ang), r * np.sin(ang)], 1) + noise * g.standard_normal((n, 2))
    return torch.as_tensor(p, dtype=dtype), torch.as_tensor(lab, dtype=torch.long)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Share of ``argmax model(x) == y`` (no gradient, in batches)."""
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / max(len(y), 1)


@dataclass(frozen=True)
class TrainResult:
    """Result of :func:`train_classifier`.

    Attributes:
        train_accuracy, test_accuracy: final accuracies; ``losses``: per epoch;
        seconds_per_iteration: mean wall time of one optimizer step; ``iterations``.
    """

    train_accuracy: float
    test_accuracy: float
    losses: tuple[float, ...]
    seconds_per_iteration: float
    iterations: int


def train_classifier(
    model: nn.Module,
    data,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
    seed: int = 0,
    verbose: bool = False,
) -> TrainResult:
    """Train ``model`` by Adam on cross-entropy; ``data = (x_train, y_train, x_test, y_test)``.

    Args:
        regularizer: optional ``model → scalar`` added to the loss (e.g. weight smoothness).

    Returns:
        A :class:`TrainResult`.

    Example:
        >>> from odeflow.nn import hamiltonian_resnet
        >>> data = digits_data(image=False)
        >>> torch.manual_seed(0) and None
        >>> net = hamiltonian_resnet(64, 10, image=False, widths=(16,), n_steps=4)
        >>> train_classifier(net, data, epochs=1).test_accuracy > 0.5
        True
    """
    xtr, ytr, xte, yte = data
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    losses, its, t_total = [], 0, 0.0
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(ytr), generator=gen)
        tot = 0.0
        for i in range(0, len(ytr), batch_size):
            idx = perm[i : i + batch_size]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            if regularizer is not None:
                loss = loss + regularizer(model)
            loss.backward()
            opt.step()
            t_total += time.perf_counter() - t0
            its += 1
            tot += float(loss.detach()) * len(idx)
        losses.append(tot / len(ytr))
        if verbose:
            print(f"   epoch {ep + 1:3d}  loss {losses[-1]:.4f}")
    model.eval()
    return TrainResult(
        train_accuracy=accuracy(model, xtr, ytr),
        test_accuracy=accuracy(model, xte, yte),
        losses=tuple(losses),
        seconds_per_iteration=t_total / max(its, 1),
        iterations=its,
    )


def saved_tensor_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the distinct tensors autograd saves for the backward pass while ``fn`` runs
    (``torch.autograd.graph.saved_tensors_hooks``), leaf tensors requiring grad (the
    parameters) excluded: the activation memory of a training step.

    Example:
        >>> w = torch.ones(3, requires_grad=True)
        >>> saved_tensor_bytes(lambda: (torch.ones(100) * w.sum()).exp().sum())  # ones, exp
        800
    """
    seen: dict[tuple, int] = {}

    def pack(t):
        if not (t.is_leaf and t.requires_grad):
            st = t.untyped_storage()
            seen[(st.data_ptr(), t.device.type)] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return int(sum(seen.values()))
