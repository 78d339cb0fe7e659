"""Learn the 2-D cubic spiral vector field with a neural ODE (odeflow's discrete adjoint).

Run:  python examples/neural_ode_spiral.py [--precision bf16] [--iters 400]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import odeflow
from odeflow.ode import AutonomousField, fit_trajectory, spiral_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--precision", default="fp32", help="fp32, bf16 or fp16")
    p.add_argument("--iters", type=int, default=400)
    args = p.parse_args()

    torch.set_num_threads(1)  # tiny 2-D problem: one intra-op thread is fastest
    torch.manual_seed(0)
    t, ys = spiral_data(1000, 25.0)
    net = nn.Sequential(nn.Linear(2, 50), nn.Tanh(), nn.Linear(50, 2))
    func = AutonomousField(net)
    res = fit_trajectory(func, t, ys, iters=args.iters, batch_time=10, batch_size=20,
                         precision=args.precision)  # fmt: skip
    print(f"loss: first {res.losses[0]:.4f} -> last {res.losses[-1]:.4f}")
    print(f"full-rollout MSE from y(0): {res.final_mse:.4f}")
    with torch.no_grad():
        y_end = odeflow.odeint(func, ys[0:1], t)[-1, 0]
    print(f"y(25): fitted {y_end.tolist()}  data {ys[-1].tolist()}")


if __name__ == "__main__":
    main()
