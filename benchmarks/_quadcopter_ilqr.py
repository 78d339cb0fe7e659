"""The quadcopter's iLQR feedback (:class:`odeflow.control.ILQRValue`) for ``_apps_dynamics``:
the value built from one IPOPT solve, its online form, the shock against IPOPT re-solved from
the kicked state, and perturbed starts. Needs CasADi (the ``bench`` extra), like
``_apps_dynamics``; run this file alone for the quick figures::

    OMP_NUM_THREADS=1 PYTHONPATH=src:benchmarks python benchmarks/_quadcopter_ilqr.py
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor

from odeflow.control import ILQRValue, rollout
from odeflow.control._quadcopter import Quadcopter, quadcopter_shock


def ilqr_value(pb: Quadcopter, recipe: dict) -> tuple[ILQRValue, float, list]:
    """IPOPT's open-loop controls at ``recipe["ipopt_nt"]`` intervals flown from the start as
    the first nominal, then ``refinements`` iLQR passes along the closed loop (``steps`` RK4
    steps each). Returns the value, the seconds (IPOPT solve included) and Φ(x₀, 0) per pass."""
    from _apps_dynamics import ipopt_quadcopter

    t0 = time.perf_counter()
    U = ipopt_quadcopter(pb, pb.start.numpy(), recipe["ipopt_nt"])["controls"]
    h = pb.horizon / len(U)

    def open_loop(t):
        return U[min(int(t / h), len(U) - 1)]

    phi = ILQRValue(pb, pb.start, nominal=open_loop, steps=recipe["steps"])
    values = [float(phi(pb.start[None], 0.0)[0])]
    for _ in range(recipe["refinements"]):
        phi = ILQRValue(pb, pb.start, nominal=phi, steps=recipe["steps"])
        values.append(float(phi(pb.start[None], 0.0)[0]))
    return phi, time.perf_counter() - t0, values


def online_ilqr(pb: Quadcopter, phi: ILQRValue, nt: int, ipopt_seconds: float, paths) -> dict:
    """The deployment form: P, s, z̄ tabulated once at the 2nt + 1 RK4 stage times
    (``gradient_table``), then per stage p = P(z − z̄) + s and the closed forms of u*(z, p)
    and f(z, u): the quadcopter's numpy ones for one feedback, Python floats in the closed
    loop (batch 1), torch in inference mode at batch 1024. Same keys as
    ``_apps_dynamics._online_quadcopter``."""
    from _apps_dynamics import _best, online_row

    h = pb.horizon / nt
    P, s, zb = (v.numpy() for v in phi.gradient_table(np.arange(2 * nt + 1) * (h / 2)))
    m, g = pb.mass, pb.gravity

    def field(z, j):  # ż = f(z, u*(z, P(z − z̄) + s)): one matvec, the rest on Python floats
        p = (P[j] @ (z - zb[j]) + s[j]).tolist()
        x = z.tolist()
        sps, sth, sph = math.sin(x[3]), math.sin(x[4]), math.sin(x[5])
        cps, cth, cph = math.cos(x[3]), math.cos(x[4]), math.cos(x[5])
        f7, f8 = sps * sph + cps * sth * cph, -cps * sph + sps * sth * cph
        f9 = cth * cph
        a = -0.5 * (f7 * p[6] + f8 * p[7] + f9 * p[8]) / (m * m)  # u*/m
        return np.array([*x[6:], a * f7, a * f8, a * f9 - g, -0.5 * p[9], -0.5 * p[10],
                         -0.5 * p[11]])  # fmt: skip

    def loop(x, keep=False):
        z, out = x[0], [x[0]]
        for j in range(0, 2 * nt, 2):
            k1 = field(z, j)
            k2 = field(z + 0.5 * h * k1, j + 1)
            k3 = field(z + 0.5 * h * k2, j + 1)
            z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + field(z + h * k3, j + 2))
            if keep:
                out.append(z)
        return np.stack(out)[:, None] if keep else z

    Pt, st, zt = (torch.as_tensor(v) for v in (P, s, zb))
    t = torch.tensor(0.3, dtype=torch.float64)
    x1 = pb.start[None].numpy().copy()
    xb = pb.sample_initial(1024, generator=torch.Generator().manual_seed(3))

    def batch():
        with torch.inference_mode():
            return pb.feedback(xb, (xb - zt[60]) @ Pt[60].mT + st[60], t)

    out = {}
    for key, fn, reps in (
        ("ms_per_feedback_batch1", lambda: pb.online_feedback(x1, (x1 - zb[60]) @ P[60].T + s[60],
                                                              0.3), 200),
        ("ms_per_feedback_batch1024", batch, 10),
    ):  # fmt: skip
        wall, cpu = _best(fn, reps)
        out[f"online_{key}"], out[f"online_{key}_cpu"] = 1e3 * wall, 1e3 * cpu
    wall, cpu = _best(lambda: loop(x1), 1)
    out["online_ms_per_step_batch1"] = 1e3 * wall / nt
    out["online_ms_per_step_batch1_cpu"] = 1e3 * cpu / nt
    diff = np.abs(loop(x1, keep=True)[:, 0] - paths[:, 0].numpy()).max()
    return online_row(out, wall, cpu, ipopt_seconds, diff)


def _ipopt_from(pb: Quadcopter, x: Tensor, t0: float, paths, phi, nt_left: int) -> dict:
    """IPOPT on [t0, T] from the state ``x``, warm-started from the closed loop ``paths``
    (``(nt_left + 1, 12)``) and its feedback controls at the nodes."""
    from _apps_dynamics import ipopt_quadcopter

    rest = Quadcopter(mass=pb.mass, gravity=pb.gravity, terminal_weight=pb.alpha0,
                      horizon=pb.horizon - t0, target=pb.target[:3])  # fmt: skip
    h = (pb.horizon - t0) / nt_left
    ts = t0 + h * torch.arange(len(paths) - 1, dtype=torch.float64)
    z = paths[:-1]
    u = torch.cat([pb.feedback(z[k : k + 1], phi.jet(z[k : k + 1], ts[k]).grad, ts[k])
                   for k in range(len(z))])  # fmt: skip
    init = {"states": paths.numpy(), "controls": u.numpy()}
    return ipopt_quadcopter(rest, x.numpy(), len(paths) - 1, init=init)


def shock_vs_ipopt(pb: Quadcopter, phi, nt: int, kick, time_: float = 0.1) -> dict:
    """The kicked closed loop (:func:`quadcopter_shock`) against IPOPT re-solved from the
    kicked state on the rest of the horizon (warm-started from the kicked closed loop)."""
    sh = quadcopter_shock(pb, phi, nt=nt, kick=kick, time=time_)
    k = round(time_ / (pb.horizon / nt))
    path = sh.shocked_paths[k:, 0]
    ip = _ipopt_from(pb, path[0], k * pb.horizon / nt, path, phi, nt - k)
    tgt = pb.target[:3].numpy()
    return {"time": time_, "kick": list(kick), "target_error": float(sh.shocked_error[0]),
            "cost_to_go": float(sh.shocked_cost[0]), "ipopt_cost_to_go": ip["cost"],
            "ipopt_target_error": float(np.linalg.norm(ip["states"][-1, :3] - tgt)),
            "relative_gap": float(sh.shocked_cost[0]) / ip["cost"] - 1}  # fmt: skip


def perturbed_starts(pb: Quadcopter, phi, nt: int, n: int, seed: int = 5) -> dict:
    """Closed loops from ``n`` draws of ρ₀ (the start plus N(0, s₀²) in position; the value was
    built for the nominal start) against IPOPT from each, warm-started from the closed loop."""
    x = pb.sample_initial(n, generator=torch.Generator().manual_seed(seed))
    r = rollout(pb, phi, x, nt=nt)
    tgt = pb.target[:3]
    gaps, errs = [], []
    for i in range(n):
        ip = _ipopt_from(pb, x[i], 0.0, r.paths[:, i], phi, nt)
        gaps.append(float(r.cost[i]) / ip["cost"] - 1)
        errs.append(float((r.paths[-1, i, :3] - tgt).norm()))
    return {"n": n, "seed": seed, "relative_gaps": gaps, "max_relative_gap": max(gaps),
            "target_errors": errs}  # fmt: skip


def main() -> None:
    """The quick figures: the value, its closed loop against the step count, the shock."""
    from _apps_dynamics import RECIPES
    from odeflow.control._quadcopter import DEFAULT_KICK

    torch.set_num_threads(1)
    pb = Quadcopter()
    recipe = RECIPES["quadcopter"]["quick"]
    phi, sec, values = ilqr_value(pb, recipe)
    print(f"built in {sec:.1f} s; Φ(x₀, 0) per pass: {values}")
    for nt in (50, 100, 200, 1000):
        r = rollout(pb, phi, pb.start[None], nt=nt)
        err = float((r.paths[-1, 0, :3] - pb.target[:3]).norm())
        print(f"nt = {nt:5d}: closed loop {float(r.cost[0]):.3f}, position error {err:.4f}")
    print("shock:", shock_vs_ipopt(pb, phi, recipe["eval_nt"], DEFAULT_KICK))


if __name__ == "__main__":
    main()
