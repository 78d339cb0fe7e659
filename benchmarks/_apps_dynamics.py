"""Quadcopter and Hodgkin–Huxley: odeflow's learned feedback against direct multiple shooting
with IPOPT (CasADi), the same dynamics, costs, horizon and RK4 steps.

``CASES = {name: callable(mode) -> dict}`` (``mode``: ``"quick"`` or ``"full"``) is imported by
``benchmarks/control_apps.py``; run this file alone to write
``benchmarks/results/cpu_control_apps_dynamics.json``::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/_apps_dynamics.py --mode quick

Each case builds a linearised value refined along its closed loop (iLQR): ``ILQRValue`` from
one IPOPT solve's controls for the quadcopter (``RECIPES``; the network recipes are kept
there), ``TrackingLQRValue`` for Hodgkin–Huxley (``HH_RECIPES``), rolls the feedback out from
the nominal start, solves the direct transcription (states at every RK4 node,
piecewise-constant controls, X_{k+1} = RK4(X_k, U_k) as equality constraints) with IPOPT, and
times one feedback step (batch 1 and 1024). CasADi is needed here only
(``pip install casadi``), never in ``src/``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from odeflow.control import OnlineFeedback, ValueNetwork, fit, rollout
from odeflow.control._hodgkin_huxley import HodgkinHuxley
from odeflow.control._quadcopter import DEFAULT_KICK, Quadcopter, quadcopter_shock

# Quadcopter: no network (``method="ilqr"``). ILQRValue, the problem linearised along a path
# (state-dependent thrust direction, exact Jacobians), first along IPOPT's open-loop controls
# at ``ipopt_nt`` = 50 intervals flown from the start (one 0.3 s solve), then ``refinements``
# passes along its own closed loop (iLQR), ``steps`` = 2000 RK4 steps each (the Riccati solve
# needs h ≲ 5.6e-4 at α₀ = 5000). The first pass already reaches the continuous optimum
# (Φ(x₀, 0) = 2174.16, closed loop 2174.19 with 2000 steps; IPOPT 2179.06 with 50 intervals,
# 2174.48 with 200). Building it costs one IPOPT solve plus ~5 s per pass. Its closed loop is
# stiff near T (the gains reach α₀/(2m²) = 2500): RK4 at 50 steps overshoots (3054), so it is
# flown with ``eval_nt`` = 200 steps (2174.29; 100 steps: 2182.9). From hover instead of
# IPOPT's controls the same iteration stalls in a local optimum near 3600 (2.3 s per pass).
# The network recipes are the former route: from random weights (α₀ continuation 50, 500,
# 5000) the network ends at 5113.9, 2.3x IPOPT, at every RK4 step count (a local optimum of
# the training); warm-started on 64 IPOPT solutions (_quadcopter_warmstart.py,
# Nakamura-Zimmerer et al.) and trained 6 x 50 L-BFGS iterations at α₀ = 5000, nt = 50:
# 2457.6 (+12.8 %); 2284.3 at 450 iterations (+4.8 %), after which it levels off.
RECIPES = {
    "quadcopter": {
        "quick": dict(method="ilqr", ipopt_nt=50, steps=2000, refinements=1, eval_nt=200),
        "full": dict(
            method="ilqr", ipopt_nt=50, steps=2000, refinements=2, eval_nt=200, perturbed=8
        ),
        "network-quick": dict(
            width=32, time_degree=2, stages=[("lbfgs", 10, 64, 50.0), ("lbfgs", 10, 64, 5000.0)]
        ),
        "network-full": dict(
            width=64,
            time_degree=2,
            warm_start=dict(n0=48, nk=16, iterations=1500),
            nt=50,
            stages=[("lbfgs", 50, 64)] * 6,
        ),
    },
}
# Hodgkin–Huxley: no network. The tracking-LQR value (TrackingLQRValue: the problem
# linearised along the healthy z*), refined ``refinements`` times along its own closed loop
# from the nominal start (iLQR). Training a network through 1500 stiff RK4 steps did not fit
# this CPU (one L-BFGS iteration > 16 min under load); "full" also runs the closed loops and
# IPOPT from two perturbed starts (V₀ = ±10 mV, one s₀ of ρ₀).
HH_RECIPES = {"quick": dict(refinements=1), "full": dict(refinements=2, perturbed=(-10.0, 10.0))}


def _rk4(f, x, t, h):
    """One RK4 step of ẋ = f(x, t)."""
    k1 = f(x, t)
    k2 = f(x + 0.5 * h * k1, t + 0.5 * h)
    k3 = f(x + 0.5 * h * k2, t + 0.5 * h)
    k4 = f(x + h * k3, t + h)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


# ---------------------------------------------------------------------- CasADi transcriptions
def _solve(opti, X, max_iter: int = 3000) -> dict:
    opti.solver("ipopt", {"print_time": False, "expand": True},
                {"print_level": 0, "max_iter": max_iter, "tol": 1e-10, "sb": "yes"})  # fmt: skip
    t0 = time.perf_counter()
    sol = opti.solve()
    sec = time.perf_counter() - t0
    return {
        "cost": float(sol.value(opti.f)),
        "seconds": sec,
        "iterations": int(sol.stats()["iter_count"]),
        "states": np.asarray(sol.value(X)).T,
    }


def ipopt_quadcopter(pb: Quadcopter, x0: np.ndarray, nt: int, init: dict | None = None) -> dict:
    """min Σ_k h(2 + |U_k|²) + (α₀/2)|X_N − y|², X_{k+1} = RK4(X_k, U_k), X_0 = x0.

    ``init``: an earlier solution (``states``, ``controls``) to start from (default: the
    straight line at hover thrust). Returns also ``controls`` ``(nt, 4)`` and ``multipliers``
    ``(nt, 12)``, IPOPT's multipliers of the constraints X_{k+1} − RK4(X_k, U_k) = 0."""
    import casadi as ca

    m, g, h = pb.mass, pb.gravity, pb.horizon / nt

    def f(x, u, t):
        psi, th, ph = x[3], x[4], x[5]
        f7 = ca.sin(psi) * ca.sin(ph) + ca.cos(psi) * ca.sin(th) * ca.cos(ph)
        f8 = -ca.cos(psi) * ca.sin(ph) + ca.sin(psi) * ca.sin(th) * ca.cos(ph)
        f9 = ca.cos(th) * ca.cos(ph)
        return ca.vertcat(x[6:12], u[0] / m * f7, u[0] / m * f8, u[0] / m * f9 - g, u[1:4])

    opti = ca.Opti()
    X, U = opti.variable(12, nt + 1), opti.variable(4, nt)
    opti.subject_to(X[:, 0] == x0)
    cost, links = 0, []
    for k in range(nt):
        links.append(X[:, k + 1] - _rk4(lambda x, t, k=k: f(x, U[:, k], t), X[:, k], k * h, h) == 0)
        opti.subject_to(links[-1])
        cost = cost + h * (2 + ca.sumsqr(U[:, k]))
    y = pb.target.numpy()
    cost = cost + 0.5 * pb.alpha0 * ca.sumsqr(X[:, nt] - y)
    opti.minimize(cost)
    if init is None:
        s = np.linspace(0, 1, nt + 1)
        opti.set_initial(X, np.outer(x0, 1 - s) + np.outer(y, s))
        opti.set_initial(U[0, :], g * m)
    else:
        opti.set_initial(X, init["states"].T)
        opti.set_initial(U, init["controls"].T)
    out = _solve(opti, X)
    out["controls"] = np.asarray(opti.value(U)).reshape(4, nt).T
    out["multipliers"] = np.stack([np.asarray(opti.value(opti.dual(c))).ravel() for c in links])
    return out


def ipopt_hodgkin_huxley(pb: HodgkinHuxley, x0: np.ndarray, nt: int) -> dict:
    """min Σ_k ∫_k (r/2)U_k² + q|z − z*|² (RK4 quadrature) + (γ/2)|X_N − z*(T)|²."""
    import casadi as ca

    h = pb.horizon / nt
    nodes = torch.arange(2 * nt + 1, dtype=torch.float64) * (h / 2)
    zs = pb.reference(nodes).numpy()  # z* at the RK4 stage times

    def rates(V):
        def vtrap(x):
            return x / (ca.exp(x) - 1)

        return (vtrap(2.5 - 0.1 * V), 4 * ca.exp(-V / 18), 0.1 * vtrap(1 - 0.1 * V),
                0.125 * ca.exp(-V / 80), 0.07 * ca.exp(-V / 20),
                1 / (ca.exp(3 - 0.1 * V) + 1))  # fmt: skip

    def f(x, u, j):  # augmented state (z, cost); j: index of the stage time on the half-grid
        V, m_, n_, hh = x[0], x[1], x[2], x[3]
        am, bm, an, bn, ah, bh = rates(V)
        I_ion = (pb.g_na * m_**3 * hh * (V - pb.e_na) + pb.g_k * n_**4 * (V - pb.e_k)
                 + pb.g_l * (V - pb.e_l))  # fmt: skip
        r = x[0:4] - zs[j]
        dc = 0.5 * pb.R * u**2 + pb.q * ca.sumsqr(r)
        return ca.vertcat((u - I_ion) / pb.cm, am * (1 - m_) - bm * m_, an * (1 - n_) - bn * n_,
                          ah * (1 - hh) - bh * hh, dc)  # fmt: skip

    opti = ca.Opti()
    X, U = opti.variable(4, nt + 1), opti.variable(1, nt)
    opti.subject_to(X[:, 0] == x0)
    cost = 0
    for k in range(nt):
        y = ca.vertcat(X[:, k], 0)
        k1 = f(y, U[k], 2 * k)
        k2 = f(y + 0.5 * h * k1, U[k], 2 * k + 1)
        k3 = f(y + 0.5 * h * k2, U[k], 2 * k + 1)
        k4 = f(y + h * k3, U[k], 2 * k + 2)
        y1 = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        opti.subject_to(X[:, k + 1] == y1[0:4])
        cost = cost + y1[4]
    cost = cost + 0.5 * pb.gamma * ca.sumsqr(X[:, nt] - zs[-1])
    opti.minimize(cost)
    zn = zs[::2]  # start from the healthy path and the current that keeps the sick neuron on it
    opti.set_initial(X, zn.T)
    gap = (pb.g_na - pb.g_na_healthy) * zn[:-1, 1] ** 3 * zn[:-1, 3] * (zn[:-1, 0] - pb.e_na)
    opti.set_initial(U, gap[None])
    return _solve(opti, X)


# ---------------------------------------------------------------------- odeflow side
def _with_weight(pb, alpha):
    """The quadcopter ``pb`` with terminal weight α₀ = ``alpha`` (a continuation stage)."""
    if alpha is None:
        return pb
    if not isinstance(pb, Quadcopter):
        raise ValueError(f"α₀ continuation stages are for the quadcopter, not {pb.name}")
    return Quadcopter(mass=pb.mass, gravity=pb.gravity, terminal_weight=alpha,
                      horizon=pb.horizon, start=pb.start[:3], target=pb.target[:3],
                      initial_std=pb.std0)  # fmt: skip


def _train(pb, recipe: dict, seed: int = 0) -> tuple[ValueNetwork, float]:
    torch.manual_seed(seed)
    phi = ValueNetwork(pb.dim, width=recipe["width"], time_degree=recipe.get("time_degree"))
    phi = phi.double()
    t0 = time.perf_counter()
    if "warm_start" in recipe:  # the quadcopter: regression on IPOPT's optimal solutions
        from _quadcopter_warmstart import warm_start

        warm_start(pb, phi, **recipe["warm_start"])
    for i, (opt, iters, batch, *alpha) in enumerate(recipe["stages"]):
        stage = _with_weight(pb, alpha[0] if alpha else None)
        fit(stage, phi, optimizer=opt, iterations=iters, batch=batch, nt=recipe.get("nt"),
            verbose=False, seed=seed + i)  # fmt: skip
    return phi, time.perf_counter() - t0


def _feedback_ms(pb, phi, nt: int) -> dict:
    """Milliseconds per closed-loop RK4 step (4 evaluations of ż = f(z, u*(z, ∇Φ(z, t))))
    and per feedback evaluation u*(z, ∇Φ(z, t)), at batch 1 and 1024 (no gradients)."""
    h = pb.horizon / nt
    t = torch.tensor(0.0, dtype=torch.float64)

    def u_of(z, s):
        return pb.feedback(z, phi.jet(z, s).grad, s)

    def step(z):
        def f(y, s):
            return pb.dynamics(y, u_of(y, s), s)

        return _rk4(f, z, t, h)

    out = {}
    with torch.no_grad():
        for n in (1, 1024):
            x = pb.sample_initial(n, generator=torch.Generator().manual_seed(3))
            for name, fn in (("step", lambda x=x: step(x)), ("feedback", lambda x=x: u_of(x, t))):
                fn()  # warm-up
                reps = 50 if n == 1 else 10
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn()
                out[f"ms_per_{name}_batch{n}"] = 1e3 * (time.perf_counter() - t0) / reps
    return out


def _best(fn, repeat: int, rounds: int = 5) -> tuple[float, float]:
    """Best-of-rounds (wall, CPU) seconds per call of ``fn()`` (after one warm-up call)."""
    fn()
    wall = cpu = math.inf
    for _ in range(rounds):
        w, c = time.perf_counter(), time.process_time()
        for _ in range(repeat):
            fn()
        wall = min(wall, (time.perf_counter() - w) / repeat)
        cpu = min(cpu, (time.process_time() - c) / repeat)
    return wall, cpu


def _online_quadcopter(pb, phi, nt: int, ipopt_seconds: float, paths) -> dict:
    """The deployment form (:class:`OnlineFeedback`: the exact ∇ₓΦ sweep, then the closed
    forms of u*(x, p) and f(x, u), numpy float64 at batch 1, torch inference mode at 1024):
    ms per feedback, per RK4 step, and the closed loop from the start (best of 5, wall and
    CPU), its speed-up over one IPOPT solve and its largest deviation from ``paths`` (the
    regular closed loop, ``rollout``)."""
    online, online_b = OnlineFeedback(pb, phi), OnlineFeedback(pb, phi, backend="torch")
    x1 = pb.start[None].numpy().copy()
    xb = pb.sample_initial(1024, generator=torch.Generator().manual_seed(3)).to(pb.start)
    out = {}
    for key, fn, reps in (
        ("ms_per_feedback_batch1", lambda: online.feedback(x1, 0.3), 200),
        ("ms_per_feedback_batch1024", lambda: online_b.feedback(xb, 0.3), 10),
    ):
        wall, cpu = _best(fn, reps)
        out[f"online_{key}"], out[f"online_{key}_cpu"] = 1e3 * wall, 1e3 * cpu
    wall, cpu = _best(lambda: online.rollout(x1, nt), 1)
    out["online_ms_per_step_batch1"] = 1e3 * wall / nt  # the whole loop over its nt steps
    out["online_ms_per_step_batch1_cpu"] = 1e3 * cpu / nt
    diff = np.abs(online.rollout(x1, nt, paths=True)[:, 0] - paths[:, 0].numpy()).max()
    return online_row(out, wall, cpu, ipopt_seconds, diff)


def online_row(out: dict, wall: float, cpu: float, ipopt_seconds: float, diff) -> dict:
    """The online timings ``out`` completed with the closed loop's (``wall``, ``cpu``) seconds,
    its speed-up over one IPOPT solve and its largest deviation ``diff`` from the regular
    closed loop, plus control_apps.py's columns (the deployment form, as for the agents)."""
    return {**out, "online_rollout_seconds": wall, "online_rollout_cpu_seconds": cpu,
            "online_speedup_vs_ipopt": ipopt_seconds / wall,
            "online_final_state_difference": float(diff),
            "feedback_ms_batch1": out["online_ms_per_feedback_batch1"],
            "feedback_ms_batch1024": out["online_ms_per_feedback_batch1024"],
            "speedup_vs_ipopt": ipopt_seconds / wall}  # fmt: skip


def _closed_loop(pb, phi, nt: int) -> tuple[float, float, float]:
    x0 = pb.start[None]
    t0 = time.perf_counter()
    r = rollout(pb, phi, x0, nt=nt)
    sec = time.perf_counter() - t0
    return float(r.cost[0]), r, sec


def _network(pb, name, mode, pretrained):
    """Train by the recipe, or take ``pretrained = (value, training seconds, recipe)``.
    ``mode``: "quick"/"full", or ``control_apps.py``'s ``quick`` flag (True/False)."""
    if pretrained is not None:
        return pretrained
    if isinstance(mode, bool):
        mode = "quick" if mode else "full"
    recipe = RECIPES[name][mode]
    if recipe.get("method") == "ilqr":
        from _quadcopter_ilqr import ilqr_value

        phi, sec, values = ilqr_value(pb, recipe)
        return phi, sec, {**recipe, "value_at_start_per_pass": values}
    phi, sec = _train(pb, recipe)
    return phi, sec, recipe


def quadcopter_case(
    mode: str = "quick", pretrained=None, figures: Path | None = None, **_
) -> dict:  # fmt: skip
    pb = Quadcopter()
    phi, train_s, recipe = _network(pb, "quadcopter", mode, pretrained)
    nt = recipe.get("eval_nt", pb.eval_steps)
    cost, r, roll_s = _closed_loop(pb, phi, nt)
    err = float((r.paths[-1, 0, :3] - pb.target[:3]).norm())
    ip = ipopt_quadcopter(pb, pb.start.numpy(), pb.eval_steps)
    from _quadcopter_warmstart import discretisation_study

    study = discretisation_study(pb, phi)
    if figures is not None:
        from odeflow.control._quadcopter import animate_flight, plot_flight

        starts = pb.sample_initial(8, generator=torch.Generator().manual_seed(4))
        flights = rollout(pb, phi, starts, nt=nt).paths
        shocked = quadcopter_shock(pb, phi, nt=nt).shocked_paths
        plot_flight(pb, flights, figures / "quadcopter_flights.png", shocked=shocked)
        animate_flight(pb, r.paths[:: max(1, nt // 50)], figures / "quadcopter_flight.gif")
    ilqr = recipe.get("method") == "ilqr"
    if ilqr:
        from _quadcopter_ilqr import online_ilqr, perturbed_starts, shock_vs_ipopt

        shock = shock_vs_ipopt(pb, phi, nt, DEFAULT_KICK)
        online = online_ilqr(pb, phi, nt, ip["seconds"], r.paths)
    else:
        sh = quadcopter_shock(pb, phi, nt=nt)
        shock = {"time": 0.1, "kick": list(DEFAULT_KICK),
                 "target_error": float(sh.shocked_error[0]),
                 "cost_to_go": float(sh.shocked_cost[0])}  # fmt: skip
        online = _online_quadcopter(pb, phi, nt, ip["seconds"], r.paths)
    same_nt = study["ipopt_warm"].get(nt, {}).get("cost")
    row = {
        "problem": "quadcopter", "dim": 12,
        "mode": mode if pretrained is None else "pretrained", "nt": nt, "recipe": recipe,
        "training_seconds": train_s, "closed_loop_cost": cost, "ipopt_cost": ip["cost"],
        "ipopt_nt": pb.eval_steps, "relative_gap": cost / ip["cost"] - 1,
        "ipopt_cost_same_nt": same_nt,
        "relative_gap_same_nt": None if same_nt is None else cost / same_nt - 1,
        "value_at_start": float(phi(pb.start[None], 0.0)[0]),
        "ipopt_seconds_per_solve": ip["seconds"],
        "ipopt_iterations": ip["iterations"], "rollout_seconds": roll_s,
        "rollout_speedup_vs_ipopt": ip["seconds"] / roll_s,
        "target_error": err, "ipopt_target_error": float(
            np.linalg.norm(ip["states"][-1, :3] - pb.target[:3].numpy())),
        "shock": shock, "discretisation": study,
        **_feedback_ms(pb, phi, nt), **online,
    }  # fmt: skip
    if ilqr and pretrained is None and recipe.get("perturbed"):
        row["perturbed_starts"] = perturbed_starts(pb, phi, nt, recipe["perturbed"])
    return row


def _hh_values(pb, mode: str) -> tuple[list, float, dict]:
    """The tracking-LQR value and its refinements along the closed loop from the start (the
    list starts with the plain one), the seconds to build them, and the recipe."""
    from odeflow.control import TrackingLQRValue

    recipe = HH_RECIPES[mode]
    t0 = time.perf_counter()
    values = [TrackingLQRValue(pb)]
    for _ in range(recipe["refinements"]):
        values.append(TrackingLQRValue(pb, nominal=values[-1], start=pb.start))
    return values, time.perf_counter() - t0, recipe


def _hh_online(pb, phi, nt: int) -> tuple[float, np.ndarray]:
    """The online closed loop from the start: the affine feedback u = K(t)z + k(t)
    (``phi.feedback_gains``, tabulated once at the 2nt + 1 RK4 stage times) and the neuron's
    drift on Python floats (no cost, no autograd). Returns the seconds (with the
    tabulation) and the final state."""
    e_na, e_k, e_l, g_na, g_k, g_l, cm = (pb.e_na, pb.e_k, pb.e_l, pb.g_na, pb.g_k, pb.g_l,
                                          pb.cm)  # fmt: skip

    def vtrap(x):
        return 1.0 - 0.5 * x if abs(x) < 1e-6 else x / math.expm1(x)

    def f(z, K, k):
        V, m, n, h = z
        u = K[0] * V + K[1] * m + K[2] * n + K[3] * h + k
        am, bm = vtrap(2.5 - 0.1 * V), 4.0 * math.exp(-V / 18.0)
        an, bn = 0.1 * vtrap(1.0 - 0.1 * V), 0.125 * math.exp(-V / 80.0)
        ah, bh = 0.07 * math.exp(-V / 20.0), 1.0 / (math.exp(3.0 - 0.1 * V) + 1.0)
        ion = g_na * m**3 * h * (V - e_na) + g_k * n**4 * (V - e_k) + g_l * (V - e_l)
        return (u - ion) / cm, am * (1 - m) - bm * m, an * (1 - n) - bn * n, ah * (1 - h) - bh * h

    def axpy(z, a, d):
        return tuple(zi + a * di for zi, di in zip(z, d, strict=True))

    t0 = time.perf_counter()
    h = pb.horizon / nt
    K, k = phi.feedback_gains(torch.arange(2 * nt + 1, dtype=torch.float64) * (h / 2))
    K, k = K[:, 0].tolist(), k[:, 0].tolist()  # one control: rows of 4 gains, offsets
    z = tuple(pb.start.tolist())
    for j in range(0, 2 * nt, 2):
        k1 = f(z, K[j], k[j])
        k2 = f(axpy(z, h / 2, k1), K[j + 1], k[j + 1])
        k3 = f(axpy(z, h / 2, k2), K[j + 1], k[j + 1])
        k4 = f(axpy(z, h, k3), K[j + 2], k[j + 2])
        z = tuple(zi + h / 6 * (a + 2 * b + 2 * c + d)
                  for zi, a, b, c, d in zip(z, k1, k2, k3, k4, strict=True))  # fmt: skip
    return time.perf_counter() - t0, np.array(z)


def _hh_perturbed(pb, values, nt: int, starts) -> list[dict]:
    """Closed-loop costs of the plain and the refined value, and IPOPT's, from starts with
    V₀ moved off the nominal rest state (the refinement was made for the nominal start)."""
    rows = []
    for v0 in starts:
        x0 = pb.start.clone()
        x0[0] += v0
        costs = [
            float(rollout(pb, phi, x0[None], nt=nt).cost[0]) for phi in (values[0], values[-1])
        ]
        ip = ipopt_hodgkin_huxley(pb, x0.numpy(), nt)
        rows.append({"V0": v0, "tracking_lqr_cost": costs[0], "refined_cost": costs[1],
                     "ipopt_cost": ip["cost"], "refined_gap": costs[1] / ip["cost"] - 1,
                     "tracking_lqr_gap": costs[0] / ip["cost"] - 1})  # fmt: skip
    return rows


def hodgkin_huxley_case(
    mode: str = "quick", pretrained=None, figures: Path | None = None, **_
) -> dict:  # fmt: skip
    """``mode`` "quick"/"full" (or ``control_apps.py``'s quick flag): the tracking-LQR recipe
    (:data:`HH_RECIPES`); ``pretrained = (value, seconds, recipe)``: that value instead."""
    pb = HodgkinHuxley()
    nt = pb.eval_steps
    if isinstance(mode, bool):
        mode = "quick" if mode else "full"
    if pretrained is None:
        values, build_s, recipe = _hh_values(pb, mode)
        passes = [float(rollout(pb, v, pb.start[None], nt=nt).cost[0]) for v in values[:-1]]
        phi = values[-1]
    else:
        (phi, build_s, recipe), passes, values = pretrained, [], [pretrained[0]]
    cost, r, roll_s = _closed_loop(pb, phi, nt)
    online = None
    if hasattr(phi, "feedback_gains"):
        online_s, z_T = _hh_online(pb, phi, nt)
        diff = float(np.abs(z_T - r.paths[-1, 0].numpy()).max())  # the same closed loop
        online = {"online_rollout_seconds": online_s, "online_final_state_difference": diff}
    free = rollout(pb, _Zero(4), pb.start[None], nt=nt)
    ip = ipopt_hodgkin_huxley(pb, pb.start.numpy(), nt)
    if online is not None:
        online["online_speedup_vs_ipopt"] = ip["seconds"] / online["online_rollout_seconds"]
    if figures is not None:
        from odeflow.control._hodgkin_huxley import plot_tracking

        label = "tracking-LQR feedback (refined)" if pretrained is None else "learned feedback"
        out = plot_tracking(pb, r.paths, figures / "hh_tracking.png", free=free.paths, label=label)
        plot_tracking(pb, torch.as_tensor(ip["states"])[:, None], out.with_name("hh_ipopt.png"),
                      free=free.paths, label="IPOPT (open loop)")  # fmt: skip
    ref_T = pb.reference(pb.horizon)
    row = {
        "problem": "hodgkin-huxley", "dim": 4,
        "mode": mode if pretrained is None else "pretrained", "nt": nt,
        "stable_steps_rk4": pb.stable_steps("rk4"), "stiffness_per_ms": pb.stiffness(),
        "recipe": recipe, "training_seconds": build_s,
        "closed_loop_cost": cost, "uncontrolled_cost": float(free.cost[0]),
        "ipopt_cost": ip["cost"], "relative_gap": cost / ip["cost"] - 1,
        "value_at_start": float(phi(pb.start[None], 0.0)[0]),
        "costs_per_refinement": [*passes, cost],
        "gaps_per_refinement": [c / ip["cost"] - 1 for c in [*passes, cost]],
        "ipopt_seconds_per_solve": ip["seconds"], "ipopt_iterations": ip["iterations"],
        "rollout_seconds": roll_s, "rollout_speedup_vs_ipopt": ip["seconds"] / roll_s,
        "target_error": float((r.paths[-1, 0] - ref_T).norm()),
        **_feedback_ms(pb, phi, nt), **(online or {}),
    }  # fmt: skip
    if online is not None:  # control_apps.py's speed-up: the online closed loop (as the agents')
        row["speedup_vs_ipopt"] = online["online_speedup_vs_ipopt"]
    if pretrained is None and recipe.get("perturbed"):
        row["perturbed_starts"] = _hh_perturbed(pb, values, nt, recipe["perturbed"])
    return row


class _Zero(torch.nn.Module):
    """Φ = 0: the uncontrolled neuron (u* = −∂Φ/∂V = 0)."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def jet(self, x, t, second=None):
        from odeflow.control import ValueJet

        z = x.new_zeros(x.shape[0])
        return ValueJet(z, torch.zeros_like(x), z)


def _for_control_apps(case):
    """The case with ``control_apps.py``'s column names added to its row."""

    def run(mode="quick", pretrained=None, figures=None, **kw):
        row = case(mode, pretrained, figures, **kw)
        for new, old in (("train_seconds", "training_seconds"),
                         ("ipopt_seconds", "ipopt_seconds_per_solve"),
                         ("feedback_ms_batch1", "ms_per_feedback_batch1"),
                         ("feedback_ms_batch1024", "ms_per_feedback_batch1024"),
                         ("speedup_vs_ipopt", "rollout_speedup_vs_ipopt")):  # fmt: skip
            row.setdefault(new, row.get(old))
        return row

    return run


CASES = {
    "quadcopter": _for_control_apps(quadcopter_case),
    "hodgkin-huxley": _for_control_apps(hodgkin_huxley_case),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("quick", "full"), default="quick")
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--out", default="benchmarks/results/cpu_control_apps_dynamics.json")
    ap.add_argument("--figures", default=None, help="folder for the PNG/GIF pictures")
    ap.add_argument("--weights", nargs="*", default=[], metavar="NAME=FILE",
                    help="use a network trained elsewhere: a torch file holding state_dict, "
                    "width, seconds and recipe (read with weights_only=True)")  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(1)
    figures = None if args.figures is None else Path(args.figures)
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
    pre = {}
    for item in args.weights:
        name, _, file = item.partition("=")
        ck = torch.load(file, weights_only=True)
        phi = ValueNetwork(4 if name == "hodgkin-huxley" else 12, width=ck["width"],
                           time_degree=ck.get("time_degree")).double()  # fmt: skip
        phi.load_state_dict(ck["state_dict"])
        pre[name] = (phi, ck["seconds"], ck["recipe"])
    rows = [CASES[name](args.mode, pre.get(name), figures) for name in args.cases]
    cols = ("train s", "cost", "IPOPT", "gap %", "IPOPT s", "ms/step b1", "ms/step b1024")
    print(f"{'problem':16s} " + " ".join(f"{c:>13s}" for c in cols))
    for r in rows:
        vals = (r["training_seconds"], r["closed_loop_cost"], r["ipopt_cost"],
                100 * r["relative_gap"], r["ipopt_seconds_per_solve"], r["ms_per_step_batch1"],
                r["ms_per_step_batch1024"])  # fmt: skip
        print(f"{r['problem']:16s} " + " ".join(f"{v:13.3f}" for v in vals))
    meta = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": 1,
        "command": "python benchmarks/_apps_dynamics.py " + shlex.join(sys.argv[1:]),
    }
    out = Path(args.out)
    if out.exists():  # keep the other problems' rows (one problem may be rerun alone)
        old = json.loads(out.read_text())
        done = {r["problem"] for r in rows}
        rows = rows + [r for r in old.get("cases", []) if r["problem"] not in done]
        meta["previous_meta"] = old.get("meta")
    out.write_text(json.dumps({"meta": meta, "cases": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
