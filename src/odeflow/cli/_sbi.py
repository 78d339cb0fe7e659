"""``odeflow sbi train|sample|list``: COT-Flow and PCP-Map posteriors from the command line."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from ._flow import (
    _check_device,
    _check_out,
    _check_positive,
    _check_seed,
    _load_text,
    _refuse_existing,
    _remove_if_empty,
)

#: the files `sbi train` writes into --out
_TRAIN_OUTPUTS: tuple[str, ...] = ("model.pt", "metrics.json", "posterior.png")


def _simulate(task, n: int, seed: int):
    """``n`` simulations of ``task`` (float32), the non-finite ones dropped and counted."""
    from ._checks import check_memory

    check_memory(8 * 4 * n * (task.theta_dim + task.y_dim), f"--simulations {n}",
                 "give fewer --simulations")  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    theta, y = task.simulate(n, generator=g, dtype=torch.float32)
    theta, y = theta.float(), y.float()
    keep = torch.isfinite(theta).all(1) & torch.isfinite(y).all(1)
    dropped = int((~keep).sum())
    if int(keep.sum()) < 10:
        raise ValueError(
            f"only {int(keep.sum())} of {n} simulations are finite; give more --simulations"
        )
    return theta[keep], y[keep], dropped


def _observation(task, seed: int, wheel: str | None):
    """(y*, reference samples or None, θ* or None, where from): sbibm's observation 1 with
    its reference posterior (``--reference``), else a simulation at a prior draw."""
    if wheel is not None:
        from odeflow.flows._sbi_plot import sbibm_reference

        obs, ref = sbibm_reference(wheel, task.name, 1)
        return torch.as_tensor(obs, dtype=torch.float32), ref, None, "sbibm observation 1"
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(100):  # a prior draw whose simulation is finite
        theta, y = task.simulate(1, generator=g, dtype=torch.float32)
        if bool(torch.isfinite(y).all()):
            return y[0].float(), None, theta[0].double().numpy(), "simulation at a prior draw"
    raise RuntimeError(f"no finite simulation of {task.name} in 100 prior draws")


def _train(args: argparse.Namespace) -> int:
    from odeflow.flows import sbi_task
    from odeflow.flows._sbi_plot import plot_corner
    from odeflow.flows._sbi_presets import build_sbi_model, get_sbi_preset

    from ._checks import check_out_path, dumps, finite_json

    _check_positive(args, "simulations", "iters", "batch", "width")
    if args.lr is not None and not 0 < args.lr < math.inf:
        raise ValueError(f"--lr must be a finite number > 0, got {args.lr}")
    _check_seed(args.seed)
    _check_out(args.out)
    out = Path(args.out)
    check_out_path(out, "--out", folder=True)
    _check_device(args.device)
    if args.reference is not None and not Path(args.reference).is_file():
        raise FileNotFoundError(f"--reference {args.reference}: no such file (the sbibm wheel: "
                                "`pip download sbibm==1.1.0 --no-deps -d DIR`)")  # fmt: skip
    _refuse_existing([out / n for n in _TRAIN_OUTPUTS], args.overwrite)
    preset = get_sbi_preset(args.task, args.method)  # (unknown task/method named here)
    task = sbi_task(args.task)
    theta, y, dropped = _simulate(task, args.simulations, args.seed)
    y_star, ref, truth, where = _observation(task, args.seed, args.reference)
    torch.manual_seed(args.seed)
    model = build_sbi_model(args.task, args.method,
                            **({} if args.width is None else {"width": args.width}))  # fmt: skip
    model = model.to(args.device or "cpu")
    kw = dict(preset.fit)
    kw.update({k: v for k, v in (("iters", args.iters), ("batch", args.batch), ("lr", args.lr))
               if v is not None})  # fmt: skip
    top = out  # the outermost folder this run creates (removed if a failure leaves it empty)
    while not top.parent.exists():
        top = top.parent
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        res = model.fit(theta, y, seed=args.seed, verbose=not args.quiet, **kw)
        model.save(out / "model.pt")
        t0 = time.perf_counter()
        post = model(y_star.to(model._ref)).sample((args.n_plot,)).cpu().double().numpy()
        sample_s = time.perf_counter() - t0
        if not np.isfinite(post).all():
            raise FloatingPointError("the trained model gave non-finite posterior samples")
        plot_corner(post, out / "posterior.png", reference=ref, truth=truth,
                    title=f"{args.task}, {preset.method}, {args.simulations} simulations "
                          f"({where})")  # fmt: skip
        metrics = {"task": args.task, "method": preset.method, "simulations": args.simulations,
                   "dropped": dropped, "seed": args.seed, "fit": kw,
                   "config": model.config(), "observation": where,
                   "y_observed": y_star.tolist(), "best_val_nll": res.best_val_nll,
                   "iterations": res.iterations, "status": res.status,
                   "seconds": res.seconds, "sample_seconds": sample_s,
                   "posterior_mean": post.mean(0).tolist(),
                   "posterior_std": post.std(0).tolist(),
                   "reference_mean": None if ref is None else ref.mean(0).tolist(),
                   "theta_true": None if truth is None else truth.tolist(),
                   "history": res.history}  # fmt: skip
        (out / "metrics.json").write_text(dumps(finite_json(metrics), indent=2))
    except BaseException:  # (interrupts too) no empty output folder is left behind
        if created:
            _remove_if_empty(out, top)
        raise
    print(f"{preset.method} on {args.task}: validation NLL {res.best_val_nll:.4f} after "
          f"{res.iterations} iterations ({res.status}, {dropped} simulations dropped); wrote "
          f"{out / 'model.pt'}, {out / 'metrics.json'}, {out / 'posterior.png'}")  # fmt: skip
    return 0


def load_conditional(path: str | Path, map_location=None):
    """A COT-Flow or PCP-Map checkpoint, its class read from the file (weights_only=True)."""
    from odeflow.flows import COTFlow, PCPMap
    from odeflow.flows._checkpoint import load_payload

    path = Path(path)
    ck = load_payload(path, map_location, "pass the model.pt written by `odeflow sbi train`",
                      example="model.pt")  # fmt: skip
    fmt = ck.get("format") if isinstance(ck, dict) else None
    cls = {COTFlow._FORMAT: COTFlow, PCPMap._FORMAT: PCPMap}.get(fmt)
    if cls is None:
        raise ValueError(f"{path} is not a COT-Flow or PCP-Map checkpoint (format {fmt!r}); "
                         "pass the model.pt written by `odeflow sbi train`")  # fmt: skip
    return cls.load(path, map_location=map_location)


def _read_observation(spec: str, y_dim: int) -> torch.Tensor:
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--observation {spec}: no such file")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            arr = _load_text(path)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"--observation {spec}: not a readable .npy/.csv/.txt file ({exc})"
        ) from None
    arr = np.asarray(arr)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"--observation {spec}: need real numbers, got dtype {arr.dtype}")
    arr = np.atleast_2d(arr).astype(np.float64)
    if arr.ndim != 2 or arr.shape[1] != y_dim:
        raise ValueError(f"--observation {spec}: need rows of {y_dim} values (the model's "
                         f"y_dim), got shape {arr.shape}")  # fmt: skip
    if not np.isfinite(arr).all():
        raise ValueError(f"--observation {spec} holds NaN or inf")
    return torch.as_tensor(arr)


def _sample(args: argparse.Namespace) -> int:
    from ._checks import check_memory, check_out_path, save_npy

    _check_positive(args, "n")
    _check_seed(args.seed)
    _check_out(args.out)
    _check_device(args.device)
    model = load_conditional(args.checkpoint, map_location=args.device)
    y = _read_observation(args.observation, model.y_dim)
    out = Path(args.out)
    if out.is_dir():
        out = out / "samples.npy"
    elif out.suffix != ".npy":
        out = out.with_name(out.name + ".npy")
    check_out_path(out, "--out", folder=False)
    if out.exists() and out.samefile(args.checkpoint):
        raise ValueError(f"--out {out} is the checkpoint itself; choose another --out")
    _refuse_existing([out], args.overwrite)
    check_memory(8 * 40 * args.n * y.shape[0] * model.x_dim, f"-n {args.n}", "draw fewer samples")
    torch.manual_seed(args.seed)
    xs = model(y.to(model._ref)).sample((args.n,)).transpose(0, 1).cpu().numpy()
    if not np.isfinite(xs).all():
        raise FloatingPointError("the model gave non-finite samples; nothing was written")
    xs = xs[0] if xs.shape[0] == 1 else xs
    out.parent.mkdir(parents=True, exist_ok=True)
    save_npy(out, xs)
    print(f"wrote {args.n} posterior samples per observation, shape {xs.shape}, to {out}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from odeflow.flows import SBI_TASKS
    from odeflow.flows._sbi_presets import SBI_PRESETS

    print(f"{'task':20s} {'θ dim':>5s} {'y dim':>5s}  presets")
    for name, t in SBI_TASKS.items():
        ps = [SBI_PRESETS[name, m] for m in ("cotflow", "pcpmap")]
        desc = "; ".join(f"{p.method}: {dict(p.model)} {dict(p.fit)}" for p in ps)
        print(f"{name:20s} {t.theta_dim:5d} {t.y_dim:5d}  {desc}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from odeflow.flows import SBI_TASKS
    from odeflow.flows._sbi_presets import SBI_METHODS

    p = sub.add_parser(
        "sbi",
        help="simulation-based inference with COT-Flow and PCP-Map",
        description="Posterior estimation θ | y from simulations (arXiv 2310.16975).",
    )
    ss = p.add_subparsers(dest="sbi_command", metavar="ACTION", required=True)
    t = ss.add_parser("train", help="simulate, train, write model.pt, metrics.json and a "
                      "corner plot posterior.png")  # fmt: skip
    t.add_argument("--task", required=True, choices=list(SBI_TASKS), help="benchmark task")
    t.add_argument("--method", required=True, choices=list(SBI_METHODS), help="the model")
    t.add_argument("--simulations", type=int, default=1000, help="simulation budget (1000)")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--seed", type=int, default=0, help="seed of simulations and training (0)")
    t.add_argument("--iters", type=int, default=None, help="iterations (default: preset's)")
    t.add_argument("--batch", type=int, default=None, help="batch size (default: preset's)")
    t.add_argument("--lr", type=float, default=None, help="Adam learning rate (preset's)")
    t.add_argument("--width", type=int, default=None, help="network width (preset's)")
    t.add_argument(
        "--reference",
        default=None,
        help="sbibm-1.1.0 wheel: plot at its observation 1 over the reference posterior "
        "(else at a simulated one)",
    )
    t.add_argument("--n-plot", type=int, default=5000, help="posterior samples plotted (5000)")
    t.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cpu)")
    t.add_argument("--overwrite", action="store_true", help="replace an earlier run's outputs")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    s = ss.add_parser("sample", help="posterior samples for observations into a .npy file")
    s.add_argument("--checkpoint", required=True, help="model.pt written by `sbi train`")
    s.add_argument("--observation", required=True, help=".npy/.csv/.txt file of one or more "
                   "rows of y_dim values")  # fmt: skip
    s.add_argument("-n", type=int, default=10_000, help="samples per observation (10000)")
    s.add_argument("--out", default="samples.npy", help="output .npy: (n, θ dim) for one "
                   "observation, (rows, n, θ dim) for several (default: samples.npy)")  # fmt: skip
    s.add_argument("--seed", type=int, default=0, help="seed of the latent draws (0)")
    s.add_argument("--device", default=None, help="torch device (default: cpu)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output")
    s.set_defaults(func=_sample)

    ls = ss.add_parser("list", help="tasks, their dimensions and the methods' presets")
    ls.set_defaults(func=_list)
