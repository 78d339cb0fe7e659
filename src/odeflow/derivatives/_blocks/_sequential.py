"""Composition f_L ∘ … ∘ f_1 of blocks, with all of its sweeps."""

from __future__ import annotations

import torch
from torch import nn

from .._sweep import Ctx, Kind, input_second_by_record, plus, sandwich
from ._base import Block, check_blocks

__all__ = ["Sequential"]


class Sequential(Block):
    r"""Composition f_L ∘ … ∘ f_1 of blocks with checked sizes.

    Raises:
        ValueError: if ``blocks[i].out_features != blocks[i+1].in_features``.

    Example:
        >>> from odeflow.derivatives import LogCosh, Single, ResNet, Linear
        >>> net = Sequential(Single(2, 16, act=LogCosh()), ResNet(16, depth=4), Linear(16, 1))
        >>> net(torch.randn(3, 2)).shape
        torch.Size([3, 1])
    """

    def __init__(self, *blocks: Block):
        super().__init__()
        blocks = check_blocks(blocks, "Sequential")
        for i in range(len(blocks) - 1):
            a, b = blocks[i], blocks[i + 1]
            if a.out_features != b.in_features:
                raise ValueError(
                    f"Sequential: block {i} ({type(a).__name__}) has out_features={a.out_features} "
                    f"but block {i + 1} ({type(b).__name__}) has in_features={b.in_features}; "
                    "make them equal."
                )
        self.blocks = nn.ModuleList(blocks)
        self.in_features = blocks[0].in_features
        self.out_features = blocks[-1].out_features

    def _chain(self) -> list[Block]:
        """The blocks with nested Sequentials flattened."""
        out: list[Block] = []
        for b in self.blocks:
            out.extend(b._chain() if isinstance(b, Sequential) else [b])
        return out

    def forward(self, u):
        for b in self.blocks:
            u = b(u)
        return u

    def _jet(self, u, J, L, ctx):
        for b in self.blocks:
            u, J, L = b._jet(u, J, L, ctx)
        return u, J, L

    def _record(self, u, J, ctx):
        tapes = []
        for b in self.blocks:
            u, J, t = b._record(u, J, ctx)
            tapes.append(t)
        return u, J, tapes

    def _reverse(self, tape, g, ctx):
        acc = None
        for b, t in zip(reversed(self.blocks), reversed(tape)):
            g, a = b._reverse(t, g, ctx)
            acc = plus(acc, a)
        return g, acc

    def _input_second(self, u, seed, G, H, ctx):
        """Reverse second-order sweep over the chain.

        Blocks after the first are handled in their own input space (identity seeds,
        Hessians of width × width); the input seed enters only at the first block (fused
        in ``Single``/``Linear``), so the cost of the second-order terms does not grow with
        the number of layers times d².
        """
        chain = self._chain()
        if len(chain) == 1:
            return input_second_by_record(self, u, seed, G, H, ctx)
        us = [u]
        for b in chain[:-1]:
            us.append(b(us[-1]))
        grad = ctx.kind is Kind.GRAD
        value = None
        for i in reversed(range(1, len(chain))):
            b = chain[i]
            I_in = torch.eye(b.in_features, dtype=u.dtype, device=u.device)
            ci = Ctx(Kind.GRAD if grad else Kind.HESS, b.in_features, ctx.acc)
            v, Jv, tape = b._record(us[i], None if grad else I_in, ci)
            value = v if value is None else value
            G, a = b._reverse(tape, G, ci)
            if H is not None:
                a = a + sandwich(Jv.mT, H, ci)
            H = a
        _, g, second = chain[0]._input_second(u, seed, G, H, ctx)
        return value, g, second

    def _entry_width(self) -> float:
        chain = self._chain()
        return chain[0].out_features if len(chain) > 1 else chain[0]._entry_width()

    def _lap_supported(self) -> bool:
        return all(b._lap_supported() for b in self.blocks)

    def _lap_uses_jacobian(self) -> bool:
        return any(b._lap_uses_jacobian() for b in self.blocks)

    def _lap_record(self, u, J, need, acc):
        blocks = list(self.blocks)
        tapes = []
        for i, b in enumerate(blocks):
            nb = need or any(c._lap_uses_jacobian() for c in blocks[i + 1 :])
            u, J, t = b._lap_record(u, J, nb, acc)
            tapes.append(t)
        return u, J, tapes

    def _lap_reverse(self, tape, g, acc):
        lap = None
        for b, t in zip(reversed(self.blocks), reversed(tape)):
            g, lb = b._lap_reverse(t, g, acc)
            lap = plus(lap, lb)
        return g, lap
