r"""GNvpro: Gauss–Newton on the VarPro-reduced MSE objective, over :func:`minimize`.

For ``Φ(θ) = (1/2N)(‖Z(θ)W* − Y‖² + λ²‖W*‖²)`` with ``W* = (ZᵀZ + λ²I)^{-1}ZᵀY`` the
gradient is ``∇Φ = (1/N) J_θᵀ[(ZW* − Y)W*ᵀ]`` (envelope theorem; ``J_θ`` the Jacobian of
the features), and the Gauss–Newton model Hessian uses Kaufman's VarPro Jacobian

.. math::
    J v = P^⊥ (J_θ v) W^*, \qquad P^⊥ = I − Z (ZᵀZ + λ^2 I)^{-1} Zᵀ,

``H = (1/N) JᵀJ + μI``, applied matrix-free by forward- and reverse-mode products
(``torch.func.jvp``/``vjp``) and inverted by CG inside :class:`~odeflow.optim.NewtonCG`.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, jvp, vjp

from .._utils import check_finite_real
from ._descents import AbstractDescent, NewtonCG
from ._line_search import Armijo
from ._minimize import OptimizeResult, minimize
from ._objective import Evaluation
from ._operators import LinearOperator
from ._varpro import VarPro, _ridge_factor

__all__ = ["gnvpro", "varpro_objective"]


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflat(vec, like):
    out, i = [], 0
    for t in like:
        out.append(vec[i : i + t.numel()].reshape(t.shape))
        i += t.numel()
    return tuple(out)


def varpro_objective(model: VarPro, x: torch.Tensor, y: torch.Tensor, *, damping: float = 1e-8):
    r"""The reduced MSE objective of a :class:`VarPro` model as ``fn(θ) -> Evaluation``.

    ``θ`` is the flat vector of ``model.features``' parameters (their order); the
    evaluation carries ``Φ(θ)``, ``∇Φ(θ)`` and the Gauss–Newton operator (module docstring)
    for :class:`~odeflow.optim.NewtonCG`. λ must be a fixed number.

    Args:
        model: a :class:`VarPro` with ``loss="mse"`` and a numeric ``lam``.
        x, y: the training data, ``y`` of shape ``(N, C)``.
        damping: ``μ ≥ 0`` added to the model Hessian.

    Returns:
        ``(fn, θ0)``: the objective and the current parameters as a flat vector.

    Raises:
        ValueError: a cross-entropy model, a λ rule instead of a number, negative damping.

    Example:
        >>> from torch import nn
        >>> m = VarPro(nn.Sequential(nn.Linear(1, 4), nn.Tanh())).double()
        >>> x = torch.linspace(-1, 1, 20, dtype=torch.float64)[:, None]
        >>> fn, theta = varpro_objective(m, x, x**2)
        >>> ev = fn(theta); ev.grad.shape == theta.shape
        True
    """
    who = "varpro_objective"
    if model.loss != "mse" or isinstance(model.lam, str):
        raise ValueError(f"{who}: Gauss–Newton VarPro needs loss='mse' and a fixed numeric lam.")
    lam2 = check_finite_real("lam", model.lam, nonnegative=True, who=who) ** 2
    mu = check_finite_real("damping", damping, nonnegative=True, who=who)
    names = [n for n, _ in model.features.named_parameters()]
    params0 = [p.detach() for _, p in model.features.named_parameters()]
    n = x.shape[0]
    y = y.to(params0[0].dtype)

    def feats(*ps):
        Z = functional_call(model.features, dict(zip(names, ps)), (x,)).reshape(n, -1)
        if model.bias:
            Z = torch.cat([Z, Z.new_ones(n, 1)], dim=1)
        return Z

    def fn(theta: torch.Tensor) -> Evaluation:
        ps = _unflat(theta, params0)
        Z, pull = vjp(feats, *ps)
        chol = _ridge_factor(Z, lam2)
        W = torch.cholesky_solve(Z.mT @ y, chol)
        r = Z @ W - y
        value = 0.5 / n * (float((r * r).sum()) + lam2 * float((W * W).sum()))
        grad = _flat(pull(r @ W.mT / n))

        def proj(U):  # P⊥ U
            return U - Z @ torch.cholesky_solve(Z.mT @ U, chol)

        def hv(v):
            _, dZ = jvp(feats, ps, _unflat(v, params0))
            u = proj(dZ @ W)
            return _flat(pull(proj(u) @ W.mT / n)) + mu * v

        H = LinearOperator(hv, theta.shape, dtype=theta.dtype, device=theta.device, psd=True)
        return Evaluation(value=value, grad=grad, hessian=H, info={"lam": lam2**0.5})

    def value(theta: torch.Tensor) -> float:  # Φ alone, for the line search
        with torch.no_grad():
            Z = feats(*_unflat(theta, params0))
            W = torch.cholesky_solve(Z.mT @ y, _ridge_factor(Z, lam2))
            r = Z @ W - y
            return 0.5 / n * (float((r * r).sum()) + lam2 * float((W * W).sum()))

    fn.value = value
    return fn, _flat(params0)


def gnvpro(
    model: VarPro,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    maxiter: int = 50,
    cg_maxiter: int = 20,
    cg_rtol: float = 1e-2,
    damping: float = 1e-8,
    gtol: float = 1e-8,
    descent: AbstractDescent | None = None,
    verbose: bool = False,
) -> OptimizeResult:
    r"""Train a :class:`VarPro` model (MSE) by Gauss–Newton–Krylov on the reduced objective.

    ``minimize(fn, θ0, NewtonCG(rtol=cg_rtol, maxiter=cg_maxiter), Armijo())`` with ``fn``
    from :func:`varpro_objective` (or, with ``descent=SteihaugCG(...)``, Gauss–Newton in a
    trust region by Steihaug's truncated CG); afterwards the model's feature parameters are
    set to the result and its last layer to ``W*(θ)`` (the model is trained in place, like a
    torch optimizer would).

    Args:
        model: a :class:`VarPro` with ``loss="mse"`` and a numeric λ.
        x, y: training data ``(N, …)`` and ``(N, C)``.
        maxiter, gtol: outer iterations and the gradient tolerance of :func:`minimize`.
        cg_maxiter, cg_rtol: the inner CG solve.
        damping: ``μ`` of the model Hessian.
        descent: the descent for :func:`~odeflow.optim.minimize` (default
            ``NewtonCG(rtol=cg_rtol, maxiter=cg_maxiter, precondition=False)``; e.g.
            :class:`~odeflow.optim.SteihaugCG` for a trust region).
        verbose: progress bar.

    Returns:
        :class:`~odeflow.optim.OptimizeResult` (``x`` is the flat θ).

    Raises:
        ValueError: as :func:`varpro_objective`.

    Reference:
        Newman, Ruthotto, Hart & van Bloemen Waanders, "Train like a (Var)Pro",
        SIAM J. Math. Data Sci. 3 (2021), arXiv:2007.13171; Kaufman, "A variable projection
        method for solving separable nonlinear least squares problems", BIT 15 (1975).

    Example:
        >>> from torch import nn
        >>> _ = torch.manual_seed(0)
        >>> m = VarPro(nn.Sequential(nn.Linear(1, 8), nn.Tanh()), lam=1e-4).double()
        >>> x = torch.linspace(-1, 1, 40, dtype=torch.float64)[:, None]
        >>> res = gnvpro(m, x, torch.sin(4 * x), maxiter=3, cg_maxiter=5)
        >>> first = res.history[0]
        >>> res.value < first["value"]
        True
    """
    fn, theta0 = varpro_objective(model, x, y, damping=damping)
    if descent is None:
        descent = NewtonCG(rtol=cg_rtol, maxiter=cg_maxiter, precondition=False)
    res = minimize(
        fn,
        theta0,
        descent,
        Armijo(),
        value=fn.value,
        maxiter=maxiter,
        gtol=gtol,
        verbose=verbose,
        desc="gnvpro",
    )
    with torch.no_grad():
        params = [p for _, p in model.features.named_parameters()]
        for p, v in zip(params, _unflat(res.x, params)):
            p.copy_(v)
    model.fit_last_layer(x, y)
    return res
