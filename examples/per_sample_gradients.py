"""Per-sample gradients of a neural ODE through the discrete adjoint (DP-SGD-style clipping).

    python examples/per_sample_gradients.py --iters 150 [--noise 0.5]

``torch.func.vmap(torch.func.grad(loss))`` gives one parameter gradient per example of the
batch, each through the exact discrete adjoint (the same gradients as ``loss.backward()`` on
that example alone, at the adjoint's memory). Each is clipped to norm ``--clip``, the clipped
gradients are averaged and, with ``--noise σ``, Gaussian noise of standard deviation
σ·clip/batch is added: the update of differentially private SGD (the privacy accounting is
not part of this example). The model is an augmented neural ODE classifying two moons.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import odeflow as of


def make_moons(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaving half circles with noise 0.1 (labels 0 and 1), standardised."""
    label = torch.randint(0, 2, (n,), generator=generator)
    angle = math.pi * torch.rand(n, generator=generator)
    x = torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    x = torch.where(label[:, None] == 1, torch.stack([1 - x[:, 0], 0.5 - x[:, 1]], 1), x)
    x = x + 0.1 * torch.randn(n, 2, generator=generator)
    return (x - torch.tensor([0.5, 0.25])) / torch.tensor([0.87, 0.5]), label


class Field(nn.Module):
    """dy/dt = tanh MLP of (y, t) on the augmented state y ∈ R⁴."""

    def __init__(self, dim: int = 4, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, width), nn.Tanh(), nn.Linear(width, dim))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([y, t.expand(y.shape[0], 1)], 1))


class ODEClassifier(nn.Module):
    """x ∈ R² padded with zeros to R⁴, flowed to t = 1 (4 RK4 steps), read out linearly."""

    def __init__(self):
        super().__init__()
        self.field = Field()
        self.readout = nn.Linear(4, 2)
        self.register_buffer("t", torch.tensor([0.0, 1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0 = torch.cat([x, x.new_zeros(x.shape[0], 2)], 1)
        return self.readout(of.odeint(self.field, y0, self.t, steps_per_interval=4)[-1])


def train(iters: int = 150, batch: int = 64, clip: float = 1.0, noise: float = 0.0,
          lr: float = 0.02, seed: int = 0, verbose: bool = True) -> dict:  # fmt: skip
    """Train with clipped per-sample gradients; returns the test accuracy and the last
    batch's per-sample gradient norms."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = ODEClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def loss_one(params, x, y):  # one example: what vmap maps over
        logits = functional_call(model, params, (x[None],))
        return nn.functional.cross_entropy(logits, y[None])

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
    norms = torch.zeros(batch)
    for it in range(1, iters + 1):
        x, y = make_moons(batch, g)
        params = {n: p.detach() for n, p in model.named_parameters()}
        grads = per_sample(params, x, y)  # name -> (batch, *shape)
        norms = torch.sqrt(sum(gr.flatten(1).square().sum(1) for gr in grads.values()))
        scale = (clip / norms).clamp(max=1.0)
        for n, p in model.named_parameters():
            gr = grads[n] * scale.view(-1, *[1] * (grads[n].ndim - 1))
            p.grad = gr.mean(0) + noise * clip / batch * torch.randn(p.shape, generator=g)
        opt.step()
        if verbose and (it % 50 == 0 or it == 1):
            share = (norms > clip).float().mean()
            print(f"iter {it:4d}  per-sample gradient norm: median {norms.median():.3f}, "
                  f"max {norms.max():.3f}; clipped {share:.0%}")  # fmt: skip
    x, y = make_moons(2000, torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    if verbose:
        print(f"test accuracy {acc:.3f}")
    return {"accuracy": acc, "norms": norms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=150)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--clip", type=float, default=1.0, help="per-sample gradient norm bound")
    ap.add_argument("--noise", type=float, default=0.0, help="noise multiplier σ")
    args = ap.parse_args()
    train(args.iters, args.batch, args.clip, args.noise)


if __name__ == "__main__":
    main()
