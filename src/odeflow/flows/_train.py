"""Training loop and evaluation for :class:`~odeflow.flows.OTFlow` (checkpoints: ``_checkpoint``).

The schedule follows OT-Flow (Onken et al., arXiv 2006.00104): Adam, optional clamping of
every parameter to [−clip, clip] before each step, validation NLL tracked every
``val_every`` iterations, the learning rate divided by ``lr_drop`` when validation stalls
for ``patience`` evaluations, and training stopped after ``max_drops`` drops.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._utils import Comm, check_device, progress
from ..ode import PrecisionPolicy
from ._checks import (
    FitSettings,
    check_int,
    check_precision,
    check_steps,
    fit_settings,
    is_half,
    precision_name,
)
from ._fit_result import FitResult
from ._presets import FlowPreset
from ._tabular import TabularData, check_data
from ._toys import TOYS, make_toy

if TYPE_CHECKING:  # (the model imports this trainer for OTFlow.fit; nothing imports back)
    from ._otflow import OTFlow

__all__ = ["FitResult", "TrainingDiverged", "evaluate_nll", "fit"]


class TrainingDiverged(RuntimeError):
    """Raised when the training loss becomes NaN or infinite.

    With ``restore_best=True`` the best validated weights are restored first; the message
    says which weights the flow holds.
    """


def _as_batches(data, batch: int, seed: int, dtype, device, comm: Comm | None = None):
    """An infinite iterator over this rank's share of the global minibatches.

    ``data``: a toy name or an ``(n, d)`` tensor, both already checked by :func:`fit`
    (``_check_toy`` / :func:`check_data`)."""
    comm = comm if comm is not None else Comm(None, torch.device(device))
    g = torch.Generator()
    if isinstance(data, str):
        comm.check_split(batch, "batch")
        # fresh samples: each rank draws its own share from its own stream
        g.manual_seed(comm.seed(seed))
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
    comm.check_split(b, "batch" if b == batch else "min(batch, rows of data)")

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
            stacklevel=4,  # (the caller of fit)
        )
    flow.set_standardization(torch.where(ok, loc, 0.0), torch.where(ok, std, 1.0))


def _check_toy(name: str, dim: int) -> None:
    if name not in TOYS:
        raise ValueError(f"unknown toy {name!r}; valid toys are: {', '.join(TOYS)}")
    if dim != 2:
        raise ValueError(f"toy {name!r} is 2-D but the flow has dim={dim}")


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
        >>> from odeflow.flows import OTFlow
        >>> flow = OTFlow(2, width=4, nt=2).double()
        >>> nll = evaluate_nll(flow, torch.randn(10, 2, dtype=torch.float64))
        >>> isinstance(nll, float)
        True
    """
    if nt is not None:
        nt = check_steps(nt, "nt")
    batch = check_int("batch", batch, 1, "rows evaluated per log_prob call")
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
    keyword arguments, which win. Without a preset, the defaults are
    :func:`odeflow.flows.default_preset` ``(flow.dim)``'s (the same rule that gives
    ``OTFlow(dim)`` its α and step counts).

    **The flow's settings are its own.** ``fit`` changes the flow's weights (and, when it
    standardizes, its affine map) and nothing else: a preset's α and RK4 step counts are
    used for this run only (training with its ``nt``, validation with its ``nt_val``) and
    recorded in the :class:`FitResult`; the flow's ``alpha``, ``nt``, ``nt_eval`` and
    ``precision``, which :meth:`OTFlow.log_prob` and :meth:`OTFlow.sample` use, stay as
    built. To give a flow a preset's model settings, build it with
    :meth:`OTFlow.from_preset`. α₀ scales the flow's dynamics (ż = −∇Φ/α₀), so a preset
    whose α₀ differs from the flow's is refused.

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
        preset: preset name or object (its α₀ must be the flow's).
        iters, batch, lr: iterations and minibatch size (integers >= 1), Adam learning
            rate (finite, > 0). Data tensors are reshuffled every epoch and cut into full
            minibatches of ``min(batch, n)`` rows (the remainder differs from epoch to
            epoch).
        precision: ODE precision policy for this training run, an
            :class:`odeflow.PrecisionPolicy` or its shorthand ("fp32", "tf32", "bf16",
            "fp16"; default the flow's own), used by the training steps and the validations;
            the flow's own ``precision`` is restored afterwards. "bf16" and "fp16" need a
            float32 flow (autocast does not touch float64): on a float64 flow they are
            refused; convert it with ``flow.float()`` first.
        device: where to train (default: the flow's device); CUDA must be available.
        val_data: validation samples ``(n_val, d)`` (default: ``data.val``, a fresh toy
            sample, the ``val_fraction`` held out of ``data``, or none).
        val_every: validate every this many iterations, ≥ 1 (default: the preset's, else
            ``max(1, iters // 20)``).
        val_nt: RK4 steps for validation, an integer >= 1 (default: the preset's ``nt_val``,
            else ``flow.nt_eval``).
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

    The flow's train/eval mode, ``precision`` and α are the caller's again when ``fit``
    returns or raises (α and the precision are set for the run only).

    Returns:
        :class:`FitResult`.

    Raises:
        ValueError: bad data (NaN/inf, wrong dimension, empty, not numeric), unknown
            preset/toy, a preset of another dimension or α₀, a setting out of range (the
            argument and its valid range are named), "bf16"/"fp16" on a float64 flow, or
            an unusable ``device``. All of
            these are checked before the flow is touched, so a refused call leaves it
            (weights, α, step counts, device) as it was.
        TrainingDiverged: the loss became NaN/inf (with ``restore_best`` the best validated
            weights are restored first; the message says which weights the flow holds).

    Reference: Onken et al., "OT-Flow", AAAI 2021, arXiv 2006.00104.

    Example:
        >>> import torch
        >>> from odeflow.flows import OTFlow
        >>> flow = OTFlow(2, width=8, nt=2).double()
        >>> res = fit(flow, torch.randn(256, 2, dtype=torch.float64), iters=5, batch=64,
        ...           lr=1e-2, verbose=False)
        >>> res.iterations, res.status, res.dtype
        (5, 'completed', 'float64')
    """
    if not (isinstance(flow, nn.Module) and callable(getattr(flow, "loss", None))):
        raise TypeError(f"flow must be an OTFlow, got {type(flow).__name__}")
    # Every argument and the data are checked before the flow is touched: a refused call
    # leaves its weights, α, step counts, device, precision and mode as they were.
    s = fit_settings(flow.dim, preset, dict(
        iters=iters, batch=batch, lr=lr, val_fraction=val_fraction, standardize=standardize,
        clip=clip, lr_drop=lr_drop, patience=patience, max_drops=max_drops,
        val_every=val_every, val_nt=val_nt, seed=seed), flow.alpha[0])  # fmt: skip
    # the run's α and step counts: the preset's, else the flow's own (which stay as they are)
    alpha = s.alpha if s.alpha is not None else flow.alpha
    s = dataclasses.replace(s, alpha=alpha, nt=s.nt or flow.nt, val_nt=s.val_nt or flow.nt_eval)
    train_precision = _train_precision(flow, precision)
    dtype = next(flow.parameters()).dtype
    dev = check_device(device) if device is not None else next(flow.parameters()).device
    comm = Comm(process_group, dev)
    data, val_data = _prepare_data(flow, data, val_data, s)
    # all checked: now set up the flow
    batches, val_data = _set_up(flow, s, data, val_data, dev, device is not None, comm)

    opt = torch.optim.Adam(flow.parameters(), lr=s.lr)
    track = _Validation(flow, opt, s, val_data, comm)
    status, it, history = "completed", 0, []
    t0 = time.perf_counter()
    # no bar object at all when silent: even a disabled tqdm starts tqdm's monitor thread
    bar = progress(s.iters, desc="OT-Flow") if verbose and comm.rank == 0 else None
    # the training precision, α and train mode last for this call only
    was_training, own_precision, own_alpha = flow.training, flow.precision, flow.alpha
    flow.precision, flow.alpha = train_precision, s.alpha
    flow.train()
    try:
        for it in range(1, s.iters + 1):
            vals = _step(flow, opt, next(batches), s, comm)
            if not math.isfinite(vals[0]):
                raise track.diverged(it, vals, restore_best)
            info = {
                "iter": it, "loss": vals[0], "nll": vals[1], "transport": vals[2],
                "hjb": vals[3], "lr": opt.param_groups[0]["lr"],
            }  # fmt: skip
            converged = track.due(it) and track.validate(it, info)
            history.append(info)
            asked = _report(bar, callback, it, info, comm)
            if asked or converged:
                status = "callback" if asked else "converged"
                break
    finally:
        if bar is not None:
            bar.close()
        flow.precision, flow.alpha = own_precision, own_alpha
        flow.train(was_training)
    if restore_best:
        track.restore()
    best = track.best_val if track.best_state is not None else math.nan
    return FitResult(status, it, best, track.best_iter, history, time.perf_counter() - t0,
                     str(dtype).removeprefix("torch."), precision_name(train_precision),
                     comm.world, s.alpha, s.nt, s.val_nt, s.preset)  # fmt: skip


def _train_precision(flow: OTFlow, precision: Any) -> str | PrecisionPolicy:
    """The precision ``fit`` trains in (``precision``, else the flow's own), checked: a
    16-bit one on a float64 flow is refused (autocast would leave it in float64)."""
    if precision is not None:
        precision = check_precision(precision)
    train_precision = precision if precision is not None else flow.precision
    if is_half(train_precision) and next(flow.parameters()).dtype == torch.float64:
        given = "" if precision is not None else " (the flow's own precision)"
        raise ValueError(
            f"precision={train_precision!r}{given} needs a float32 flow, but this flow's "
            "parameters are float64, which autocast leaves untouched: training would run in "
            "float64. Convert the flow with flow.float() (or build it with "
            "OTFlow.from_preset(..., dtype=torch.float32)), or train with precision='fp32'"
        )
    return train_precision


def _prepare_data(flow: OTFlow, data, val_data, s: FitSettings) -> tuple[Any, Tensor | None]:
    """Check the training data (a toy name, or rows as a tensor) and the validation data
    (given, ``data.val`` of a :class:`TabularData`, or ``s.val_fraction`` held out)."""
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
    elif not isinstance(data, str) and s.val_fraction > 0:
        data, val_data = _hold_out(data, float(s.val_fraction), s.seed)
    return data, val_data


def _set_up(flow: OTFlow, s: FitSettings, data, val_data, dev, move: bool, comm: Comm):
    """Move the flow to ``dev`` (if ``move``), standardize, share rank 0's weights; returns
    the minibatch iterator and the validation data (a fresh toy sample for a toy) on the
    flow's device and dtype."""
    if move:
        flow.to(dev)
    if s.standardize and not flow.is_standardized:
        _standardize(flow, data, s.seed)
    comm.same("fit's settings (iters, batch, lr, seed, dim)",
              [s.iters, s.batch, s.lr, float(s.seed), flow.dim])  # fmt: skip
    comm.broadcast_(flow)
    if isinstance(data, str) and val_data is None:
        val_data = make_toy(data, min(s.batch, 10_000), seed=s.seed + 10_007)
    dtype = next(flow.parameters()).dtype
    batches = _as_batches(data, s.batch, s.seed, dtype, dev, comm)
    if val_data is not None:
        val_data = val_data.to(dev, dtype)
    return batches, val_data


def _step(flow: OTFlow, opt: torch.optim.Optimizer, x: Tensor, s: FitSettings,
          comm: Comm) -> list[float]:  # fmt: skip
    """One Adam step on the minibatch ``x`` with ``s.nt`` RK4 steps (parameters clamped to
    [−s.clip, s.clip] first); returns the whole batch's loss terms (total, NLL, L, R). A
    non-finite loss is returned before any backward pass or step."""
    if s.clip is not None:
        with torch.no_grad():
            for q in flow.parameters():
                q.clamp_(-s.clip, s.clip)
    opt.zero_grad(set_to_none=True)
    out = flow.loss(x, nt=s.nt)
    # the whole batch's losses: the mean of the ranks' (equal shares)
    vals = [v / comm.world for v in comm.values([float(v.detach()) for v in out])]
    if math.isfinite(vals[0]):
        out.total.backward()
        del out
        comm.average_grads_(list(flow.parameters()))
        opt.step()
    return vals


def _report(bar, callback, it: int, info: dict[str, float], comm: Comm) -> bool:
    """Show ``info`` on the progress bar (if any) and pass it to ``callback``; whether the
    callback asked to stop (on any rank: one rank stopping stops them all)."""
    if bar is not None:
        bar.update(1)
        post = {"loss": f"{info['loss']:.3g}", "nll": f"{info['nll']:.3f}"}
        if "val_nll" in info:
            post["val"] = f"{info['val_nll']:.3f}"
        bar.set_postfix(post, refresh=False)
    asked = callback is not None and bool(callback(it, info))
    if comm.active and callback is not None:
        asked = comm.values([float(asked)], "max")[0] > 0
    return asked


class _Validation:
    """Validation and early stopping: the validation NLL every ``val_every`` iterations
    (and at the last), the best validated weights, the learning rate divided by ``lr_drop``
    after ``patience`` validations without improvement, and the stop after ``max_drops``."""

    def __init__(self, flow: OTFlow, opt, s: FitSettings, val_data, comm: Comm):
        self.flow, self.opt, self.s, self.val_data, self.comm = flow, opt, s, val_data, comm
        self.best_val, self.best_iter, self.best_state = math.inf, 0, None
        self.stalls, self.drops = 0, 0

    def due(self, it: int) -> bool:
        """Whether iteration ``it`` validates."""
        return self.val_data is not None and (it % self.s.val_every == 0 or it == self.s.iters)

    def validate(self, it: int, info: dict[str, float]) -> bool:
        """Validate (into ``info["val_nll"]``); whether training has converged (stop)."""
        v = _val_nll(self.flow, self.val_data, self.s.val_nt, self.comm)
        info["val_nll"] = v
        if v < self.best_val - 1e-6:
            self.best_val, self.best_iter, self.stalls = v, it, 0
            self.best_state = copy.deepcopy(self.flow.state_dict())
            return False
        self.stalls += 1
        if self.stalls < self.s.patience:
            return False
        self.stalls = 0
        if self.drops >= self.s.max_drops:
            return True
        self.drops += 1
        for grp in self.opt.param_groups:
            grp["lr"] /= self.s.lr_drop
        return False

    def restore(self) -> None:
        """Load the best validated weights, if any."""
        if self.best_state is not None:
            self.flow.load_state_dict(self.best_state)

    def diverged(self, it: int, vals: list[float], restore_best: bool) -> TrainingDiverged:
        """The error for a non-finite loss at ``it``, after restoring the best weights when
        ``restore_best``; its message says which weights the flow holds."""
        if self.best_state is not None and restore_best:
            self.restore()
            kept = (
                f"the best weights (iteration {self.best_iter}, val NLL {self.best_val:.4f}) "
                "were restored"
            )
        elif self.best_state is not None:
            kept = (
                "restore_best=False, so the flow keeps the weights that gave this "
                f"loss (the best ones, iteration {self.best_iter}, val NLL "
                f"{self.best_val:.4f}, were not restored)"
            )
        else:
            kept = (
                "no validated weights to restore, so the flow keeps the weights that gave this loss"
            )
        return TrainingDiverged(
            f"OT-Flow training stopped at iteration {it}: the loss is "
            f"{vals[0]} (NLL {vals[1]:.4g}, L {vals[2]:.4g}, "
            f"R {vals[3]:.4g}); {kept}. Lower the learning rate, clamp the "
            "weights (clip=1.5), or use more RK4 steps (nt)."
        )  # fmt: skip
