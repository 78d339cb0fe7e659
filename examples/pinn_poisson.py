"""A 100-D Poisson PINN trained on the exact Laplacian (odeflow's forward Laplacian).

Solve −Δu = f on the cube [0, 1]^d with u = g on its boundary, for the exact solution
u*(x) = (1/d) Σᵢ sin(π xᵢ / 2), so f = (π²/4) u* and g = u* on the faces. The network is a
plain ``nn.Sequential`` MLP; its Laplacian in the residual loss

    loss(θ) = mean_x (Δu_θ(x) + f(x))² + mean_{x on ∂Ω} (u_θ(x) − g(x))²

comes from :func:`odeflow.derivatives.forward_laplacian` (exact, one forward pass with d
directions, differentiable in the weights), never from a Hessian. ``--compare`` also times a
training step whose Laplacian comes from vmapped torch.func Hessian-vector products.

Usage::

    python examples/pinn_poisson.py                 # d = 100, 300 steps, well under a minute
    python examples/pinn_poisson.py --compare       # + time per step with torch.func
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

import odeflow.derivatives as D


def exact(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(0.5 * math.pi * x).mean(-1)


def source(x: torch.Tensor) -> torch.Tensor:
    return 0.25 * math.pi**2 * exact(x)  # f = −Δu*


def boundary_points(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.rand(n, d, generator=gen)
    face = torch.randint(0, d, (n,), generator=gen)
    x[torch.arange(n), face] = torch.randint(0, 2, (n,), generator=gen).to(x.dtype)
    return x


def loss_fn(net, xi, xb, laplacian):
    lap = laplacian(net, xi)
    res = lap + source(xi)
    bc = net(xb).squeeze(-1) - exact(xb)
    return (res**2).mean() + (bc**2).mean()


def fl_laplacian(net, x):
    return D.forward_laplacian(net, x, gradient=False).laplacian


def func_laplacian(net, x):
    return D.compute(net, x, want="laplacian", mode="func").laplacian


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--compare", action="store_true", help="time a torch.func step as well")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    d, w = args.dim, args.width
    net = nn.Sequential(nn.Linear(d, w), nn.Tanh(), nn.Linear(w, w), nn.Tanh(), nn.Linear(w, 1))
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    xt = torch.rand(1000, d, generator=gen)

    def rel_err():
        with torch.no_grad():
            u = net(xt).squeeze(-1)
            return float((u - exact(xt)).norm() / exact(xt).norm())

    print(f"d = {d}: relative L2 error before training {rel_err():.3e}")
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        xi = torch.rand(args.batch, d, generator=gen)
        xb = boundary_points(args.batch, d, gen)
        opt.zero_grad()
        loss = loss_fn(net, xi, xb, fl_laplacian)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps:
            print(f"step {step:4d}  loss {loss.item():.3e}  rel. L2 error {rel_err():.3e}")
    per_step = (time.perf_counter() - t0) / args.steps
    print(f"forward Laplacian: {1e3 * per_step:.1f} ms per training step")
    if args.compare:
        xi = torch.rand(args.batch, d, generator=gen)
        xb = boundary_points(args.batch, d, gen)
        for name, lap in (("forward Laplacian", fl_laplacian), ("torch.func", func_laplacian)):
            times = []
            for _ in range(4):
                s = time.perf_counter()
                opt.zero_grad()
                loss_fn(net, xi, xb, lap).backward()
                times.append(time.perf_counter() - s)
            print(f"{name:18s}: {1e3 * min(times[1:]):.1f} ms per step (forward + backward)")
    return rel_err()


if __name__ == "__main__":
    main()
