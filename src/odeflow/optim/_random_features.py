r"""Random feature models ``f(y) = Σ_j w_j ReLU(k_jᵀy + b_j)`` fitted by hybrid regularization.

The rows ``k_j`` are uniform on the unit sphere and ``b_j`` uniform in ``[−1, 1]``; only the
outer weights ``w`` are fitted, a linear least-squares problem ``min ‖Φw − t‖`` with the
``N × m`` feature matrix ``Φ``. Its min-norm solution shows the *double-descent* peak of
the test error at width ``m ≈ N`` (``Φ`` square and badly conditioned); fitting it by
:func:`~odeflow.optim.hybrid_lsqr` (λ by GCV on the fly) removes the peak.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._utils import check_positive_int
from ._hybrid import HybridResult, hybrid_lsqr

__all__ = ["RandomFeatures", "RandomFeaturesFit"]


@dataclass
class RandomFeaturesFit:
    """Result of :meth:`RandomFeatures.fit`: ``weight (m, C)``, the method, and the
    :class:`~odeflow.optim.HybridResult` (``None`` for the min-norm fit)."""

    weight: torch.Tensor
    method: str
    hybrid: HybridResult | None = None


class RandomFeatures(nn.Module):
    r"""A random feature model ``f(y) = ReLU(K y + b) W`` with ``K``'s rows on the sphere.

    Args:
        in_features: ``d``.
        width: ``m`` (number of random features).
        generator: a ``torch.Generator`` for ``K`` and ``b`` (reproducible draws).
        dtype, device: of ``K`` and ``b``.

    Reference:
        Rahimi & Recht, "Random features for large-scale kernel machines", NeurIPS (2007);
        Belkin, Hsu, Ma & Mandal, "Reconciling modern machine-learning practice and the
        classical bias–variance trade-off", PNAS 116 (2019), arXiv:1812.11118; Lu, Chung,
        Ruthotto et al., "Hybrid regularization for random feature models" (HybridRFM).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> rf = RandomFeatures(2, 50, generator=g, dtype=torch.float64)
        >>> y = torch.rand(30, 2, generator=g, dtype=torch.float64)
        >>> fit = rf.fit(y, torch.sin(y.sum(1, keepdim=True)))
        >>> rf(y).shape, fit.method
        (torch.Size([30, 1]), 'hybrid')
    """

    def __init__(self, in_features: int, width: int, *, generator=None, dtype=None, device=None):
        super().__init__()
        d = check_positive_int("in_features", in_features, who="RandomFeatures")
        m = check_positive_int("width", width, who="RandomFeatures")
        K = torch.randn(m, d, generator=generator, dtype=dtype, device=device)
        self.register_buffer("K", K / torch.linalg.vector_norm(K, dim=1, keepdim=True))
        b = 2 * torch.rand(m, generator=generator, dtype=dtype, device=device) - 1
        self.register_buffer("b", b)
        self.register_buffer("weight", None)

    def features(self, y: torch.Tensor) -> torch.Tensor:
        """``ReLU(K y + b)`` for ``y (N, d)`` → ``(N, m)``."""
        if y.ndim != 2 or y.shape[1] != self.K.shape[1]:
            raise ValueError(
                f"RandomFeatures: inputs must be (N, {self.K.shape[1]}), got {tuple(y.shape)}."
            )
        return torch.relu(y @ self.K.mT + self.b)

    def fit(self, y: torch.Tensor, t: torch.Tensor, *, method: str = "hybrid", **hybrid_kwargs):
        r"""Fit the outer weights on ``(y, t)`` and store them.

        ``method="hybrid"``: :func:`~odeflow.optim.hybrid_lsqr` on ``Φ w = t`` (keyword
        arguments pass through, default λ by GCV); ``"min_norm"``: the minimum-norm
        least-squares solution ``Φ⁺t`` (SVD, relative cut-off ``ε·max(N, m)``).

        Args:
            y: inputs ``(N, d)``.
            t: targets ``(N, C)``.

        Returns:
            :class:`RandomFeaturesFit`.

        Raises:
            ValueError: unknown method, mismatched or non-finite data.
        """
        if method not in ("hybrid", "min_norm"):
            raise ValueError(
                f"RandomFeatures.fit: method must be 'hybrid' or 'min_norm', got {method!r}."
            )
        if t.ndim != 2 or t.shape[0] != y.shape[0]:
            raise ValueError("RandomFeatures.fit: targets must be (N, C) with N = len(y).")
        if not (bool(torch.isfinite(y).all()) and bool(torch.isfinite(t).all())):
            raise ValueError("RandomFeatures.fit: y or t contains NaN or Inf.")
        Phi = self.features(y)
        t = t.to(Phi.dtype)
        hyb = None
        if method == "min_norm":
            W = torch.linalg.pinv(Phi, rtol=torch.finfo(Phi.dtype).eps * max(Phi.shape)) @ t
        else:
            hyb = hybrid_lsqr(Phi, t.mT.contiguous(), batch_dims=1, **hybrid_kwargs)
            W = hyb.x.mT.contiguous()
        self.weight = W
        return RandomFeaturesFit(W, method, hyb)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            raise RuntimeError("RandomFeatures: call fit(y, t) first.")
        return self.features(y) @ self.weight
