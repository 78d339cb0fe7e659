"""Multigrid-in-channels: a channel-space V-cycle of grouped convolutions (O(c) weights)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._operators import Operator

__all__ = ["MultigridChannelOperator"]


class MultigridChannelOperator(Operator):
    r"""Multigrid-in-channels convolution ``K``: a V-cycle over channel levels
    ``c_0 = c, c_1 = c/2, …`` down to ``c_L ≤ group_size``:

    ``K_l x = S_l x + R_lᵀ K_{l+1} (R_l x)``, ``K_L`` a full 3×3 convolution,

    with ``S_l`` a grouped 3×3 convolution (groups of ``group_size`` channels), ``R_l`` a
    grouped 1×1 restriction (each coarse channel from two fine ones) and its transpose as
    prolongation. Weights: ``Σ_l (9 g c_l + c_l) + 9 c_L² = O(c)`` for fixed ``g``, against a
    full convolution's ``9c²``. No adjoint (use it in :class:`~odeflow.nn.StandardLayer`).

    Args:
        channels: ``c``, a multiple of ``group_size``.
        group_size: channels per group of the smoothers ``S_l``.

    Reference: Eliasof, Ephrath, Ruthotto, Treister, "Multigrid-in-channels neural network
    architectures" (arXiv:2011.09128).

    Example:
        >>> op = MultigridChannelOperator(16, group_size=4)
        >>> w = op.init()
        >>> op.apply(torch.zeros(1, 16, 5, 5), w).shape
        torch.Size([1, 16, 5, 5])
    """

    image = True
    has_adjoint = False

    def __init__(self, channels: int, group_size: int = 4):
        super().__init__(channels, channels)
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(
                f"MultigridChannelOperator: group_size must be a positive int, got {group_size!r}."
            )
        if channels % group_size:
            raise ValueError(
                f"MultigridChannelOperator: channels ({channels}) must be a multiple of "
                f"group_size ({group_size})."
            )
        self.group_size = group_size
        levels = [channels]
        while (
            levels[-1] > group_size and levels[-1] % 2 == 0 and (levels[-1] // 2) % group_size == 0
        ):
            levels.append(levels[-1] // 2)
        self.levels = levels

    def shapes(self):
        g = self.group_size
        out = {}
        for i, c in enumerate(self.levels[:-1]):
            out[f"smooth{i}"] = (c, g, 3, 3)
            out[f"restrict{i}"] = (c // 2, 2, 1, 1)
        c = self.levels[-1]
        out["coarse"] = (c, c, 3, 3)
        return out

    def init(self, generator=None):
        out = {}
        for name, shape in self.shapes().items():
            if name.startswith("restrict"):
                out[name] = torch.full(shape, 1.0 / math.sqrt(2.0))  # averaging of pairs
            else:
                out[name] = torch.randn(shape, generator=generator) / math.sqrt(
                    math.prod(shape[1:])
                )
        return out

    def _cycle(self, x, w, level):
        if level == len(self.levels) - 1:
            return F.conv2d(x, w["coarse"], padding=1)
        c = self.levels[level]
        s = F.conv2d(x, w[f"smooth{level}"], padding=1, groups=c // self.group_size)
        r = w[f"restrict{level}"]
        coarse = self._cycle(F.conv2d(x, r, groups=c // 2), w, level + 1)
        return s + F.conv_transpose2d(coarse, r, groups=c // 2)

    def apply(self, x, w):
        return self._cycle(x, w, 0)
