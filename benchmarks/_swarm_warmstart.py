"""Warm start of the 50-agent swarm's value network from open-loop optimal paths over the wall.

Trained from the LQR baseline alone (straight lines, which cross the wall of boxes and meet in
fours at (x, 0, 5) at t = T/2), the closed loop learns a local fix: agents speed through the
wall between two RK4 stage points (speeds of 100–200 in the first step, cheaper in that
discrete loss than a climb of 2 units, yet inside the box at a finer step). The detour over
the wall is another homotopy class, which gradient steps on the loss do not reach. As for swap-12
(``_swap12_warmstart``, after Nakamura-Zimmerer, Gong & Kang, arXiv 1907.05317), Φ is first
fitted to the values and costates of open-loop optimal paths; here they come from L-BFGS on
the same transcription as ``_apps_agents.solve_ipopt`` (states X₀…X_N, controls
U_k = (X_{k+1} − X_k)/h, cost Σ_k s_k + G(X_N), the step cost s_k of
``_swap12_warmstart.step_costs``), in torch, started from a path over the wall: the straight
line plus a bump of height 3 + 0.6j in z (sin(πt) profile; j numbers the agents that share an
x, so that those that met at (x, 0, 5) pass at different heights). A solve takes 10–30 s of
CPU, where IPOPT on the 15 000-variable transcription (limited-memory Hessian) stopped
unconverged after 3000 iterations and 8 minutes. The perturbed starts' paths start from
the nominal path shifted to them (their homotopy class). Costates by the discrete adjoint
sweep of ``_swap12_warmstart``; the network is fitted to the residual of the LQR baseline
(V − V_LQR, λ − ∇V_LQR; the baseline is fixed).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from _swap12_warmstart import _shifted, fit_report, stack_solutions, step_costs
from odeflow.control import AgentProblem, fit_value_to_data


def detour_guess(pb: AgentProblem, x0: np.ndarray, nt: int) -> np.ndarray:
    """Straight lines from ``x0`` to the targets raised by 3 + 0.6j in z (sin(πt)), j the
    agent's rank among those with the same target x; ``(nt + 1, d)``."""
    A, k = pb.n_agents, pb.agent_dim
    y = pb.target.numpy().reshape(A, k)
    s = np.linspace(0.0, 1.0, nt + 1)[:, None, None]
    path = (1 - s) * np.asarray(x0, dtype=float).reshape(A, k) + s * y
    rank = np.zeros(A)
    for i in range(A):
        rank[i] = sum(abs(y[m, 0] - y[i, 0]) < 1e-9 for m in range(i))
    path[:, :, 2] += np.sin(np.pi * s[:, :, 0]) * (3.0 + 0.6 * rank)
    return path.reshape(nt + 1, A * k)


def solve_path(pb: AgentProblem, x0, guess: np.ndarray, *, iterations: int = 3000) -> dict:
    """L-BFGS (strong Wolfe) on the transcription's states X₁…X_N from ``guess``
    ``(N + 1, d)`` with X₀ = ``x0``; returns the path, cost, CPU seconds and iterations."""
    nt = len(guess) - 1
    h = pb.horizon / nt
    x0 = torch.as_tensor(np.asarray(x0, dtype=float)).reshape(1, -1)
    X = torch.tensor(guess[1:], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([X], lr=1.0, max_iter=iterations, history_size=50,
                            tolerance_grad=1e-7, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")  # fmt: skip

    def cost():
        Z = torch.cat([x0, X])
        return step_costs(pb, Z, (Z[1:] - Z[:-1]) / h, h).sum() + pb.terminal_cost(Z[-1:])[0]

    def closure():
        opt.zero_grad()
        J = cost()
        J.backward()
        return J

    c0 = time.process_time()
    opt.step(closure)
    with torch.no_grad():
        J = float(cost())
    path = torch.cat([x0, X.detach()]).numpy()
    it = opt.state[opt._params[0]]["n_iter"]
    return {"path": path, "cost": J, "seconds": time.process_time() - c0, "iterations": it}


def optimal_data(pb: AgentProblem, nt: int = 50, n0: int = 8, seed: int = 11,
                 scale: float = 0.1, iterations: tuple[int, int] = (1500, 500),
                 log=print):  # fmt: skip
    """Optimal paths from the nominal start (from :func:`detour_guess`) and ``n0`` starts
    perturbed by ``scale``·N(0, I) (from the nominal path shifted), at most ``iterations``
    L-BFGS iterations (nominal, perturbed); returns (x, t, V, λ, info) over all nodes, like
    ``_swap12_warmstart.optimal_data``."""
    h, c0 = pb.horizon / nt, time.process_time()
    x0 = pb.start.numpy()
    nominal = solve_path(pb, x0, detour_guess(pb, x0, nt), iterations=iterations[0])
    safe = pb.safety(torch.as_tensor(nominal["path"])[:, None])
    info = {"nominal_cost": nominal["cost"], "nominal_iterations": nominal["iterations"],
            "nominal_collisions": int(safe.collisions[0]),
            "nominal_violations": int(safe.violations[0])}  # fmt: skip
    log(f"nominal: {info}, {nominal['seconds']:.1f} s")
    g = torch.Generator().manual_seed(seed)
    starts = pb.safe_starts(n0, scale, generator=g).numpy() if n0 else np.zeros((0, pb.dim))
    sols = [nominal]
    for i, xi in enumerate(starts):
        r = solve_path(pb, xi, _shifted(nominal["path"], xi), iterations=iterations[1])
        log(f"start {i}: cost {r['cost']:.2f}, {r['iterations']} iterations, {r['seconds']:.1f} s")
        sols.append(r)
    info.update(seconds=time.process_time() - c0, solves=len(sols),
                costs=[r["cost"] for r in sols])  # fmt: skip
    return (*stack_solutions(pb, sols, h, nt), info)


def warm_start(pb: AgentProblem, phi, *, n0: int = 8, iterations: int = 500, nt: int = 50,
               seed: int = 11, solve_iterations: tuple[int, int] = (1500, 500), data=None,
               log=print) -> dict:  # fmt: skip
    """Fit ``phi.net`` (``phi`` a ``ResidualValue`` on the LQR baseline) to the data's
    values and costates minus the baseline's, in place (float64 for the fit). Returns the
    data and fit CPU seconds and errors."""
    if data is None:
        data = optimal_data(pb, nt, n0, seed, iterations=solve_iterations, log=log)
    x, t, V, lam, info = data
    net = phi.net
    dtype = next(net.parameters()).dtype
    c0 = time.process_time()
    with torch.no_grad():
        base = [phi.base.jet(x[t == s], float(s)) for s in torch.unique(t)]
    order = torch.cat([(t == s).nonzero()[:, 0] for s in torch.unique(t)])
    bV, bG = torch.empty_like(V), torch.empty_like(lam)
    bV[order] = torch.cat([b.value for b in base])
    bG[order] = torch.cat([b.grad for b in base])
    net.double()
    fit = fit_value_to_data(net, x, t, V - bV, lam - bG, iterations=iterations)
    net.to(dtype)
    return fit_report(info, fit, time.process_time() - c0, len(V), log)
