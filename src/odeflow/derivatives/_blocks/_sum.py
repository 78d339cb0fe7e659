"""Sum of blocks sharing one input, u ↦ Σ_i f_i(u), with all of its sweeps."""

from __future__ import annotations

from torch import nn

from .._laplacian import sum_jacs
from .._sweep import input_second_by_record, plus
from ._base import Block, check_blocks

__all__ = ["Sum"]


class Sum(Block):
    r"""Sum of blocks sharing the same input: u ↦ Σ_i f_i(u).

    Needed for OT-Flow's Φ = wᵀN(s) + ½sᵀAᵀAs + bᵀs + c. All blocks must have the same
    ``in_features`` and ``out_features``.

    Raises:
        ValueError: if the sizes differ.

    Example:
        >>> import torch
        >>> from odeflow.derivatives import LogCosh, Sequential, Single, Linear, Quadratic
        >>> phi = Sum(Sequential(Single(3, 8, act=LogCosh()), Linear(8, 1)), Quadratic(3, rank=2))
        >>> phi(torch.randn(5, 3)).shape
        torch.Size([5, 1])
    """

    def __init__(self, *blocks: Block):
        super().__init__()
        blocks = check_blocks(blocks, "Sum")
        ins = {b.in_features for b in blocks}
        outs = {b.out_features for b in blocks}
        if len(ins) != 1 or len(outs) != 1:
            sizes = [(b.in_features, b.out_features) for b in blocks]
            raise ValueError(
                f"Sum: all blocks need the same (in_features, out_features), got {sizes}."
            )
        self.blocks = nn.ModuleList(blocks)
        self.in_features = blocks[0].in_features
        self.out_features = blocks[0].out_features

    def forward(self, u):
        out = self.blocks[0](u)
        for b in self.blocks[1:]:
            out = out + b(u)
        return out

    def _jet(self, u, J, L, ctx):
        v = Jv = Lv = None
        for b in self.blocks:
            vb, Jb, Lb = b._jet(u, J, L, ctx)
            v, Jv, Lv = plus(v, vb), plus(Jv, Jb), plus(Lv, Lb)
        return v, Jv, Lv

    def _record(self, u, J, ctx):
        v = Jv = None
        tapes = []
        for b in self.blocks:
            vb, Jb, tb = b._record(u, J, ctx)
            v, Jv = plus(v, vb), plus(Jv, Jb)
            tapes.append(tb)
        return v, Jv, tapes

    def _reverse(self, tape, g, ctx):
        gin = acc = None
        for b, t in zip(self.blocks, tape):
            gb, ab = b._reverse(t, g, ctx)
            gin, acc = plus(gin, gb), plus(acc, ab)
        return gin, acc

    def _input_second(self, u, seed, G, H, ctx):
        if H is not None:  # a second-order adjoint couples the terms: the generic form
            return input_second_by_record(self, u, seed, G, H, ctx)
        value = g = second = None
        for b in self.blocks:  # linear in the blocks: each contracts the seed itself
            vb, gb, sb = b._input_second(u, seed, G, None, ctx)
            value, g, second = plus(value, vb), plus(g, gb), plus(second, sb)
        return value, g, second

    def _entry_width(self) -> float:
        return max(b._entry_width() for b in self.blocks)

    def _lap_supported(self) -> bool:
        return all(b._lap_supported() for b in self.blocks)

    def _lap_uses_jacobian(self) -> bool:
        return any(b._lap_uses_jacobian() for b in self.blocks)

    def _lap_record(self, u, J, need, acc):
        v, parts, tapes = None, [], []
        for b in self.blocks:
            vb, Jb, tb = b._lap_record(u, J, need, acc)
            v = vb if v is None else v + vb
            parts.append(Jb)
            tapes.append(tb)
        return v, (sum_jacs(parts) if need else None), tapes

    def _lap_reverse(self, tape, g, acc):
        gin = lap = None
        for b, t in zip(self.blocks, tape):
            gb, lb = b._lap_reverse(t, g, acc)
            gin, lap = plus(gin, gb), plus(lap, lb)
        return gin, lap
