"""Value functions Φ(x, t) with exact ∇ₓΦ, ∂ₜΦ and ΔₓΦ (or ∇²ₓΦ)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["ValueFunction", "ValueJet", "ValueNetwork", "hessian_trace"]

_SECONDS = (None, "laplacian", "hessian")


class ValueJet(NamedTuple):
    """Φ and its derivatives at a batch of points (fields not requested are None).

    Shapes: ``value (n,)``, ``grad (n, d)`` (∇ₓΦ), ``dt (n,)`` (∂ₜΦ), ``laplacian (n,)``
    (ΔₓΦ), ``hessian (n, d, d)`` (∇²ₓΦ).
    """

    value: Tensor
    grad: Tensor
    dt: Tensor
    laplacian: Tensor | None = None
    hessian: Tensor | None = None


def hessian_trace(jet: ValueJet, M: float | Tensor) -> Tensor:
    """tr(M ∇²ₓΦ) per point from a jet: ``M`` a number (M·I, needs ``laplacian`` or
    ``hessian``) or a ``(d, d)`` tensor (needs ``hessian``); returns ``(n,)``.

    Example:
        >>> import torch
        >>> jet = ValueJet(torch.zeros(1), torch.zeros(1, 2), torch.zeros(1),
        ...                hessian=torch.eye(2)[None] * 3)
        >>> hessian_trace(jet, torch.tensor([[1.0, 0.5], [0.5, 2.0]]))
        tensor([9.])
    """
    if not isinstance(M, Tensor):
        lap = jet.laplacian
        if lap is None:
            if jet.hessian is None:
                raise ValueError("hessian_trace needs a jet with a laplacian or hessian")
            lap = jet.hessian.diagonal(dim1=-2, dim2=-1).sum(-1)
        return M * lap
    if jet.hessian is None:
        raise ValueError("tr(M ∇²Φ) with a matrix M needs the Hessian: request second='hessian'")
    return (jet.hessian * M.to(jet.hessian)).sum((-1, -2))


def _time_column(t, x: Tensor) -> Tensor:
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t.expand(x.shape[0], 1)
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t[:, None]


class ValueFunction(nn.Module):
    """Protocol of a value function Φ(x, t): ``dim`` and :meth:`jet` (and ``forward``).

    Subclass it for closed-form values (e.g. :class:`odeflow.control.LQRValue`) or wrap a
    network (:class:`ValueNetwork`). The solvers call only :meth:`jet`.
    """

    dim: int

    def jet(self, x: Tensor, t, second: str | None = None) -> ValueJet:
        """Φ, ∇ₓΦ, ∂ₜΦ and, with ``second`` = "laplacian"/"hessian", ΔₓΦ or ∇²ₓΦ."""
        raise NotImplementedError  # abstract

    def forward(self, x: Tensor, t) -> Tensor:
        """Φ(x, t), ``(n,)``."""
        return self.jet(x, t).value


class ValueNetwork(ValueFunction):
    r"""A neural value function Φ(x, t) = N(s) on s = (x, t) with exact derivatives.

    By default the OT-Flow potential of :func:`odeflow.flows.build_potential`,
    Φ(s) = wᵀN(s) + ½sᵀAᵀAs + bᵀs + c (a ResNet with log-cosh activations plus a rank-r
    quadratic), the network of the PNAS MFG and NeuralOC papers (their quadratic term is
    ½sᵀ(A + Aᵀ)s with a full A; here it is low-rank PSD, rank r ≤ d + 1), initialised
    with w = 0 (OT-Flow: w = 1), so that the ResNet part starts at 0 instead of a value that
    grows with d and the width (about 27 at d = 100, width 32). Any network
    of :mod:`odeflow.derivatives` blocks with ``in_features = d + 1`` may be given instead.
    ∇ₛΦ (hence ∇ₓΦ and ∂ₜΦ) and ΔₓΦ / ∇²ₓΦ come from :func:`odeflow.derivatives.compute`,
    exact and batched (no autograd loops).

    Args:
        dim: state dimension d.
        width: ResNet width m (default 16, as in the PNAS paper).
        depth: ResNet layers (opening layer + residual layers, ≥ 2).
        rank: rank of the quadratic term (default min(10, d + 1)).
        net: a block network mapping ``(n, d + 1) -> (n,)``, used instead of the default.
        time_degree: None (default) or K ≥ 0: Φ gains the term ½xᵀS(t)x with a full
            symmetric S(t) = Σₖ₌₀ᴷ tᵏ Sₖ, Sₖ = (Mₖ + Mₖᵀ)/2 ((K + 1)d² parameters, initialised
            at 0), whose derivatives are exact: ∇ₓ = S(t)x, ∂ₜ = ½xᵀS'(t)x, Δₓ = tr S(t),
            ∇²ₓ = S(t). Neither the quadratic ½sᵀAᵀAs (its x–t part is linear in x) nor a
            ResNet narrower than d gives a gain that varies with t in every direction, which
            linear–quadratic problems need (LQR: Φ* = ½|x|²p(t)): without this term the gain
            is learned as a constant one, about 2 % above the optimal cost at d = 100, K = 1
            brings that to 0.06 % and K = 2 to 0.01 % (``benchmarks/control_scaling.py``).
    Raises:
        ValueError: ``net`` whose input size is not d + 1; bad sizes; ``time_degree`` < 0.

    Reference: Ruthotto et al., PNAS 2020, arXiv 1912.01825; Onken et al., arXiv 2006.00104.

    Example:
        >>> import torch
        >>> phi = ValueNetwork(2, width=8).double()
        >>> jet = phi.jet(torch.randn(5, 2, dtype=torch.float64), 0.5, second="laplacian")
        >>> jet.grad.shape, jet.dt.shape, jet.laplacian.shape
        (torch.Size([5, 2]), torch.Size([5]), torch.Size([5]))
    """

    def __init__(
        self,
        dim: int,
        width: int = 16,
        depth: int = 2,
        rank: int | None = None,
        net: nn.Module | None = None,
        time_degree: int | None = None,
    ):
        super().__init__()
        from odeflow.flows import build_potential

        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
        K = time_degree
        if K is not None and (isinstance(K, bool) or not isinstance(K, int) or K < 0):
            raise ValueError(
                f"time_degree must be None (no time-dependent quadratic term) or an integer "
                f">= 0 (the degree in t of its matrix S(t)), got {K!r}"
            )
        self.dim = dim
        # Mₖ of the term ½xᵀS(t)x, S(t) = Σₖ tᵏ (Mₖ + Mₖᵀ)/2, k = 0..K (zero: no gradient trap,
        # ∂Φ/∂Mₖ = ½tᵏxxᵀ); no parameter at all by default (older checkpoints load)
        self.time_quadratic = None if K is None else nn.Parameter(torch.zeros(K + 1, dim, dim))
        if net is None:
            self.config = {"width": int(width), "depth": int(depth), "rank": rank}
            if K is not None:
                self.config["time_degree"] = K
            # the paper's Xavier A (the flows' near-identity init scales it by 0.1), w = 0 below
            net = build_potential(dim, int(width), int(depth), rank, init="paper")
            from odeflow.derivatives import Linear

            out = [m for m in net.modules() if isinstance(m, Linear) and m.out_features == 1]
            with torch.no_grad():  # w = 0: the ResNet part starts at 0 (OT-Flow: w = 1)
                out[-1].K.zero_()
        else:
            self.config = None
            n_in = getattr(net, "in_features", None)
            if n_in is not None and n_in != dim + 1:
                raise ValueError(
                    f"net has in_features={n_in} but a value network on R^{dim} x [0, T] "
                    f"needs {dim + 1} (the state and the time)"
                )
        self.net = net

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"x must have shape (n, {self.dim}) for this value network (dim={self.dim}), "
                f"got {tuple(getattr(x, 'shape', ()))}"
            )

    def jet(self, x: Tensor, t, second: str | None = None) -> ValueJet:
        from odeflow.derivatives import compute

        if second not in _SECONDS:
            raise ValueError(f"second must be one of {_SECONDS}, got {second!r}")
        self._check(x)
        s = torch.cat([x, _time_column(t, x)], dim=1)
        want = second or "gradient"
        out = compute(
            self.net, s, want=want, exclude_last=0 if second is None else 1, check_finite=False
        )
        g = out.gradient
        lap = out.laplacian if second == "laplacian" else None
        jet = ValueJet(out.value, g[:, :-1], g[:, -1], lap, out.hessian)
        if self.time_quadratic is not None:
            jet = _add_time_quadratic(jet, self.time_quadratic, x, s[:, -1])
        return jet


def _add_time_quadratic(jet: ValueJet, M: Tensor, x: Tensor, t: Tensor) -> ValueJet:
    """``jet`` plus the term ½xᵀS(t)x, S(t) = Σₖ₌₀ᴷ tᵏ Sₖ, Sₖ = (Mₖ + Mₖᵀ)/2,
    ``M (K + 1, d, d)``, ``t (n,)``: value ½xᵀS(t)x, ∇ₓ S(t)x, ∂ₜ ½xᵀS'(t)x, Δₓ tr S(t),
    ∇²ₓ S(t)."""
    S = 0.5 * (M + M.mT)
    k = torch.arange(M.shape[0], dtype=x.dtype, device=x.device)
    powers = t[:, None] ** k  # (n, K + 1): tᵏ (0⁰ = 1)
    slopes = k * t[:, None] ** (k - 1).clamp(min=0)  # d(tᵏ)/dt
    Sx = torch.einsum("kde,ne->nkd", S, x)  # Sₖx
    xSx = (Sx * x[:, None, :]).sum(-1)  # (n, K): xᵀSₖx
    value = jet.value + 0.5 * (powers * xSx).sum(-1)
    grad = jet.grad + torch.einsum("nk,nkd->nd", powers, Sx)
    dt = jet.dt + 0.5 * (slopes * xSx).sum(-1)
    lap = jet.laplacian
    if lap is not None:
        lap = lap + powers @ S.diagonal(dim1=-2, dim2=-1).sum(-1)
    hess = jet.hessian
    if hess is not None:
        hess = hess + torch.einsum("nk,kde->nde", powers, S)
    return ValueJet(value, grad, dt, lap, hess)
