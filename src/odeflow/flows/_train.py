"""Training loop, evaluation and checkpoints for :class:`~odeflow.flows.OTFlow`.

The schedule follows OT-Flow (Onken et al., arXiv 2006.00104): Adam, optional clamping of
every parameter to [−clip, clip] before each step, validation NLL tracked every
``val_every`` iterations, the learning rate divided by ``lr_drop`` when validation stalls
for ``patience`` evaluations, and training stopped after ``max_drops`` drops.
"""

from __future__ import annotations

import copy
import math
import numbers
import os
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._distributed import Comm
from ._finite import nonfinite_report, nonfinite_tensors, state_shapes
from ._otflow import OTFlow, _check_alpha, _check_int, _check_steps
from ._presets import FlowPreset, default_preset, get_preset
from ._tabular import TabularData, check_data
from ._toys import TOYS, make_toy

__all__ = [
    "FitResult",
    "TrainingDiverged",
    "evaluate_nll",
    "fit",
    "load_checkpoint",
    "save_checkpoint",
]

_FORMAT = "odeflow.otflow/1"


class TrainingDiverged(RuntimeError):
    """Raised when the training loss becomes NaN or infinite.

    With ``restore_best=True`` the best validated weights are restored first; the message
    says which weights the flow holds.
    """


@dataclass
class FitResult:
    """Outcome of :func:`fit`.

    Attributes:
        status: ``"completed"`` (all iterations), ``"converged"`` (stopped after the last
            learning-rate drop), or ``"callback"`` (the callback asked to stop).
        iterations: iterations performed.
        best_val_nll: best validation NLL (nats, per sample) or ``nan`` without validation.
        best_iter: iteration of the best validation NLL.
        history: one dict per logged iteration (``iter, loss, nll, transport, hjb, lr`` and
            ``val_nll`` on validation iterations).
        seconds: wall time.
        dtype: the dtype training ran in (the flow's parameter dtype, e.g. ``"float64"``).
        precision: the ODE precision policy training ran in (e.g. ``"bf16"``).
        world_size: processes that trained together (``process_group``'s size; 1 alone).
    """

    status: str
    iterations: int
    best_val_nll: float
    best_iter: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    dtype: str = ""
    precision: str = ""
    world_size: int = 1


def _as_batches(data, batch: int, seed: int, dtype, device, comm: Comm | None = None):
    """An infinite iterator over this rank's share of the global minibatches.

    ``data``: a toy name or an ``(n, d)`` tensor, both already checked by :func:`fit`
    (``_check_toy`` / :func:`check_data`)."""
    comm = comm if comm is not None else Comm(None, torch.device(device))
    g = torch.Generator()
    if isinstance(data, str):
        _check_split(batch, comm, "batch")
        # fresh samples: each rank draws its own share from its own stream
        g.manual_seed(int(seed) + 1_000_003 * comm.rank)
        share = batch // comm.world

        def toy():
            while True:
                yield make_toy(data, share, generator=g, dtype=dtype, device=device)

        return toy()
    g.manual_seed(int(seed))
    x = data.to(dtype=dtype, device=device)
    n = x.shape[0]
    if comm.active:  # (the sum is only worth computing when there are ranks to compare)
        total = float(x.sum(dtype=torch.float64))
        comm.same("the training data (rows, sum of entries)", [n, total])
    b = min(batch, n)
    _check_split(b, comm, "batch" if b == batch else "min(batch, rows of data)")

    def epochs():  # full batches only: the n mod b rows left over change every epoch
        while True:  # (every rank draws the same permutation and takes its share)
            perm = torch.randperm(n, generator=g).to(device)
            for i in range(0, n - b + 1, b):
                yield x[comm.shard(perm[i : i + b])]

    return epochs()


#: at most this many rows are held out for validation (the cost of each validation)
_MAX_HOLD_OUT = 5_000
#: rows of a toy drawn to estimate its standardization
_TOY_STAT_ROWS = 20_000


def _hold_out(x: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor | None]:
    """``(train, val)``: a random ``fraction`` of the rows of ``x`` (at most
    ``_MAX_HOLD_OUT``, none if fewer than 10 would be left to train or 1 to validate) held
    out for validation, drawn with ``seed``; the same on every rank."""
    n = x.shape[0]
    n_val = min(round(fraction * n), _MAX_HOLD_OUT)
    if n_val < 1 or n - n_val < 10:
        return x, None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 7_919))
    perm = perm.to(x.device)
    return x[perm[n_val:]], x[perm[:n_val]]


def _standardize(flow: OTFlow, data, seed: int) -> None:
    """Set ``flow``'s affine map from the training data's per-coordinate mean and standard
    deviation (a toy: from a sample of ``_TOY_STAT_ROWS`` rows drawn with ``seed``).

    A coordinate with no spread (constant) keeps the identity (0, 1) and is warned about:
    a point mass has no density, and centring it would only hide that."""
    if isinstance(data, str):
        x = make_toy(data, _TOY_STAT_ROWS, seed=seed + 20_011, dtype=torch.float64)
    else:
        x = data.detach().to("cpu", torch.float64)
    loc = x.mean(0)
    dev = x - loc
    big = dev.abs().amax(0)  # (std through max|x − mean|: no overflow in the squares)
    std = big * (dev / big.clamp_min(torch.finfo(torch.float64).tiny)).square().mean(0).sqrt()
    ok = torch.isfinite(loc) & torch.isfinite(std) & (std > 0)
    if not bool(ok.all()):
        cols = torch.nonzero(~ok).flatten().tolist()
        warnings.warn(
            f"training data column(s) {cols[:10]} have no spread (constant) or no finite "
            "mean and standard deviation: they are not standardized; a constant column has "
            "no density to fit (drop it)",
            stacklevel=3,
        )
    flow.set_standardization(torch.where(ok, loc, 0.0), torch.where(ok, std, 1.0))


def _check_toy(name: str, dim: int) -> None:
    if name not in TOYS:
        raise ValueError(f"unknown toy {name!r}; valid toys are: {', '.join(TOYS)}")
    if dim != 2:
        raise ValueError(f"toy {name!r} is 2-D but the flow has dim={dim}")


def _check_split(b: int, comm: Comm, what: str) -> None:
    if b % comm.world:
        raise ValueError(
            f"{what} = {b} cannot be split evenly over the {comm.world} ranks of process_group; "
            f"use a multiple of {comm.world}"
        )


@torch.no_grad()
def evaluate_nll(flow: OTFlow, data: Tensor, *, nt: int | None = None, batch: int = 4096) -> float:
    """Mean negative log-likelihood −E[log p(x)] (nats per sample) over ``data``.

    Args:
        flow: the flow.
        data: ``(n, d)`` samples.
        nt: RK4 steps, an integer >= 1 (default ``flow.nt_eval``).
        batch: evaluation chunk size, an integer >= 1 (rows per ``log_prob`` call).

    Raises:
        ValueError: wrong dimension, empty, or non-finite data; ``nt`` or ``batch`` < 1.
        FloatingPointError: the NLL is not finite (non-finite weights or an overflowing
            ODE solution; the message says which).

    Example:
        >>> import torch
        >>> flow = OTFlow(2, width=4, nt=2).double()
        >>> nll = evaluate_nll(flow, torch.randn(10, 2, dtype=torch.float64))
        >>> isinstance(nll, float)
        True
    """
    if nt is not None:
        nt = _check_steps(nt, "nt")
    batch = _check_int("batch", batch, 1, "rows evaluated per log_prob call")
    x = check_data(data, flow.dim, name="evaluation data")
    nll = _nll_sum(flow, x, nt, batch) / x.shape[0]
    if not math.isfinite(nll):  # name the cause (log_prob's check) rather than return NaN
        with torch.no_grad():
            for i in range(0, x.shape[0], batch):  # raises at the first bad chunk
                flow.log_prob(x[i : i + batch], nt=nt)
        raise FloatingPointError(f"the mean NLL over {x.shape[0]} rows overflowed ({nll})")
    return nll


@torch.no_grad()
def _nll_sum(flow: OTFlow, x: Tensor, nt: int | None, batch: int = 4096) -> float:
    """−Σ log p(x) over the rows of ``x`` (validated data; 0 for no rows), in eval mode."""
    was = flow.training
    flow.eval()
    try:
        tot = 0.0
        for i in range(0, x.shape[0], batch):
            tot += float(flow._log_prob(x[i : i + batch], nt).double().sum())
    finally:
        flow.train(was)
    return -tot


def _val_nll(flow: OTFlow, x: Tensor, nt: int | None, comm: Comm) -> float:
    """Validation NLL over all rows of ``x``; with several ranks each evaluates every
    ``world``-th row and the sums are reduced."""
    if not comm.active:
        return _nll_sum(flow, x, nt) / x.shape[0]
    part = x[comm.rank :: comm.world]
    s, n = comm.values([_nll_sum(flow, part, nt), float(part.shape[0])])
    return s / n


def fit(
    flow: OTFlow,
    data,
    *,
    preset: str | FlowPreset | None = None,
    iters: int | None = None,
    batch: int | None = None,
    lr: float | None = None,
    precision: str | None = None,
    device: torch.device | str | None = None,
    val_data=None,
    val_every: int | None = None,
    val_nt: int | None = None,
    patience: int | None = None,
    lr_drop: float | None = None,
    max_drops: int | None = None,
    clip: float | None = None,
    seed: int = 0,
    callback: Callable[[int, dict[str, float]], bool | None] | None = None,
    verbose: bool = True,
    restore_best: bool = True,
    process_group: Any = None,
    val_fraction: float | None = None,
    standardize: bool | None = None,
) -> FitResult:
    """Train an OT-Flow by minimising J = α₀L + α₁C + α₂R with Adam.

    Settings come from ``preset`` (see :data:`odeflow.flows.PRESETS`), then from the
    keyword arguments, which win. A preset also sets the flow's α and step counts. Without
    a preset, the defaults are :func:`odeflow.flows.default_preset` ``(flow.dim)``'s (the
    same rule that gives ``OTFlow(dim)`` its α and step counts).

    **Defaults that work.** ``fit(flow, x)`` with every default

    1. holds out ``val_fraction`` (10 %, at most 5,000 rows) of ``x`` for validation,
    2. standardizes: sets the flow's affine map (:meth:`OTFlow.set_standardization`) to the
       training rows' per-coordinate mean and standard deviation, so the ODE sees data of
       mean 0 and scale 1 whatever the data's units (the map's log-determinant is part of
       every log-density, exactly),
    3. trains for at most the default budget, validating every ``val_every`` iterations;
       when the validation NLL has not improved for ``patience`` validations the learning
       rate drops by ``lr_drop``, and after ``max_drops`` drops the next stall stops
       training (status ``"converged"``); the best validated weights are restored.

    An explicit ``iters`` is an explicit budget: then only given validation data (or
    ``val_fraction``) are used for validation, as with the paper's presets.

    **dtype.** Training runs in the flow's own parameter dtype, which ``fit`` never
    changes: training and validation data (tensors, arrays, toy samples) are cast to it.
    A preset's ``double`` flag (float64 for the 2-D toys, as in the paper) takes effect
    where the flow is built: :meth:`OTFlow.from_preset` and ``odeflow flow train``; for a
    flow built by hand, call ``flow.double()`` first. The dtype used is recorded in
    :attr:`FitResult.dtype`.

    Args:
        flow: the :class:`OTFlow` to train (in place).
        data: ``(n, d)`` tensor/array, a :class:`TabularData` (its ``val`` split is used
            for validation), or a toy name (fresh samples every iteration).
        preset: preset name or object.
        iters, batch, lr: iterations and minibatch size (integers >= 1), Adam learning
            rate (finite, > 0). Data tensors are reshuffled every epoch and cut into full
            minibatches of ``min(batch, n)`` rows (the remainder differs from epoch to
            epoch).
        precision: ODE precision policy for this training run ("fp32", "tf32", "bf16",
            "fp16"; default the flow's own), used by the training steps and the validations;
            the flow's own ``precision`` is restored afterwards. "bf16" and "fp16" need a
            float32 flow (autocast does not touch float64): on a float64 flow they are
            refused; convert it with ``flow.float()`` first.
        device: where to train (default: the flow's device); CUDA must be available.
        val_data: validation samples ``(n_val, d)`` (default: ``data.val``, a fresh toy
            sample, the ``val_fraction`` held out of ``data``, or none).
        val_every: validate every this many iterations, ≥ 1 (default: the preset's, else
            ``max(1, iters // 20)``).
        val_nt: RK4 steps for validation, an integer >= 1 (default ``flow.nt_eval``).
        patience: validations without improvement before the learning rate drops (≥ 1;
            default: the preset's).
        lr_drop, max_drops: drop factor (> 1) and number of drops before stopping (≥ 0).
        clip: clamp parameters to [−clip, clip] before every step (clip > 0, or None).
        seed: seed of the batch generator (an integer; also seeds toy samples).
        callback: ``callback(iteration, info)``; returning True stops training.
        verbose: show a tqdm progress bar.
        restore_best: load the weights with the best validation NLL at the end.
        process_group: a ``torch.distributed`` process group to train data-parallel over
            (e.g. ``torch.distributed.group.WORLD`` under ``torchrun``; one process per
            device), or None. Every rank calls ``fit`` with the same flow settings, data and
            arguments; rank 0's initial weights are broadcast, each global minibatch of
            ``batch`` rows is split evenly over the ranks (``batch`` must be a multiple of
            the group size), gradients are averaged with one all-reduce per iteration, and
            the logged losses and validation NLLs are those of the whole batch and the whole
            validation set. So ``W`` ranks take the same steps as one process with the same
            ``batch`` (up to summation order), each doing 1/W of the work. Toy data are
            sampled independently on each rank. Only rank 0 shows a progress bar; a
            ``callback`` runs on every rank and stops all of them if it stops one.
            With gloo, ``import torch._dynamo`` before ``init_process_group``: imported
            later (``fit``'s optimizer imports it), it keeps references to the group that
            ``destroy_process_group`` cannot drop, and gloo's threads then run on into
            interpreter exit, where their teardown occasionally aborts the process. And call
            ``dist.barrier()`` before ``destroy_process_group()``: with torch 2.4's gloo a
            rank whose peer tears the group down first hung in its own destroy now and then
            (``odeflow flow train`` under ``torchrun`` does both for you).
        val_fraction: share of the rows of a data tensor held out for validation when no
            ``val_data`` is given, in [0, 1) (default: the preset's ``val_fraction`` when
            ``iters`` is not given, else 0). Fewer than 10 training rows left: none.
        standardize: on a flow whose affine map is still the identity (never standardized),
            set it from the training data (a toy: from 20,000 of its samples) before
            training; a flow already standardized keeps its map (continued training).
            ``False`` trains in the data's own coordinates. A constant column keeps the
            identity, with a warning. Default: the preset's (``True`` without a preset;
            ``False`` with the paper's presets, which reproduce its runs).

    The flow's train/eval mode and ``precision`` are the caller's again when ``fit`` returns
    or raises.

    Returns:
        :class:`FitResult`.

    Raises:
        ValueError: bad data (NaN/inf, wrong dimension, empty, not numeric), unknown
            preset/toy, a setting out of range (the argument and its valid range are
            named), "bf16"/"fp16" on a float64 flow, or an unusable ``device``. All of
            these are checked before the flow is touched, so a refused call leaves it
            (weights, α, step counts, device) as it was.
        TrainingDiverged: the loss became NaN/inf (with ``restore_best`` the best validated
            weights are restored first; the message says which weights the flow holds).

    Reference: Onken et al., "OT-Flow", AAAI 2021, arXiv 2006.00104.

    Example:
        >>> import torch
        >>> flow = OTFlow(2, width=8, nt=2).double()
        >>> res = fit(flow, torch.randn(256, 2, dtype=torch.float64), iters=5, batch=64,
        ...           lr=1e-2, verbose=False)
        >>> res.iterations, res.status, res.dtype
        (5, 'completed', 'float64')
    """
    if not isinstance(flow, OTFlow):
        raise TypeError(f"flow must be an OTFlow, got {type(flow).__name__}")
    # Every argument and the data are checked before the flow is touched: a refused call
    # leaves its weights, α, step counts, device, precision and mode as they were.
    p = get_preset(preset) if preset is not None else None
    if p is not None:
        if p.dim is not None and p.dim != flow.dim:
            raise ValueError(
                f"preset {p.name!r} is for dim={p.dim}, but the flow has dim={flow.dim}"
            )
        p_alpha = _check_alpha(p.alpha)
        p_nt = _check_steps(p.nt, f"preset {p.name!r}: nt")
        p_nt_val = _check_steps(p.nt_val, f"preset {p.name!r}: nt_val")
    # without a preset the documented defaults for this dimension (default_preset)
    q = p if p is not None else default_preset(flow.dim)
    budget = iters is None  # no explicit iters: q's budget, with early stopping on validation
    iters = _check_int("iters", iters if iters is not None else q.iters, 1,
                       "training iterations")  # fmt: skip
    batch = _check_int("batch", batch if batch is not None else q.batch, 1,
                       "rows per minibatch")  # fmt: skip
    lr = lr if lr is not None else q.lr
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (0 < lr < math.inf):
        raise ValueError(f"lr must be a finite number > 0 (Adam's learning rate), got {lr!r}")
    lr = float(lr)
    clip = clip if clip is not None else q.clip
    lr_drop = lr_drop if lr_drop is not None else q.lr_drop
    max_drops = max_drops if max_drops is not None else q.max_drops
    patience = patience if patience is not None else q.patience
    val_every = val_every if val_every is not None else q.val_every
    val_fraction = val_fraction if val_fraction is not None else (q.val_fraction if budget
                                                                  else 0.0)  # fmt: skip
    if (isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real)
            or not 0 <= val_fraction < 1):  # fmt: skip
        raise ValueError(f"val_fraction must be a number in [0, 1) (the share of the training "
                         f"rows held out for validation), got {val_fraction!r}")  # fmt: skip
    standardize = standardize if standardize is not None else q.standardize
    if not isinstance(standardize, bool):
        raise ValueError(f"standardize must be True, False or None, got {standardize!r}")
    if clip is not None:
        if isinstance(clip, bool) or not isinstance(clip, numbers.Real) or not clip > 0:
            raise ValueError(f"clip must be a number > 0 (the parameters are clamped to "
                             f"[-clip, clip]) or None for no clamping, got {clip!r}")  # fmt: skip
        clip = float(clip)
    if (
        isinstance(lr_drop, bool)
        or not isinstance(lr_drop, numbers.Real)
        or not (1 < lr_drop < math.inf)
    ):
        raise ValueError(f"lr_drop must be a finite number > 1 (the learning rate is divided "
                         f"by it), got {lr_drop!r}")  # fmt: skip
    lr_drop = float(lr_drop)
    patience = _check_int("patience", patience, 1, "validations without improvement "
                          "before the learning rate drops")  # fmt: skip
    max_drops = _check_int("max_drops", max_drops, 0, "learning-rate drops before training "
                           "stops")  # fmt: skip
    if val_every is not None:
        val_every = _check_int("val_every", val_every, 1, "iterations between validations")
    if val_nt is not None:
        val_nt = _check_steps(val_nt, "val_nt")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer (it seeds the minibatch shuffling and "
                         f"the toy samples), got {seed!r}; e.g. seed=0")  # fmt: skip
    seed = int(seed)
    if precision is not None and precision not in ("fp32", "tf32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, tf32, bf16 or fp16, got {precision!r}")
    ref = next(flow.parameters())
    dtype = ref.dtype
    train_precision = precision if precision is not None else flow.precision
    if train_precision in ("bf16", "fp16") and dtype == torch.float64:
        given = "" if precision is not None else " (the flow's own precision)"
        raise ValueError(
            f"precision={train_precision!r}{given} needs a float32 flow, but this flow's "
            "parameters are float64, which autocast leaves untouched: training would run in "
            "float64. Convert the flow with flow.float() (or build it with "
            "OTFlow.from_preset(..., dtype=torch.float32)), or train with precision='fp32'"
        )
    dev = _check_device(device) if device is not None else ref.device
    comm = Comm(process_group, dev)
    if isinstance(data, TabularData):
        if val_data is None:
            val_data = data.val
        data = data.train
    if isinstance(data, str):
        _check_toy(data, flow.dim)
    else:
        data = check_data(data, flow.dim, name="training data")
    if val_data is not None:
        val_data = check_data(val_data, flow.dim, name="validation data")
    elif not isinstance(data, str) and val_fraction > 0:
        data, val_data = _hold_out(data, float(val_fraction), seed)

    # all checked: now set up the flow
    if p is not None:
        flow.alpha = p_alpha
        flow.nt = p_nt
        flow.nt_eval = p_nt_val
    if device is not None:
        flow.to(dev)
    if standardize and not flow.is_standardized:
        _standardize(flow, data, seed)
    comm.same("fit's settings (iters, batch, lr, seed, dim)",
              [iters, batch, lr, float(seed), flow.dim])  # fmt: skip
    comm.broadcast_(flow)
    if isinstance(data, str) and val_data is None:
        val_data = make_toy(data, min(batch, 10_000), seed=seed + 10_007)
    batches = _as_batches(data, batch, seed, dtype, dev, comm)
    if val_data is not None:
        val_data = val_data.to(dev, dtype)
    val_every = val_every if val_every is not None else max(1, iters // 20)

    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    best_val, best_iter, best_state = math.inf, 0, None
    stalls, drops, status = 0, 0, "completed"
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    bar = None
    if verbose and comm.rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=iters, desc="OT-Flow", leave=False)
    # the training precision and train mode last for this call only
    was_training, own_precision = flow.training, flow.precision
    flow.precision = train_precision
    flow.train()
    it = 0
    try:
        for it in range(1, iters + 1):
            x = next(batches)
            if clip is not None:
                with torch.no_grad():
                    for q in flow.parameters():
                        q.clamp_(-clip, clip)
            opt.zero_grad(set_to_none=True)
            out = flow.loss(x)
            # the whole batch's losses: the mean of the ranks' (equal shares)
            vals = [v / comm.world for v in comm.values([float(v.detach()) for v in out])]
            if not math.isfinite(vals[0]):
                if best_state is not None and restore_best:
                    flow.load_state_dict(best_state)
                    kept = (
                        f"the best weights (iteration {best_iter}, val NLL {best_val:.4f}) "
                        "were restored"
                    )
                elif best_state is not None:
                    kept = (
                        "restore_best=False, so the flow keeps the weights that gave this "
                        f"loss (the best ones, iteration {best_iter}, val NLL "
                        f"{best_val:.4f}, were not restored)"
                    )
                else:
                    kept = (
                        "no validated weights to restore, so the flow keeps the weights "
                        "that gave this loss"
                    )
                raise TrainingDiverged(
                    f"OT-Flow training stopped at iteration {it}: the loss is "
                    f"{vals[0]} (NLL {vals[1]:.4g}, L {vals[2]:.4g}, "
                    f"R {vals[3]:.4g}); {kept}. Lower the learning rate, clamp the "
                    "weights (clip=1.5), or use more RK4 steps (nt)."
                )  # fmt: skip
            out.total.backward()
            del out
            comm.average_grads_(list(flow.parameters()))
            opt.step()
            info = {
                "iter": it, "loss": vals[0], "nll": vals[1], "transport": vals[2],
                "hjb": vals[3], "lr": opt.param_groups[0]["lr"],
            }  # fmt: skip
            stop = False
            if val_data is not None and (it % val_every == 0 or it == iters):
                v = _val_nll(flow, val_data, val_nt, comm)
                info["val_nll"] = v
                if v < best_val - 1e-6:
                    best_val, best_iter, stalls = v, it, 0
                    best_state = copy.deepcopy(flow.state_dict())
                else:
                    stalls += 1
                    if stalls >= patience:
                        stalls = 0
                        if drops >= max_drops:
                            status, stop = "converged", True
                        else:
                            drops += 1
                            for grp in opt.param_groups:
                                grp["lr"] /= lr_drop
            history.append(info)
            if bar is not None:
                bar.update(1)
                post = {"loss": f"{info['loss']:.3g}", "nll": f"{info['nll']:.3f}"}
                if "val_nll" in info:
                    post["val"] = f"{info['val_nll']:.3f}"
                bar.set_postfix(post, refresh=False)
            asked = callback is not None and bool(callback(it, info))
            if comm.active and callback is not None:  # one rank stopping stops them all
                asked = comm.values([float(asked)], "max")[0] > 0
            if asked:
                status, stop = "callback", True
            if stop:
                break
    finally:
        if bar is not None:
            bar.close()
        flow.precision = own_precision
        flow.train(was_training)
    if restore_best and best_state is not None:
        flow.load_state_dict(best_state)
    return FitResult(status, it, best_val if best_state is not None else math.nan, best_iter,
                     history, time.perf_counter() - t0,
                     str(dtype).removeprefix("torch."), train_precision, comm.world)  # fmt: skip


def _check_device(device: torch.device | str, what: str | None = None) -> torch.device:
    """``device`` as a ``torch.device`` this process can use, else a ValueError that names
    it as ``what`` (default ``device=...``)."""
    what = what if what is not None else f"device={device!r}"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"{what}: not a torch device; use e.g. 'cpu', 'cuda' or 'cuda:1'"
        ) from None
    if dev.type == "cuda":
        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n_gpus == 0:
            raise ValueError(
                f"{what} asks for CUDA, but CUDA is not available (this PyTorch build: CUDA "
                f"{torch.version.cuda or 'not compiled in'}; no GPU visible); use the CPU "
                "('cpu'), or a CUDA build of PyTorch on a machine with a GPU"
            )
        if dev.index is None:  # what .to("cuda") means: the current GPU
            dev = torch.device("cuda", torch.cuda.current_device())
        elif dev.index >= n_gpus:
            raise ValueError(
                f"{what}: only {n_gpus} GPU(s) are visible (cuda:0 to cuda:{n_gpus - 1})"
            )
    return dev


def save_checkpoint(flow: OTFlow, path: str | Path, **extra: Any) -> None:
    """Save ``{format, config, state_dict, extra}`` with ``torch.save``.

    The file is written to a temporary file in the same folder and then moved over
    ``path`` (``os.replace``), so an existing checkpoint survives a failed save.

    Args:
        flow: the flow.
        path: checkpoint file (parent folders are created).
        **extra: JSON-like metadata kept with the checkpoint (``None``, bool, int, float,
            str, and lists, tuples and dicts of them); a ``Path`` is stored as ``str``,
            NumPy/torch arrays as (nested) lists and NumPy scalars as Python numbers, so
            that :func:`load_checkpoint` can read them with ``weights_only=True``.

    Raises:
        TypeError: an ``extra`` value is not JSON-like (the key is named); nothing is
            written.
        ValueError: the flow's weights hold NaN or inf (named); nothing is written.
        IsADirectoryError: ``path`` is an existing folder.

    Example:
        >>> import tempfile, os
        >>> f = OTFlow(2, width=4)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     save_checkpoint(f, os.path.join(d, "c.pt"), note="demo")
        ...     g = load_checkpoint(os.path.join(d, "c.pt"), dim=2)
        >>> g.config() == f.config()
        True
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a folder; give the checkpoint's file name, e.g. {path / 'flow.pt'}"
        )
    bad = nonfinite_tensors(flow.state_dict().items())
    if bad:
        raise ValueError(
            f"the flow's weights hold NaN or inf ({', '.join(bad[:4])}); load_checkpoint "
            "would refuse this checkpoint, so it is not written. Retrain the flow (e.g. a "
            "lower learning rate, or fit(restore_best=True))"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in flow.state_dict().items()}
    dt = str(next(flow.parameters()).dtype).removeprefix("torch.")
    payload = {"format": _FORMAT, "config": flow.config(), "dtype": dt, "state_dict": state,
               "extra": _jsonable(extra, "extra")}  # fmt: skip
    # write beside the target, then rename over it: a failed save leaves the old file intact
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load_reason(exc: Exception) -> str:
    """The gist of a ``torch.load`` failure in one short line (without torch's advice to
    retry with ``weights_only=False``, which would run arbitrary code from the file)."""
    msg = str(exc)
    if "WeightsUnpickler error:" in msg:  # the cause, after torch's paragraph of advice
        msg = msg.split("WeightsUnpickler error:", 1)[1]
    line = next((ln.strip() for ln in msg.splitlines() if ln.strip()), "")
    line = line.split(". ", 1)[0].rstrip(".")
    reason = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return reason if len(reason) <= 160 else reason[:157] + "..."


def _jsonable(obj: Any, key: str) -> Any:
    """``obj`` as plain Python data that ``torch.load(weights_only=True)`` reads back."""
    if obj is None:
        return None
    if isinstance(obj, np.generic | np.ndarray | Tensor):  # NumPy scalars, arrays, tensors
        return _jsonable(obj.tolist(), key)
    if isinstance(obj, bool):  # (before int; subclasses become the plain type)
        return bool(obj)
    for kind in (int, float, str):
        if isinstance(obj, kind):
            return kind(obj)
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, f"{key}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v, f"{key}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(
        f"checkpoint {key} is a {type(obj).__name__} ({obj!r:.60}), which a checkpoint "
        "cannot hold: extra values must be JSON-like (None, bool, int, float, str, and "
        "lists, tuples and dicts of them; a Path, NumPy array or scalar and a tensor are "
        "converted). Convert it first, e.g. with str()."
    )


_STANDARDIZATION = ("data_loc", "data_scale")  # OTFlow's buffers, absent from old files


def _check_state(path: Path, shapes: dict[str, tuple[int, ...]], state: dict) -> None:
    """Refuse a ``state_dict`` whose keys or shapes differ from what its config builds
    (checked before the flow is built: a config edited to ``width=200000`` must not
    allocate), or whose weights hold NaN/inf. A checkpoint written before the data
    standardization existed lacks both of its buffers and loads as the identity map."""
    missing = [k for k in shapes if k not in state]
    if set(_STANDARDIZATION) <= set(missing):  # (one of the two alone is damage)
        missing = [k for k in missing if k not in _STANDARDIZATION]
    unexpected = [k for k in state if k not in shapes]
    wrong = [f"{k}: a {type(state[k]).__name__}, not a tensor" if not isinstance(state[k], Tensor)
             else f"{k}: {tuple(state[k].shape)} in the file, {shapes[k]} from the config"
             for k in shapes if k in state and (not isinstance(state[k], Tensor)
                                                or tuple(state[k].shape) != shapes[k])]  # fmt: skip
    if missing or unexpected or wrong:
        why = "; ".join(
            f"{label} {', '.join(items[:3])}{', ...' if len(items) > 3 else ''}"
            for label, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch", wrong),
            )
            if items
        )
        raise ValueError(
            f"checkpoint {path} is damaged: its state_dict does not fit its config ({why}). "
            "Save the flow again with OTFlow.save"
        )
    bad = nonfinite_tensors(state.items())
    if bad:
        where = "; ".join(f"{k}: {nonfinite_report(state[k])}" for k in bad[:3])
        raise ValueError(
            f"checkpoint {path} holds non-finite weights ({where}"
            f"{'; ...' if len(bad) > 3 else ''}); a flow with NaN/inf weights gives NaN "
            "samples and densities. Use a checkpoint of a run that did not diverge"
        )


def load_checkpoint(path: str | Path, *, dim: int | None = None, map_location=None) -> OTFlow:
    """Rebuild an :class:`OTFlow` from a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: checkpoint file.
        dim: expected data dimension; a checkpoint of another dimension is refused.
        map_location: as in ``torch.load``; a device (``str`` or ``torch.device``) is also
            where the returned flow lives. Other mappings (dict, callable) only steer
            ``torch.load``; the flow is then on the CPU.

    The file is read with ``torch.load(weights_only=True)``: only plain data are unpickled.

    Raises:
        FileNotFoundError: no such file (or a folder was given).
        ValueError: not an odeflow OT-Flow checkpoint (unreadable by ``torch.load``, or
            without the format tag, a ``config`` or a ``state_dict``), damaged (a dtype,
            config or ``state_dict`` that do not fit together: the config's shapes are
            checked against the file's tensors before anything is allocated), holding NaN
            or inf weights, or of another dimension; ``dim`` not an integer >= 1.
    """
    if dim is not None:
        dim = _check_int("dim", dim, 1, "the expected data dimension")
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(
            f"checkpoint {path} is a folder; pass the checkpoint file in it (e.g. "
            f"{path / 'flow.pt'})"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ck = torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{path} is not an odeflow checkpoint (torch.load failed: {_load_reason(exc)}); "
            "pass a file written by OTFlow.save, save_checkpoint or `odeflow flow train`"
        ) from None
    if not isinstance(ck, dict) or ck.get("format") != _FORMAT:
        raise ValueError(f"{path} is not an odeflow OT-Flow checkpoint (format {_FORMAT})")
    cfg, state = ck.get("config"), ck.get("state_dict")
    if not isinstance(cfg, dict) or not isinstance(state, dict):
        missing = " and ".join(repr(k) for k, v in (("config", cfg), ("state_dict", state))
                               if not isinstance(v, dict))  # fmt: skip
        raise ValueError(
            f"checkpoint {path} is incomplete: it has the {_FORMAT} tag but lacks a valid "
            f"{missing} (a dict); the file is damaged or was not written by "
            "save_checkpoint. Save the flow again with OTFlow.save"
        )
    try:  # the config's shapes on the meta device (nothing allocated) against the file's
        shapes = state_shapes(OTFlow, cfg)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:  # (sizes overflow)
        raise ValueError(
            f"checkpoint {path} has an invalid config ({exc}); the file is damaged or was "
            "edited. Save the flow again with OTFlow.save"
        ) from None
    _check_state(path, shapes, state)
    flow = OTFlow(**cfg)
    if dim is not None and flow.dim != dim:
        raise ValueError(
            f"checkpoint {path} holds a flow of dim={flow.dim}, but dim={dim} was expected; "
            "use a checkpoint trained on data of this dimension"
        )
    dt = ck.get("dtype", "float32")
    dtype = getattr(torch, dt, None) if isinstance(dt, str) else None
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(
            f"checkpoint {path} has an invalid dtype {dt!r} (not a floating-point torch "
            "dtype); the file is damaged or was edited. Save the flow again with OTFlow.save"
        )
    flow.to(dtype)
    if isinstance(map_location, str | torch.device):
        flow.to(torch.device(map_location))
    try:
        flow.load_state_dict(state)
    except RuntimeError as exc:  # (values that are not tensors, ...)
        why = " ".join(str(exc).split())
        raise ValueError(
            f"checkpoint {path} is damaged: its state_dict does not fit its config "
            f"({why[:300]}). Save the flow again with OTFlow.save"
        ) from None
    flow.eval()
    flow.checkpoint_extra = ck.get("extra", {})
    return flow
