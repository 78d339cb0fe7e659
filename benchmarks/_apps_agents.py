"""Multi-agent path finding for ``benchmarks/control_apps.py``: odeflow's learned feedback
against a direct method, IPOPT on a multiple-shooting transcription built with CasADi.

The transcription solves the same problem as odeflow's closed-loop RK4 rollout: the same
dynamics ż = u, the same costs (the problem's smooth, inflated Q and W, written again here in
CasADi from the formulas of :class:`odeflow.control.AgentProblem`), horizon and number of
steps nt. Decision variables: the states X₀…X_nt and piecewise-constant controls U₀…U_{nt−1};
constraints X₀ = x₀ and X_{k+1} = X_k + hU_k (the exact flow of ż = u); objective
Σ_k h/6·(c(X_k) + 4c(X_k + hU_k/2) + c(X_{k+1})) + h|U_k|²/2 + G(X_nt), the RK4 quadrature
of ∫L dt. IPOPT (exact Hessian, MUMPS) starts from the straight lines to the targets with a
small symmetry-breaking bend, and again from odeflow's closed-loop path (warm start); the
better of the two is the optimum reported.

``CASES`` maps a problem name to ``run(quick: bool) -> dict`` (see ``control_apps.py``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from odeflow.control import (
    AgentProblem,
    LQRValue,
    OnlineFeedback,
    ResidualValue,
    ValueNetwork,
    fit,
    load_checkpoint,
    make_problem,
    rollout,
    save_checkpoint,
)

# Training recipes (CPU, float32, L-BFGS with resampling every 25 iterations): stages of
# (loss, iterations, batch, spread of ρ₀, interaction weight α₂ or None for the preset's);
# "paper" is the NeuralOC loss with the preset's HJB weights β, "objective" the control
# objective alone (fine-tunes the closed-loop cost, the way the paper switches its weights
# late in training). The committed results were trained stage by stage (--save/--load).
RECIPES = {
    "corridor": dict(
        width=32, stages=[("paper", 450, 128, 1.0, None), ("objective", 100, 128, 0.5, None)]
    ),
    "swap2": dict(
        width=16,
        stages=[
            ("paper", 150, 128, 1.0, None),
            ("objective", 100, 128, 0.5, None),
            ("objective", 100, 128, 0.25, None),
        ],
    ),
    # Φ = the obstacle-free LQR value + the network ("baseline": ResidualValue(LQRValue, net)):
    # the network alone (width 32, rank 25, a continuation from α₂ = 10³) stalled at +37 %:
    # with α₀ = 300 the gain α₀/(1 + α₀(T − t)) of the straight-line feedback grows 300-fold
    # over [0, T], which a log-cosh ResNet on (x, t) with a quadratic term cannot hold; with
    # the baseline the network only learns the avoidance. Trained from the random network
    # (400 "objective" + 150 "paper" iterations, 16 min) it settled in a worse local optimum,
    # +19 %, with 39/1000 perturbed rollouts within 2r (two agents made large detours).
    # "warm_start": first a fit to 25 IPOPT solutions (the nominal start and 24 perturbed
    # ones, values and costates; _swap12_warmstart), which puts Φ in the optimum's basin;
    # then the objective at ρ₀'s spread 0.25, one "paper" stage, and the objective at the
    # spreads 0.5 and 0.35, which widen the pairs' margin (collisions in the tails of the
    # perturbed starts: 3/1000 without them). One run, 32 min on the shared 2-core CPU, the
    # 25 IPOPT solves (18 min there) included: +2.2 %, 0/1000, closest pair 1.02 > 2r = 1
    "swap12": dict(
        width=64,
        baseline="lqr",
        warm_start=dict(n0=24, iterations=500),
        stages=[
            ("objective", 100, 128, 0.25, None),
            ("objective", 100, 128, 0.25, None),
            ("objective", 100, 128, 0.25, None),
            ("paper", 100, 128, 0.25, None),
            ("objective", 100, 128, 0.5, None),
            ("objective", 100, 128, 0.35, None),
        ],
    ),
    # Φ = the LQR baseline + a width-64 network, like swap-12. From the baseline alone the
    # closed loop learned to speed through the wall between two RK4 stage points (speeds of
    # 100-200 in the first step; 26 training steps: 0 violations at 26 steps, 8 at 50; 50
    # steps: 3 at 50 and 15 at 100 after 200 iterations, cost 17 500). "warm_start": a fit
    # to 9 open-loop optimal paths over the wall (_swarm_warmstart: L-BFGS on the
    # transcription from a path raised over the wall, 2 minutes in all, where IPOPT stops
    # unconverged after 3000 iterations and 8 minutes), then the objective at ρ₀'s spread
    # with 50 RK4 steps (the benchmark's; 26 let the agents jump the wall again). One run,
    # 16 min of CPU (one thread, data included): 0/1000 perturbed rollouts collide or enter a
    # box, closest pair 0.31 > 2r = 0.2, every agent within 0.4 % of the targets' spread of
    # its target; cost 1570, +14 % over IPOPT's unconverged point (the data's paths: 1537)
    "swarm50": dict(
        width=64,
        baseline="lqr",
        nt=50,
        warm_from="_swarm_warmstart",
        warm_start=dict(n0=8, iterations=500),
        stages=[
            ("objective", 100, 32, 0.1, None),
            ("objective", 100, 32, 0.1, None),
            ("objective", 100, 32, 0.1, None),
            ("objective", 100, 32, 0.1, None),
        ],
        ipopt_max_seconds=600,
    ),
}
QUICK = dict(width=8, stages=[("paper", 10, 32, 0.5, None), ("objective", 5, 32, 0.5, None)])


# ----------------------------------------------------------------------------- CasADi costs
def _smoothstep(ca, u):
    u = ca.fmin(ca.fmax(u, 0.0), 1.0)
    return u * u * u * (10.0 + u * (6.0 * u - 15.0))


def _state_cost(ca, pb: AgentProblem, z):
    """α₁Q + α₂W of one state (a CasADi column of length d)."""
    A, k = pb.n_agents, pb.agent_dim
    x = [z[i * k : (i + 1) * k] for i in range(A)]
    out = 0
    a1, a2 = pb.alpha[1:]
    m = pb.inflate
    if a1 and pb.discs is not None:
        for c, R, s in zip(*(v.tolist() for v in pb.discs), strict=True):
            h = (2 * math.pi * s * s) ** (-k / 2)
            Ro2 = (R + m) ** 2
            for xi in x:
                r2 = ca.sumsqr(xi - ca.DM(c))
                ind = _smoothstep(ca, (Ro2 - r2) / (Ro2 - R * R))
                out += a1 * h * ca.exp(-0.5 * r2 / (s * s)) * ind
    if a1 and pb.boxes is not None:
        for lo, hi, c, s in zip(*(v.tolist() for v in pb.boxes), strict=True):
            for xi in x:
                ind = 1
                for a in range(k):
                    if math.isfinite(hi[a]):
                        ind = ind * _smoothstep(ca, (hi[a] + m - xi[a]) / m)
                    if math.isfinite(lo[a]):
                        ind = ind * _smoothstep(ca, (xi[a] - lo[a] + m) / m)
                g = ca.exp(-0.5 * sum(((xi[a] - c[a]) / s[a]) ** 2 for a in range(k)))
                out += a1 * (1 + g) * ind
    if a2 and A > 1:
        r2 = (2 * pb.radius) ** 2
        ro2 = r2 * pb.interaction_margin**2
        for i in range(A):
            for j in range(i + 1, A):
                d2 = ca.sumsqr(x[i] - x[j])
                out += (
                    a2 * ca.exp(-0.5 * d2 / pb.radius**2) * _smoothstep(ca, (ro2 - d2) / (ro2 - r2))
                )
    return out


def solve_ipopt(pb: AgentProblem, x0, nt: int, *, guess=None, max_iter: int = 3000, tol=1e-8,
                max_seconds: float | None = None):  # fmt: skip
    """IPOPT on the multiple-shooting transcription from the start ``x0`` ``(d,)``.

    ``guess``: an initial path ``(nt + 1, d)`` (default: straight lines with a small bend).
    ``max_seconds``: IPOPT's CPU-time limit (status ``Maximum_CpuTime_Exceeded`` past it).
    Returns a dict with ``cost``, ``seconds`` (CPU seconds of IPOPT's solve, not the model
    build; ``wall_seconds`` the wall time),
    ``status``, ``iterations``, ``path`` ``(nt + 1, d)`` and IPOPT's ``multipliers`` of the
    constraints (X₀ − x₀, then X_{k+1} − X_k − hU_k for k = 0…nt − 1; d each).
    """
    import casadi as ca

    d, h = pb.dim, pb.horizon / nt
    zs = ca.SX.sym("z", d)
    cost_fn = ca.Function("c", [zs], [_state_cost(ca, pb, zs)])
    us = ca.SX.sym("u", d)
    step = ca.Function(
        "step",
        [zs, us],
        [h / 6 * (cost_fn(zs) + 4 * cost_fn(zs + 0.5 * h * us) + cost_fn(zs + h * us))
         + 0.5 * h * ca.sumsqr(us)],
    )  # fmt: skip
    X = ca.MX.sym("X", d, nt + 1)
    U = ca.MX.sym("U", d, nt)
    run = ca.sum2(step.map(nt)(X[:, :-1], U))
    y = ca.DM(pb.target.numpy())
    J = run + 0.5 * pb.alpha[0] * ca.sumsqr(X[:, -1] - y)
    x0 = np.asarray(x0, dtype=float).reshape(d)
    g = ca.vertcat(ca.vec(X[:, 0] - ca.DM(x0)), ca.vec(X[:, 1:] - X[:, :-1] - h * U))
    nlp = {"x": ca.vertcat(ca.vec(X), ca.vec(U)), "f": J, "g": g}
    opts = {"ipopt.print_level": 0, "print_time": 0, "ipopt.max_iter": max_iter,
            "ipopt.tol": tol, "ipopt.sb": "yes"}  # fmt: skip
    if d > 50:  # the swarm: exact Hessians of 1225 pair terms are too slow to build
        opts["ipopt.hessian_approximation"] = "limited-memory"
    if max_seconds is not None:
        opts["ipopt.max_cpu_time"] = float(max_seconds)
    solver = ca.nlpsol("ocp", "ipopt", nlp, opts)
    if guess is None:
        s = np.linspace(0.0, 1.0, nt + 1)[:, None]
        guess = (1 - s) * x0 + s * pb.target.numpy()
        bend = np.sin(np.pi * s) * 0.3 * np.cos(np.arange(d))[None]  # breaks the symmetry
        guess = guess + bend
    guess = np.asarray(guess, dtype=float)
    u0 = np.diff(guess, axis=0) / h
    w0 = np.concatenate([guess.reshape(-1), u0.reshape(-1)])  # column-major vec of (d, nt+1)
    t0, c0 = time.perf_counter(), time.process_time()
    sol = solver(x0=w0, lbg=0, ubg=0)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    st = solver.stats()
    w = np.asarray(sol["x"]).reshape(-1)
    path = w[: d * (nt + 1)].reshape(nt + 1, d)
    return {"cost": float(sol["f"]), "seconds": cpu, "wall_seconds": seconds,
            "status": st["return_status"],
            "iterations": int(st["iter_count"]), "path": path,
            "multipliers": np.asarray(sol["lam_g"]).reshape(-1)}  # fmt: skip


# ----------------------------------------------------------------------------- odeflow side
def train(pb: AgentProblem, quick: bool, seed: int = 0):
    """A float32 value network trained by the recipe's stages; returns (phi, seconds)."""
    r = QUICK if quick else RECIPES[pb.name]
    torch.manual_seed(seed)
    phi = ValueNetwork(pb.dim, width=r["width"], rank=r.get("rank"))
    if r.get("baseline") == "lqr":
        with torch.no_grad():  # the quadratic term starts small: Φ ≈ the LQR baseline
            phi.net.blocks[1].A.mul_(0.1)
        phi = with_baseline(pb, phi).float()
    seconds = 0.0
    if "warm_start" in r:  # supervised fit to open-loop optimal paths first
        import importlib  # _swap12_warmstart (IPOPT) or the recipe's "warm_from" module

        ws = importlib.import_module(r.get("warm_from", "_swap12_warmstart"))
        info = ws.warm_start(pb, phi, **r["warm_start"])
        seconds += info["data_seconds"] + info["fit_seconds"]
    for i, stage in enumerate(r["stages"]):
        seconds += train_stage(pb, phi, stage, seed + i, nt=r.get("nt"))
    return phi, seconds


def train_stage(pb: AgentProblem, phi, stage: tuple, seed: int, nt: int | None = None) -> float:
    """One stage ``(loss, iterations, batch, spread, α₂)`` of a recipe with ``nt`` RK4 steps
    (default: the preset's); returns seconds."""
    from odeflow.control import LossWeights

    loss, iterations, batch, spread, alpha2 = stage
    stage_pb = make_problem(pb.name, spread=spread)
    if alpha2 is not None:
        stage_pb.alpha = (*stage_pb.alpha[:2], float(alpha2))
    w = None if loss == "paper" else LossWeights(hjb=0.0, terminal_value=0.0)
    res = fit(stage_pb, phi, optimizer="lbfgs", iterations=iterations, batch=batch,
              nt=nt or pb.steps, weights=w, seed=seed, verbose=False)  # fmt: skip
    return res.seconds


def with_baseline(pb: AgentProblem, net: ValueNetwork) -> ResidualValue:
    """Φ = the obstacle-free LQR value (straight lines to the targets, gain
    α₀/(1 + α₀(T − t))) + the network, which learns the avoidance (see ``RECIPES``)."""
    base = LQRValue(pb.dim, Qf=pb.alpha[0], target=pb.target, horizon=pb.horizon)
    return ResidualValue(base, net)


def timed(fn, repeat: int = 1, rounds: int = 3) -> tuple[float, float]:
    """Best-of-rounds (CPU seconds of this process, wall seconds) per call of ``fn()``.

    On a shared machine the wall time counts the other processes' turns; the process's CPU
    time (one torch thread) is the work itself."""
    fn()  # warm-up
    cpu = wall = math.inf
    for _ in range(rounds):
        c, w = time.process_time(), time.perf_counter()
        for _ in range(repeat):
            fn()
        cpu = min(cpu, (time.process_time() - c) / repeat)
        wall = min(wall, (time.perf_counter() - w) / repeat)
    return cpu, wall


def feedback_ms(pb: AgentProblem, phi, batch: int, repeat: int = 50) -> dict:
    """(CPU, wall) milliseconds of one feedback evaluation u*(x, ∇Φ(x, t)) of ``batch``
    states: online (:class:`OnlineFeedback`, numpy float64 at batch 1, torch inference mode
    in the network's dtype otherwise) and the regular path (``phi.jet`` + ``pb.feedback``)."""
    x = pb.safe_starts(batch, 0.1, generator=torch.Generator().manual_seed(0)).float()
    t = torch.tensor(0.3)
    backend = "numpy" if batch == 1 else "torch"
    online = OnlineFeedback(pb, phi, backend=backend)
    xo = x.double().numpy() if backend == "numpy" else x
    cpu, wall = timed(lambda: online.feedback(xo, 0.3), repeat, rounds=5)
    with torch.no_grad():
        jcpu, _ = timed(lambda: pb.feedback(x, phi.jet(x, t).grad, t), repeat, rounds=5)
    b = f"batch{batch}"
    return {f"feedback_ms_{b}": 1e3 * cpu, f"feedback_wall_ms_{b}": 1e3 * wall,
            f"feedback_ms_{b}_jet": 1e3 * jcpu}  # fmt: skip


def fly(pb: AgentProblem, phi, x, nt: int):
    """The closed loop by the regular path: RK4 steps of ż = u*(z, ∇Φ(z, t)) with
    ``phi.jet``, states only (:meth:`OnlineFeedback.rollout` is the online form)."""
    h = pb.horizon / nt

    def f(z, t):
        return pb.dynamics(z, pb.feedback(z, phi.jet(z, t).grad, t), t)

    z = x
    for k in range(nt):
        t = torch.tensor(k * h)
        k1 = f(z, t)
        k2 = f(z + 0.5 * h * k1, t + 0.5 * h)
        k3 = f(z + 0.5 * h * k2, t + 0.5 * h)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + f(z + h * k3, t + h))
    return z


def _load(pb: AgentProblem, path: Path):
    """A network saved by :func:`run_case` (``baseline="lqr"``: wrapped in the baseline)."""
    _, phi = load_checkpoint(path, pb)
    ck = torch.load(path, weights_only=True)
    if ck.get("baseline") == "lqr":
        phi = with_baseline(pb, phi).to(next(phi.parameters()).dtype)
    return phi, ck.get("train_seconds")


def _save(pb: AgentProblem, phi, path: Path, train_s: float, **extra) -> None:
    if isinstance(phi, ResidualValue):
        save_checkpoint(pb, phi.net, path, train_seconds=train_s, baseline="lqr", **extra)
    else:
        save_checkpoint(pb, phi, path, train_seconds=train_s, **extra)


def run_case(name: str, quick: bool, rollouts: int | None = None, nt: int = 50,
             load: Path | None = None, save: Path | None = None) -> dict:  # fmt: skip
    """Train (or load ``load/NAME.pt``), compare with IPOPT from the nominal start, count
    collisions in perturbed closed-loop rollouts and time the feedback; returns plain
    numbers. ``save``: write the trained network to ``save/NAME.pt`` with its training time."""
    pb = make_problem(name)
    if load is not None:
        path = Path(load) / f"{name}.pt"
        phi, train_s = _load(pb, path)
        train_cpu = torch.load(path, weights_only=True).get("train_cpu_seconds")
    else:
        c0 = time.process_time()
        phi, train_s = train(pb, quick)
        train_cpu = time.process_time() - c0  # this process's CPU time (one torch thread)
        if save is not None:
            _save(pb, phi, Path(save) / f"{name}.pt", train_s, train_cpu_seconds=train_cpu)
    n_roll = rollouts or (64 if quick else 1000)
    x0 = pb.start[None].float()
    online, online_b = OnlineFeedback(pb, phi), OnlineFeedback(pb, phi, backend="torch")
    x0n = x0.double().numpy()
    xb = pb.safe_starts(1024, 0.25, generator=torch.Generator().manual_seed(4)).float()
    with torch.no_grad():
        nominal = rollout(pb, phi, x0, nt=nt)
        rollout_s, rollout_wall = timed(lambda: online.rollout(x0n, nt), rounds=5)
        jet_s, _ = timed(lambda: fly(pb, phi, x0, nt))
        batch_s, _ = timed(lambda: online_b.rollout(xb, nt), rounds=1)
    cap = RECIPES[name].get("ipopt_max_seconds")
    cold = solve_ipopt(pb, pb.start.numpy(), nt, max_seconds=cap)
    warm = solve_ipopt(pb, pb.start.numpy(), nt, guess=nominal.paths[:, 0].double().numpy(),
                       max_seconds=cap)  # fmt: skip
    best = min(
        cold, warm, key=lambda r: r["cost"] if r["status"] == "Solve_Succeeded" else math.inf
    )
    scale = 0.25 * pb.spread
    xs = pb.safe_starts(n_roll, scale, generator=torch.Generator().manual_seed(3)).float()
    with torch.no_grad():
        out = rollout(pb, phi, xs, nt=nt)
    safe = pb.safety(out.paths)
    nominal_safe = pb.safety(nominal.paths)
    ipopt_safe = pb.safety(torch.as_tensor(best["path"])[:, None])
    cost = float(nominal.cost[0])
    # the online float64 closed loop against the regular one (the network's dtype)
    online_dev = float(np.abs(online.rollout(x0n, nt, paths=True)[:, 0]
                              - nominal.paths[:, 0].double().numpy()).max())  # fmt: skip
    return {
        "problem": name, "dim": pb.dim, "agents": pb.n_agents, "nt": nt,
        "train_seconds": train_s, "train_cpu_seconds": train_cpu,
        "recipe": (QUICK if quick else RECIPES[name]), "loaded": load is not None,
        "closed_loop_cost": cost, "ipopt_cost": best["cost"],
        "ipopt_cold_cost": cold["cost"], "ipopt_warm_cost": warm["cost"],
        "ipopt_status": [cold["status"], warm["status"]],
        "relative_gap": cost / best["cost"] - 1,
        "ipopt_seconds": cold["seconds"], "ipopt_warm_seconds": warm["seconds"],
        "ipopt_wall_seconds": cold["wall_seconds"], "rollout_wall_seconds": rollout_wall,
        "rollout_ms_per_start_batch1024": 1e3 * batch_s / 1024,
        "speedup_vs_ipopt_batch1024": cold["seconds"] / (batch_s / 1024),
        "ipopt_collisions": int(ipopt_safe.collisions[0]),
        "rollout_seconds": rollout_s, "speedup_vs_ipopt": cold["seconds"] / rollout_s,
        "rollout_seconds_jet": jet_s, "online_max_deviation": online_dev,
        "nominal_collisions": int(nominal_safe.collisions[0]),
        "nominal_violations": int(nominal_safe.violations[0]),
        "nominal_terminal_error": float(nominal_safe.terminal_error[0]),
        "rollouts": n_roll, "perturbation": scale,
        "collisions": int((safe.collisions > 0).sum()),
        "violations": int((safe.violations > 0).sum()),
        "min_distance": float(safe.min_distance.min()),
        "terminal_error_max": float(safe.terminal_error.max()),
        "terminal_agent_error_max": _agent_error(pb, out.paths[-1]),
        "target_spread": pb.target_spread,
        **feedback_ms(pb, phi, 1), **feedback_ms(pb, phi, 1024, repeat=5),
    }  # fmt: skip


def _agent_error(pb: AgentProblem, z) -> float:
    """The largest distance of one agent from its target at T over the starts, in units of
    the targets' spread (the RMS distance of the targets from their centroid).
    ``terminal_error_max`` (``pb.safety``) is the same ratio for the RMS over the agents."""
    x = z.reshape(len(z), pb.n_agents, pb.agent_dim) - pb.target.to(z).reshape(pb.n_agents, -1)
    return float(x.norm(dim=-1).max()) / pb.target_spread


CASES = {
    name: (lambda quick, _n=name, **kw: run_case(_n, quick, **kw))
    for name in ("corridor", "swap2", "swap12", "swarm50")
}
