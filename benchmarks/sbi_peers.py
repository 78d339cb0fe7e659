"""COT-Flow and PCP-Map (odeflow) against a conditional neural spline flow on sbibm tasks.

For each task and simulation budget, in one run with the same seeds and the same
simulations: odeflow ``COTFlow`` and ``PCPMap`` at the library's defaults
(``PCPMap(dθ, dy).fit(θ, y)``: no setting is tuned here), and the peers: sbi's NPE with its
defaults (``sbi.inference.NPE``: a MAF in sbi 0.27; installed with ``pip install --no-deps
sbi nflows skorch`` plus ``tabulate tensorboard``, never touching torch) and zuko's
conditional NSF trained with NPE's default loop (batch 200, lr 5·10⁻⁴, early stopping after
20 epochs). Each model learns
the posterior θ | y from (θ, y) pairs of odeflow's own batched simulators
(:func:`odeflow.flows.sbi_task`), then draws posterior samples for sbibm's observations;
the score is C2ST against sbibm's reference posterior samples, read straight from the
sbibm 1.1.0 wheel (``pip download sbibm==1.1.0 --no-deps -d DIR``; nothing of sbibm is
imported).

C2ST as sbibm defines it: both sample sets z-scored by the reference samples' mean and
standard deviation, an ``MLPClassifier`` (relu, two hidden layers of 10·dim, adam,
max_iter 10000) scored by 5-fold cross-validated accuracy (KFold shuffled, seeded); 0.5 is
perfect, 1.0 is fully separable. Reported with the training time and the time to draw
the samples.

    python benchmarks/sbi_peers.py --wheel /tmp/sbibm/sbibm-1.1.0-py2.py3-none-any.whl \\
        --quick --json benchmarks/results/cpu_sbi_peers.json

``--quick``: 10³ simulations, tasks two_moons and slcp, 3 observations, 2 000 posterior
samples per observation (sbibm: 10 observations, 10 000 samples).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np
import torch

from odeflow.flows import COTFlow, PCPMap, sbi_task
from odeflow.flows._sbi_plot import sbibm_reference


def reference(wheel: str, task: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """sbibm's observation k (1..10) and its reference posterior samples, from the wheel."""
    obs, ref = sbibm_reference(wheel, task, k)
    return obs[None], ref


def c2st(ref: np.ndarray, est: np.ndarray, seed: int = 1, folds: int = 5) -> float:
    """Classifier two-sample test accuracy as sbibm defines it (0.5: indistinguishable)."""
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.neural_network import MLPClassifier

    mean, std = ref.mean(0), ref.std(0, ddof=1)
    a, b = (ref - mean) / std, (est - mean) / std
    data = np.concatenate([a, b])
    target = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    ndim = data.shape[1]
    clf = MLPClassifier(activation="relu", hidden_layer_sizes=(10 * ndim, 10 * ndim),
                        max_iter=10000, solver="adam", random_state=seed)  # fmt: skip
    cv = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(clf, data, target, cv=cv, scoring="accuracy")))


class _Zuko:
    """zuko's conditional NSF (NPE's default estimator: 5 transforms, 50 hidden units),
    trained as sbi's NPE trains by default: standardized data, 10 % validation, batch 200,
    Adam at 5·10⁻⁴, gradients clipped at norm 5, stopped after 20 epochs without a better
    validation loss, the best weights restored."""

    def __init__(self, theta_dim, y_dim):
        import zuko

        self.flow = zuko.flows.NSF(theta_dim, y_dim, transforms=5, hidden_features=(50, 50))

    def fit(self, theta, y, seed, max_epochs=2000):
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(theta.shape[0], generator=g)
        nv = max(1, theta.shape[0] // 10)
        iv, it = perm[:nv], perm[nv:]
        self.m = (theta[it].mean(0), theta[it].std(0), y[it].mean(0), y[it].std(0))
        ts, ys = (theta - self.m[0]) / self.m[1], (y - self.m[2]) / self.m[3]
        opt = torch.optim.Adam(self.flow.parameters(), lr=5e-4)
        best, stall, state = float("inf"), 0, None
        for _ in range(max_epochs):
            order = it[torch.randperm(it.numel(), generator=g)]
            for i in range(0, order.numel(), 200):
                idx = order[i : i + 200]
                loss = -self.flow(ys[idx]).log_prob(ts[idx]).mean()
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.flow.parameters(), 5.0)
                opt.step()
            with torch.no_grad():
                v = float(-self.flow(ys[iv]).log_prob(ts[iv]).mean())
            if v < best:
                best, stall = v, 0
                state = {k: t.clone() for k, t in self.flow.state_dict().items()}
            else:
                stall += 1
                if stall >= 20:
                    break
        self.flow.load_state_dict(state)

    def sample(self, y, n):
        with torch.no_grad():
            s = self.flow((y - self.m[2]) / self.m[3]).sample((n,))
        return s * self.m[1] + self.m[0]


def _prior(task):
    """The task's prior as a torch distribution (what sbi's NPE needs for its support)."""
    from torch.distributions import Independent, LogNormal, Normal, Uniform

    f = torch.float32
    if task == "gaussian_linear":
        return Independent(Normal(torch.zeros(10), 0.1**0.5 * torch.ones(10)), 1)
    if task == "lotka_volterra":
        loc = torch.tensor([-0.125, -3.0, -0.125, -3.0], dtype=f)
        return Independent(LogNormal(loc, 0.5 * torch.ones(4)), 1)
    b, d = {"two_moons": (1.0, 2), "slcp": (3.0, 5)}[task]
    return Independent(Uniform(-b * torch.ones(d), b * torch.ones(d)), 1)


class _SbiNPE:
    """sbi's NPE (``sbi.inference.NPE``) with its defaults: its default density estimator
    and training loop (early stopping on 10 % validation), the task's prior."""

    def __init__(self, task):
        import tempfile

        from sbi.inference import NPE
        from sbi.utils.tracking import TensorBoardTracker
        from torch.utils.tensorboard import SummaryWriter

        # sbi logs to TensorBoard in ./sbi-logs by default: into a temporary folder instead
        self._logs = tempfile.TemporaryDirectory(prefix="sbi-logs-")
        tracker = TensorBoardTracker(SummaryWriter(log_dir=self._logs.name))
        self.inf = NPE(prior=_prior(task), show_progress_bars=False, tracker=tracker)

    def fit(self, theta, y, seed):
        torch.manual_seed(seed)
        est = self.inf.append_simulations(theta.float(), y.float()).train()
        self.post = self.inf.build_posterior(est)

    def sample(self, y, n):
        return self.post.sample((n,), x=y.float(), show_progress_bars=False)


class _Odeflow:
    """odeflow's model at the library's defaults (``PCPMap(dθ, dy)``, ``fit(θ, y)``)."""

    def __init__(self, kind, theta_dim, y_dim, lr=None):
        self.model = (COTFlow if kind == "cot-flow" else PCPMap)(theta_dim, y_dim)
        self.kw = {} if lr is None else {"lr": lr}  # --odeflow-lr: a labelled, tuned row

    def fit(self, theta, y, seed):
        self.model.fit(theta, y, seed=seed, verbose=False, **self.kw)

    def sample(self, y, n):
        return self.model(y).sample((n,))


#: posterior samples kept per (task, method) at observation 1 (and of the reference)
_KEEP = 400


def run(args) -> tuple[list, dict]:
    rows, refs = [], {}
    for task_name in args.tasks:
        task = sbi_task(task_name)
        for n_sim in args.simulations:
            g = torch.Generator().manual_seed(args.seed)
            theta, y = task.simulate(n_sim, generator=g, dtype=torch.float32)
            keep = torch.isfinite(theta).all(1) & torch.isfinite(y).all(1)
            dropped = int((~keep).sum())
            theta, y = theta[keep], y[keep]
            for method in args.methods:
                torch.manual_seed(args.seed)
                if method == "zuko-nsf":
                    model = _Zuko(task.theta_dim, task.y_dim)
                elif method == "sbi-npe":
                    try:
                        model = _SbiNPE(task_name)
                    except ImportError as exc:  # sbi's stack is not installed: say so
                        print(f"sbi-npe skipped: {exc}", flush=True)
                        continue
                else:
                    model = _Odeflow(method, task.theta_dim, task.y_dim, args.odeflow_lr)
                label = method
                if args.odeflow_lr is not None and method in ("cot-flow", "pcp-map"):
                    label = f"{method}@lr{args.odeflow_lr:g}"
                t0 = time.perf_counter()
                model.fit(theta, y, args.seed)
                train_s = time.perf_counter() - t0
                scores, sample_s, keep_est = [], [], None
                for k in range(1, args.observations + 1):
                    obs, ref = reference(args.wheel, task_name, k)
                    yo = torch.as_tensor(obs[0], dtype=torch.float32)
                    t0 = time.perf_counter()
                    est = model.sample(yo, args.samples).double().numpy()
                    sample_s.append(time.perf_counter() - t0)
                    scores.append(c2st(ref[: args.samples], est))
                    if k == 1:  # a few samples at observation 1, for the docs' corner plot
                        keep_est = np.round(est[:_KEEP], 4).tolist()
                        refs.setdefault(task_name, np.round(ref[:_KEEP], 4).tolist())
                row = {"task": task_name, "simulations": n_sim, "dropped": dropped,
                       "method": label, "c2st": float(np.mean(scores)), "c2st_each": scores,
                       "train_s": train_s, "sample_s": float(np.mean(sample_s)),
                       "samples": args.samples, "samples_obs1": keep_est}  # fmt: skip
                rows.append(row)
                print(f"{task_name:16s} {n_sim:7d} {label:9s} C2ST {row['c2st']:.3f} "
                      f"train {train_s:7.1f}s sample {row['sample_s']:.2f}s",
                      flush=True)  # fmt: skip
                if args.json:
                    _write(args, rows, refs, complete=False)
    return rows, refs


def _write(args, rows, refs, complete):
    meta = {"device": "cpu", "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "quick": args.quick,
            "command": "python benchmarks/sbi_peers.py " + " ".join(sys.argv[1:]),
            "observations": args.observations, "samples": args.samples, "seed": args.seed,
            "sbi": _version("sbi"), "zuko": _version("zuko"),
            "peer_note": "odeflow models at the library's defaults; sbi-npe: sbi's NPE (MAF) "
                         "with its defaults; zuko-nsf: zuko's NSF trained with NPE's loop",
            "complete": complete}  # fmt: skip
    with open(args.json, "w") as fh:
        json.dump({"meta": meta, "results": rows, "reference_obs1": refs}, fh)


def _version(name):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--wheel", required=True, help="path of sbibm-1.1.0-py2.py3-none-any.whl")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tasks", nargs="+", default=None)
    p.add_argument("--simulations", nargs="+", type=int, default=None)
    p.add_argument("--methods", nargs="+", default=["cot-flow", "pcp-map", "sbi-npe", "zuko-nsf"])
    p.add_argument("--observations", type=int, default=None)
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--odeflow-lr",
        type=float,
        default=None,
        help="Adam lr of COT-Flow/PCP-Map instead of fit's default (rows: METHOD@lrX)",
    )
    p.add_argument("--json", default=None)
    args = p.parse_args()
    q = args.quick
    full = ["gaussian_linear", "two_moons", "slcp", "lotka_volterra"]
    args.tasks = args.tasks or (["two_moons", "slcp"] if q else full)
    args.simulations = args.simulations or ([1000] if q else [1000, 10_000, 100_000])
    args.observations = args.observations or (3 if q else 10)
    args.samples = args.samples or (2000 if q else 10_000)
    rows, refs = run(args)
    if args.json:
        _write(args, rows, refs, complete=True)


if __name__ == "__main__":
    main()
