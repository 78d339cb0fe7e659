"""``odeflow flow train|sample|eval``: OT-Flow from the command line."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import numpy as np
import torch

from odeflow._utils import check_device


def _load_data(spec: str, root: str | None, seed: int, n_toy: int):
    """Return (train, val, test, name) for a toy name, sklearn:NAME, a MAF set or a file."""
    from odeflow.flows import TABULAR_FILES, TOYS, load_sklearn, load_tabular, make_toy
    from odeflow.flows._tabular import read_npy

    from ._checks import check_memory

    if spec in TOYS:
        # (float64 draws, with their temporaries; the evaluation itself runs in chunks)
        check_memory(4 * 8 * 2 * n_toy, f"--n-test {n_toy}", "give a smaller --n-test")
        return (spec, make_toy(spec, 5000, seed=seed + 1),
                make_toy(spec, n_toy, seed=seed + 2), spec)  # fmt: skip
    if spec.startswith("sklearn:"):
        d = load_sklearn(spec.split(":", 1)[1], seed=seed)
        return d.train, d.val, d.test, spec
    if spec.lower() in TABULAR_FILES:
        if root is None:
            raise ValueError(f"--data {spec} needs --root pointing at the MAF data folder")
        d = load_tabular(spec, root)
        return d.train, d.val, d.test, spec.lower()
    path = Path(spec)
    if path.suffix in (".npy", ".csv", ".txt"):
        if not path.is_file():
            raise FileNotFoundError(f"--data {spec}: no such file")
        if path.suffix == ".npy":  # never unpickles (allow_pickle=False), never suggests it
            arr = read_npy(path, f"--data {spec}")
        else:
            try:
                arr = _load_text(path)
            except (OSError, ValueError) as exc:
                raise ValueError(
                    f"--data {spec}: not a readable {path.suffix} file ({exc})"
                ) from None
        # real numbers only: complex values would lose their imaginary part in the cast
        if arr.ndim != 2 or arr.shape[0] < 3 or arr.shape[1] < 1 or arr.dtype.kind not in "iuf":
            raise ValueError(
                f"--data {spec}: need a numeric (n, d) array with n >= 3 rows (split into "
                f"train/val/test) and d >= 1 real-valued columns, got shape {arr.shape} and "
                f"dtype {arr.dtype}"
            )
        # float64 data stay float64 (the flow casts them once to its own dtype)
        x = torch.as_tensor(np.asarray(arr, dtype=np.float64 if arr.dtype == np.float64
                                       else np.float32))  # fmt: skip
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
        x = x[perm]
        n_te = n_va = max(1, x.shape[0] // 10)
        return x[n_te + n_va :], x[n_te : n_te + n_va], x[:n_te], path.name
    raise ValueError(
        f"unknown --data {spec!r}: give a toy ({', '.join(TOYS)}), sklearn:breast_cancer, "
        f"sklearn:digits, a MAF set ({', '.join(TABULAR_FILES)}) with --root, or a "
        ".npy/.csv/.txt file"
    )


def _load_text(path: Path) -> np.ndarray:
    """A .csv file (comma-separated) or a .txt file (separated by spaces or tabs, as
    ``np.savetxt`` writes; comma-separated .txt files are read too) as a 2-D array."""
    if path.suffix == ".csv":
        return np.loadtxt(path, delimiter=",", ndmin=2)
    try:
        return np.loadtxt(path, ndmin=2)
    except ValueError as exc:
        try:
            return np.loadtxt(path, delimiter=",", ndmin=2)
        except ValueError:
            raise exc from None  # the whitespace reading's complaint


def _check_splits(spec: str, dim: int, splits: dict) -> None:
    """Refuse NaN/inf (or malformed) data in any split before any work is done, naming the
    split (a toy name stands for fresh samples and is skipped)."""
    from odeflow.flows import check_data

    for split, x in splits.items():
        if not isinstance(x, str):
            check_data(x, dim, name=f"the {split} split of --data {spec}")


def _check_fits(spec: str, dtype: torch.dtype, splits: dict) -> None:
    """Refuse data whose finite values overflow the flow's dtype (e.g. 1e300 in float64
    data for a float32 flow), naming the split, rather than report them as NaN/inf later."""
    big = torch.finfo(dtype).max
    for split, x in splits.items():
        if isinstance(x, str) or x.dtype == dtype:
            continue
        top = float(x.abs().max()) if x.numel() else 0.0
        if top > big:
            raise ValueError(
                f"the {split} split of --data {spec} holds values up to {top:.3g} in "
                f"magnitude, which overflow {str(dtype).removeprefix('torch.')} (largest "
                f"finite {big:.3g}); rescale the data, or train with --dtype float64"
            )


def _check_positive(args: argparse.Namespace, *names: str) -> None:
    """Each integer option in ``names`` (attribute names) that was given must be >= 1."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            flag = "-n" if name == "n" else "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be >= 1, got {value}")


def _check_seed(seed: int | None) -> None:
    """A given --seed must fit numpy's generators (which split and standardise the data)."""
    if seed is not None and not 0 <= seed < 2**32:
        raise ValueError(f"--seed must be an integer from 0 to 2**32 - 1, got {seed}")


def _check_out(out: str) -> None:
    """An empty --out would write into the current folder."""
    if not out:
        raise ValueError("--out is empty; give the output path, e.g. --out runs/8gaussians")


def _refuse_existing(paths: list[Path], overwrite: bool) -> None:
    """Refuse to replace outputs of an earlier run unless --overwrite was given."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{len(existing)} output(s) already exist (e.g. {existing[0]}); choose another "
            "--out or pass --overwrite"
        )


def _check_device(spec: str | None) -> None:
    """Refuse a --device this process cannot use before any data are loaded."""
    if spec is not None:
        check_device(spec, what=f"--device {spec}")


def _remove_if_empty(folder: Path, top: Path) -> None:
    """Remove ``folder`` and its parents up to ``top`` while they are empty."""
    while True:
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone)
            return
        if folder == top:
            return
        folder = folder.parent


def _process_group(device: str | None):
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): join the launcher's process group (NCCL for
    a CUDA device, else gloo) and return ``(group, device, rank, joined)`` (``joined``: this
    call initialised it); otherwise ``(None, device, 0, False)``. ``--device cuda`` means this
    rank's GPU (``LOCAL_RANK``)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, device, 0, False
    import torch.distributed as dist

    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda and torch.device(device).index is None:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    joined = not dist.is_initialized()
    if joined:
        from odeflow._utils._distributed import init_process_group  # freeable by destroy

        if cuda:
            torch.cuda.set_device(torch.device(device))
        init_process_group("nccl" if cuda else "gloo")
    return dist.group.WORLD, device, dist.get_rank(), joined


#: the files `flow train` writes into --out (samples.png only for 2-D data)
_TRAIN_OUTPUTS: tuple[str, ...] = ("flow.pt", "metrics.json", "samples.png")


def _train(args: argparse.Namespace) -> int:
    from odeflow.flows import PRESETS, OTFlow, evaluate_nll, fit, get_preset
    from odeflow.flows._plot import plot_flow_2d

    from ._checks import check_out_path, dumps, finite_json

    _check_positive(args, "iters", "batch", "width", "n_test")
    if args.lr is not None and not 0 < args.lr < math.inf:
        raise ValueError(f"--lr must be a finite number > 0, got {args.lr}")
    _check_seed(args.seed)
    _check_out(args.out)
    check_out_path(Path(args.out), "--out", folder=True)
    _check_device(args.device)
    _refuse_existing([Path(args.out) / n for n in _TRAIN_OUTPUTS], args.overwrite)
    args.seed = 0 if args.seed is None else args.seed
    args.n_test = 10_000 if args.n_test is None else args.n_test

    train, val, test, name = _load_data(args.data, args.root, args.seed, args.n_test)
    preset_name = args.preset if args.preset is not None else (name if name in PRESETS else None)
    p = get_preset(preset_name) if preset_name is not None else None
    dim = 2 if isinstance(train, str) else int(train.shape[1])
    # every split is checked now: a bad test row must not surface only after training
    _check_splits(args.data, dim, {"train": train, "validation": val, "test": test})
    # without a preset: the library's defaults (OTFlow's and fit's, odeflow.flows.default_preset)
    width = args.width if args.width is not None else (p.width if p else None)
    # dtype: --dtype, else --double, else the preset's (float64 for the 2-D toys) unless a
    # reduced --precision asks for mixed precision (an fp32 model), else float32
    if args.dtype is not None:
        dtype = getattr(torch, args.dtype)
    elif args.double:
        dtype = torch.float64
    elif p is not None and args.precision in (None, "fp32"):
        dtype = p.dtype
    else:
        dtype = torch.float32
    if dtype == torch.float64 and args.precision in ("bf16", "fp16"):  # autocast skips float64
        raise ValueError(f"--precision {args.precision} needs float32 parameters; drop "
                         "--double / --dtype float64")  # fmt: skip
    _check_fits(args.data, dtype, {"train": train, "validation": val, "test": test})
    torch.manual_seed(args.seed)
    if p is not None:  # the preset's model: width, depth, α and step counts (fit keeps them)
        flow = OTFlow.from_preset(p, dim=dim, width=width, compile=args.compile, dtype=dtype)
    else:
        flow = OTFlow(dim, width=width, compile=args.compile).to(dtype)
    out = Path(args.out)
    group, device, rank, joined = _process_group(args.device)
    top = out  # the outermost folder this run creates (removed if a failure leaves it empty)
    while not top.parent.exists():
        top = top.parent
    created = rank == 0 and not out.exists()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    try:
        res = fit(flow, train, preset=p, iters=args.iters, batch=args.batch, lr=args.lr,
                  precision=args.precision, device=device, val_data=val, seed=args.seed,
                  verbose=not args.quiet, process_group=group)  # fmt: skip
        if joined:  # fit's collectives are over: free the group (and gloo's threads) now
            import torch.distributed as dist

            group = None
            # every rank first reaches this point: a rank tearing the group down while the
            # other's last collective is still in flight left that rank's destroy hanging
            # now and then (seen with torch 2.4's gloo)
            dist.barrier()
            dist.destroy_process_group()
        if rank != 0:  # the ranks hold the same weights: rank 0 evaluates and writes
            return 0
        try:
            nll = evaluate_nll(flow, test.to(next(flow.parameters())),
                               nt=p.nt_test if p else None)  # fmt: skip
        except FloatingPointError as exc:
            nll = exc
        # what `flow eval` needs to rebuild the same test split and step count by default
        flow.save(out / "flow.pt", data=name, preset=preset_name, seed=args.seed,
                  n_test=args.n_test, nt_test=p.nt_test if p else None)  # fmt: skip
        if isinstance(nll, FloatingPointError):  # the weights are kept for inspection
            if (out / "metrics.json").exists():  # (--overwrite) an earlier run's metrics
                (out / "metrics.json").unlink()
            raise FloatingPointError(
                f"test NLL: {nll}. Wrote the trained flow to {out / 'flow.pt'} for "
                "inspection, but no metrics.json"
            )
        # config: the flow's own (its precision is not changed by fit); precision: training's
        metrics = {"data": name, "dim": dim, "preset": preset_name, "dtype": res.dtype,
                   "precision": res.precision, "test_nll": nll,
                   "best_val_nll": res.best_val_nll, "iterations": res.iterations,
                   "status": res.status, "seconds": res.seconds, "world_size": res.world_size,
                   "config": flow.config(),
                   "history": res.history}  # fmt: skip
        (out / "metrics.json").write_text(dumps(finite_json(metrics), indent=2))
        if dim == 2:
            plot_flow_2d(flow, test, out / "samples.png")
        elif (out / "samples.png").exists():  # (--overwrite) an earlier 2-D run's picture
            (out / "samples.png").unlink()
        print(f"test NLL {nll:.4f} nats after {res.iterations} iterations ({res.status}); "
              f"wrote {out / 'flow.pt'}, {out / 'metrics.json'}")  # fmt: skip
        return 0
    except BaseException:  # (interrupts too) no empty output folder is left behind
        if created:
            _remove_if_empty(out, top)
        raise


def _sample(args: argparse.Namespace) -> int:
    from odeflow.flows import load_checkpoint

    from ._checks import check_disk, check_memory, check_out_path, save_npy

    _check_positive(args, "n")
    _check_seed(args.seed)
    _check_out(args.out)
    _check_device(args.device)
    flow = load_checkpoint(args.checkpoint, map_location=args.device)
    gen = torch.Generator(device=next(flow.parameters()).device).manual_seed(args.seed)
    out = Path(args.out)
    if out.is_dir():  # an existing folder: write the default file name into it
        out = out / "samples.npy"
    elif out.suffix != ".npy":
        out = out.with_name(out.name + ".npy")  # what np.save writes
    check_out_path(out, "--out", folder=False)
    lp_out = out.with_name(out.stem + ".log_prob.npy")
    targets = [out, lp_out] if args.log_prob else [out]
    for target in targets:
        if target.exists() and target.samefile(args.checkpoint):
            raise ValueError(f"--out {target} is the checkpoint itself; choose another --out")
    _refuse_existing(targets, args.overwrite)
    itemsize = next(flow.parameters()).element_size()
    nbytes = args.n * (flow.dim + int(args.log_prob)) * itemsize
    fix = "draw fewer samples (-n), e.g. in several runs with different --seed"
    check_memory(nbytes, f"-n {args.n}", fix)
    check_disk(out.parent, nbytes, f"-n {args.n}")
    xs, lp = _draw(flow, args.n, gen, args.log_prob)
    for arr, what in ((xs, "samples"), (lp, "log-densities")):
        if arr is not None and not np.isfinite(arr).all():
            raise FloatingPointError(_nonfinite_draws(flow, arr, what))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_npy(out, xs)
    msg = f"wrote {args.n} samples of dimension {flow.dim} to {out}"
    if args.log_prob:
        save_npy(lp_out, lp)
        msg += f" and their log-densities to {lp_out}"
    print(msg)
    return 0


#: rows per solve when `flow sample` draws many samples (bounds the ODE's working memory)
_SAMPLE_CHUNK = 1 << 16


def _draw(flow, n: int, gen, log_prob: bool):
    """``n`` samples (and log-densities) as NumPy arrays, drawn in chunks of
    :data:`_SAMPLE_CHUNK` rows from one generator (one draw when ``n`` fits a chunk)."""
    dt = {torch.float32: np.float32, torch.float64: np.float64}.get(
        next(flow.parameters()).dtype, np.float32
    )
    xs = np.empty((n, flow.dim), dtype=dt)
    lp = np.empty(n, dtype=dt) if log_prob else None
    for i in range(0, n, _SAMPLE_CHUNK):
        k = min(_SAMPLE_CHUNK, n - i)
        if log_prob:
            x, p = flow.sample_and_log_prob(k, generator=gen)
            lp[i : i + k] = p.cpu().numpy()
        else:
            x = flow.sample(k, generator=gen)
        xs[i : i + k] = x.cpu().numpy()
    return xs, lp


def _nonfinite_draws(flow, arr: np.ndarray, what: str) -> str:
    from odeflow.flows._finite import nonfinite_report

    dt = str(next(flow.parameters()).dtype).removeprefix("torch.")
    return (
        f"the flow gave non-finite {what}: {nonfinite_report(torch.from_numpy(arr))}. Its "
        f"weights are finite, so the ODE solution overflowed in {dt} with "
        f"nt={flow.nt_eval} RK4 steps (the flow's map is too steep where these latent draws "
        "lead); nothing was written. Retrain the flow, or check the checkpoint"
    )


def _eval(args: argparse.Namespace) -> int:
    from odeflow.flows import evaluate_nll, load_checkpoint

    from ._checks import dumps

    _check_positive(args, "n_test", "nt")
    _check_seed(args.seed)
    _check_device(args.device)
    flow = load_checkpoint(args.checkpoint, map_location=args.device)
    # defaults from the training run: its seed (the split and standardisation of sklearn and
    # file data depend on it), test-set size and test step count
    extra = getattr(flow, "checkpoint_extra", {}) or {}
    seed = args.seed if args.seed is not None else int(extra.get("seed", 0) or 0)
    n_test = args.n_test if args.n_test is not None else int(extra.get("n_test", 10_000))
    nt = args.nt if args.nt is not None else extra.get("nt_test")
    train, val, test, name = _load_data(args.data, args.root, seed, n_test)
    if test.shape[1] != flow.dim:
        raise ValueError(f"--data {name} has dimension {test.shape[1]} but the checkpoint "
                         f"holds a flow of dim={flow.dim}")  # fmt: skip
    # every split, as `flow train` checks them: a NaN row anywhere in the file is refused
    splits = {"train": train, "validation": val, "test": test}
    _check_splits(args.data, flow.dim, splits)
    _check_fits(args.data, next(flow.parameters()).dtype, splits)
    nll = evaluate_nll(flow, test.to(next(flow.parameters())), nt=nt)  # (finite, or raises)
    print(
        dumps(
            {
                "data": name,
                "n": int(test.shape[0]),
                "seed": seed,
                "nt": nt if nt is not None else flow.nt_eval,
                "test_nll": nll,
            }
        )
    )
    return 0


def _convert_gas(args: argparse.Namespace) -> int:
    from odeflow.flows import convert_gas

    out = convert_gas(args.root, args.out, overwrite=args.overwrite)
    print(f"wrote {out}; `--data gas --root {args.root}` now reads it instead of the pickle")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "flow",
        help="train, sample and evaluate OT-Flow normalizing flows",
        description="OT-Flow (arXiv 2006.00104): train, sample, evaluate.",
    )
    fs = p.add_subparsers(dest="flow_command", metavar="ACTION", required=True)

    def data_args(q):
        q.add_argument("--data", required=True, help="toy name, sklearn:NAME, MAF set name "
                       "(with --root), or a .npy, .csv (comma-separated) or .txt "
                       "(whitespace-separated) file")  # fmt: skip
        q.add_argument("--root", default=None, help="folder with the MAF-format data")
        q.add_argument(
            "--seed",
            type=int,
            default=None,
            help="data split / toy seed (train: 0; eval: the checkpoint's)",
        )
        q.add_argument(
            "--n-test",
            type=int,
            default=None,
            help="test samples for toys (train: 10000; eval: the checkpoint's)",
        )

    t = fs.add_parser(
        "train",
        help="train a flow; writes flow.pt, metrics.json (and a PNG in 2-D)",
        description="Train an OT-Flow. Data-parallel over several processes when launched "
        "with torchrun (e.g. `torchrun --nproc-per-node 2 -m odeflow flow train ...`; "
        "--device cuda then means each rank's own GPU): --batch is the global batch, split "
        "over the ranks, and rank 0 writes the outputs.",
    )
    data_args(t)
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--preset", default=None, help="preset name (default: the dataset's, if any)")
    lib = "else the library's (odeflow.flows.default_preset)"
    t.add_argument(
        "--iters",
        type=int,
        default=None,
        help=f"training iterations (default: preset's, {lib}: a budget with early stopping "
        "on the validation split)",
    )
    t.add_argument(
        "--batch", type=int, default=None, help=f"global batch size (default: preset's, {lib})"
    )
    t.add_argument(
        "--lr", type=float, default=None, help=f"Adam learning rate (default: preset's, {lib})"
    )
    t.add_argument(
        "--width", type=int, default=None, help=f"ResNet width m of Φ (default: preset's, {lib})"
    )
    t.add_argument(
        "--precision",
        default=None,
        choices=["fp32", "tf32", "bf16", "fp16"],
        help="ODE precision: bf16/fp16 run the stages in 16 bits with fp32 accumulation "
        "(default: fp32)",
    )
    t.add_argument(
        "--device",
        default=None,
        help="torch device to train on, e.g. cpu, cuda, cuda:1 (default: cpu; refused at "
        "once if it is not available)",
    )
    dt = t.add_mutually_exclusive_group()  # --dtype float32 --double would contradict
    dt.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float64"],
        help="parameter dtype (default: the preset's, float64 for the 2-D toys as "
        "in the paper; float32 without a preset or with a reduced --precision)",
    )
    dt.add_argument("--double", action="store_true", help="same as --dtype float64")
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the outputs of an earlier run in --out (refused otherwise)",
    )
    t.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the flow's right-hand side (faster iterations, mostly "
        "on a GPU; the first iterations compile)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    s = fs.add_parser("sample", help="draw samples from a checkpoint into a .npy file")
    s.add_argument("--checkpoint", required=True, help="flow.pt written by `flow train`")
    s.add_argument("-n", type=int, default=10_000, help="number of samples (default: 10000)")
    s.add_argument(
        "--out",
        default="samples.npy",
        help="output .npy file (.npy is appended if missing), or an existing folder to "
        "write samples.npy into (default: samples.npy)",
    )
    s.add_argument("--seed", type=int, default=0, help="seed of the latent draws (default: 0)")
    s.add_argument(
        "--log-prob",
        action="store_true",
        help="also write log p of each sample (integrated along the sampling path) to "
        "OUT_STEM.log_prob.npy",
    )
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing output files (refused otherwise; never the checkpoint)",
    )
    s.add_argument(
        "--device",
        default=None,
        help="torch device to sample on, e.g. cuda (default: cpu; the draws of a seed depend "
        "on the device's generator)",
    )
    s.set_defaults(func=_sample)

    e = fs.add_parser("eval", help="test NLL of a checkpoint on a dataset")
    e.add_argument("--checkpoint", required=True, help="flow.pt written by `flow train`")
    data_args(e)
    e.add_argument(
        "--nt",
        type=int,
        default=None,
        help="RK4 steps (default: the training run's test steps, else nt_eval)",
    )
    e.add_argument("--device", default=None, help="torch device to evaluate on (default: cpu)")
    e.set_defaults(func=_eval)

    c = fs.add_parser(
        "convert-gas",
        help="convert MAF's gas/ethylene_CO.pickle once into gas/ethylene_CO.npy",
        description="Read MAF's GAS pickle with a restricted reader (only the numpy/pandas "
        "classes a DataFrame of numbers needs; nothing else in the file is run) and save "
        "its data columns as gas/ethylene_CO.npy, which `--data gas` then reads instead.",
    )
    c.add_argument("--root", required=True, help="the MAF data folder (holding gas/)")
    c.add_argument("--out", default=None, help="the .npy to write (default: "
                   "ROOT/gas/ethylene_CO.npy, the file `--data gas` looks for)")  # fmt: skip
    c.add_argument("--overwrite", action="store_true", help="replace an existing .npy")
    c.set_defaults(func=_convert_gas)
