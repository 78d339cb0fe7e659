"""Stochastic solver: Euler–Maruyama paths under the current feedback (the PMP sampler),
BSDE consistency, terminal and HJB penalties."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ._problem import ControlProblem
from ._solver import (
    LossWeights,
    _check_finite_terms,
    _check_pair,
    _check_steps,
    _check_x,
    _ref_tensor,
    _second_for,
    _source,
)
from ._value import ValueFunction, hessian_trace

__all__ = ["StochasticLoss", "simulate", "stochastic_loss"]


class StochasticLoss(NamedTuple):
    """Terms of the stochastic control loss (batch means, scalars)."""

    total: Tensor
    objective: Tensor
    bsde: Tensor
    terminal_value: Tensor
    terminal_gradient: Tensor
    hjb: Tensor
    value_match: Tensor


def _noise(problem: ControlProblem, dW: Tensor) -> Tensor:
    s = problem.diffusion
    return s * dW if not isinstance(s, Tensor) else dW @ s.to(dW).mT


def _noise_dim(problem: ControlProblem) -> int:
    s = problem.diffusion
    return problem.dim if not isinstance(s, Tensor) else s.shape[1]


def _check_stochastic(problem, value, x, nt):
    _check_pair(problem, value)
    if problem.diffusion is None:
        raise ValueError(
            f"{type(problem).__name__} has no diffusion; use the deterministic solver "
            "(odeflow.control.control_loss) or give the problem a diffusion σ"
        )
    if problem.uses_density:
        raise ValueError("the stochastic solver does not track densities (MFG problems)")
    return _check_x(problem, x, _ref_tensor(value)), _check_steps(nt)


def simulate(
    problem: ControlProblem,
    value: ValueFunction,
    x: Tensor,
    *,
    nt: int = 20,
    generator: torch.Generator | None = None,
    controlled: bool = True,
):
    r"""Closed-loop Euler–Maruyama paths X_{k+1} = X_k + f(X_k, u*(X_k, ∇Φ(X_k, t_k)), t_k)h
    + σΔW_k, and their cost ∑ L h + G(X_N); without gradients.

    Args:
        problem: a :class:`ControlProblem` with a diffusion.
        value: the value function giving the feedback.
        x: ``(n, d)`` initial states.
        nt: steps on [0, T]. generator: a ``torch.Generator`` for the increments.
        controlled: ``False`` runs u = 0 (the uncontrolled walk, for comparison).

    Returns:
        ``(paths (nt + 1, n, d), cost (n,))``.

    Raises:
        ValueError: no diffusion, dimension mismatch, non-finite x, nt < 1.

    Reference: Li, Verma, Ruthotto, arXiv 2209.13104 (the PMP sampler).

    Example:
        >>> import torch
        >>> from odeflow.control import LQR
        >>> pb = LQR(dim=2, sigma=0.1)
        >>> paths, cost = simulate(pb, pb.exact_value(), torch.ones(3, 2, dtype=torch.float64))
        >>> paths.shape, cost.shape
        (torch.Size([21, 3, 2]), torch.Size([3]))
    """
    x, nt = _check_stochastic(problem, value, x, nt)
    h = problem.horizon / nt
    sq = math.sqrt(h)
    paths, cost = [x], x.new_zeros(x.shape[0])
    k_noise = _noise_dim(problem)
    with torch.no_grad():
        for k in range(nt):
            t = torch.tensor(k * h, dtype=x.dtype, device=x.device)
            xk = paths[-1]
            if controlled:
                u = problem.feedback(xk, value.jet(xk, t).grad, t)
            else:
                u = xk.new_zeros(xk.shape[0], problem.control_dim)
            dW = sq * torch.randn(xk.shape[0], k_noise, generator=generator, dtype=x.dtype)
            cost = cost + h * problem.running_cost(xk, u, t)
            q = problem.obstacle(xk, t)
            if q is not None:
                cost = cost + h * q
            paths.append(xk + h * problem.dynamics(xk, u, t) + _noise(problem, dW.to(xk.device)))
        cost = cost + problem.terminal_cost(paths[-1])
    return torch.stack(paths), cost


def stochastic_loss(
    problem: ControlProblem,
    value: ValueFunction,
    x: Tensor,
    weights: LossWeights | None = None,
    *,
    nt: int = 20,
    generator: torch.Generator | None = None,
) -> StochasticLoss:
    r"""The loss of the neural stochastic optimal control solver on a batch of initial states.

    Paths X follow Euler–Maruyama under the current feedback (differentiable: the PMP
    sampler / FBSNN's controlled drift), u_k = u*(X_k, ∇Φ(X_k, t_k)). Since the HJB gives
    dΦ = −L dt + ∇Φᵀσ dW along them, the terms are

    .. math::
        \text{bsde} = \mathbb{E}\sum_k |\Phi_{k+1} - \Phi_k + (L_k + Q_k)h
        - \nabla\Phi_k^\top\sigma\Delta W_k|^2,\quad
        \text{objective} = \mathbb{E}\Big[\sum_k (L_k + Q_k)h + G(X_N)\Big],

        \text{terminal} = \mathbb{E}|\Phi_N - G|^2,\ \mathbb{E}|\nabla\Phi_N - \nabla G|^2,\quad
        \text{hjb} = \mathbb{E}\sum_k h\,|-\partial_t\Phi - \tfrac12\operatorname{tr}
        (\sigma\sigma^\top\nabla^2\Phi) + H - Q|,\quad
        \text{value\_match} = \mathbb{E}\Big|\Phi_0 - \Big(\sum_k (L_k + Q_k)h + G(X_N)
        - \sum_k \nabla\Phi_k^\top\sigma\Delta W_k\Big)\Big|^2

    (value_match is DeepBSDE's loss with Z = σᵀ∇Φ: the pathwise cost with its martingale
    part removed, an estimate of Φ(X₀, 0) with vanishing variance at the optimum).

    The HJB term needs ∂ₜΦ and the Laplacian (or Hessian for a matrix σ) at every step;
    it is computed only when its weight is non-zero.

    Args:
        problem: a :class:`ControlProblem` with a diffusion (no densities).
        value: a :class:`ValueFunction` of the same dimension.
        x: ``(n, d)`` initial states. weights: :class:`LossWeights` (default: the problem's).
        nt: Euler–Maruyama steps. generator: for the Brownian increments.

    Returns:
        :class:`StochasticLoss` of scalars.

    Raises:
        ValueError: no diffusion, dimension mismatch, non-finite x, nt < 1.
        FloatingPointError: a non-finite loss term.

    Reference: Li, Verma, Ruthotto, "A neural network approach for stochastic optimal
    control", arXiv 2209.13104; Raissi, "Forward-backward stochastic neural networks",
    arXiv 1804.07010.

    Example:
        >>> import torch
        >>> from odeflow.control import LQR, ValueNetwork
        >>> pb = LQR(dim=2, sigma=0.2)
        >>> out = stochastic_loss(pb, ValueNetwork(2, width=8).double(),
        ...                       pb.sample_initial(8, dtype=torch.float64), nt=5)
        >>> out.total.ndim
        0
    """
    w = weights if weights is not None else getattr(problem, "weights", LossWeights())
    x, nt = _check_stochastic(problem, value, x, nt)
    h = problem.horizon / nt
    sq = math.sqrt(h)
    noise = problem.noise_matrix()
    second = _second_for(noise) if w.hjb else None
    k_noise = _noise_dim(problem)
    xk, cost, mart = x, x.new_zeros(x.shape[0]), x.new_zeros(x.shape[0])
    bsde = hjb = x.new_zeros(x.shape[0])
    phi0 = prev = None
    for k in range(nt + 1):
        t = torch.tensor(k * h, dtype=x.dtype, device=x.device)
        jet = value.jet(xk, t, second if k < nt else None)
        if prev is not None:
            phi_prev, inc = prev
            bsde = bsde + (jet.value - phi_prev + inc) ** 2
        if k == nt:
            break
        phi0 = jet.value if phi0 is None else phi0
        u = problem.feedback(xk, jet.grad, t)
        step = h * problem.running_cost(xk, u, t)
        q = problem.obstacle(xk, t)
        if q is not None:
            step = step + h * q
        if w.hjb:
            r = -jet.dt + problem.hamiltonian(xk, jet.grad, t) - 0.5 * hessian_trace(jet, noise)
            src, _ = _source(problem, xk, None, t)
            hjb = hjb + h * (r if src is None else r - src).abs()
        dW = sq * torch.randn(xk.shape[0], k_noise, generator=generator, dtype=x.dtype)
        sdW = _noise(problem, dW.to(xk.device))
        cost = cost + step
        dm = (jet.grad * sdW).sum(-1)
        mart = mart + dm
        prev = (jet.value, step - dm)
        xk = xk + h * problem.dynamics(xk, u, t) + sdW
    G = problem.terminal_cost(xk)
    cost = cost + G
    zero = cost.new_zeros(())
    tv = ((jet.value - G) ** 2).mean() if w.terminal_value else zero
    tg = zero
    if w.terminal_gradient:
        tg = ((jet.grad - problem.terminal_gradient(xk)) ** 2).sum(-1).mean()
    objective = cost.mean()
    vm = ((phi0 - (cost - mart)) ** 2).mean() if w.value_match else zero
    bs, hj = bsde.mean(), hjb.mean()
    total = (
        w.objective * objective
        + w.bsde * bs
        + w.terminal_value * tv
        + w.terminal_gradient * tg
        + w.hjb * hj
        + w.value_match * vm
    )
    out = StochasticLoss(total, objective, bs, tv, tg, hj, vm)
    _check_finite_terms(out)
    return out
