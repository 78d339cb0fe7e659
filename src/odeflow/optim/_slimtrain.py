r"""slimTrain: sampled limited-memory Tikhonov (slimTik) for the last layer inside SGD/Adam.

A model ``F(x) = Z(x; θ) W`` (features ``Z`` from an ``nn.Module`` plus a ones column,
last layer ``W ∈ R^{p×C}``) is trained on mini-batches. At iteration ``k``, with the batch
``A_k = Z(x_k; θ_{k−1})/√b`` and targets ``C_k = Y_k/√b`` (``b`` samples: the mean loss),
the last layer takes the slimTik step

.. math::
    W_k(λ) = W_{k−1} − (M_kᵀM_k + (Λ_{k−1}+λ) I)^{-1}
             \big(A_kᵀ(A_k W_{k−1} − C_k) + λ W_{k−1}\big), \qquad Λ_k = Λ_{k−1} + λ_k,

where the memory ``M_k`` stacks the (stored, not recomputed) features of the last ``r``
batches and the current one. With a memory that holds every batch this is recursive least
squares: ``W_k`` is exactly the Tikhonov solution ``argmin Σ_{i≤k}‖A_iW − C_i‖² + Λ_k‖W‖²``;
the limited memory keeps the cost per step fixed. The increment ``λ_k`` (which may be negative:
the accumulated ``Λ`` can also shrink) minimizes the sampled GCV function of the batch,

.. math::
    \mathrm{sGCV}_k(λ) = \frac{‖A_k W_k(λ) − C_k‖_F^2}
                             {\big(b − \mathrm{tr}\,A_k(M_kᵀM_k + (Λ_{k−1}+λ)I)^{-1}A_kᵀ\big)^2},

evaluated in closed form from the thin SVD ``M_k = U S Vᵀ`` (the rows of ``A_k`` lie in the
span of ``V``). Then the nonlinear weights take one step of any torch optimizer on the batch
loss ``(1/2b)‖Z(x_k; θ)W_k − Y_k‖²`` with ``W_k`` held fixed.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch
from torch import nn

from .._utils import check_finite_real, check_int, check_positive_int
from ._varpro import feature_matrix

__all__ = ["SlimTikStep", "SlimTrain", "SlimTrainStep", "slimtik_update"]

_F64 = torch.float64


@dataclass
class SlimTikStep:
    """Result of :func:`slimtik_update`.

    Attributes:
        weight: the new last layer ``W_k (p, C)`` (float64).
        lam: the chosen increment ``λ_k`` (float).
        Lambda: the accumulated ``Λ_k = Λ_{k−1} + λ_k`` (float, > 0).
        sgcv_mus, sgcv_values: the grid of ``μ = Λ_{k−1} + λ`` and the sGCV values on it
            (None for a fixed λ).
    """

    weight: torch.Tensor
    lam: float
    Lambda: float
    sgcv_mus: torch.Tensor | None = None
    sgcv_values: torch.Tensor | None = None


class _Parts:
    """The pieces of the slimTik step that depend on ``μ = Λ_{k−1} + λ`` (float64)."""

    def __init__(self, W, A, C, M, Lambda):
        _, S, Vh = torch.linalg.svd(M, full_matrices=False)
        self.V, self.s2, self.W, self.Lambda, self.b = Vh.mT, S**2, W, Lambda, A.shape[0]
        self.R0 = A @ W - C  # (b, C)
        self.H0 = A.mT @ self.R0  # (p, C)
        self.AV = A @ self.V  # (b, r)
        self.G, self.Om = self.V.mT @ self.H0, self.V.mT @ W  # (r, C)
        self.av2 = (self.AV**2).sum(0)  # (r,)

    def sgcv(self, mus):
        """``sGCV`` at ``μ`` of shape ``(L,)`` → ``(L,)``."""
        mu = mus[:, None, None]  # (L, 1, 1)
        d = 1.0 / (self.s2[None, :, None] + mu)  # (L, r, 1)
        res = self.R0 - self.AV @ (d * (self.G + (mu - self.Lambda) * self.Om))
        tr = (self.av2[None, :] * d[..., 0]).sum(-1)  # (L,)
        den = self.b - tr
        val = (res**2).sum((1, 2)) / torch.where(den > 0, den, float("nan")) ** 2
        return torch.nan_to_num(val, nan=float("inf"))

    def weight(self, mu):
        """``W_k`` at ``μ``: ``(MᵀM + μI)^{-1} = V diag(1/(s²+μ)) Vᵀ + (I − VVᵀ)/μ``."""
        h = self.H0 + (mu - self.Lambda) * self.W
        Vh = self.V.mT @ h
        step = self.V @ (Vh / (self.s2[:, None] + mu)) + (h - self.V @ Vh) / mu
        return self.W - step


def _check_2d(name, t, who):
    if not isinstance(t, torch.Tensor) or t.ndim != 2 or not t.is_floating_point():
        raise TypeError(f"{who}: {name} must be a 2-D floating-point tensor.")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{who}: {name} contains NaN or Inf.")


def slimtik_update(
    W: torch.Tensor,
    A: torch.Tensor,
    C: torch.Tensor,
    M: torch.Tensor,
    Lambda: float,
    *,
    lam: str | float = "sgcv",
    bounds: tuple[float, float] = (1e-7, 1e3),
    points: int = 80,
) -> SlimTikStep:
    r"""One sampled limited-memory Tikhonov (slimTik) step for the last layer.

    ``W_k = W − (MᵀM + (Λ+λ)I)^{-1}(Aᵀ(AW − C) + λW)`` (module docstring) with ``λ``
    fixed or chosen by sampled GCV: the minimum over ``μ = Λ + λ`` on a log grid from
    ``max(Λ/2, lower)`` (Λ at most halves in one step, a safeguard) to ``Λ + upper``, refined
    by zooming on the best cell.

    Args:
        W: the last layer ``W_{k−1}``, ``(p, C)``.
        A: the current batch ``(b, p)`` (already scaled, e.g. by ``1/√b``).
        C: its targets ``(b, C)``, scaled alike.
        M: the memory ``(n_mem, p)``; it must contain ``A``'s rows (the usual case: the
            last batches stacked, the current one included).
        Lambda: ``Λ_{k−1} > 0``.
        lam: ``"sgcv"`` or a fixed increment λ with ``Λ + λ > 0``.
        bounds: ``(lower, upper)``, ``0 < lower``: the range of ``Λ_k`` is
            ``[max(Λ/2, lower), Λ + upper]``.
        points: grid points of the sGCV search (≥ 8).

    Returns:
        :class:`SlimTikStep` (float64 tensors).

    Raises:
        ValueError: mismatched shapes, non-finite data, ``Λ ≤ 0``, ``Λ + λ ≤ 0``, bad bounds,
            a memory that does not contain the batch.
        TypeError: non-tensor or non-floating inputs.

    Reference:
        Newman, Chung, Chung & Ruthotto, "slimTrain — a stochastic approximation method for
        training separable deep neural networks", SIAM J. Sci. Comput. 44 (2022),
        arXiv:2109.14002; Slagel, Chung, Chung, Kozak, Tenorio, "Sampled Tikhonov
        regularization for large linear inverse problems", Inverse Problems 35 (2019),
        arXiv:1812.06165.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> A = torch.randn(20, 4, generator=g, dtype=torch.float64)
        >>> C = A @ torch.ones(4, 1, dtype=torch.float64)
        >>> st = slimtik_update(torch.zeros(4, 1, dtype=torch.float64), A, C, A, 1.0)
        >>> st.Lambda > 0, bool((A @ st.weight - C).norm() < 0.5 * C.norm())
        (True, True)
    """
    who = "slimtik_update"
    for name, t in (("W", W), ("A", A), ("C", C), ("M", M)):
        _check_2d(name, t, who)
    p = W.shape[0]
    if A.shape[1] != p or M.shape[1] != p or C.shape != (A.shape[0], W.shape[1]):
        raise ValueError(
            f"{who}: shapes do not match: W {tuple(W.shape)} is (p, C), A {tuple(A.shape)} "
            f"must be (b, p), C {tuple(C.shape)} (b, C), M {tuple(M.shape)} (n_mem, p)."
        )
    Lambda = check_finite_real("Lambda", Lambda, positive=True, who=who)
    lam = _check_lam(lam, who)
    if not isinstance(lam, str) and Lambda + lam <= 0:
        raise ValueError(f"{who}: Λ + λ = {Lambda + lam:.3g} must be > 0; raise lam.")
    bounds = _check_bounds(bounds, who)
    points = check_int("points", points, minimum=8, who=who)
    Vh = torch.linalg.svd(M.to(_F64), full_matrices=False)[2]
    A64 = A.to(_F64)
    if float((A64 - (A64 @ Vh.mT) @ Vh).norm()) > 1e-8 * max(float(A64.norm()), 1e-300):
        raise ValueError(
            f"{who}: the rows of A are not in the span of the memory M; stack the current "
            "batch into the memory (M = [older batches; A])."
        )
    return _slimtik(W, A, C, M, Lambda, lam, bounds, points)


def _check_lam(lam, who):
    if isinstance(lam, str):
        if lam != "sgcv":
            raise ValueError(f"{who}: lam must be 'sgcv' or a number, got {lam!r}.")
        return lam
    return check_finite_real("lam", lam, who=who)


def _check_bounds(bounds, who):
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ValueError(f"{who}: bounds must be a pair (lower, upper) of positive numbers.")
    lower = check_finite_real("bounds[0]", bounds[0], positive=True, who=who)
    upper = check_finite_real("bounds[1]", bounds[1], positive=True, who=who)
    return lower, upper


def _slimtik(W, A, C, M, Lambda, lam, bounds, points):
    """:func:`slimtik_update` without the checks (the training loop's path)."""
    parts = _Parts(W.to(_F64), A.to(_F64), C.to(_F64), M.to(_F64), Lambda)
    if not isinstance(lam, str):
        return SlimTikStep(parts.weight(Lambda + lam), lam, Lambda + lam)
    lo, hi = max(Lambda / 2, bounds[0]), Lambda + bounds[1]
    t = torch.linspace(0.0, 1.0, points, dtype=_F64, device=parts.V.device)
    grid = (math.log(lo) + t * math.log(hi / lo)).exp()
    vals = parts.sgcv(grid)
    i = int(vals.argmin())
    # one zoom: 33 points across the two grid cells around the best grid point
    a, z = math.log(grid[max(i - 1, 0)]), math.log(grid[min(i + 1, points - 1)])
    fine = (a + torch.linspace(0.0, 1.0, 33, dtype=_F64, device=grid.device) * (z - a)).exp()
    fv = parts.sgcv(fine)
    j = int(fv.argmin())
    mu = float(fine[j]) if float(fv[j]) <= float(vals[i]) else float(grid[i])
    return SlimTikStep(parts.weight(mu), mu - Lambda, mu, grid, vals)


@dataclass
class SlimTrainStep:
    """What :meth:`SlimTrain.step` returns: the batch ``loss`` ``(1/2b)‖Z W_k − Y‖²`` (a
    0-d tensor whose gradient in the feature extractor's parameters is the slimTrain
    gradient), the chosen ``lam`` and the accumulated ``Lambda``."""

    loss: torch.Tensor
    lam: float
    Lambda: float


class SlimTrain(nn.Module):
    r"""A feature extractor whose affine last layer is updated by slimTik (λ by sampled GCV),
    for mini-batch training of the rest by any torch optimizer.

    ``forward(x) = [Z(x; θ), 1] W``. :meth:`step` on a batch ``(x, y)``: computes the
    features, appends them (detached) to the memory of the last ``memory`` batches, updates
    ``W`` by :func:`slimtik_update` (module docstring) and returns the batch loss at the new
    ``W``, so that a training step reads::

        out = model.step(x, y)
        opt.zero_grad(); out.loss.backward(); opt.step()

    with ``opt`` over ``model.features.parameters()`` only. Classification: regress one-hot
    targets and predict the argmax.

    Args:
        features: any ``nn.Module`` mapping ``(N, …) → (N, p)``.
        out_features: ``C``, the number of outputs.
        memory: ``r ≥ 0``, how many past batches' features are kept.
        lam: ``"sgcv"`` (default) or a fixed increment λ per step.
        Lambda: the initial ``Λ_0 > 0``.
        bounds: the range of ``Λ`` (see :func:`slimtik_update`).
        bias: append a column of ones to the features.

    Attributes:
        weight: ``W (p + bias, C)`` (float64 buffer, zeros until the first step).
        Lambda: the accumulated regularization ``Λ_k``.
        lam_history: the chosen ``λ_k``, one per step.

    Only ``weight`` is in the ``state_dict``; the memory, ``Lambda`` and ``lam_history`` are
    training state of this object (a resumed run starts a new memory).

    Raises:
        ValueError: settings out of range; a batch whose targets are not ``(b, C)``.

    Reference:
        Newman, Chung, Chung & Ruthotto, "slimTrain — a stochastic approximation method for
        training separable deep neural networks", SIAM J. Sci. Comput. 44 (2022),
        arXiv:2109.14002.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = SlimTrain(nn.Sequential(nn.Linear(1, 8), nn.Tanh()), 1)
        >>> opt = torch.optim.Adam(model.features.parameters(), lr=1e-2)
        >>> x = torch.rand(64, 1)
        >>> losses = []
        >>> for _ in range(20):
        ...     out = model.step(x, torch.sin(3 * x))
        ...     opt.zero_grad(); out.loss.backward(); opt.step()
        ...     losses.append(out.loss.item())
        >>> losses[-1] < 0.01 * losses[0]
        True
    """

    def __init__(
        self,
        features: nn.Module,
        out_features: int,
        *,
        memory: int = 5,
        lam: str | float = "sgcv",
        Lambda: float = 0.05,
        bounds: tuple[float, float] = (1e-7, 1e3),
        bias: bool = True,
    ):
        super().__init__()
        who = "SlimTrain"
        if not isinstance(features, nn.Module):
            raise TypeError(f"{who}: features must be an nn.Module.")
        self.features = features
        self.out_features = check_positive_int("out_features", out_features, who=who)
        self.memory = check_int("memory", memory, who=who)
        self.lam = _check_lam(lam, who)
        self.Lambda = check_finite_real("Lambda", Lambda, positive=True, who=who)
        if not isinstance(self.lam, str) and self.Lambda + self.lam <= 0:
            raise ValueError(f"{who}: Lambda + lam must be > 0 (Λ may not become ≤ 0).")
        self.bounds = _check_bounds(bounds, who)
        self.bias = bool(bias)
        self.lam_history: list[float] = []
        self._memory: deque[torch.Tensor] = deque(maxlen=self.memory + 1)
        self.register_buffer("weight", None)

    def feature_matrix(self, x: torch.Tensor) -> torch.Tensor:
        """``[Z(x; θ), 1]`` of shape ``(N, p + bias)``."""
        return feature_matrix(self.features, x, self.bias)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> SlimTrainStep:
        """Update ``W`` on the batch ``(x, y)`` and return the loss there (class docstring)."""
        Z = self.feature_matrix(x)
        b = Z.shape[0]
        if not isinstance(y, torch.Tensor) or y.shape != (b, self.out_features):
            raise ValueError(
                f"SlimTrain.step: targets must be ({b}, {self.out_features}), got "
                f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}."
            )
        with torch.no_grad():
            A = Z.detach().to(_F64) / math.sqrt(b)
            if self.weight is None:
                self.weight = A.new_zeros(A.shape[1], self.out_features)
            self._memory.append(A)
            C = y.detach().to(_F64) / math.sqrt(b)
            if not bool(torch.isfinite(C).all() & torch.isfinite(A).all()):
                raise ValueError("SlimTrain.step: the features or targets contain NaN or Inf.")
            M = torch.cat(list(self._memory))
            st = _slimtik(self.weight, A, C, M, self.Lambda, self.lam, self.bounds, 80)
            self.weight, self.Lambda = st.weight, st.Lambda
            self.lam_history.append(st.lam)
        r = Z @ self.weight.to(Z.dtype) - y.to(Z.dtype)
        return SlimTrainStep(0.5 / b * (r * r).sum(), st.lam, st.Lambda)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            raise RuntimeError("SlimTrain: no last layer yet; call step(x, y) first.")
        Z = self.feature_matrix(x)
        return Z @ self.weight.to(Z.dtype)
