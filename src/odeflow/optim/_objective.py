"""The objective protocol of :func:`odeflow.optim.minimize`: ``fn(x) -> Evaluation``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ._operators import LinearOperator

__all__ = ["Evaluation"]


@dataclass(frozen=True)
class Evaluation:
    r"""What an objective returns at a point ``x``: one fixed shape for every method.

    Attributes:
        value: ``f(x)`` (a float or a 0-d tensor; ``inf``/``nan`` marks an infeasible point).
        grad: ``∇f(x)``, shaped like ``x``.
        hessian: a symmetric PSD model Hessian as a :class:`LinearOperator` on tensors
            shaped like ``x`` (Gauss–Newton ``JᵀJ`` plus regularizer Hessians), for descents
            that use one (:class:`NewtonCG`); None otherwise.
        info: extra numbers logged in the result's history (e.g. the terms of ``f``).

    Example:
        >>> x = torch.tensor([3.0])
        >>> ev = Evaluation(value=float(x @ x), grad=2 * x)
        >>> ev.value, ev.hessian, ev.info
        (9.0, None, {})
    """

    value: float | torch.Tensor
    grad: torch.Tensor
    hessian: LinearOperator | None = None
    info: dict[str, Any] = field(default_factory=dict)
