r"""The training loop of the conditional models (COT-Flow, PCP-Map), single-process or
data-parallel over a ``torch.distributed`` process group.

:func:`fit_conditional` is what :meth:`ConditionalModel.fit` runs: Adam on minibatches of
standardized pairs, validation NLL every ``val_every`` iterations, learning-rate drops that
restart from the best weights so far with Adam's moments reset (a run whose validation NLL
peaked early resumes from that point, not from where the higher rate left it), early
stopping, the best weights restored at the end. With a process group every rank holds the same
pairs, each global minibatch of ``batch`` rows is cut into equal per-rank shares
(:class:`odeflow._utils.Comm`, as ``odeflow.flows.fit`` and ``odeflow.control.fit`` do),
the gradients are averaged with one all-reduce per step and the logged losses and
validation NLLs are those of the whole batch and the whole validation set: ``W`` ranks
take the steps of one process with the same ``batch``, up to summation order.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .._utils import Comm, check_finite_real, check_int, progress

__all__ = ["ConditionalFitResult", "check_pairs", "fit_conditional"]


@dataclass
class ConditionalFitResult:
    """Outcome of :meth:`ConditionalModel.fit`.

    Attributes:
        status: ``"completed"`` (all iterations) or ``"converged"`` (stopped after the last
            learning-rate drop).
        iterations: iterations performed.
        best_val_nll: best validation NLL of x | y in the data's units (nats per sample).
        best_iter: iteration of the best validation NLL.
        history: one dict per iteration (``iter, loss, nll, lr`` and ``val_nll``).
        seconds: wall time.
        world_size: processes that trained together (1 without a process group).
    """

    status: str
    iterations: int
    best_val_nll: float
    best_iter: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    world_size: int = 1


def _as_tensor(a: Any, name: str) -> Tensor:
    if isinstance(a, Tensor):
        t = a
    else:
        try:
            t = torch.as_tensor(a)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a tensor or array, got {type(a).__name__}") from None
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    return t


def check_pairs(x: Any, y: Any, x_dim: int, y_dim: int) -> tuple[Tensor, Tensor]:
    """Training pairs ``x: (n, x_dim)``, ``y: (n, y_dim)`` checked; non-finite rows refused.

    Simulations with NaN/inf are refused (not dropped silently): the error counts them and
    shows how to drop them.
    """
    x, y = _as_tensor(x, "x"), _as_tensor(y, "y")
    for t, name, d in ((x, "x", x_dim), (y, "y", y_dim)):
        if t.ndim != 2 or t.shape[1] != d:
            raise ValueError(
                f"{name} must have shape (n, {d}) for this model ({name}_dim={d}), got "
                f"{tuple(t.shape)}"
            )
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must hold the same number of rows (one simulation per row), got "
            f"{x.shape[0]} and {y.shape[0]}"
        )
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 simulations to train, got {x.shape[0]}")
    bad = ~(torch.isfinite(x).all(1) & torch.isfinite(y).all(1))
    nbad = int(bad.sum())
    if nbad:
        raise ValueError(
            f"{nbad} of {x.shape[0]} simulations hold NaN or inf (in x or y); they are refused, "
            "not dropped silently. Drop them first: keep = torch.isfinite(x).all(1) & "
            "torch.isfinite(y).all(1); x, y = x[keep], y[keep]"
        )
    return x, y


def _settings(iters, batch, lr, val_fraction, val_every, patience, lr_drop, max_drops, seed):
    iters = check_int("iters", iters, minimum=1)
    batch = check_int("batch", batch, minimum=1)
    lr = check_finite_real("lr", lr, positive=True)
    vf = check_finite_real("val_fraction", val_fraction, positive=True)
    if vf > 0.5:
        raise ValueError(f"val_fraction must be in (0, 0.5], got {val_fraction!r}")
    patience = check_int("patience", patience, minimum=1)
    max_drops = check_int("max_drops", max_drops, minimum=0)
    lr_drop = check_finite_real("lr_drop", lr_drop, positive=True)
    if lr_drop <= 1:
        raise ValueError(f"lr_drop must be > 1 (the lr is divided by it), got {lr_drop!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    # every 100 iterations at most: a long budget still sees an early optimum (slcp at 10³)
    val_every = min(100, max(1, iters // 20)) if val_every is None else check_int(
        "val_every", val_every, minimum=1)  # fmt: skip
    return iters, batch, lr, vf, val_every, patience, lr_drop, max_drops


def _prepare(model, x, y, vf, standardize, g, comm):
    """Split (the same on every rank), standardize, share rank 0's weights; returns the
    standardized training and validation rows and the log-Jacobian offset."""
    ref = model._ref
    x = x.to(device=ref.device, dtype=ref.dtype)
    y = y.to(device=ref.device, dtype=ref.dtype)
    n = x.shape[0]
    if comm.active:
        sums = [float(t.sum(dtype=torch.float64)) for t in (x, y)]
        comm.same("the training pairs (rows, sum of x, sum of y)", [n, *sums])
    perm = torch.randperm(n, generator=g).to(ref.device)
    n_val = max(1, round(vf * n))
    iv, it_ = perm[:n_val], perm[n_val:]
    if standardize:
        with torch.no_grad():
            for t, loc, scale in ((x, model.x_loc, model.x_scale), (y, model.y_loc, model.y_scale)):
                tr = t[it_]
                loc.copy_(tr.mean(0))
                scale.copy_(tr.std(0).clamp_min(1e-8) if tr.shape[0] > 1 else 1.0)
    comm.broadcast_(model)
    with torch.no_grad():
        xs, ys = (x - model.x_loc) / model.x_scale, model._std_y(y)
    offset = float(torch.log(model.x_scale).sum())
    return xs[it_], ys[it_], xs[iv], ys[iv], offset


@torch.no_grad()
def _val_nll(model, xs: Tensor, ys: Tensor, comm: Comm, chunk: int = 4096) -> float:
    """Validation NLL over all rows; with several ranks each sums every ``world``-th row."""
    xs, ys = xs[comm.rank :: comm.world], ys[comm.rank :: comm.world]
    tot = 0.0
    for i in range(0, xs.shape[0], chunk):
        lp = model._log_prob_std(xs[i : i + chunk], ys[i : i + chunk])
        tot += float(lp.double().sum())
    tot, n = comm.values([tot, float(xs.shape[0])])
    v = -tot / n
    return v if math.isfinite(v) else math.inf


def _step(model, opt, xb: Tensor, yb: Tensor, comm: Comm, it: int) -> dict[str, float]:
    """One Adam step on this rank's share; returns the whole batch's loss terms."""
    opt.zero_grad(set_to_none=True)
    total, nll, info = model._loss_std(xb, yb)
    keys = list(info)
    vals = comm.values([float(total.detach()), float(nll.detach())] + [info[k] for k in keys])
    vals = [v / comm.world for v in vals]
    if not math.isfinite(vals[0]):  # (the same on every rank: all stop together)
        raise FloatingPointError(
            f"{model._NAME} training diverged at iteration {it} (loss {vals[0]}); lower lr or "
            "standardize the data"
        )
    total.backward()
    comm.average_grads_(list(model.parameters()))
    opt.step()
    return {"loss": vals[0], "nll": vals[1], **dict(zip(keys, vals[2:], strict=True))}


def fit_conditional(model, x: Any, y: Any, *, iters: int, batch: int, lr: float,
                    val_fraction: float, val_every: int | None, patience: int, lr_drop: float,
                    max_drops: int, standardize: bool, seed: int, checkpoint: Any,
                    verbose: bool, process_group: Any = None) -> ConditionalFitResult:  # fmt: skip
    """The loop of :meth:`ConditionalModel.fit` (see there for the arguments)."""
    x, y = check_pairs(x, y, model.x_dim, model.y_dim)
    iters, batch, lr, vf, val_every, patience, lr_drop, max_drops = _settings(
        iters, batch, lr, val_fraction, val_every, patience, lr_drop, max_drops, seed)  # fmt: skip
    comm = Comm(process_group, model._ref.device)
    comm.same("fit's settings (iters, batch, lr, seed)", [iters, batch, lr, float(seed)])
    g = torch.Generator().manual_seed(seed)
    xt, yt, xv, yv, offset = _prepare(model, x, y, vf, standardize, g, comm)
    b = min(batch, xt.shape[0])
    comm.check_split(b, "batch" if b == batch else "min(batch, training rows)")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best, best_it, best_state, stalls, drops = math.inf, 0, None, 0, 0
    status, history, t0 = "completed", [], time.perf_counter()
    bar = progress(iters, desc=model._NAME, verbose=verbose and comm.rank == 0)
    order, pos, it = torch.randperm(xt.shape[0], generator=g), 0, 0
    try:
        for it in range(1, iters + 1):
            if pos + b > xt.shape[0]:
                order, pos = torch.randperm(xt.shape[0], generator=g), 0
            idx = comm.shard(order[pos : pos + b]).to(xt.device)
            pos += b
            rec = _step(model, opt, xt[idx], yt[idx], comm, it)
            rec = {"iter": it, **rec, "nll": rec["nll"] + offset, "lr": opt.param_groups[0]["lr"]}
            if it % val_every == 0 or it == iters:
                v = _val_nll(model, xv, yv, comm) + offset
                rec["val_nll"] = v
                if v < best - 1e-6:
                    best, best_it, stalls = v, it, 0
                    best_state = copy.deepcopy(model.state_dict())
                    if checkpoint is not None and comm.rank == 0:
                        model.save(checkpoint)
                else:
                    stalls += 1
                    if stalls >= patience:
                        stalls = 0
                        if drops >= max_drops:
                            status = "converged"
                        else:
                            drops += 1  # restart from the best weights, Adam afresh
                            if best_state is not None:
                                model.load_state_dict(best_state)
                            opt = torch.optim.Adam(model.parameters(), lr=lr / lr_drop**drops)
            history.append(rec)
            bar.update(1)
            bar.set_postfix({"nll": f"{rec['nll']:.3f}"}, refresh=False)
            if status == "converged":
                break
    finally:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return ConditionalFitResult(status, it, best, best_it, history, time.perf_counter() - t0,
                                comm.world)  # fmt: skip
