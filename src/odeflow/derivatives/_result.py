"""The result of the derivative entry points: :class:`Derivatives` and its finishing step."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["Derivatives"]


class Derivatives(NamedTuple):
    """Result of :func:`compute`; fields that were not requested are None.

    Shapes for x: (n, d), d' = d − exclude_last, scalar output (m = 1) / vector output:

    * ``value``: (n,) / (n, m)
    * ``gradient``: (n, d) / (n, m, d) — always over all d inputs; with directions V (d, k):
      Vᵀ∇f, (n, k) / (n, m, k)
    * ``hessian``: (n, d', d') / (n, m, d', d'); with directions VᵀHV, (n, k, k) / (n, m, k, k);
      for ``want="hvp"`` the products ∇²_{x'}f · V[:d'], (n, d', k) / (n, m, d', k)
    * ``laplacian``: (n,) / (n, m) — Σ_{i<d'} ∂²f/∂x_i², or tr(VᵀHV) with directions
    """

    value: torch.Tensor
    gradient: torch.Tensor | None
    hessian: torch.Tensor | None
    laplacian: torch.Tensor | None


def _finish(value, grad, second, lap, want) -> Derivatives:
    acc = torch.promote_types(value.dtype, torch.float32)
    grad = grad.to(acc)
    second = None if second is None else second.to(acc)
    lap = None if lap is None else lap.to(acc)
    scalar = value.shape[-1] == 1
    if scalar:
        value = value[..., 0]
        grad = grad[:, 0]
        second = None if second is None else second[:, 0]
        lap = None if lap is None else lap[:, 0]
    return Derivatives(value, grad, second, lap)
