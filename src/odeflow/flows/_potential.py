"""The OT-Flow potential Φ and its initialisations.

Onken, Wu Fung, Li, Ruthotto, "OT-Flow: Fast and Accurate Continuous Normalizing Flows
via Optimal Transport", AAAI 2021, arXiv 2006.00104.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import derivatives as D

__all__ = ["build_potential"]

#: scale of the quadratic term's A at the "identity" initialisation (see build_potential)
_A_INIT_SCALE = 0.1


def build_potential(
    dim: int, width: int, depth: int = 2, rank: int | None = None, *, init: str = "identity"
) -> nn.Module:
    """The OT-Flow potential Φ(s) = wᵀN(s) + ½ sᵀAᵀA s + bᵀs + c on s = (x, t) ∈ R^{d+1}.

    N is a ResNet of ``depth`` layers M: u₀ = σ(K₀s + b₀), uᵢ = uᵢ₋₁ + h σ(Kᵢuᵢ₋₁ + bᵢ),
    h = 1/(M−1), σ(x) = log(2 cosh x); A ∈ R^{r×(d+1)}. Built from
    :mod:`odeflow.derivatives` blocks so that ∇Φ and Δ_xΦ are exact and analytic.

    Initialisation (b = c = 0 in both):

    - ``"identity"`` (default): w = 0 and A Xavier-uniform scaled by 0.1, so that
      ∇_xΦ = (AᵀA s)_x is small and the flow ż = −∇_xΦ starts close to the identity map
      (an untrained flow is close to N(0, I)). A is not zero: at A = 0 the gradients of
      ½‖As‖² with respect to A vanish and A would never train; w = 0 is no such trap, since
      ∂Φ/∂w = N(s) ≠ 0.
    - ``"paper"``: w = 1 and Xavier-uniform A, as in the OT-Flow code; the untrained flow
      then moves N(0, I) far (at d = 4 its density has a standard deviation of about 20).

    Args:
        dim: data dimension d.
        width: ResNet width m.
        depth: M ≥ 2 (opening layer plus M − 1 residual layers).
        rank: r of the quadratic term, default min(10, d + 1).
        init: ``"identity"`` or ``"paper"``.

    Returns:
        an ``nn.Module`` mapping ``(n, d+1) -> (n,)`` accepted by ``odeflow.derivatives``.

    Raises:
        ValueError: ``depth`` < 2 or an unknown ``init``.

    Example:
        >>> phi = build_potential(2, 8)
        >>> sum(p.numel() for p in phi.parameters())  # r(d+1) + (d+2) + m + (d+2)m + (m²+m)
        125
    """
    if depth < 2:
        raise ValueError(f"depth must be >= 2 (opening layer + residual layers), got {depth}")
    if init not in ("identity", "paper"):
        raise ValueError(f"init must be 'identity' or 'paper', got {init!r}")
    r = min(10, dim + 1) if rank is None else int(rank)
    net = D.Sequential(
        D.Single(dim + 1, width, act=D.LogCosh()),
        D.ResNet(width, depth=depth - 1, h=1.0 / (depth - 1), act=D.LogCosh()),
        w := D.Linear(width, 1, bias=False),
    )
    quad = D.Quadratic(dim + 1, rank=r)  # b = c = 0
    with torch.no_grad():
        if init == "paper":
            w.K.fill_(1.0)
        else:
            w.K.zero_()
            quad.A.mul_(_A_INIT_SCALE)
    return D.Sum(net, quad)
