"""Learning across scales: map a network's convolutions to a finer (or coarser) image grid.

A ``k × k`` convolution on a grid of spacing ``h`` is a discrete differential operator: its
kernel's moments are the coefficients of ``h^{a+b} ∂_y^a ∂_x^b``. Keeping that differential
operator while the grid changes to ``h / s`` rescales each moment by ``s^{a+b}``.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ._imex import IMEXLayer
from ._layers import VectorFieldLayer
from ._lowcost import MultigridChannelOperator
from ._operators import _STENCIL, ConvOperator, LeanConvOperator

__all__ = ["prolong_conv", "prolong_kernel"]


def _moment_map(k: int, factor: float) -> torch.Tensor:
    """``A = V⁻¹ S V`` (float64): ``V_aj = j^a`` (moments of a 1-D stencil on ``j = −m … m``),
    ``S = diag(factor^a)``; a 1-D stencil ``w`` becomes ``A w``."""
    m = k // 2
    j = torch.arange(-m, m + 1, dtype=torch.float64)
    a = torch.arange(k, dtype=torch.float64)
    vander = j.unsqueeze(0) ** a.unsqueeze(1)  # (k, k): rows a, columns j; 0**0 = 1
    scale = torch.diag(float(factor) ** a)
    return torch.linalg.solve(vander, scale @ vander)


def _check_factor(factor) -> float:
    if (
        isinstance(factor, bool)
        or not isinstance(factor, (int, float))
        or not (0 < factor < math.inf)
    ):
        raise ValueError(
            f"prolong: factor must be a positive finite number (the ratio of the old grid "
            f"spacing to the new one: 2 for twice the resolution, 0.5 to restrict), got "
            f"{factor!r}."
        )
    return float(factor)


def prolong_kernel(weight: torch.Tensor, factor: float = 2.0) -> torch.Tensor:
    r"""Rescale convolution kernels to a grid ``factor`` times finer, keeping the operator.

    On a grid of spacing ``h`` a kernel ``W`` (``k × k``, ``k = 2m + 1``, offsets
    ``i, j = −m … m``) applied to a smooth image ``u`` is

    .. math::
        (W * u)(x) = \sum_{a,b} \frac{μ_{ab}}{a!\,b!}\, h^{a+b} ∂_y^a ∂_x^b u(x) + …,\qquad
        μ_{ab} = \sum_{ij} W_{ij}\, i^a j^b ,

    a differential operator whose coefficients scale with ``h``. On the grid ``h / s``
    (``s = factor``) the same operator has moments ``μ'_{ab} = s^{a+b} μ_{ab}``, ``a, b < k``,
    which determine the new kernel uniquely: ``W' = A W Aᵀ`` with ``A = V⁻¹ diag(s^a) V``,
    ``V_{aj} = j^a`` (computed in float64). ``factor = 1/s`` undoes ``factor = s``; 1×1
    kernels are unchanged; a 5-point (cross-shaped) stencil stays one.

    Args:
        weight: kernels ``(..., k, k)`` with ``k`` odd (e.g. ``(out, in, k, k)``, or with a
            leading time-basis dimension); not modified.
        factor: ratio of the old grid spacing to the new one (``2``: twice the resolution,
            ``0.5``: half).

    Returns:
        The new kernels, same shape, dtype and device.

    Raises:
        ValueError: a kernel that is not square and odd, or a factor that is not positive.

    Reference: Haber, Ruthotto, Holtham, Jun, "Learning across scales — multiscale methods
    for convolution neural networks" (arXiv:1703.02009).

    Example:
        >>> lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])  # h² Δ on grid h
        >>> prolong_kernel(lap, 2.0)  # (h/2)² · Δ · 4: the same Δ on grid h/2
        tensor([[  0.,   4.,   0.],
                [  4., -16.,   4.],
                [  0.,   4.,   0.]])
    """
    factor = _check_factor(factor)
    if not isinstance(weight, torch.Tensor) or weight.ndim < 2:
        raise ValueError("prolong_kernel: weight must be a tensor (..., k, k).")
    k = weight.shape[-1]
    if weight.shape[-2] != k or k % 2 == 0:
        raise ValueError(
            f"prolong_kernel: kernels must be square with an odd side, got shape "
            f"{tuple(weight.shape)}."
        )
    if k == 1:
        return weight.clone()
    a = _moment_map(k, factor)
    out = torch.einsum("ai,...ij,bj->...ab", a, weight.detach().to(torch.float64), a)
    return out.to(dtype=weight.dtype, device=weight.device)


def _set(param: nn.Parameter, value: torch.Tensor) -> None:
    with torch.no_grad():
        param.copy_(value)


def _prolong_lean(param: nn.Parameter, factor: float) -> None:
    stencil = _STENCIL.to(torch.float64)  # (5, 9): cross entries → 3×3 positions
    kernel = (param.detach().to(torch.float64) @ stencil).reshape(*param.shape[:-1], 3, 3)
    new = prolong_kernel(kernel, factor).reshape(*param.shape[:-1], 9)
    _set(param, (new @ stencil.T).to(param.dtype))  # the cross stays a cross


def _prolong_layer(layer: VectorFieldLayer, factor: float) -> None:
    op = layer.operator
    if isinstance(op, ConvOperator):
        names = ["weight"]
    elif isinstance(op, MultigridChannelOperator):
        names = [n for n in layer._weight_names if n.startswith(("smooth", "coarse"))]
    elif isinstance(op, LeanConvOperator):
        _prolong_lean(layer.stencil, factor)
        return
    elif op.image:
        raise TypeError(
            f"prolong_conv: no rule for the operator {type(op).__name__}; prolong its kernels "
            "with prolong_kernel."
        )
    else:
        return  # dense: no spatial grid
    for n in names:
        p = getattr(layer, n)
        _set(p, prolong_kernel(p, factor))


def prolong_conv(model: nn.Module, factor: float = 2.0) -> nn.Module:
    r"""A copy of ``model`` for images ``factor`` times finer: every spatial convolution
    kernel is rescaled by :func:`prolong_kernel` so that it applies the same differential
    operator on the new grid (learning across scales: train on coarse images, evaluate on
    fine ones without retraining).

    Rescaled: ``nn.Conv2d`` kernels (biases and 1×1 kernels are unchanged), the kernels of
    the layers' convolution, lean (5-point stencil) and multigrid-in-channels operators (every
    coefficient of their time basis), and :class:`~odeflow.nn.IMEXLayer`'s implicit kernel.
    Everything else (dense maps, normalizations, pooling, a global-average head) is
    grid-independent and copied as is; a flattening head is not (use a global-average
    :class:`~odeflow.nn.Classifier`). The time step of a block is not changed: the
    prolonged second-difference terms are ``factor²`` larger, so an explicit block may need
    ``factor²`` times more steps (``block.n_steps``) to stay stable.

    Args:
        model: the trained network (not modified).
        factor: ratio of the training grid spacing to the new one (``2``: 8×8 → 16×16).

    Returns:
        The prolonged copy (a deep copy of ``model``).

    Raises:
        ValueError: a factor that is not positive; TypeError: a module with spatial kernels
        this function has no rule for (rescale those with :func:`prolong_kernel`).

    Reference: Haber, Ruthotto, Holtham, Jun, "Learning across scales — multiscale methods
    for convolution neural networks" (arXiv:1703.02009).

    Example:
        >>> from odeflow.nn import build_network
        >>> net = build_network("parabolic", 1, 10, widths=(4,), n_steps=2)
        >>> fine = prolong_conv(net, 2.0)
        >>> fine(torch.zeros(3, 1, 16, 16)).shape
        torch.Size([3, 10])
    """
    factor = _check_factor(factor)
    if not isinstance(model, nn.Module):
        raise TypeError(f"prolong_conv: model must be an nn.Module, got {type(model).__name__}.")
    out = copy.deepcopy(model)
    for mod in out.modules():
        if isinstance(mod, VectorFieldLayer):
            _prolong_layer(mod, factor)
        elif isinstance(mod, (nn.Conv2d, IMEXLayer)):
            _set(mod.weight, prolong_kernel(mod.weight, factor))
        elif isinstance(mod, nn.modules.conv._ConvNd):
            raise TypeError(f"prolong_conv: no rule for {type(mod).__name__} (2-D only).")
        else:
            for name, p in mod.named_parameters(recurse=False):
                if p.ndim >= 4 and p.shape[-1] > 1:
                    raise TypeError(
                        f"prolong_conv: {type(mod).__name__}.{name} looks like a spatial kernel "
                        "and there is no rule for it; rescale it with prolong_kernel."
                    )
    return out
