"""``odeflow control train|eval|list``: neural optimal control from the command line."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

_OUTPUTS = ("model.pt", "metrics.json", "solution.png")
#: training settings of `control train` where neither a flag nor the preset's fit_defaults
#: set them
_TRAIN_DEFAULTS = {"optimizer": "lbfgs", "iterations": 200, "batch": 256, "lr": 1e-2}


def _list(args: argparse.Namespace) -> int:
    from odeflow.control import PRESETS

    for name, cls in PRESETS.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:12s} {doc}")
    return 0


def _device(spec: str | None) -> torch.device:
    dev = torch.device(spec or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: CUDA is not available here; use --device cpu")
    return dev


def _references(problem, value, samples: int = 1000) -> dict:
    """Reference figures for the presets that have one (floats)."""
    from odeflow.control import HJB, LQR, AgentProblem, GaussianOT
    from odeflow.control._agents import agent_metrics as _agent_metrics

    ref = next(value.parameters())
    out: dict = {}
    if isinstance(problem, LQR):
        x = problem.sample_initial(
            1000, generator=torch.Generator().manual_seed(5), dtype=ref.dtype
        )
        out["riccati_value"] = float(problem.exact_value()(x.cpu().double(), 0.0).mean())
        out["closed_loop_cost"] = _objective(problem, value, x)
        out["relative_gap"] = out["closed_loop_cost"] / out["riccati_value"] - 1
    elif isinstance(problem, HJB):
        est = problem.reference(samples=10**5)
        x0 = problem.x0.to(ref)[None]
        with torch.no_grad():
            u00 = float(value(x0, 0.0))
        out.update(reference=est.value, reference_stderr=est.stderr, value_at_x0=u00,
                   relative_error=abs(u00 - est.value) / abs(est.value))  # fmt: skip
    elif isinstance(problem, GaussianOT):
        out["reference_cost"] = problem.reference().cost
    elif isinstance(problem, AgentProblem):
        out.update(_agent_metrics(problem, value, rollouts=min(samples, 1000)))
    return out


def _objective(problem, value, x) -> float:
    from odeflow.control import evaluate

    return evaluate(problem, value, x=x)["objective"]


def _metrics(problem, value, samples: int, seed: int) -> dict:
    from odeflow.control import evaluate

    m = evaluate(problem, value, samples=samples, seed=seed)
    m.update(_references(problem, value, samples))
    bad = [k for k, v in m.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"non-finite evaluation figures {bad}: the run diverged")
    return m


def _train(args: argparse.Namespace) -> int:
    from odeflow.control import ValueNetwork, fit, make_problem, plot_solution

    if not args.out:
        raise ValueError("--out is empty; give the output folder, e.g. --out runs/lqr")
    out = Path(args.out)
    existing = [str(out / n) for n in _OUTPUTS if (out / n).exists()]
    if existing and not args.overwrite:
        raise FileExistsError(
            f"{len(existing)} output(s) already exist (e.g. {existing[0]}); choose another "
            "--out or pass --overwrite"
        )
    dev = _device(args.device)
    problem = make_problem(args.problem, dim=args.dim)
    torch.manual_seed(args.seed)
    dtype = torch.float32 if args.float32 else torch.float64
    value = ValueNetwork(problem.dim, width=args.width).to(device=dev, dtype=dtype)
    # flags given > the preset's fit_defaults > this command's defaults
    given = {"optimizer": args.optimizer, "iterations": args.iterations, "batch": args.batch,
             "lr": args.lr}  # fmt: skip
    kw = {**_TRAIN_DEFAULTS, **getattr(problem, "fit_defaults", {})}
    kw.update({k: v for k, v in given.items() if v is not None})
    result = fit(problem, value, nt=args.nt, seed=args.seed, verbose=not args.quiet,
                 checkpoint=out / "model.pt", **kw)  # fmt: skip
    metrics = {"problem": problem.spec(), "iterations": result.iterations,
               "seconds": result.seconds, "final_loss": result.history[-1]["total"],
               **_metrics(problem, value.cpu(), args.eval_samples, args.seed + 1)}  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    if problem.dim >= 2 and not args.no_plot:
        try:
            plot_solution(problem, value.cpu(), out / "solution.png")
            if hasattr(problem, "n_agents"):  # multi-agent problems: their trajectories
                from odeflow.control._agents_plot import write_pictures

                write_pictures(problem, value.cpu(), out)
        except ImportError as exc:
            print(f"odeflow control train: note: no picture ({exc})")
    print(json.dumps({k: v for k, v in metrics.items() if k != "problem"}, default=str))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from odeflow.control import load_checkpoint

    problem, value = load_checkpoint(args.checkpoint)
    metrics = _metrics(problem, value, args.samples, args.seed)
    if args.shock:
        from odeflow.control._shock import shock_experiment

        metrics["shock"] = shock_experiment(problem, value, time=args.shock_time,
                                            size=args.shock_size, seed=args.seed)  # fmt: skip
    print(json.dumps(metrics, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "control",
        help="neural optimal control and mean-field games (train, evaluate, list presets)",
        description="Value-function networks for optimal control and MFG problems "
        "(Ruthotto et al., arXiv 1912.01825; Onken et al., arXiv 2104.03270).",
    )
    cs = p.add_subparsers(dest="control_command", metavar="ACTION", required=True)
    ls = cs.add_parser("list", help="list the preset problems")
    ls.set_defaults(func=_list)

    t = cs.add_parser("train", help="train a value network; writes model.pt, metrics.json "
                      "and solution.png into --out")  # fmt: skip
    t.add_argument("--problem", required=True, help="preset name (see `odeflow control list`)")
    t.add_argument("--dim", type=int, default=None, help="state dimension (preset default)")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--optimizer", choices=("adam", "lbfgs"), default=None,
                   help="default: the preset's recipe, else lbfgs")  # fmt: skip
    t.add_argument("--iterations", type=int, default=None,
                   help="default: the preset's recipe, else 200")  # fmt: skip
    t.add_argument("--batch", type=int, default=None,
                   help="default: the preset's recipe, else 256")  # fmt: skip
    t.add_argument(
        "--lr",
        type=float,
        default=None,
        help="Adam's learning rate (default: the preset's recipe, else 1e-2)",
    )
    t.add_argument("--nt", type=int, default=None, help="time steps (preset default)")
    t.add_argument("--width", type=int, default=16, help="ResNet width of Φ")
    t.add_argument("--float32", action="store_true", help="train in float32 (default float64)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default=None, help="cpu (default) or cuda")
    t.add_argument("--eval-samples", type=int, default=1024)
    t.add_argument("--no-plot", action="store_true", help="skip solution.png")
    t.add_argument("--overwrite", action="store_true", help="replace an earlier run's outputs")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    e = cs.add_parser("eval", help="evaluate a checkpoint (JSON to stdout)")
    e.add_argument("--checkpoint", required=True, help="model.pt written by `control train`")
    e.add_argument("--samples", type=int, default=1024)
    e.add_argument("--seed", type=int, default=1)
    e.add_argument("--shock", action="store_true", help="also run the shock experiment: a "
                   "state kick mid-horizon, the feedback recovers (cost-to-go vs Φ)")  # fmt: skip
    e.add_argument("--shock-time", type=float, default=None, help="kick time (default T/2)")
    e.add_argument("--shock-size", type=float, default=0.5,
                   help="norm of a random kick (problems with a preset kick use it)")  # fmt: skip
    e.set_defaults(func=_eval)
