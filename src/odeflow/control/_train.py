"""Training (Adam or L-BFGS with resampling and multilevel batches), evaluation and
checkpoints of value networks."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from odeflow._utils import Comm

from ._problem import ControlProblem
from ._solver import LossWeights, _check_pair, control_loss, solve_characteristics
from ._stochastic import simulate, stochastic_loss
from ._value import ValueNetwork

__all__ = ["FitResult", "evaluate", "fit", "load_checkpoint", "lr_multiplier", "save_checkpoint"]

_FORMAT = "odeflow.control/1"


@dataclass
class FitResult:
    """Outcome of :func:`fit`.

    Attributes:
        status: ``"completed"`` or ``"callback"`` (the callback asked to stop).
        iterations: optimizer iterations performed (all stages).
        seconds: wall time.
        history: one dict of loss terms (floats) per iteration.
        checkpoint: the checkpoint written, or None.
        world_size: processes that trained together (``process_group``'s size; 1 alone).
    """

    status: str
    iterations: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    world_size: int = 1


def _check_count(name: str, v, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    return v


#: fit's training settings where neither the caller nor the problem's fit_defaults set them
FIT_DEFAULTS: dict[str, Any] = dict(optimizer="adam", iterations=500, batch=256, lr=1e-2,
                                    lr_drops=(), lr_factor=0.1, lr_schedule="step",
                                    resample_every=25)  # fmt: skip
_SCHEDULES = ("step", "cosine")


def lr_multiplier(schedule: str, k: int, total: int, drops: Sequence[int], factor: float) -> float:
    r"""The factor Adam's learning rate is multiplied by at iteration ``k`` (0-based) of ``total``.

    ``"step"``: factor^m, m the number of entries of ``drops`` ≤ k (a drop at iteration j
    applies from iteration j on). ``"cosine"``: 1 before k₀ (the single entry of ``drops``,
    or 0 without one), then the half cosine from 1 at k₀ to ``factor`` at the last iteration
    total − 1,

    .. math:: f + (1 - f)\,\tfrac12\big(1 + \cos(\pi\,(k - k_0)/(\mathrm{total} - 1 - k_0))\big),

    which ends the run at a small step without a jump (Loshchilov & Hutter, SGDR,
    arXiv 1608.03983, without the restarts).

    Example:
        >>> [round(lr_multiplier("cosine", k, 5, (1,), 0.01), 4) for k in range(5)]
        [1.0, 1.0, 0.7525, 0.2575, 0.01]
        >>> [lr_multiplier("step", k, 4, (2,), 0.1) for k in range(4)]
        [1.0, 1.0, 0.1, 0.1]
    """
    if schedule == "step":
        return factor ** sum(1 for j in drops if j <= k)
    k0 = drops[0] if drops else 0
    if k < k0:
        return 1.0
    span = total - 1 - k0
    progress = 1.0 if span <= 0 else min(1.0, (k - k0) / span)
    return factor + (1.0 - factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _settings(problem, given: dict) -> dict:
    """The caller's settings, else the problem's ``fit_defaults``, else :data:`FIT_DEFAULTS`."""
    rec = getattr(problem, "fit_defaults", None) or {}
    unknown = sorted(set(rec) - set(FIT_DEFAULTS))
    if unknown:
        raise ValueError(f"{type(problem).__name__}.fit_defaults has unknown settings {unknown}; "
                         f"known: {sorted(FIT_DEFAULTS)}")  # fmt: skip
    asked = given["optimizer"]
    if asked is not None and rec.get("optimizer", asked) != asked:
        rec = {}  # a recipe for another optimizer (its batch, resampling, ...) does not apply
    return {k: given[k] if given.get(k) is not None else rec.get(k, v)
            for k, v in FIT_DEFAULTS.items()}  # fmt: skip


def _loss_fn(problem, value, solver, weights, nt, gradient):
    if solver == "auto":
        solver = "stochastic" if problem.diffusion is not None else "deterministic"
    if solver == "deterministic":
        return lambda x, gen: control_loss(problem, value, x, weights, nt=nt, gradient=gradient)
    if solver == "stochastic":
        return lambda x, gen: stochastic_loss(problem, value, x, weights, nt=nt, generator=gen)
    raise ValueError(f"solver must be 'auto', 'deterministic' or 'stochastic', got {solver!r}")


def fit(
    problem: ControlProblem,
    value: ValueNetwork,
    *,
    solver: str = "auto",
    optimizer: str | None = None,
    iterations: int | None = None,
    batch: int | Sequence[int] | None = None,
    lr: float | None = None,
    lr_drops: Sequence[int] | None = None,
    lr_factor: float | None = None,
    lr_schedule: str | None = None,
    resample_every: int | None = None,
    nt: int | None = None,
    weights: LossWeights | None = None,
    seed: int = 0,
    gradient: str = "backprop",
    verbose: bool = True,
    checkpoint: str | Path | None = None,
    callback: Callable[[int, dict], bool] | None = None,
    process_group: Any = None,
) -> FitResult:
    r"""Train a value network on a control problem; the network is updated in place.

    Each stage draws ``batch`` initial states from ρ₀ and redraws them every
    ``resample_every`` iterations (PNAS: 25); a sequence of batch sizes runs one stage per
    size, ``iterations`` each (the papers' multilevel coarse-to-fine training). The loss is
    :func:`control_loss` (deterministic problems) or :func:`stochastic_loss` (problems with
    a diffusion; fresh Brownian increments every iteration, fixed within an L-BFGS block).
    ``optimizer="lbfgs"`` runs :func:`odeflow.optim.lbfgs` (Armijo line search) on the
    flattened parameters, restarted on each resample with ``resample_every`` iterations.

    The training settings left at None take the problem's ``fit_defaults`` (a preset's
    recipe, e.g. :class:`PnasOT`'s; not used when ``optimizer`` names another optimizer than
    the recipe's), else the defaults below (Adam, 500 iterations, batch 256, lr 1e-2, no
    drops, factor 0.1, step schedule, resampling every 25).

    Args:
        problem, value: the problem and a value function of the same dimension.
        solver: ``"auto"`` (by the problem's diffusion), ``"deterministic"``, ``"stochastic"``.
        optimizer: ``"adam"`` or ``"lbfgs"``. iterations: per stage. batch: int or sizes.
        lr: Adam's learning rate, multiplied by ``lr_factor`` at each iteration count in
            ``lr_drops`` (counted over all stages). lr_schedule: ``"step"`` (those drops)
            or ``"cosine"``: lr until ``lr_drops[0]`` (0 if empty; at most one entry), then
            a half cosine down to lr·``lr_factor`` at the last iteration
            (:func:`lr_multiplier`). Not used by L-BFGS. resample_every: K. nt: time steps
            (default the preset's ``steps``, else 8). weights: :class:`LossWeights`
            (default: the problem's).
        seed: seeds the sampling and noise generator (the run is deterministic given the
            network's initial weights). gradient: ODE gradient (``"adjoint"``/``"backprop"``).
        verbose: tqdm progress bar. checkpoint: path written at the end (and after each
            stage) by :func:`save_checkpoint`.
        callback: ``callback(iteration, terms) -> bool``; True stops training.
        process_group: a ``torch.distributed`` process group to train data-parallel over
            (one process per device, e.g. ``torch.distributed.group.WORLD`` under
            ``torchrun``), or None. Every rank calls ``fit`` with the same network and
            arguments; rank 0's initial weights are broadcast, each rank draws its
            ``batch / W`` initial states (and Brownian increments) from its own stream
            seeded ``seed + 1_000_003·rank`` (each batch size must be a multiple of the
            group size W), the gradients are averaged by one all-reduce per iteration (and
            per L-BFGS evaluation, with the loss values), and the logged terms are the whole
            batch's. So W ranks take the steps of one process on the W shares put together
            (up to summation order). Only rank 0 shows progress and writes the checkpoint;
            a callback stopping one rank stops all; a non-finite loss on one rank raises on
            all. The same pattern as :func:`odeflow.flows.fit` (see its notes on gloo).

    Returns:
        :class:`FitResult`.

    Raises:
        ValueError: bad counts, unknown solver/optimizer/schedule (or a cosine schedule
            with more than one entry in ``lr_drops``), dimension mismatch, a diffusion
            given to the deterministic solver; with a process group: settings that differ
            between the ranks or a batch that cannot be split evenly over them.
        FloatingPointError: the loss became NaN or inf (names the term).

    Reference: Ruthotto et al., arXiv 1912.01825 (BFGS, resampling every 25 iterations,
    multilevel); Onken et al., arXiv 2104.03270 (Adam).

    Example:
        >>> import torch
        >>> from odeflow.control import LQR, ValueNetwork
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <...>
        >>> pb, phi = LQR(dim=2), ValueNetwork(2, width=8).double()
        >>> res = fit(pb, phi, iterations=4, batch=[16, 32], verbose=False)
        >>> res.iterations, sorted(res.history[0])[:3]
        (8, ['hjb', 'interaction', 'objective'])
    """
    from tqdm.auto import tqdm

    _check_pair(problem, value)
    given = dict(optimizer=optimizer, iterations=iterations, batch=batch, lr=lr,
                 lr_drops=lr_drops, lr_factor=lr_factor, lr_schedule=lr_schedule,
                 resample_every=resample_every)  # fmt: skip
    cfg = _settings(problem, given)
    optimizer, iterations, batch, lr = (cfg[k] for k in ("optimizer", "iterations", "batch", "lr"))
    lr_drops, lr_factor, resample_every = (cfg[k] for k in ("lr_drops", "lr_factor",
                                                              "resample_every"))  # fmt: skip
    iterations = _check_count("iterations", iterations)
    resample_every = _check_count("resample_every", resample_every)
    stages = [batch] if isinstance(batch, int) else list(batch)
    stages = [_check_count("batch", b) for b in stages]
    if not stages:
        raise ValueError("batch must be an integer or a non-empty sequence of integers")
    nt = _check_count("nt", nt if nt is not None else getattr(problem, "steps", 8))
    if optimizer not in ("adam", "lbfgs"):
        raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {optimizer!r}")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    drops = sorted(_check_count("lr_drops", int(k)) for k in lr_drops)
    if not (isinstance(lr_factor, int | float) and 0 < lr_factor <= 1):
        raise ValueError(f"lr_factor must be in (0, 1], got {lr_factor!r}")
    schedule = cfg["lr_schedule"]
    if schedule not in _SCHEDULES:
        raise ValueError(f"lr_schedule must be 'step' or 'cosine', got {schedule!r}")
    if schedule == "cosine" and len(drops) > 1:
        raise ValueError(f"a cosine lr_schedule takes at most one entry in lr_drops (where "
                         f"the decay starts), got {drops}")  # fmt: skip
    loss_fn = _loss_fn(problem, value, solver, weights, nt, gradient)
    params = [p for p in value.parameters() if p.requires_grad]
    ref = params[0]
    comm = Comm(process_group, ref.device)
    settings = [iterations, sum(stages), len(stages), lr, float(seed), problem.dim, nt,
                resample_every, float(optimizer == "adam"), _SCHEDULES.index(schedule),
                lr_factor, len(drops), sum(drops)]  # fmt: skip
    comm.same("fit's settings (iterations, batch, lr, seed, dim, nt, resample_every, "
              "optimizer, lr schedule)", settings)  # fmt: skip
    for b in stages:
        comm.check_split(b, "batch")
    comm.broadcast_(value)
    run = _Run(problem, loss_fn, params, ref, torch.Generator().manual_seed(comm.seed(seed)),
               comm, resample_every, callback)  # fmt: skip
    t0 = time.perf_counter()
    status = "completed"
    run.bar = tqdm(total=iterations * len(stages), desc="control fit",
                   disable=not verbose or comm.rank != 0)  # fmt: skip
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else None
    total = iterations * len(stages)
    sched = None
    if opt is not None and schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k: lr_multiplier(schedule, k, total, drops, lr_factor)
        )
    elif opt is not None and drops:
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, drops, lr_factor)
    try:
        for b in stages:
            share = b // comm.world
            if opt is not None:
                stop = run.adam_stage(opt, sched, share, iterations)
            else:
                stop = run.lbfgs_stage(share, iterations)
            if checkpoint is not None and comm.rank == 0:
                save_checkpoint(problem, value, checkpoint, history=run.history)
            if stop:
                status = "callback"
                break
    finally:
        run.bar.close()
    return FitResult(
        status,
        len(run.history),
        time.perf_counter() - t0,
        run.history,
        None if checkpoint is None else Path(checkpoint),
        comm.world,
    )


def _sample(problem, n, gen, ref) -> Tensor:
    x = problem.sample_initial(n, generator=gen, dtype=ref.dtype)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{type(problem).__name__}.sample_initial returned NaN or inf")
    return x.to(device=ref.device)


class _Run:
    """The state of one :func:`fit`: this rank's sampler, the collectives, the history."""

    def __init__(self, problem, loss_fn, params, ref, gen, comm, K, callback):
        self.problem, self.loss_fn, self.params, self.ref = problem, loss_fn, params, ref
        self.gen, self.comm, self.K, self.callback = gen, comm, K, callback
        self.history: list[dict[str, float]] = []
        self.bar = None

    def _loss(self, x, gen):
        """The loss on this rank's share; a non-finite loss on any rank raises on all."""
        try:
            out, err = self.loss_fn(x, gen), None
        except FloatingPointError as exc:
            out, err = None, exc
        if self.comm.any(err is not None):
            raise err or FloatingPointError("the loss became NaN or inf on another rank")
        return out

    def _terms(self, out) -> dict[str, float]:
        """The whole batch's loss terms: the mean of the ranks' (equal shares)."""
        vals = self.comm.values([float(v.detach()) for v in out])
        return {k: v / self.comm.world for k, v in zip(out._fields, vals, strict=True)}

    def _log(self, terms, n: int = 1) -> bool:
        self.history.extend(dict(terms) for _ in range(n))
        self.bar.set_postfix(loss=f"{terms['total']:.4g}", refresh=False)
        stop = self.callback is not None and bool(self.callback(len(self.history), terms))
        return self.comm.any(stop) if self.callback is not None else False

    def adam_stage(self, opt, sched, share: int, iterations: int) -> bool:
        x = None
        for it in range(iterations):
            if it % self.K == 0:
                x = _sample(self.problem, share, self.gen, self.ref)
            opt.zero_grad(set_to_none=True)
            out = self._loss(x, self.gen)
            out.total.backward()
            self.comm.average_grads_(self.params)
            opt.step()
            if sched is not None:
                sched.step()
            self.bar.update(1)
            if self._log(self._terms(out)):
                return True
        return False

    def lbfgs_stage(self, share: int, iterations: int) -> bool:
        from torch.nn.utils import parameters_to_vector, vector_to_parameters

        from odeflow.optim import lbfgs

        params, comm = self.params, self.comm
        done = 0
        while done < iterations:
            x = _sample(self.problem, share, self.gen, self.ref)
            block_seed = int(torch.randint(0, 2**62, (1,), generator=self.gen))
            last: dict[str, Any] = {}

            def fn(theta, x=x, block_seed=block_seed, last=last):
                vector_to_parameters(theta, params)
                for p in params:
                    p.grad = None
                out = self._loss(x, torch.Generator().manual_seed(block_seed))
                out.total.backward()
                comm.average_grads_(params)
                g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p))
                               .reshape(-1) for p in params])  # fmt: skip
                last.update(self._terms(out))
                return last["total"], g.detach()

            def value_only(theta, x=x, block_seed=block_seed):
                vector_to_parameters(theta, params)
                with torch.no_grad():
                    try:
                        v = float(self.loss_fn(x, torch.Generator().manual_seed(block_seed)).total)
                    except FloatingPointError:
                        v = math.inf
                return comm.values([v])[0] / comm.world

            steps = min(self.K, iterations - done)
            res = lbfgs(fn, parameters_to_vector(params).detach(), value=value_only, maxiter=steps)
            vector_to_parameters(res.x, params)
            self.bar.update(steps)
            done += steps
            if self._log(dict(last, total=res.value), max(res.iterations, 1)):
                return True
        return False


def evaluate(
    problem: ControlProblem,
    value,
    *,
    samples: int = 1024,
    nt: int | None = None,
    seed: int = 1,
    x: Tensor | None = None,
) -> dict[str, float]:
    """Objective terms of the closed-loop feedback on fresh initial states (floats).

    Deterministic problems: ``objective, running, interaction, terminal, hjb`` (means over
    the particles, RK4 with ``nt`` steps); stochastic ones: ``objective`` (mean pathwise
    cost under the feedback by Euler–Maruyama), ``objective_stderr`` and ``value0``
    (mean Φ(x, 0)).

    Example:
        >>> from odeflow.control import LQR
        >>> pb = LQR(dim=2)
        >>> out = evaluate(pb, pb.exact_value(), samples=64)
        >>> out["hjb"] < 1e-10
        True
    """
    _check_pair(problem, value)
    ref = next(iter(value.parameters()), torch.zeros((), dtype=torch.float64))
    gen = torch.Generator().manual_seed(int(seed))
    if x is None:
        x = _sample(problem, samples, gen, ref)
    nt = nt if nt is not None else 2 * getattr(problem, "steps", 8)
    with torch.no_grad():
        if problem.diffusion is not None:
            _, cost = simulate(problem, value, x, nt=nt, generator=gen)
            v0 = value.jet(x, 0.0).value.mean()
            return {
                "objective": float(cost.mean()),
                "objective_stderr": float(cost.std() / math.sqrt(cost.numel())),
                "value0": float(v0),
            }
        ch = solve_characteristics(problem, value, x, nt=nt, gradient="backprop")
    lr = ch.log_density0 - ch.log_det if problem.uses_density else None
    G = problem.terminal_cost(ch.z, lr)
    out = {
        "running": ch.running.mean(),
        "interaction": ch.interaction.mean(),
        "terminal": G.mean(),
        "hjb": ch.hjb.mean(),
    }
    out["objective"] = out["running"] + out["interaction"] + out["terminal"]
    return {k: float(v) for k, v in out.items()}


def save_checkpoint(
    problem: ControlProblem, value: ValueNetwork, path: str | Path, **extra: Any
) -> None:
    """Write the problem's spec, the network's config and weights (readable with
    ``torch.load(weights_only=True)``); ``extra`` must be plain data (lists, dicts, numbers)."""
    if not isinstance(value, ValueNetwork) or value.config is None:
        raise TypeError("save_checkpoint needs a ValueNetwork with the default architecture")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = {k: (v if not isinstance(v, Tensor) else v.tolist()) for k, v in problem.spec().items()}
    ck = {
        "format": _FORMAT,
        "problem": spec,
        "dim": value.dim,
        "config": dict(value.config),
        "dtype": str(next(value.parameters()).dtype).replace("torch.", ""),
        "state_dict": {k: v.detach().cpu() for k, v in value.state_dict().items()},
        **extra,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ck, tmp)
    tmp.replace(path)


def load_checkpoint(
    path: str | Path, problem: ControlProblem | None = None, *, map_location=None
) -> tuple[ControlProblem, ValueNetwork]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Returns ``(problem, value)``: the given ``problem`` (checked against the checkpoint's
    spec) or the preset rebuilt from the spec.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an odeflow control checkpoint, or a checkpoint for another problem
            (the message names both).
    """
    from ._presets import make_problem

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ck = torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure is a bad file
        raise ValueError(f"{path} is not a readable odeflow control checkpoint ({exc})") from None
    if not isinstance(ck, dict) or ck.get("format") != _FORMAT:
        raise ValueError(f"{path} is not an odeflow control checkpoint (format {_FORMAT})")
    spec = ck["problem"]
    if problem is None:
        kw = {k: v for k, v in spec.items() if k != "name"}
        problem = make_problem(spec["name"], **kw)
    else:
        mine = {
            k: (v if not isinstance(v, Tensor) else v.tolist()) for k, v in problem.spec().items()
        }
        if mine != spec:
            raise ValueError(
                f"{path} holds a value function for another problem: checkpoint {spec}, "
                f"given {mine}"
            )
    cfg = ck["config"]
    value = ValueNetwork(ck["dim"], **cfg).to(getattr(torch, ck["dtype"]))
    value.load_state_dict(ck["state_dict"])
    return problem, value
