r"""Variable projection (VarPro) for networks whose last layer is affine.

A model ``F(x) = Z(x; θ) W`` with features ``Z ∈ R^{N×p}`` (an ``nn.Module``, plus a column
of ones for the bias) and last-layer weights ``W ∈ R^{p×C}`` is trained on the *reduced*
objective ``Φ(θ) = L(θ, W*(θ))``, ``W*(θ) = argmin_W L(θ, W)``, with

* MSE: ``L = (1/2N)(‖ZW − Y‖² + Σ_c λ_c²‖W_c‖²)``: ``W*`` by a Tikhonov solve (fixed λ)
  or by :func:`~odeflow.optim.hybrid_lsqr` (λ per output by GCV);
* cross-entropy: ``L = (1/N)Σ_i CE(z_iᵀW, y_i) + (λ²/2N)‖W‖²``: ``W*`` by Newton's method.

Because ``∂_W L(θ, W*) = 0``, the envelope theorem gives ``∇Φ(θ) = ∂_θ L(θ, W)|_{W = W*}``:
back-propagating the loss with ``W*`` held fixed yields the exact reduced gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._utils import check_finite_real, check_positive_int
from ._hybrid import hybrid_lsqr

__all__ = ["LastLayer", "VarPro", "VarProLoss", "solve_last_layer"]

_LOSSES = ("mse", "cross_entropy")


@dataclass
class LastLayer:
    """The inner solution: ``weight (p, C)`` and the λ used per output ``lam (C,)``;
    ``iterations`` counts Newton steps (cross-entropy) or the Krylov steps (hybrid)."""

    weight: torch.Tensor
    lam: torch.Tensor
    iterations: int = 0


def _ridge_factor(Z, lam2):
    """The Cholesky factor of ``ZᵀZ + λ²I``; a ValueError naming λ when, in this precision,
    the features are too nearly dependent for that λ (never torch's raw LinAlgError)."""
    p = Z.shape[1]
    G = Z.mT @ Z + lam2 * torch.eye(p, dtype=Z.dtype, device=Z.device)
    chol, info = torch.linalg.cholesky_ex(G)
    if bool((info != 0).any()):
        raise ValueError(
            f"the last layer's normal equations ZᵀZ + λ²I are not positive definite in "
            f"{Z.dtype} with lam={lam2**0.5:.3g} (the {p} features are nearly linearly "
            "dependent, or not finite); pass a larger lam or use float64"
        )
    return chol


def _ridge_solve(Z, Y, lam2):
    return torch.cholesky_solve(Z.mT @ Y, _ridge_factor(Z, lam2))


def _ce_value(Z, labels, W, lam2):
    n = Z.shape[0]
    logits = Z @ W
    nll = torch.logsumexp(logits, 1) - logits.gather(1, labels[:, None])[:, 0]
    return nll.sum() / n + 0.5 * lam2 / n * (W * W).sum()


def _ce_newton(Z, labels, C, lam2, tol, maxiter):
    """Newton's method with backtracking for the strictly convex regularized CE."""
    n, p = Z.shape
    W = Z.new_zeros(p, C)
    onehot = torch.nn.functional.one_hot(labels, C).to(Z.dtype)
    eye = torch.eye(p * C, dtype=Z.dtype, device=Z.device)
    f = _ce_value(Z, labels, W, lam2)
    for it in range(1, maxiter + 1):
        S = torch.softmax(Z @ W, 1)
        g = (Z.mT @ (S - onehot) + lam2 * W) / n
        if float(g.norm()) <= tol:
            return W, it - 1
        # H = (1/N) Σ_i z_i z_iᵀ ⊗ (diag s_i − s_i s_iᵀ) + (λ²/N) I, indexed (p, C) × (p, C)
        D = torch.diag_embed(S) - S[:, :, None] * S[:, None, :]
        H = torch.einsum("ip,iq,icd->pcqd", Z, Z, D).reshape(p * C, p * C) / n
        H = H + lam2 / n * eye
        step = -torch.linalg.solve(H, g.reshape(-1)).reshape(p, C)
        t, slope = 1.0, float((g * step).sum())
        while True:
            f_new = _ce_value(Z, labels, W + t * step, lam2)
            if float(f_new) <= float(f) + 1e-4 * t * slope or t < 1e-10:
                break
            t *= 0.5
        W, f = W + t * step, f_new
    return W, maxiter


def solve_last_layer(
    Z: torch.Tensor,
    Y: torch.Tensor,
    *,
    loss: str = "mse",
    lam: float | str = 1e-3,
    tol: float = 1e-10,
    maxiter: int = 50,
) -> LastLayer:
    r"""The optimal last layer ``W* = argmin_W L(Z, W)`` for fixed features (no gradients).

    MSE: ``min ‖ZW − Y‖² + λ²‖W‖²`` (per output column) by a Cholesky solve of
    ``(ZᵀZ + λ²I)W = ZᵀY`` for a fixed λ, or with ``lam="gcv"``/``"wgcv"`` by
    :func:`~odeflow.optim.hybrid_lsqr` (one λ per output column). Cross-entropy:
    ``min (1/N)Σ CE(z_iᵀW, y_i) + (λ²/2N)‖W‖²`` by Newton's method with backtracking until
    the gradient norm is ``≤ tol``.

    Args:
        Z: features ``(N, p)`` (append a column of ones for a bias).
        Y: MSE targets ``(N, C)``; cross-entropy labels ``(N,)`` (int64, values in [0, C)).
        loss: ``"mse"`` or ``"cross_entropy"`` (then C is ``Y.max() + 1``).
        lam: λ ≥ 0 (> 0 for cross-entropy), or ``"gcv"``/``"wgcv"`` for MSE.
        tol, maxiter: Newton's stopping rule (cross-entropy).

    Returns:
        :class:`LastLayer` with ``weight (p, C)`` and ``lam (C,)``.

    Raises:
        ValueError: unknown loss, bad λ, mismatched sizes, non-finite features or targets.

    Reference:
        Golub & Pereyra, "The differentiation of pseudo-inverses and nonlinear least squares
        problems whose variables separate", SIAM J. Numer. Anal. 10 (1973); Newman, Ruthotto,
        Hart & van Bloemen Waanders, "Train like a (Var)Pro: efficient training of neural
        networks with variable projection", SIAM J. Math. Data Sci. 3 (2021), arXiv:2007.13171.

    Example:
        >>> Z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
        >>> W_true = torch.tensor([[2.0], [-1.0]], dtype=torch.float64)
        >>> bool(torch.allclose(solve_last_layer(Z, Z @ W_true, lam=0.0).weight, W_true))
        True
    """
    who = "solve_last_layer"
    if loss not in _LOSSES:
        raise ValueError(f"{who}: loss must be one of {_LOSSES}, got {loss!r}.")
    if not isinstance(Z, torch.Tensor) or Z.ndim != 2 or not Z.is_floating_point():
        raise ValueError(f"{who}: Z must be a floating-point (N, p) tensor.")
    if not isinstance(Y, torch.Tensor) or Y.shape[0] != Z.shape[0]:
        raise ValueError(f"{who}: Y must have N = {Z.shape[0]} rows like Z.")
    if not bool(torch.isfinite(Z).all()):
        raise ValueError(f"{who}: the features Z contain NaN or Inf.")
    Z = Z.detach()
    if loss == "cross_entropy":
        if Y.ndim != 1 or Y.dtype != torch.int64 or bool((Y < 0).any()):
            raise ValueError(f"{who}: cross-entropy labels must be an int64 (N,) tensor >= 0.")
        if isinstance(lam, str) or check_finite_real("lam", lam, who=who) <= 0:
            raise ValueError(f"{who}: cross-entropy needs a fixed lam > 0 (strict convexity).")
        C = int(Y.max()) + 1
        W, its = _ce_newton(Z, Y, C, float(lam) ** 2, tol, check_positive_int("maxiter", maxiter))
        return LastLayer(W, torch.full((C,), float(lam), dtype=Z.dtype), its)
    if Y.ndim != 2 or not bool(torch.isfinite(Y).all()):
        raise ValueError(f"{who}: MSE targets must be a finite (N, C) tensor.")
    Y = Y.detach().to(Z.dtype)
    if isinstance(lam, str):
        if lam not in ("gcv", "wgcv"):
            raise ValueError(f"{who}: lam must be a number >= 0, 'gcv' or 'wgcv', got {lam!r}.")
        res = hybrid_lsqr(Z, Y.mT.contiguous(), regularization=lam, batch_dims=1, rtol=tol)
        return LastLayer(res.x.mT.contiguous(), res.lam, res.iterations)
    lam = check_finite_real("lam", lam, nonnegative=True, who=who)
    W = _ridge_solve(Z, Y, lam**2)
    return LastLayer(W, torch.full((Y.shape[1],), lam, dtype=Z.dtype), 0)


def feature_matrix(features: nn.Module, x: torch.Tensor, bias: bool) -> torch.Tensor:
    """The last layer's input ``[Z(x; θ), 1]``, ``(N, p + bias)``: the features flattened
    per sample, with a column of ones when the layer has a bias."""
    Z = features(x).reshape(x.shape[0], -1)
    if bias:
        Z = torch.cat([Z, Z.new_ones(Z.shape[0], 1)], dim=1)
    return Z


def reduced_loss_value(Z, Y, W, lam, loss):
    """``L(Z, W)`` (differentiable in ``Z``) with the last layer ``W`` and λ per output."""
    n = Z.shape[0]
    if loss == "cross_entropy":
        return _ce_value(Z, Y, W, lam[0] ** 2)
    r = Z @ W - Y
    return 0.5 / n * ((r * r).sum() + (lam**2 * (W * W).sum(0)).sum())


@dataclass
class VarProLoss:
    """What :meth:`VarPro.reduced_loss` returns: the reduced loss ``value`` (a 0-d tensor
    whose gradient in the feature extractor's parameters is the VarPro gradient) and the
    inner solution ``last`` (:class:`LastLayer`)."""

    value: torch.Tensor
    last: LastLayer


class VarPro(nn.Module):
    r"""A feature extractor followed by an affine last layer that is solved for, not trained.

    ``forward(x) = [Z(x; θ), 1] W`` (the ones column when ``bias``). :meth:`reduced_loss`
    solves the inner problem for ``W*(θ)`` on a batch (:func:`solve_last_layer`) and returns
    ``Φ(θ) = L(θ, W*(θ))``; ``Φ.backward()`` gives the exact reduced gradient (envelope
    theorem, module docstring), so any torch optimizer trains θ alone. :meth:`fit_last_layer`
    stores ``W*`` for prediction.

    Args:
        features: any ``nn.Module`` mapping ``(N, …) → (N, p)``.
        loss: ``"mse"`` or ``"cross_entropy"``.
        lam: λ of the inner problem (a number; ``"gcv"``/``"wgcv"`` for MSE: chosen on each
            batch by :func:`~odeflow.optim.hybrid_lsqr`, then held fixed for the gradient).
        bias: append a column of ones to the features.

    Raises:
        ValueError: unknown loss or bad λ (at the first solve); ``forward`` before a fit.

    Reference:
        Newman, Ruthotto, Hart & van Bloemen Waanders, "Train like a (Var)Pro",
        SIAM J. Math. Data Sci. 3 (2021), arXiv:2007.13171.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = VarPro(nn.Sequential(nn.Linear(1, 8), nn.Tanh()), lam=1e-3).double()
        >>> x = torch.linspace(-1, 1, 50, dtype=torch.float64)[:, None]
        >>> out = net.reduced_loss(x, torch.sin(3 * x))
        >>> out.value.backward()
        >>> net.fit_last_layer(x, torch.sin(3 * x)); net(x).shape
        torch.Size([50, 1])
    """

    def __init__(
        self, features: nn.Module, *, loss: str = "mse", lam: float | str = 1e-3, bias=True
    ):
        super().__init__()
        if loss not in _LOSSES:
            raise ValueError(f"VarPro: loss must be one of {_LOSSES}, got {loss!r}.")
        self.features = features
        self.loss = loss
        self.lam = lam
        self.bias = bool(bias)
        self.register_buffer("weight", None)

    def feature_matrix(self, x: torch.Tensor) -> torch.Tensor:
        """``[Z(x; θ), 1]`` of shape ``(N, p + bias)``."""
        return feature_matrix(self.features, x, self.bias)

    def reduced_loss(self, x: torch.Tensor, y: torch.Tensor) -> VarProLoss:
        """``Φ(θ) = L(θ, W*(θ))`` on the batch ``(x, y)`` (see the class docstring)."""
        Z = self.feature_matrix(x)
        last = solve_last_layer(Z, y, loss=self.loss, lam=self.lam)
        yy = y if self.loss == "cross_entropy" else y.to(Z.dtype)
        return VarProLoss(reduced_loss_value(Z, yy, last.weight, last.lam, self.loss), last)

    @torch.no_grad()
    def fit_last_layer(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Solve for ``W*`` on ``(x, y)`` and store it as the last layer."""
        self.weight = solve_last_layer(
            self.feature_matrix(x), y, loss=self.loss, lam=self.lam
        ).weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            raise RuntimeError("VarPro: no last layer yet; call fit_last_layer(x, y) first.")
        return self.feature_matrix(x) @ self.weight
