"""Warm start of the quadcopter's value network from IPOPT's open-loop optimal solutions.

Nakamura-Zimmerer, Gong & Kang (SIAM J. Sci. Comput. 2021, arXiv 1907.05317): solve the
open-loop problem from many starts with a direct method, read the cost-to-go V(x_k, t_k) and
the costate λ_k = ∇ₓV along each optimal trajectory (Pontryagin), and regress Φ on both
(:func:`odeflow.control.fit_value_to_data`); the HJB-penalised training (:func:`fit`) then
starts in the basin of the optimal feedback instead of the "fall, then brake" basin it
reaches from a random network. Needs CasADi (the ``bench`` extra), like ``_apps_dynamics``.

The starts are ρ₀'s (t = 0) and, for robustness to kicks, states of the nominal optimal path
at random times t ∈ [0.05, ``latest``] (default 0.5) plus random kicks (0.2 in position, 0.7
in velocity, per coordinate, Gaussian), each solved on its remaining horizon [t, T] with the
same step h = T/nt. Costates come from a discrete adjoint sweep of the RK4 transcription,
λ_N = α₀(X_N − y), λ_k = (∂X_{k+1}/∂X_k)ᵀλ_{k+1} (the running cost does not depend on the
state), which agrees with minus IPOPT's multipliers of X_{k+1} − RK4(X_k, U_k) = 0.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from odeflow.control import fit_value_to_data
from odeflow.control._quadcopter import Quadcopter


def _step(pb: Quadcopter, x, u, t, h):
    """One RK4 step of the quadcopter with the control u held on the step."""

    def f(z, s):
        return pb.dynamics(z, u, s)

    k1 = f(x, t)
    k2 = f(x + 0.5 * h * k1, t + 0.5 * h)
    k3 = f(x + 0.5 * h * k2, t + 0.5 * h)
    k4 = f(x + h * k3, t + h)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def costates(pb: Quadcopter, states: np.ndarray, controls: np.ndarray, h: float) -> np.ndarray:
    """Discrete adjoint of the RK4 transcription along one solution: ``(N + 1, 12)``."""
    X = torch.as_tensor(states, dtype=torch.float64)
    U = torch.as_tensor(controls, dtype=torch.float64)
    lam = [pb.terminal_gradient(X[-1:])[0]]
    for k in range(len(U) - 1, -1, -1):
        _, vjp = torch.func.vjp(lambda x, k=k: _step(pb, x, U[k : k + 1], 0.0, h), X[k : k + 1])
        lam.append(vjp(lam[-1][None])[0][0])
    return torch.stack(lam[::-1]).numpy()


def cost_to_go(pb: Quadcopter, states: np.ndarray, controls: np.ndarray, h: float) -> np.ndarray:
    """V_k = Σ_{j ≥ k} h(2 + |U_j|²) + (α₀/2)|X_N − y|²: ``(N + 1,)``."""
    run = h * (2.0 + (controls**2).sum(1))
    tail = np.concatenate([np.cumsum(run[::-1])[::-1], [0.0]])
    G = float(pb.terminal_cost(torch.as_tensor(states[-1:]))[0])
    return tail + G


def _starts(pb: Quadcopter, nominal: dict, n0: int, nk: int, nt: int, seed: int, latest=0.5):
    """(state, step index) pairs: n0 draws of ρ₀ at k = 0, nk kicked nominal states."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    out = [(x.numpy(), 0) for x in pb.sample_initial(n0, generator=g)]
    for _ in range(nk):
        k = int(rng.integers(round(0.05 * nt), round(latest * nt) + 1))
        x = nominal["states"][k].copy()
        x[:3] += 0.2 * rng.standard_normal(3)
        x[6:9] += 0.7 * rng.standard_normal(3)
        out.append((x, k))
    return out


def _solve_all(pb: Quadcopter, nominal: dict, starts, nt: int):
    """IPOPT from each (state, step k) on its remaining horizon, warm-started from the
    nominal solution's tail; returns the lists (X, t, V, λ) and the number of failures."""
    from _apps_dynamics import ipopt_quadcopter

    h = pb.horizon / nt
    xs, ts, Vs, lams, failed = [], [], [], [], 0
    for x0, k in starts:
        sub = pb if k == 0 else _shorter(pb, pb.horizon - k * h)
        init = {"states": nominal["states"][k:], "controls": nominal["controls"][k:]}
        try:
            sol = ipopt_quadcopter(sub, np.asarray(x0), nt - k, init=init)
        except RuntimeError:  # IPOPT did not converge from this start: skip it
            failed += 1
            continue
        X, U = sol["states"], sol["controls"]
        xs.append(X)
        ts.append(k * h + h * np.arange(len(X)))
        Vs.append(cost_to_go(pb, X, U, h))
        lams.append(costates(pb, X, U, h))
    return [xs, ts, Vs, lams], failed


def optimal_data(
    pb: Quadcopter, nt: int = 50, n0: int = 16, nk: int = 16, seed: int = 0, latest: float = 0.5
):
    """Solve IPOPT from ``n0 + nk`` starts; return (x, t, V, λ, info) over all nodes.

    x ``(n, 12)``, t ``(n,)``, V ``(n,)``, λ ``(n, 12)`` as tensors; ``info``: the nominal
    solution, the seconds and the number of solves (failed ones are skipped and counted).
    """
    from _apps_dynamics import ipopt_quadcopter

    t0 = time.perf_counter()
    nominal = ipopt_quadcopter(pb, pb.start.numpy(), nt)
    lists, failed = _solve_all(pb, nominal, _starts(pb, nominal, n0, nk, nt, seed, latest), nt)
    info = {"nominal": nominal, "seconds": time.perf_counter() - t0,
            "solves": n0 + nk - failed, "failed": failed}  # fmt: skip
    return (*[torch.as_tensor(np.concatenate(a)) for a in lists], info)


def _shorter(pb: Quadcopter, horizon: float) -> Quadcopter:
    return Quadcopter(mass=pb.mass, gravity=pb.gravity, terminal_weight=pb.alpha0,
                      horizon=horizon, start=pb.start[:3], target=pb.target[:3],
                      initial_std=pb.std0)  # fmt: skip


def warm_start(
    pb: Quadcopter, phi, *, nt: int = 50, n0: int = 16, nk: int = 16, iterations: int = 800,
    rounds: int = 0, per_round: int = 8, seed: int = 0, latest: float = 0.5,
) -> dict:  # fmt: skip
    """Generate the data, fit ``phi`` to it in place (each costate coordinate weighted by
    1/mean λⱼ², so that the small velocity and rate costates, which set the controls, count
    as much as the position ones), then ``rounds`` of adaptive sampling: IPOPT from two
    random states of each of ``per_round`` closed-loop rollouts of the current Φ (the
    nominal start and ρ₀ draws), the data extended and Φ refitted (half the iterations).
    Returns the sizes, seconds and fit errors."""
    from odeflow.control import rollout

    x, t, V, lam, info = optimal_data(pb, nt, n0, nk, seed, latest)
    rng = np.random.default_rng(seed + 1)
    t0, log = time.perf_counter(), []
    nominal = info["nominal"]
    for r in range(rounds + 1):
        w = 1.0 / lam.pow(2).mean(0)
        its = iterations if r == 0 else max(1, iterations // 2)
        fit = fit_value_to_data(phi, x, t, V, lam, coordinate_weights=w, iterations=its)
        log.append({"samples": len(V), "value_error": fit.value_error,
                    "gradient_error": fit.gradient_error})  # fmt: skip
        if r == rounds:
            break
        g = torch.Generator().manual_seed(seed + 100 + r)
        starts = torch.cat([pb.start[None], pb.sample_initial(per_round - 1, generator=g)])
        paths = rollout(pb, phi, starts, nt=nt).paths
        new = [(paths[k, i].numpy(), int(k)) for i in range(per_round)
               for k in rng.choice(np.arange(2, nt - 4), 2, replace=False)]  # fmt: skip
        lists, failed = _solve_all(pb, nominal, new, nt)
        info["failed"] += failed
        x, t, V, lam = (torch.cat([a, torch.as_tensor(np.concatenate(b))])
                        for a, b in zip((x, t, V, lam), lists, strict=True))  # fmt: skip
    return {"ipopt_failed": info["failed"], "data_seconds": info["seconds"],
            "fit_seconds": time.perf_counter() - t0, "rounds": log}  # fmt: skip


def discretisation_study(
    pb: Quadcopter, phi, steps=(50, 100, 200, 500, 1000), ipopt_steps=(50, 100, 200, 500)
) -> dict:
    """Closed-loop cost and position error of ``phi``'s feedback against the RK4 step count,
    and IPOPT's optimum against its interval count, cold (straight line at hover thrust) and
    warm (the nt = 50 solution, each control repeated: ``ipopt_steps`` multiples of 50)
    started."""
    from _apps_dynamics import ipopt_quadcopter
    from odeflow.control import rollout

    x0, y = pb.start.numpy(), pb.target[:3]
    out = {"closed_loop": {}, "ipopt_cold": {}, "ipopt_warm": {}}
    for nt in steps:
        r = rollout(pb, phi, pb.start[None], nt=nt)
        err = float((r.paths[-1, 0, :3] - y).norm())
        out["closed_loop"][nt] = {"cost": float(r.cost[0]), "target_error": err}
    base = ipopt_quadcopter(pb, x0, 50)
    for nt in ipopt_steps:
        up = nt // 50
        init = {"states": np.concatenate([np.repeat(base["states"][:-1], up, 0),
                                          base["states"][-1:]]),
                "controls": np.repeat(base["controls"], up, 0)}  # fmt: skip
        for key, start in (("ipopt_cold", None), ("ipopt_warm", init)):
            sol = ipopt_quadcopter(pb, x0, nt, init=start)
            err = float(np.linalg.norm(sol["states"][-1, :3] - y.numpy()))
            out[key][nt] = {"cost": sol["cost"], "target_error": err,
                            "seconds": sol["seconds"], "iterations": sol["iterations"]}  # fmt: skip
    return out


def main() -> None:
    """Warm-start a network, print its closed-loop cost against the RK4 step count."""
    import argparse
    import json

    from odeflow.control import ValueNetwork

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--n0", type=int, default=16)
    ap.add_argument("--nk", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=800)
    ap.add_argument("--rounds", type=int, default=0)
    ap.add_argument("--latest", type=float, default=0.5, help="kicked starts' latest time")
    ap.add_argument("--save", default=None, help="torch file for the network's state_dict")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pb = Quadcopter()
    torch.manual_seed(0)
    phi = ValueNetwork(12, width=args.width, time_degree=2).double()
    out = warm_start(pb, phi, n0=args.n0, nk=args.nk, iterations=args.iterations,
                     rounds=args.rounds, latest=args.latest)  # fmt: skip
    steps = (26, 50, 100, 200, 1000)
    out["closed_loop"] = discretisation_study(pb, phi, steps, ipopt_steps=())["closed_loop"]
    print(json.dumps(out, indent=1))
    if args.save:
        torch.save(phi.state_dict(), args.save)


if __name__ == "__main__":
    main()
