"""Warm start of swap-12's value network from IPOPT's open-loop optimal solutions.

The recipe of ``_quadcopter_warmstart`` (Nakamura-Zimmerer, Gong & Kang, SIAM J. Sci.
Comput. 2021, arXiv 1907.05317) applied to the 12-agent swap: trained from a random network,
the feedback settles in a worse local optimum (two agents make large detours, +19 % over
IPOPT); regressed first on IPOPT's solutions, Φ starts in the optimum's basin. Needs CasADi
(the ``bench`` extra), like ``_apps_agents``.

Data: IPOPT (``_apps_agents.solve_ipopt``, nt = 50) from the nominal start and from ``n0``
perturbed starts drawn like the closed-loop rollouts' (``safe_starts``, scale 0.25 = a
quarter of ρ₀'s spread), each warm-started from the nominal solution shifted to its start
(so that all solutions stay in the nominal optimum's homotopy class; the better of that and
IPOPT's default guess is kept). Along each solution (X₀…X_N, U_k = (X_{k+1} − X_k)/h) the
cost-to-go V_k = Σ_{j ≥ k} s_j + G(X_N) with the transcription's step cost
s_j = h/6·(c(X_j) + 4c(X_j + hU_j/2) + c(X_j + hU_j)) + h|U_j|²/2 (c = α₂W, the inflated
interaction), and the costate λ_k = ∇ₓV_k by the discrete adjoint sweep with the controls
held, λ_N = α₀(X_N − y), λ_k = ∂s_k/∂X_k + λ_{k+1} (the state enters the running cost here,
unlike the quadcopter's). By the envelope theorem this is the gradient of the optimal
cost-to-go; since the NLP's step cost reads (X_k, U_k) alone, in CasADi's sign convention
(Lagrangian f + μᵀg) it equals −μ of the initial constraint at k = 0 and −μ_{k−1}, the
multiplier of X_k − X_{k−1} − hU_{k−1} = 0, at k ≥ 1 (checked by :func:`check_costates`).

Then :func:`odeflow.control.fit_value_to_data` on the ``ResidualValue`` (the LQR baseline
is fixed; only the network is fitted) and the HJB-penalised / objective fine-tuning of
``_apps_agents.RECIPES["swap12"]`` (``_apps_agents.train`` runs the whole recipe). To try
other stages on cached data, scoring each stage's closed loop::

    python benchmarks/_swap12_warmstart.py --data ipopt.npz --out DIR [--stages JSON]
"""

from __future__ import annotations

import time

import numpy as np
import torch

from odeflow.control import AgentProblem, fit_value_to_data


def step_costs(pb: AgentProblem, X: torch.Tensor, U: torch.Tensor, h: float) -> torch.Tensor:
    """The transcription's step costs s_k ``(N,)`` of the states ``X (N + 1, d)`` (only
    X₀…X_{N−1} are used: X_{k+1} = X_k + hU_k) and controls ``U (N, d)``."""
    Xk = X[:-1]
    c = pb.obstacle(Xk, 0.0) + 4 * pb.obstacle(Xk + 0.5 * h * U, 0.0)
    c = c + pb.obstacle(Xk + h * U, 0.0)
    return h / 6 * c + 0.5 * h * (U * U).sum(-1)


def value_and_costates(pb: AgentProblem, path: np.ndarray, h: float):
    """Cost-to-go V ``(N + 1,)`` and costates λ ``(N + 1, d)`` along one solution."""
    X = torch.as_tensor(path, dtype=torch.float64).clone().requires_grad_(True)
    U = (X[1:] - X[:-1]).detach() / h  # the controls are held in the sweep
    s = step_costs(pb, X, U, h)
    (gs,) = torch.autograd.grad(s.sum(), X)  # row k: ∂s_k/∂X_k (s_k reads X_k alone)
    with torch.no_grad():
        G = pb.terminal_cost(X[-1:])[0]
        lam = torch.flip(torch.cumsum(torch.flip(gs, [0]), 0), [0])
        lam = lam + pb.terminal_gradient(X[-1:])[0]
        V = torch.cat([torch.flip(torch.cumsum(torch.flip(s, [0]), 0), [0]), s.new_zeros(1)])
    return (V + G).detach().numpy(), lam.numpy()


def check_costates(pb: AgentProblem, sol: dict, h: float) -> dict:
    """Largest relative gap between the swept costates and IPOPT's multipliers, and
    between V₀ and IPOPT's optimal cost (see the module docstring for the relations)."""
    path, d = sol["path"], pb.dim
    V, lam = value_and_costates(pb, path, h)
    mu = np.asarray(sol["multipliers"]).reshape(-1)
    mu0, mus = mu[:d], mu[d:].reshape(-1, d)  # column k of (d, nt): constraint k
    ref = -np.concatenate([mu0[None], mus])
    return {"costate_rel_error": float(np.abs(lam - ref).max() / np.abs(ref).max()),
            "value_rel_error": abs(V[0] / sol["cost"] - 1)}  # fmt: skip


def _shifted(nominal: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """The nominal path moved to start at x0, the shift fading linearly to 0 at T."""
    s = np.linspace(1.0, 0.0, len(nominal))[:, None]
    return nominal + s * (x0 - nominal[0])


def optimal_data(pb: AgentProblem, nt: int = 50, n0: int = 16, seed: int = 11,
                 scale: float = 0.25, log=print):  # fmt: skip
    """IPOPT from the nominal start and ``n0`` perturbed ones; returns (x, t, V, λ, info)
    over all nodes (tensors ``(n, d)``, ``(n,)``, ``(n,)``, ``(n, d)``)."""
    from _apps_agents import solve_ipopt

    h, t0 = pb.horizon / nt, time.perf_counter()
    nominal = solve_ipopt(pb, pb.start.numpy(), nt)
    info = {"nominal_cost": nominal["cost"], **check_costates(pb, nominal, h)}
    log(f"nominal: cost {nominal['cost']:.2f}, {nominal['status']}, {info}")
    g = torch.Generator().manual_seed(seed)
    starts = pb.safe_starts(n0, scale, generator=g).numpy() if n0 else np.zeros((0, pb.dim))
    sols, failed = [nominal], 0
    for i, x0 in enumerate(starts):
        best = None
        for guess in (_shifted(nominal["path"], x0), None):
            r = solve_ipopt(pb, x0, nt, guess=guess)
            if r["status"] == "Solve_Succeeded" and (best is None or r["cost"] < best["cost"]):
                best = r
            if guess is not None and best is not None:
                break  # the shifted guess converged: keep its (nominal-class) solution
        log(f"start {i}: " + ("failed" if best is None else f"cost {best['cost']:.2f}"))
        if best is None:
            failed += 1
        else:
            sols.append(best)
    info.update(seconds=time.perf_counter() - t0, solves=len(sols), failed=failed,
                costs=[r["cost"] for r in sols])  # fmt: skip
    return (*stack_solutions(pb, sols, h, nt), info)


def stack_solutions(pb: AgentProblem, sols: list[dict], h: float, nt: int):
    """States, times, cost-to-go and costates of the solutions' paths, stacked (four
    tensors: ``(S(nt + 1), d)``, ``(S(nt + 1),)``, ``(S(nt + 1),)``, ``(S(nt + 1), d)``)."""
    xs, Vs, lams = [], [], []
    for r in sols:
        V, lam = value_and_costates(pb, r["path"], h)
        xs.append(r["path"])
        Vs.append(V)
        lams.append(lam)
    ts = [h * np.arange(nt + 1)] * len(sols)
    return tuple(torch.as_tensor(np.concatenate(a)) for a in (xs, ts, Vs, lams))


def warm_start(pb: AgentProblem, phi, *, n0: int = 16, iterations: int = 500, nt: int = 50,
               seed: int = 11, data=None, log=print) -> dict:  # fmt: skip
    """Fit ``phi`` (a ``ResidualValue``; float64 for the fit, returned in its dtype) to the
    IPOPT data in place; ``data``: (x, t, V, λ, info) from :func:`optimal_data` (computed
    when None). Returns the data seconds, fit seconds and errors."""
    x, t, V, lam, info = data if data is not None else optimal_data(pb, nt, n0, seed, log=log)
    dtype = next(p for p in phi.parameters() if p.requires_grad).dtype
    phi.double()
    t0 = time.perf_counter()
    fit = fit_value_to_data(phi, x, t, V, lam, iterations=iterations)
    phi.to(dtype)
    return fit_report(info, fit, time.perf_counter() - t0, len(V), log)


def fit_report(info: dict, fit, seconds: float, samples: int, log=print) -> dict:
    """The warm start's figures: the data's seconds and info, the fit's seconds, errors and
    iterations (logged)."""
    out = {"data_seconds": info["seconds"], "fit_seconds": seconds,
           "samples": samples, "value_error": fit.value_error,
           "gradient_error": fit.gradient_error, "fit_iterations": fit.iterations,
           **{k: v for k, v in info.items() if k != "seconds"}}  # fmt: skip
    log(f"fit: {out}")
    return out


def load_data(path):
    """(x, t, V, λ, info) saved by ``main --data`` (an ``.npz`` of plain arrays)."""
    import json

    with np.load(path, allow_pickle=False) as f:
        arrays = [torch.as_tensor(f[k]) for k in ("x", "t", "V", "lam")]
        return (*arrays, json.loads(str(f["info"])))


def main() -> None:
    """Warm-start swap-12's network, fine-tune it stage by stage (each stage saved and its
    closed loop scored: cost against IPOPT from the nominal start, collisions in perturbed
    rollouts)."""
    import argparse
    import json
    from pathlib import Path

    from _apps_agents import RECIPES, _load, _save, train_stage, with_baseline
    from odeflow.control import ValueNetwork, make_problem, rollout

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--n0", type=int, default=24)
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--data", default=None, help=".npz of the IPOPT data (written if absent)")
    ap.add_argument("--stages", default=None, help="JSON list of stages (default: RECIPES')")
    ap.add_argument("--init", default=None, help="continue from this checkpoint (no fit)")
    ap.add_argument("--rollouts", type=int, default=1000)
    ap.add_argument("--out", required=True, help="folder for swap12_<stage>.pt")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pb, r = make_problem("swap12"), RECIPES["swap12"]
    t00 = time.perf_counter()
    if args.data and Path(args.data).exists():
        data = load_data(args.data)
    else:
        data = optimal_data(pb, n0=args.n0)
        if args.data:
            np.savez(args.data, **dict(zip(("x", "t", "V", "lam"), (a.numpy() for a in data[:4]),
                     strict=True)), info=json.dumps(data[4]))  # fmt: skip
    ipopt = data[4]["nominal_cost"]
    if args.init:
        phi, seconds = _load(pb, Path(args.init))
    else:
        torch.manual_seed(0)
        phi = ValueNetwork(pb.dim, width=r["width"], rank=r.get("rank"))
        with torch.no_grad():
            phi.net.blocks[1].A.mul_(0.1)
        phi = with_baseline(pb, phi).float()
        info = warm_start(pb, phi, iterations=args.iterations, data=data)
        seconds = info["data_seconds"] + info["fit_seconds"]
    xs = pb.safe_starts(args.rollouts, 0.25, generator=torch.Generator().manual_seed(3)).float()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = json.loads(args.stages) if args.stages else r["stages"]
    for i, stage in enumerate([None, *stages]):
        if stage is not None:
            seconds += train_stage(pb, phi, stage, seed=i - 1)
        with torch.no_grad():
            cost = float(rollout(pb, phi, pb.start[None].float(), nt=50).cost[0])
            safe = pb.safety(rollout(pb, phi, xs, nt=50).paths)
        _save(pb, phi, out / f"swap12_{i}.pt", seconds)
        print(json.dumps({"stage": stage, "gap": cost / ipopt - 1, "cost": cost,
                          "collisions": int((safe.collisions > 0).sum()),
                          "min_distance": float(safe.min_distance.min()),
                          "train_seconds": seconds,
                          "wall": time.perf_counter() - t00}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
