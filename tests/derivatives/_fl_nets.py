"""Plain nn.Module networks (no odeflow blocks) for the forward-Laplacian tests and benchmark."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def gelu_mlp(d: int, width: int = 16, depth: int = 4, m: int = 1) -> nn.Sequential:
    """depth Linear layers with GELU between them (d → width → … → m)."""
    layers: list[nn.Module] = [nn.Linear(d, width), nn.GELU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.GELU()]
    layers.append(nn.Linear(width, m))
    return nn.Sequential(*layers)


class TanhResNet(nn.Module):
    """u₀ = tanh(K₀x + b₀), u_{i+1} = u_i + h tanh(K_i u_i + b_i), f = wᵀu + ½‖x‖²·c."""

    def __init__(self, d: int, width: int = 12, depth: int = 3, h: float = 0.5):
        super().__init__()
        self.inp = nn.Linear(d, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, 1)
        self.h = h

    def forward(self, x):
        u = torch.tanh(self.inp(x))
        for lay in self.layers:
            u = u + self.h * torch.tanh(lay(u))
        return self.out(u) + 0.1 * (x * x).sum(-1, keepdim=True)


class Block(nn.Module):
    """Pre-LayerNorm transformer block with attention written as matmul + softmax."""

    def __init__(self, width: int, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp1, self.mlp2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def forward(self, h):
        n, t, w = h.shape
        q, k, v = self.qkv(self.ln1(h)).chunk(3, dim=-1)
        e = w // self.heads
        q = q.reshape(n, t, self.heads, e).transpose(1, 2)
        k = k.reshape(n, t, self.heads, e).transpose(1, 2)
        v = v.reshape(n, t, self.heads, e).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(e), dim=-1)
        o = (a @ v).transpose(1, 2).reshape(n, t, w)
        h = h + self.proj(o)
        return h + self.mlp2(F.gelu(self.mlp1(self.ln2(h))))


class Transformer(nn.Module):
    """x (n, tokens·width) → tokens of width ``width`` → ``depth`` pre-LN blocks → mean → scalar."""

    def __init__(self, tokens: int = 8, width: int = 16, depth: int = 2):
        super().__init__()
        self.tokens, self.width = tokens, width
        self.pos = nn.Parameter(0.1 * torch.randn(tokens, width))
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        h = x.reshape(x.shape[0], self.tokens, self.width) + self.pos
        for b in self.blocks:
            h = b(h)
        return self.head(self.ln(h).mean(1))


class Siren(nn.Module):
    """SIREN: sin(ω₀(Wx + b)) layers, linear read-out (Sitzmann et al., arXiv:2006.09661)."""

    def __init__(self, d: int, width: int = 16, depth: int = 3, w0: float = 3.0):
        super().__init__()
        self.lin = nn.ModuleList(nn.Linear(d if i == 0 else width, width) for i in range(depth))
        self.out = nn.Linear(width, 1)
        self.w0 = w0

    def forward(self, x):
        for lay in self.lin:
            x = torch.sin(self.w0 * lay(x))
        return self.out(x)


class TimeNet(nn.Module):
    """f(y, t) with x = (y, t): products, division, powers, exp/log and softplus/SiLU/sigmoid."""

    def __init__(self, d: int, width: int = 10):
        super().__init__()
        self.a = nn.Linear(d, width)
        self.b = nn.Linear(width + 1, width)
        self.c = nn.Linear(width, 2)

    def forward(self, x):
        y, t = x[:, :-1], x[:, -1:]
        z = F.softplus(self.a(x)) * torch.exp(-t)
        z = torch.cat([F.silu(z), torch.sigmoid(t)], dim=-1)
        z = torch.log(torch.cosh(self.b(z)))  # log-cosh
        out = self.c(z) / (1.0 + t**2)
        r2 = (y**2).sum(-1, keepdim=True)
        return out + torch.sqrt(1.0 + r2) * torch.cos(y[:, :1]) - y[:, 1:2].pow(3) / 3.0
