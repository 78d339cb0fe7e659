"""Taylor tests and observed orders of convergence.

These are the two workhorses of odeflow's numerical test-suite and are public so
that users can check their own hand-written derivatives and schemes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["TaylorResult", "observed_order", "taylor_test"]


def observed_order(errors: Sequence[float], steps: Sequence[float]) -> float:
    r"""Observed order of convergence: the least-squares slope of log(error) vs log(step).

    For an error model ``e(h) ≈ C h^p`` the slope of ``log e`` against ``log h`` is ``p``.

    Args:
        errors: positive errors, one per step size.
        steps: the step sizes (any positive, distinct values), same length as ``errors``.

    Returns:
        The fitted order ``p`` as a float.

    Raises:
        ValueError: if the lengths differ, fewer than two points are given, or any
            error or step is not positive and finite.

    Example:
        >>> hs = [0.1, 0.05, 0.025]
        >>> round(observed_order([3 * h**2 for h in hs], hs), 6)
        2.0
    """
    e = np.asarray([float(x) for x in errors], dtype=np.float64)
    h = np.asarray([float(x) for x in steps], dtype=np.float64)
    if e.shape != h.shape:
        raise ValueError(
            f"observed_order: got {e.size} errors but {h.size} steps; pass one error per step."
        )
    if e.size < 2:
        raise ValueError("observed_order: need at least two (error, step) pairs to fit a slope.")
    if not (np.all(np.isfinite(e)) and np.all(e > 0)):
        raise ValueError(
            f"observed_order: errors must be positive and finite, got {e.tolist()}; an error of 0 "
            "means the scheme is exact for this problem (pick a harder one or larger steps)."
        )
    if not (np.all(np.isfinite(h)) and np.all(h > 0)) or np.unique(h).size < 2:
        raise ValueError(
            f"observed_order: steps must be positive, finite and distinct, got {h.tolist()}."
        )
    slope, _ = np.polyfit(np.log(h), np.log(e), 1)
    return float(slope)


@dataclass(frozen=True)
class TaylorResult:
    """Remainders of a Taylor test and their observed orders.

    Attributes:
        h: step sizes, decreasing.
        e0: ``‖f(x+hv) − f(x)‖`` (should fall as O(h)).
        e1: ``‖f(x+hv) − f(x) − h·Df(x)[v]‖`` (O(h²) when the first derivative is right).
        e2: ``‖… − ½h²·D²f(x)[v,v]‖`` (O(h³) when the second derivative is right), or None.
        order0, order1, order2: observed orders fitted on the smallest steps whose
            remainder is above the round-off floor (``nan`` if fewer than two such steps remain).
        floor: the round-off floor per step, ``100·eps·max(‖f(x)‖, ‖f(x+hv)‖, 1)``: a
            remainder at or below it is round-off (the expansion is exact to that order).
    """

    h: np.ndarray
    e0: np.ndarray
    e1: np.ndarray
    e2: np.ndarray | None
    order0: float
    order1: float
    order2: float | None
    floor: np.ndarray | None = None

    def exact(self, k: int) -> bool:
        """Whether the remainder ``E_k`` is round-off at every step (``k`` = 1 or 2): the
        derivative under test reproduces f to working precision, e.g. ``grad`` of a linear or
        ``hvp`` of a quadratic function."""
        e = {0: self.e0, 1: self.e1, 2: self.e2}[k]
        return e is not None and self.floor is not None and bool(np.all(e <= self.floor))

    def passed(self, tol: float = 0.2) -> bool:
        """True when the derivatives under test are right: ``order1`` within ``tol`` of 2 (and
        ``order2`` of 3), or that remainder at round-off for every step (:meth:`exact`).

        ``order0`` only needs to be at least ``1 − tol`` (it is 2 at a critical point, and
        ``nan`` when f does not change along v)."""
        ok0 = self.exact(0) or self.order0 >= 1 - tol
        ok1 = abs(self.order1 - 2) <= tol or self.exact(1)
        ok2 = self.order2 is None or abs(self.order2 - 3) <= tol or self.exact(2)
        return bool(ok0 and ok1 and ok2)


def _as_direction(value, x: torch.Tensor, v: torch.Tensor, name: str, inner: bool) -> torch.Tensor:
    """Evaluate a user-supplied derivative (tensor or callable) along v."""
    out = value(x) if callable(value) else value
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"taylor_test: {name} must be a tensor or a callable returning one.")
    if inner:
        if out.shape != x.shape:
            raise ValueError(
                f"taylor_test: {name} has shape {tuple(out.shape)} but x has shape "
                f"{tuple(x.shape)}; "
                f"{name} must be ∇f(x) (or ∇²f(x)·v) with the shape of x."
            )
        return (out * v).sum()
    return out


def taylor_test(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    v: torch.Tensor,
    *,
    grad: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
    jvp: torch.Tensor | None = None,
    hvp: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
    second: bool = True,
    h0: float = 1.0,
    factor: float = 0.5,
    n: int = 12,
    asymptotic: int = 4,
) -> TaylorResult:
    r"""Taylor test of a derivative: remainders at shrinking steps and their observed orders.

    For ``f: R^{shape(x)} → R^m`` and a direction ``v`` the remainders

    .. math::
        E_0(h) = ‖f(x+hv) − f(x)‖,\quad
        E_1(h) = ‖f(x+hv) − f(x) − h\,Df(x)[v]‖,\quad
        E_2(h) = ‖f(x+hv) − f(x) − h\,Df(x)[v] − \tfrac{h^2}{2} D^2f(x)[v,v]‖

    fall as O(h), O(h²) and O(h³) exactly when the first and second derivatives are
    right. Run it in float64.

    Args:
        f: the function; any output shape (norms are taken over all elements).
        x: the point (any shape, floating dtype).
        v: the direction, same shape as ``x``.
        grad: for scalar ``f``, the gradient ∇f(x) under test (tensor or callable ``x → ∇f``);
            ``Df(x)[v] = ⟨∇f(x), v⟩``.
        jvp: alternatively the directional derivative ``Df(x)[v]`` itself (same shape as f(x)).
            If neither ``grad`` nor ``jvp`` is given, autograd's ``torch.func.jvp`` is used.
        hvp: for scalar ``f``, the Hessian–vector product ∇²f(x)·v under test (tensor or
            callable); ``D²f(x)[v,v] = ⟨v, ∇²f(x) v⟩``. If None and ``second`` is True,
            forward-over-forward autograd is used.
        second: whether to compute the second-order remainder ``E_2``.
        h0, factor, n: steps ``h0·factor^k`` for ``k = 0..n−1``.
        asymptotic: how many of the smallest steps above the round-off floor the orders
            are fitted on (the asymptotic regime). The floor is
            ``100·eps·max(‖f(x)‖, ‖f(x+hv)‖, 1)``; a function that cancels much larger terms
            inside itself (``g(x) − C`` with ``C ≈ g(x)``) has more round-off than that, so
            give it fewer, larger steps (a smaller ``n``).

    Returns:
        A :class:`TaylorResult` with the remainders and the observed orders
        (fitted on the steps above the round-off floor).

    Raises:
        ValueError: if ``v`` and ``x`` differ in shape, ``x`` is not floating point, or the
            step parameters are invalid.

    Example:
        >>> x = torch.tensor([0.3, -0.2], dtype=torch.float64)
        >>> v = torch.tensor([1.0, 0.5], dtype=torch.float64)
        >>> r = taylor_test(lambda z: (z**3).sum(), x, v, grad=3 * x**2, hvp=6 * x * v)
        >>> r.passed()
        True
    """
    if not isinstance(x, torch.Tensor) or not isinstance(v, torch.Tensor):
        raise TypeError("taylor_test: x and v must be tensors.")
    if not x.is_floating_point():
        raise ValueError(f"taylor_test: x must be floating point (got {x.dtype}); use float64.")
    if v.shape != x.shape:
        raise ValueError(
            f"taylor_test: v has shape {tuple(v.shape)} but x has shape {tuple(x.shape)}; "
            "they must match."
        )
    if not (0 < factor < 1) or h0 <= 0 or n < 2:
        raise ValueError("taylor_test: need h0 > 0, 0 < factor < 1 and n >= 2.")
    if isinstance(asymptotic, bool) or not isinstance(asymptotic, int) or asymptotic < 2:
        raise ValueError(
            f"taylor_test: asymptotic must be an int >= 2 (the steps an order is fitted on), "
            f"got {asymptotic!r}."
        )
    if grad is not None and jvp is not None:
        raise ValueError("taylor_test: pass either grad (scalar f) or jvp, not both.")
    if not bool(torch.isfinite(x).all()) or not bool(torch.isfinite(v).all()):
        raise ValueError("taylor_test: x and v must be finite.")
    if not bool((v != 0).any()):
        raise ValueError(
            "taylor_test: v is zero; pass a nonzero direction (e.g. torch.randn_like(x))."
        )

    x = x.detach()
    v = v.detach().to(x.dtype)
    with torch.no_grad():
        f0 = f(x)
    if not isinstance(f0, torch.Tensor):
        raise TypeError(f"taylor_test: f must return a tensor, got {type(f0).__name__}.")
    if not bool(torch.isfinite(f0).all()):
        raise ValueError("taylor_test: f(x) is not finite; pick a point inside f's domain.")
    if (grad is not None or hvp is not None) and f0.numel() != 1:
        raise ValueError(
            f"taylor_test: grad and hvp are for a scalar f, but f(x) has shape "
            f"{tuple(f0.shape)}; pass jvp (the directional derivative, shape of f(x)) instead."
        )
    if grad is not None:
        d1 = _as_direction(grad, x, v, "grad", inner=True)
    elif jvp is not None:
        if not isinstance(jvp, torch.Tensor) or jvp.shape != f0.shape:
            raise ValueError(
                f"taylor_test: jvp must be a tensor with the shape of f(x) {tuple(f0.shape)}, got "
                f"{tuple(jvp.shape) if isinstance(jvp, torch.Tensor) else type(jvp).__name__}."
            )
        d1 = jvp
    else:
        d1 = torch.func.jvp(f, (x,), (v,))[1]
    d1 = d1.detach()

    d2 = None
    if second:
        if hvp is not None:
            d2 = _as_direction(hvp, x, v, "hvp", inner=True).detach()
        else:

            def df(z):
                return torch.func.jvp(f, (z,), (v,))[1]

            d2 = torch.func.jvp(df, (x,), (v,))[1].detach()

    hs = h0 * factor ** np.arange(n)
    e0, e1, e2, scale = [], [], [], []
    norm0 = float(torch.linalg.vector_norm(f0.detach().to(torch.float64)))
    with torch.no_grad():
        for h in hs:
            fh = f(x + h * v)
            r0 = fh - f0
            r1 = r0 - h * d1
            e0.append(float(torch.linalg.vector_norm(r0)))
            e1.append(float(torch.linalg.vector_norm(r1)))
            if d2 is not None:
                e2.append(float(torch.linalg.vector_norm(r1 - 0.5 * h * h * d2)))
            scale.append(max(norm0, float(torch.linalg.vector_norm(fh.to(torch.float64))), 1.0))
    e0a, e1a = np.asarray(e0), np.asarray(e1)
    e2a = np.asarray(e2) if d2 is not None else None
    # the round-off of f(x+hv) − f(x) relative to the values subtracted (a function that
    # cancels large terms inside itself has more: use fewer, larger steps for it)
    floor = 100.0 * float(torch.finfo(x.dtype).eps) * np.asarray(scale)
    if not np.isfinite(e0a).any():
        raise ValueError("taylor_test: f(x + h·v) is not finite for any step; reduce h0.")

    def fit(err: np.ndarray) -> float:
        # the asymptotic regime: the smallest steps whose remainder is finite and above
        # round-off (a large step may leave f's domain: its non-finite remainder is skipped)
        idx = np.flatnonzero(np.isfinite(err) & (err > floor))
        if idx.size < 2:
            return float("nan")
        idx = idx[-asymptotic:]
        return observed_order(err[idx], hs[idx])

    return TaylorResult(
        h=hs,
        e0=e0a,
        e1=e1a,
        e2=e2a,
        order0=fit(e0a),
        order1=fit(e1a),
        order2=fit(e2a) if e2a is not None else None,
        floor=floor,
    )
