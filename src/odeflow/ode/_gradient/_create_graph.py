"""Differentiable gradients of the discrete adjoint (``create_graph=True``)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._problem import _integrate, _Problem

__all__ = ["_CreateGraph"]


class _CreateGraph:
    """Replay the solve from the saved inputs with an autograd graph and differentiate that,
    so that the gradients are functions of ``(t, y0, θ)`` that autograd can differentiate
    again (Hessian-vector products, gradient penalties). Same scheme and stages as the
    forward pass; backprop's memory and no fp16 adjoint scaling on this path."""

    def solve(self, pb: _Problem, t: Tensor, tensors: list[Tensor], gouts, needs) -> list:
        """Gradients for ``(t, *tensors)`` where ``needs`` says so (zeros where unused)."""
        nfe0 = pb.fld.nfe
        inputs = [t, *tensors]
        y0 = tensors[: pb.n_leaf]
        pb.fld.replay_rng(0)
        with torch.enable_grad(), pb.fld.scratch_buffers():
            outs = pb.outputs(_integrate(pb, t, list(y0), None))
            used = [(o, g) for o, g in zip(outs, gouts) if g is not None]
            wrt = [x for x, n in zip(inputs, needs) if n]
            grads = iter(
                torch.autograd.grad(
                    [o for o, _ in used],
                    wrt,
                    [g for _, g in used],
                    create_graph=True,
                    allow_unused=True,
                )
                if used and wrt
                else [None] * len(wrt)
            )
        pb.stats.nfe += pb.fld.nfe - nfe0
        out: list[Tensor | None] = []
        for x, n in zip(inputs, needs):
            g = next(grads) if n else None
            out.append(torch.zeros_like(x) if n and g is None else g)
        return out
