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

from ._problem import ControlProblem
from ._solver import LossWeights, _check_pair, control_loss, solve_characteristics
from ._stochastic import simulate, stochastic_loss
from ._value import ValueNetwork

__all__ = ["FitResult", "evaluate", "fit", "load_checkpoint", "save_checkpoint"]

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
    """

    status: str
    iterations: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None


def _check_count(name: str, v, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    return v


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
    optimizer: str = "adam",
    iterations: int = 500,
    batch: int | Sequence[int] = 256,
    lr: float = 1e-2,
    lr_drops: Sequence[int] = (),
    lr_factor: float = 0.1,
    resample_every: int = 25,
    nt: int | None = None,
    weights: LossWeights | None = None,
    seed: int = 0,
    gradient: str = "backprop",
    verbose: bool = True,
    checkpoint: str | Path | None = None,
    callback: Callable[[int, dict], bool] | None = None,
) -> FitResult:
    r"""Train a value network on a control problem; the network is updated in place.

    Each stage draws ``batch`` initial states from ρ₀ and redraws them every
    ``resample_every`` iterations (PNAS: 25); a sequence of batch sizes runs one stage per
    size, ``iterations`` each (the papers' multilevel coarse-to-fine training). The loss is
    :func:`control_loss` (deterministic problems) or :func:`stochastic_loss` (problems with
    a diffusion; fresh Brownian increments every iteration, fixed within an L-BFGS block).
    ``optimizer="lbfgs"`` runs :func:`odeflow.optim.lbfgs` (Armijo line search) on the
    flattened parameters, restarted on each resample with ``resample_every`` iterations.

    Args:
        problem, value: the problem and a value function of the same dimension.
        solver: ``"auto"`` (by the problem's diffusion), ``"deterministic"``, ``"stochastic"``.
        optimizer: ``"adam"`` or ``"lbfgs"``. iterations: per stage. batch: int or sizes.
        lr: Adam's learning rate, multiplied by ``lr_factor`` at each iteration count in
            ``lr_drops`` (counted over all stages). resample_every: K. nt: time steps
            (default the preset's ``steps``, else 8). weights: :class:`LossWeights`
            (default: the problem's).
        seed: seeds the sampling and noise generator (the run is deterministic given the
            network's initial weights). gradient: ODE gradient (``"adjoint"``/``"backprop"``).
        verbose: tqdm progress bar. checkpoint: path written at the end (and after each
            stage) by :func:`save_checkpoint`.
        callback: ``callback(iteration, terms) -> bool``; True stops training.

    Returns:
        :class:`FitResult`.

    Raises:
        ValueError: bad counts, unknown solver/optimizer, dimension mismatch, a diffusion
            given to the deterministic solver.
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
    loss_fn = _loss_fn(problem, value, solver, weights, nt, gradient)
    params = [p for p in value.parameters() if p.requires_grad]
    ref = params[0]
    gen = torch.Generator().manual_seed(int(seed))
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    status = "completed"
    bar = tqdm(total=iterations * len(stages), desc="control fit", disable=not verbose)
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else None
    if opt is not None and drops:
        opt = (opt, torch.optim.lr_scheduler.MultiStepLR(opt, drops, gamma=lr_factor))
    try:
        for b in stages:
            run = _adam_stage if optimizer == "adam" else _lbfgs_stage
            stop = run(
                problem,
                loss_fn,
                params,
                ref,
                gen,
                b,
                iterations,
                resample_every,
                opt,
                history,
                bar,
                callback,
            )
            if checkpoint is not None:
                save_checkpoint(problem, value, checkpoint, history=history)
            if stop:
                status = "callback"
                break
    finally:
        bar.close()
    return FitResult(
        status,
        len(history),
        time.perf_counter() - t0,
        history,
        None if checkpoint is None else Path(checkpoint),
    )


def _sample(problem, n, gen, ref) -> Tensor:
    x = problem.sample_initial(n, generator=gen, dtype=ref.dtype)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{type(problem).__name__}.sample_initial returned NaN or inf")
    return x.to(device=ref.device)


def _terms(out) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in zip(out._fields, out, strict=True)}


def _adam_stage(problem, loss_fn, params, ref, gen, b, iterations, K, opt, history, bar, cb):
    opt, sched = opt if isinstance(opt, tuple) else (opt, None)
    x = None
    for it in range(iterations):
        if it % K == 0:
            x = _sample(problem, b, gen, ref)
        opt.zero_grad(set_to_none=True)
        out = loss_fn(x, gen)
        out.total.backward()
        opt.step()
        if sched is not None:
            sched.step()
        terms = _terms(out)
        history.append(terms)
        bar.update(1)
        bar.set_postfix(loss=f"{terms['total']:.4g}", refresh=False)
        if cb is not None and cb(len(history), terms):
            return True
    return False


def _lbfgs_stage(problem, loss_fn, params, ref, gen, b, iterations, K, opt, history, bar, cb):
    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    from odeflow.optim import lbfgs

    done = 0
    while done < iterations:
        x = _sample(problem, b, gen, ref)
        block_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        last: dict[str, Any] = {}

        def fn(theta, x=x, block_seed=block_seed, last=last):
            vector_to_parameters(theta, params)
            for p in params:
                p.grad = None
            out = loss_fn(x, torch.Generator().manual_seed(block_seed))
            g = torch.autograd.grad(out.total, params, allow_unused=True)
            g = torch.cat(
                [
                    (gi if gi is not None else torch.zeros_like(p)).reshape(-1)
                    for gi, p in zip(g, params, strict=True)
                ]
            )
            last.update(_terms(out))
            return float(out.total.detach()), g.detach()

        def value_only(theta, x=x, block_seed=block_seed):
            vector_to_parameters(theta, params)
            with torch.no_grad():
                try:
                    return float(loss_fn(x, torch.Generator().manual_seed(block_seed)).total)
                except FloatingPointError:
                    return math.inf

        steps = min(K, iterations - done)
        res = lbfgs(fn, parameters_to_vector(params).detach(), value=value_only, maxiter=steps)
        vector_to_parameters(res.x, params)
        for _ in range(max(res.iterations, 1)):
            history.append(dict(last, total=res.value))
        bar.update(steps)
        done += steps
        if cb is not None and cb(len(history), history[-1]):
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
