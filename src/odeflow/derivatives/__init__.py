r"""Exact network derivatives: value, gradient, Hessian and Laplacian, batched.

Networks are built from blocks that declare their affine maps and elementwise activations
(σ, σ′, σ″): :class:`Single`, :class:`ResNet`, :class:`ICNN`, :class:`Quadratic`,
:class:`Linear`, combined with :class:`Sequential` and :class:`Sum`. The entry function
:func:`compute` propagates exact jets through them (forward, mixed or backward mode). Any
other ``nn.Module`` gets its Laplacian (or weighted trace) from :func:`forward_laplacian`, a
torch.fx-traced forward Laplacian, when every op has a rule, and vmapped torch.func
otherwise. Every block subclasses the abstract :class:`Block`, which declares all the sweeps
a block provides; each block is one file under ``_blocks/`` (see ``docs/extending.md`` to add
one).

The package module itself is callable: ``odeflow.derivatives(net, x, want=...)`` is
``odeflow.derivatives.compute(net, x, want=...)`` (its module class is a
:class:`types.ModuleType` subclass whose ``__call__`` forwards to :func:`compute`).

OT-Flow's potential Φ(s) = wᵀN(s) + ½sᵀAᵀAs + bᵀs + c with s = (x, t) ∈ R^{d+1}:

>>> import torch, odeflow
>>> from odeflow.derivatives import Sum, Sequential, Single, ResNet, Linear, Quadratic, LogCosh
>>> d, m = 2, 16
>>> phi = Sum(Sequential(Single(d + 1, m, act=LogCosh()), ResNet(m, depth=1, h=1.0, act=LogCosh()),
...                      Linear(m, 1, bias=False)), Quadratic(d + 1, rank=3))
>>> out = odeflow.derivatives(phi, torch.randn(4, d + 1), want="laplacian", exclude_last=1)
>>> out.gradient.shape, out.laplacian.shape   # ∂_tΦ is out.gradient[:, -1]
(torch.Size([4, 3]), torch.Size([4]))

Parameter names (set them directly under ``torch.no_grad()`` to reproduce OT-Flow's
initialisation w = 1, b = c = 0): ``Single.K, Single.b``; ``ResNet.K (depth, w, w), ResNet.b``;
``Linear.K (out, in), Linear.b``; ``Quadratic.A (rank, in), Quadratic.b (in,), Quadratic.c (1,)``.
"""

import sys as _sys
import types as _types

from ._activations import (
    Activation,
    Identity,
    LogCosh,
    Sigmoid,
    SiLU,
    Softplus,
    Square,
    Tanh,
)
from ._blocks import ICNN, Block, Linear, Quadratic, ResNet, Sequential, Single, Sum
from ._compute import Derivatives, compute
from ._fallback import hutchinson
from ._fl_jet import UnsupportedOpError
from ._forward_laplacian import forward_laplacian

__all__ = [
    "ICNN",
    "Activation",
    "Block",
    "Derivatives",
    "Identity",
    "Linear",
    "LogCosh",
    "Quadratic",
    "ResNet",
    "Sequential",
    "SiLU",
    "Sigmoid",
    "Single",
    "Softplus",
    "Square",
    "Sum",
    "Tanh",
    "UnsupportedOpError",
    "compute",
    "forward_laplacian",
    "hutchinson",
]


class _CallableModule(_types.ModuleType):
    """The ``odeflow.derivatives`` module: calling it runs :func:`compute`."""

    def __call__(self, *args, **kwargs) -> Derivatives:
        return compute(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
