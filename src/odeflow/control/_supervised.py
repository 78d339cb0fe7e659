"""Supervised fit of a value function to sampled values and costates (a warm start)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["SupervisedFit", "fit_value_to_data"]


class SupervisedFit(NamedTuple):
    """Outcome of :func:`fit_value_to_data`: the final ``loss`` and its two parts, the
    relative squared errors ``value_error`` = Σ(Φ − V)²/ΣV² and ``gradient_error`` =
    Σ|∇ₓΦ − λ|²_W/Σ|λ|²_W (W: the coordinate weights), and the L-BFGS ``iterations``."""

    loss: float
    value_error: float
    gradient_error: float
    iterations: int


def _data(value, x, t, V, grad):
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != value.dim:
        raise ValueError(
            f"x must be an (n, {value.dim}) tensor of states for this value function, got "
            f"{tuple(getattr(x, 'shape', ()))}"
        )
    n = x.shape[0]
    ref = next(iter(value.parameters()), x)
    x = x.to(ref)
    t = torch.as_tensor(t, dtype=ref.dtype, device=ref.device)
    t = t.expand(n) if t.ndim == 0 else t
    V = torch.as_tensor(V, dtype=ref.dtype, device=ref.device)
    for name, arr, shape in (("t", t, (n,)), ("V", V, (n,))):
        if tuple(arr.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} (one per state), got "
                             f"{tuple(arr.shape)}")  # fmt: skip
    if grad is not None:
        grad = torch.as_tensor(grad, dtype=ref.dtype, device=ref.device)
        if tuple(grad.shape) != tuple(x.shape):
            raise ValueError(f"grad must have the shape of x, {tuple(x.shape)}, got "
                             f"{tuple(grad.shape)}")  # fmt: skip
    for name, arr in (("x", x), ("t", t), ("V", V), ("grad", grad)):
        if arr is not None and not bool(torch.isfinite(arr).all()):
            raise ValueError(f"{name} has NaN or inf entries: drop those samples first")
    return x, t, V, grad


def _coordinate_weights(w, x: Tensor) -> Tensor:
    if w is None:
        return torch.ones_like(x[0])
    w = torch.as_tensor(w, dtype=x.dtype, device=x.device)
    if tuple(w.shape) != (x.shape[1],) or not bool(torch.isfinite(w).all() and (w >= 0).all()):
        raise ValueError(
            f"coordinate_weights must be {x.shape[1]} finite non-negative numbers (one per state "
            f"coordinate), got shape {tuple(w.shape)}"
        )
    return w


def fit_value_to_data(
    value, x: Tensor, t, V: Tensor, grad: Tensor | None = None, *,
    gradient_weight: float = 1.0, coordinate_weights: Tensor | None = None,
    iterations: int = 200, gtol: float = 1e-8,
) -> SupervisedFit:  # fmt: skip
    r"""Fit a value function to sampled values and costates by least squares (in place).

    Minimises, over the parameters of Φ, the relative squared errors

    .. math::
        \frac{\sum_i (\Phi(x_i, t_i) - V_i)^2}{\sum_i V_i^2}
        + \mu\,\frac{\sum_i |\nabla_x\Phi(x_i, t_i) - \lambda_i|_W^2}{\sum_i |\lambda_i|_W^2}

    (μ = ``gradient_weight``, |v|²_W = Σⱼ wⱼvⱼ² with the ``coordinate_weights`` w, default
    1; the second term is dropped when ``grad`` is None) with
    :func:`odeflow.optim.lbfgs` on the whole data set. The data are typically cost-to-go
    values V(x_k, t_k) and costates λ(t_k) = ∇ₓV sampled along open-loop optimal
    trajectories from a direct method (Pontryagin: the costate is the value's gradient
    along an optimal path), which puts Φ in the basin of the optimal feedback before
    training it with :func:`fit` (the HJB-penalised objective).

    Args:
        value: a :class:`~odeflow.control.ValueFunction` with parameters (e.g.
            :class:`~odeflow.control.ValueNetwork`); updated in place.
        x: ``(n, d)`` states. t: a number or ``(n,)`` times. V: ``(n,)`` values.
        grad: ``(n, d)`` gradients ∇ₓV (costates), or None.
        gradient_weight: μ ≥ 0.
        coordinate_weights: ``(d,)`` non-negative weights w of the gradient's coordinates,
            e.g. 1/Σᵢλᵢⱼ² so that each coordinate's relative error counts alike when the
            costates differ in scale (default: all 1).
        iterations: at most this many L-BFGS iterations (≥ 1).
        gtol: stop earlier when the loss gradient's norm falls below ``gtol`` times its
            initial norm.

    Returns:
        :class:`SupervisedFit`.

    Raises:
        ValueError: shapes that do not match (x not ``(n, d)``, t/V not ``(n,)``, grad not
            like x), non-finite data, all-zero V (or grad), a negative μ or gtol, or
            iterations < 1, coordinate weights not ``(d,)``, negative or not finite.
        TypeError: ``value`` has no trainable parameters.

    Reference: Nakamura-Zimmerer, Gong, Kang, "Adaptive deep learning for high-dimensional
    Hamilton–Jacobi–Bellman equations", SIAM J. Sci. Comput. 43 (2021), arXiv 1907.05317
    (value and costate regression on open-loop optimal solutions).

    Example:
        >>> import torch
        >>> from odeflow.control import ValueNetwork
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <...>
        >>> phi = ValueNetwork(2, width=8).double()
        >>> x = torch.randn(64, 2, dtype=torch.float64)
        >>> out = fit_value_to_data(phi, x, 0.0, (x * x).sum(1), 2 * x, iterations=50)
        >>> out.value_error < 1e-3 and out.gradient_error < 1e-3
        True
    """
    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    from odeflow.optim import lbfgs

    params = [p for p in value.parameters() if p.requires_grad]
    if not params:
        raise TypeError(f"{type(value).__name__} has no trainable parameters to fit")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    mu = float(gradient_weight)
    if not mu >= 0:
        raise ValueError(f"gradient_weight must be >= 0, got {gradient_weight!r}")
    if not float(gtol) >= 0:
        raise ValueError(f"gtol must be >= 0 (a relative gradient tolerance), got {gtol!r}")
    x, t, V, grad = _data(value, x, t, V, grad)
    w = _coordinate_weights(coordinate_weights, x)
    sv = (V * V).sum()
    sg = None if grad is None or mu == 0 else (w * grad * grad).sum()
    if sv == 0 or (sg is not None and sg == 0):
        raise ValueError("V (and grad) must not be all zero: the errors are relative to them")

    def terms():
        jet = value.jet(x, t)
        ev = ((jet.value - V) ** 2).sum() / sv
        eg = (w * (jet.grad - grad) ** 2).sum() / sg if sg is not None else torch.zeros_like(ev)
        return ev, eg

    def fn(theta):
        vector_to_parameters(theta, params)
        for p in params:
            p.grad = None
        ev, eg = terms()
        (ev + mu * eg).backward()
        g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                       for p in params])  # fmt: skip
        return float((ev + mu * eg).detach()), g.detach()

    def value_only(theta):
        vector_to_parameters(theta, params)
        with torch.no_grad():
            ev, eg = terms()
        f = float(ev + mu * eg)
        return f if f == f else float("inf")

    res = lbfgs(
        fn,
        parameters_to_vector(params).detach(),
        value=value_only,
        maxiter=iterations,
        gtol=float(gtol),
    )
    vector_to_parameters(res.x, params)
    with torch.no_grad():
        ev, eg = terms()
    return SupervisedFit(float(ev + mu * eg), float(ev), float(eg), int(res.iterations))
