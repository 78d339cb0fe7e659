"""Elementwise functions for the forward Laplacian: each as (g(z), g′(z), g″(z)).

g″ is None for functions that are piecewise linear (ReLU, leaky ReLU, abs): their second
derivative vanishes almost everywhere, which is what autograd also gives.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from ._fl_jet import UnsupportedOpError

__all__ = ["ELEMENTWISE", "gelu", "softplus"]

_SQRT_2PI = math.sqrt(2.0 * math.pi)
_K_TANH = math.sqrt(2.0 / math.pi)


def _tanh(z):
    t = torch.tanh(z)
    d1 = 1.0 - t * t
    return t, d1, -2.0 * t * d1


def _sigmoid(z):
    s = torch.sigmoid(z)
    d1 = s * (1.0 - s)
    return s, d1, d1 * (1.0 - 2.0 * s)


def _exp(z):
    e = torch.exp(z)
    return e, e, e


def _log(z):
    r = torch.reciprocal(z)
    return torch.log(z), r, -r * r


def _log1p(z):
    r = torch.reciprocal(1.0 + z)
    return torch.log1p(z), r, -r * r


def _expm1(z):
    e = torch.exp(z)
    return torch.expm1(z), e, e


def _sin(z):
    s = torch.sin(z)
    return s, torch.cos(z), -s


def _cos(z):
    c = torch.cos(z)
    return c, -torch.sin(z), -c


def _sinh(z):
    s = torch.sinh(z)
    return s, torch.cosh(z), s


def _cosh(z):
    c = torch.cosh(z)
    return c, torch.sinh(z), c


def _sqrt(z):
    s = torch.sqrt(z)
    return s, 0.5 / s, -0.25 / (s * z)


def _rsqrt(z):
    r = torch.rsqrt(z)
    return r, -0.5 * r / z, 0.75 * r / (z * z)


def _square(z):
    return z * z, 2.0 * z, torch.full_like(z, 2.0)


def _erf(z):
    g = (2.0 / math.sqrt(math.pi)) * torch.exp(-z * z)
    return torch.erf(z), g, -2.0 * z * g


def _relu(z):  # almost everywhere: g″ = 0
    return torch.relu(z), (z > 0).to(z.dtype), None


def _abs(z):  # almost everywhere
    return torch.abs(z), torch.sign(z), None


def _silu(z):
    s = torch.sigmoid(z)
    q = s * (1.0 - s)
    return F.silu(z), s + z * q, q * (2.0 + z * (1.0 - 2.0 * s))


def gelu(z, approximate: str = "none"):
    if approximate == "tanh":
        c = 0.044715
        u = _K_TANH * (z + c * z * z * z)
        t = torch.tanh(u)
        du = _K_TANH * (1.0 + 3.0 * c * z * z)
        d2u = _K_TANH * 6.0 * c * z
        s = 1.0 - t * t
        d1 = 0.5 * (1.0 + t) + 0.5 * z * s * du
        d2 = s * (du + 0.5 * z * (d2u - 2.0 * t * du * du))
        return F.gelu(z, approximate="tanh"), d1, d2
    if approximate != "none":
        raise UnsupportedOpError(f"forward Laplacian: gelu(approximate={approximate!r})")
    phi = torch.exp(-0.5 * z * z) / _SQRT_2PI
    cdf = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    return F.gelu(z), cdf + z * phi, phi * (2.0 - z * z)


def softplus(z, beta: float = 1.0, threshold: float = 20.0):
    # torch's softplus is linear where beta·z > threshold; the rule follows the same function
    s = torch.sigmoid(beta * z)
    lin = beta * z > threshold
    d1 = torch.where(lin, torch.ones_like(z), s)
    d2 = torch.where(lin, torch.zeros_like(z), beta * s * (1.0 - s))
    return F.softplus(z, beta, threshold), d1, d2


def _leaky_relu(z, negative_slope: float = 0.01):
    return (
        F.leaky_relu(z, negative_slope),
        torch.where(z > 0, 1.0, negative_slope).to(z.dtype),
        None,
    )


def _elu(z, alpha: float = 1.0):
    e = alpha * torch.exp(torch.clamp(z, max=0.0))
    pos = z > 0
    return F.elu(z, alpha), torch.where(pos, torch.ones_like(z), e), torch.where(pos, 0.0, e)


ELEMENTWISE = {
    "tanh": _tanh,
    "sigmoid": _sigmoid,
    "exp": _exp,
    "log": _log,
    "log1p": _log1p,
    "expm1": _expm1,
    "sin": _sin,
    "cos": _cos,
    "sinh": _sinh,
    "cosh": _cosh,
    "sqrt": _sqrt,
    "rsqrt": _rsqrt,
    "square": _square,
    "erf": _erf,
    "relu": _relu,
    "abs": _abs,
    "silu": _silu,
    "gelu": gelu,
    "softplus": softplus,
    "leaky_relu": _leaky_relu,
    "elu": _elu,
}
