r"""Network blocks that propagate exact derivative jets.

Every block is a stateless :class:`torch.nn.Module` mapping a batch ``u: (n, in_features)``
to ``(n, out_features)``. Beside ``forward`` each block implements three private sweeps used
by :func:`odeflow.derivatives.compute`:

* ``_jet(u, J, L, ctx)`` — forward jet: with the Jacobian ``∂u/∂s`` held transposed,
  ``J: (c, in)`` shared by the batch or ``(n, c, in)`` (one row per seed column, so that a
  layer is one GEMM ``(n·c, in) @ (in, out)`` and every elementwise op runs on contiguous
  memory), and ``L = Σ_{a<p} ∂²u/∂s_a²`` (``(n, in)`` or None for zero) return the same
  three objects for the output (the "forward Laplacian").
* ``_record(u, J, ctx)`` — forward sweep of the Jacobians of every preactivation, keeping only
  what the reverse sweep needs (row norms ``‖J_z[j,:p]‖²`` for a Laplacian, ``J_z`` for a Hessian).
* ``_reverse(tape, g, ctx)`` — reverse sweep of the adjoints ``g: (n, s, out)`` (one row per
  output seed), returning the input adjoint ``(n, s, in)`` and this block's second-order term
  ``Σ_ℓ J_ℓᵀ diag(σ″(z_ℓ) ⊙ λ_ℓ) J_ℓ`` (or its trace / its product with directions).

This is the identity ∇²f = Σ_ℓ J_ℓᵀ diag(σ″(z_ℓ) ⊙ λ_ℓ) J_ℓ (+ constant quadratic terms): batched
GEMMs only, memory O(n·c·width + n·c²), never an (n, d, d, width) tensor.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ._activations import Activation, Softplus, Tanh

__all__ = ["ICNN", "Block", "Linear", "Quadratic", "ResNet", "Sequential", "Single", "Sum"]


@dataclass(frozen=True)
class _Ctx:
    """What a sweep computes: kind ∈ {grad, lap, hess, hvp}; p Laplacian columns; V for hvp."""

    kind: str
    p: int
    acc: torch.dtype
    V: torch.Tensor | None = None


def _add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _no_autocast(t: torch.Tensor):
    """Accumulate in ctx.acc even inside an autocast region (a no-op context outside one)."""
    dev = t.device.type
    if torch.is_autocast_enabled(dev):
        return torch.autocast(device_type=dev, enabled=False)
    return contextlib.nullcontext()


def _unit_data(Jz: torch.Tensor | None, ctx: _Ctx):
    """What the reverse sweep needs from a preactivation Jacobian Jz: (..., c, w)."""
    if Jz is None or ctx.kind == "grad":
        return None
    if ctx.kind == "lap":
        return _sq_rows(Jz, ctx)
    return Jz


def _unit_term(data, coef: torch.Tensor, ctx: _Ctx):
    """Second-order term Σ_j coef_j · (row j of Jz)ᵀ(row j of Jz) in the requested form.

    coef: (n, s, w) — λ ⊙ σ″ per seed. Returns (n, s) for lap, (n, s, c, c) for hess,
    (n, s, c, k) for hvp, None for grad.
    """
    if data is None:
        return None
    with _no_autocast(coef):
        coef = coef.to(ctx.acc)
        if ctx.kind == "lap":
            return (coef * data.unsqueeze(-2)).sum(-1)
        Jc = data.to(ctx.acc).unsqueeze(-3)  # (n, 1, c, w) or (1, c, w)
        W = Jc * coef.unsqueeze(-2)  # (n, s, c, w)
        if ctx.kind == "hess":
            return W @ Jc.mT
        return W @ (Jc.mT @ ctx.V.to(ctx.acc))  # hvp: (n, s, c, k)


def _affine_second(M: torch.Tensor, Kt: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
    """Ktᵀ M Kt in the form ctx asks for, with M (n, s, w, w) symmetric and Kt (w, c) shared.

    hess: one GEMM writing (n, s, c, c) once; lap: Σ_{a<p} (Ktᵀ M Kt)_aa = ⟨M, Kt_p Kt_pᵀ⟩, a
    cost independent of c; hvp: Ktᵀ M (Kt V).
    """
    with _no_autocast(M):
        M = M.to(ctx.acc)
        Kt = Kt.to(ctx.acc)
        if ctx.kind == "lap":
            Kp = Kt[:, : ctx.p]
            return (M * (Kp @ Kp.transpose(0, 1))).sum((-1, -2))
        Q = torch.matmul(Kt.transpose(0, 1), M)  # (n, s, c, w)
        if ctx.kind == "hvp":
            return Q @ (Kt @ ctx.V.to(ctx.acc))
        n, s, c, w = Q.shape
        return (Q.reshape(n * s * c, w) @ Kt).view(n, s, c, c)


def _sq_rows(Jz: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
    """Per unit j, ‖Jz[:p, j]‖² over the first p seed rows, in ctx.acc: (..., c, w) ↦ (..., w)."""
    with _no_autocast(Jz):
        Jp = Jz[..., : ctx.p, :].to(ctx.acc)
        return (Jp * Jp).sum(-2)


def _lin_L(L: torch.Tensor | None, K: torch.Tensor, ctx: _Ctx) -> torch.Tensor | None:
    if L is None:
        return None
    with _no_autocast(L):
        return L.to(ctx.acc) @ K.to(ctx.acc).transpose(0, 1)


def _lmul(K: torch.Tensor, J: torch.Tensor) -> torch.Tensor:
    """Jacobian of u ↦ uKᵀ: J (c, in) or (..., c, in) ↦ (..., c, out), one GEMM over the batch."""
    return F.linear(J, K)


def _rows(d: torch.Tensor, Jz: torch.Tensor) -> torch.Tensor:
    """Jacobian of σ(z) from that of z: d (..., w) = σ′(z), Jz (c, w) or (..., c, w)."""
    return d.unsqueeze(-2) * Jz


def _rows_add(J: torch.Tensor, d: torch.Tensor, Jz: torch.Tensor) -> torch.Tensor:
    """J + diag(d) Jz in the transposed layout: J + d ⊙ (each of the c rows of Jz)."""
    return torch.addcmul(J, d.unsqueeze(-2), Jz)


def _scalar_jac(J: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Jacobian (n, c, 1) of a scalar with input gradient g (n, in), J (c, in) or (n, c, in)."""
    if J.ndim == 2:  # shared by the batch: one GEMM
        return (g @ J.mT).unsqueeze(-1)
    return J @ g.unsqueeze(-1)


def _uniform_(t: torch.Tensor, fan_in: int) -> torch.Tensor:
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    with torch.no_grad():
        return t.uniform_(-bound, bound)


def _check_act(act) -> Activation:
    if not isinstance(act, Activation):
        raise TypeError(
            f"act must be an odeflow.derivatives activation (LogCosh(), Tanh(), ...), got "
            f"{type(act).__name__}; it has to provide σ, σ′ and σ″."
        )
    return act


def _check_size(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


class Block(nn.Module):
    """Base class of the derivative-aware blocks (see the module docstring for the sweeps).

    Attributes:
        in_features: input width.
        out_features: output width (1 for a scalar potential).
    """

    in_features: int
    out_features: int

    def _jet(self, u, J, L, ctx):  # pragma: no cover - abstract
        raise NotImplementedError

    def _record(self, u, J, ctx):  # pragma: no cover - abstract
        raise NotImplementedError

    def _reverse(self, tape, g, ctx):  # pragma: no cover - abstract
        raise NotImplementedError

    def _max_width(self) -> int:
        return max(self.in_features, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Single(Block):
    r"""A single layer u ↦ σ(uKᵀ + b).

    Parameters: ``K: (out_features, in_features)``, ``b: (out_features,)`` (uniform
    ±1/√in initialisation, as ``nn.Linear``).

    Args:
        in_features, out_features: sizes.
        act: the activation (default :class:`Tanh`).
        bias: whether to learn ``b`` (otherwise it is a zero buffer).

    Reference: Ruthotto & Haber-style layer jets as in hessQuik (Newman, Ruthotto, Nagy, JOSS
    2022, doi:10.21105/joss.04171) and OT-Flow (arXiv:2006.00104).

    Example:
        >>> from odeflow.derivatives import LogCosh
        >>> f = Single(3, 4, act=LogCosh())
        >>> f(torch.randn(5, 3)).shape
        torch.Size([5, 4])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        act: Activation | None = None,
        bias: bool = True,
        *,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.in_features = _check_size("in_features", in_features)
        self.out_features = _check_size("out_features", out_features)
        self.act = _check_act(act if act is not None else Tanh())
        fk = {"device": device, "dtype": dtype}
        self.K = nn.Parameter(_uniform_(torch.empty(out_features, in_features, **fk), in_features))
        if bias:
            self.b = nn.Parameter(_uniform_(torch.empty(out_features, **fk), in_features))
        else:
            self.register_buffer("b", torch.zeros(out_features, **fk))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.act(F.linear(u, self.K, self.b))

    def _jet(self, u, J, L, ctx):
        s, d1, d2 = self.act.derivatives(F.linear(u, self.K, self.b))
        Jz = _lmul(self.K, J)
        Jv = _rows(d1, Jz)
        if ctx.kind != "lap":
            return s, Jv, None
        Lz = _lin_L(L, self.K, ctx)
        Lv = d2.to(ctx.acc) * _sq_rows(Jz, ctx)
        if Lz is not None:
            Lv = Lv + d1.to(ctx.acc) * Lz
        return s, Jv, Lv

    def _record(self, u, J, ctx):
        s, d1, d2 = self.act.derivatives(F.linear(u, self.K, self.b))
        if J is None:
            return s, None, (d1, d2, None)
        Jz = _lmul(self.K, J)
        return s, _rows(d1, Jz), (d1, d2, _unit_data(Jz, ctx))

    def _reverse(self, tape, g, ctx):
        d1, d2, data = tape
        gz = g * d1.unsqueeze(-2)
        return gz @ self.K, _unit_term(data, g * d2.unsqueeze(-2), ctx)

    def _input_second(self, u, seed, G, H, ctx):
        """Fused first block of backward mode: Ktᵀ[diag(σ″⊙G) + σ′Hσ′]Kt with Kt = K·seed."""
        s, d1, d2 = self.act.derivatives(F.linear(u, self.K, self.b))
        g_in = (G * d1.unsqueeze(-2)) @ self.K
        if ctx.kind == "grad":
            return s, g_in, None
        M = torch.diag_embed(G * d2.unsqueeze(-2))
        if H is not None:
            M = M + d1[:, None, :, None] * H * d1[:, None, None, :]
        return s, g_in, _affine_second(M, _lmul(self.K, seed).mT, ctx)


class Linear(Block):
    r"""An affine output layer u ↦ uKᵀ + b (identity activation, no second-order term).

    Parameters ``K: (out_features, in_features)`` and ``b: (out_features,)``. For OT-Flow's
    ``wᵀN(s)`` use ``Linear(m, 1, bias=False)`` and set ``K`` to ``wᵀ`` (OT-Flow starts from w = 1).

    Example:
        >>> lin = Linear(4, 1)
        >>> lin(torch.randn(2, 4)).shape
        torch.Size([2, 1])
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, device=None, dtype=None
    ):
        super().__init__()
        self.in_features = _check_size("in_features", in_features)
        self.out_features = _check_size("out_features", out_features)
        fk = {"device": device, "dtype": dtype}
        self.K = nn.Parameter(_uniform_(torch.empty(out_features, in_features, **fk), in_features))
        if bias:
            self.b = nn.Parameter(_uniform_(torch.empty(out_features, **fk), in_features))
        else:
            self.register_buffer("b", torch.zeros(out_features, **fk))

    def forward(self, u):
        return F.linear(u, self.K, self.b)

    def _jet(self, u, J, L, ctx):
        Lv = _lin_L(L, self.K, ctx) if ctx.kind == "lap" else None
        return self.forward(u), _lmul(self.K, J), Lv

    def _record(self, u, J, ctx):
        return self.forward(u), (None if J is None else _lmul(self.K, J)), None

    def _reverse(self, tape, g, ctx):
        return g @ self.K, None

    def _input_second(self, u, seed, G, H, ctx):
        """Fused first block of backward mode: Ktᵀ H Kt with Kt = K·seed."""
        v = self.forward(u)
        if ctx.kind == "grad" or H is None:
            return v, G @ self.K, None
        return v, G @ self.K, _affine_second(H, _lmul(self.K, seed).mT, ctx)


class ResNet(Block):
    r"""Residual layers u_{i+1} = u_i + h·σ(u_i K_iᵀ + b_i), i = 0 … depth−1 (width → width).

    Parameters ``K: (depth, width, width)`` and ``b: (depth, width)``.

    Args:
        width: the state width.
        depth: number of residual layers.
        h: the step size.
        act: the activation (default :class:`Tanh`).

    Reference: OT-Flow (Onken et al., arXiv:2006.00104), hessQuik's resnetNN.

    Example:
        >>> from odeflow.derivatives import LogCosh
        >>> net = ResNet(8, depth=2, h=0.5, act=LogCosh())
        >>> net(torch.randn(3, 8)).shape
        torch.Size([3, 8])
    """

    def __init__(
        self,
        width: int,
        depth: int = 1,
        h: float = 1.0,
        act: Activation | None = None,
        *,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.in_features = self.out_features = _check_size("width", width)
        self.depth = _check_size("depth", depth)
        if not (isinstance(h, (int, float)) and math.isfinite(h)):
            raise ValueError(f"h must be a finite number, got {h!r}.")
        self.h = float(h)
        self.act = _check_act(act if act is not None else Tanh())
        fk = {"device": device, "dtype": dtype}
        self.K = nn.Parameter(_uniform_(torch.empty(depth, width, width, **fk), width))
        self.b = nn.Parameter(_uniform_(torch.empty(depth, width, **fk), width))

    def extra_repr(self) -> str:
        return f"width={self.in_features}, depth={self.depth}, h={self.h}"

    def forward(self, u):
        for i in range(self.depth):
            u = u + self.h * self.act(F.linear(u, self.K[i], self.b[i]))
        return u

    def _jet(self, u, J, L, ctx):
        h = self.h
        for i in range(self.depth):
            K = self.K[i]
            s, d1, d2 = self.act.derivatives(F.linear(u, K, self.b[i]))
            Jz = _lmul(K, J)
            if ctx.kind == "lap":
                hd1 = h * d1
                dL = (h * d2).to(ctx.acc) * _sq_rows(Jz, ctx)
                Lz = _lin_L(L, K, ctx)
                if Lz is not None:
                    dL = torch.addcmul(dL, hd1.to(ctx.acc), Lz)
                L = dL if L is None else L + dL
            J = _rows_add(J, h * d1, Jz)
            u = torch.add(u, s, alpha=h)
        return u, J, L

    def _record(self, u, J, ctx):
        h = self.h
        tape = []
        for i in range(self.depth):
            K = self.K[i]
            s, d1, d2 = self.act.derivatives(F.linear(u, K, self.b[i]))
            if J is None:
                tape.append((d1, d2, None))
            else:
                Jz = _lmul(K, J)
                tape.append((d1, d2, _unit_data(Jz, ctx)))
                J = _rows_add(J, h * d1, Jz)
            u = torch.add(u, s, alpha=h)
        return u, J, tape

    def _reverse(self, tape, g, ctx):
        acc = None
        for i in reversed(range(self.depth)):
            d1, d2, data = tape[i]
            if data is not None:
                acc = _add(acc, _unit_term(data, g * (self.h * d2).unsqueeze(-2), ctx))
            g = g + (g * (self.h * d1).unsqueeze(-2)) @ self.K[i]
        return g, acc


class Quadratic(Block):
    r"""The scalar quadratic u ↦ ½‖Au‖² + bᵀu + c (low rank: A is (rank, in_features)).

    Its gradient is AᵀAu + b and its Hessian the constant AᵀA. Parameters ``A: (rank, in)``
    (Xavier-uniform initialisation, as OT-Flow), ``b: (in,)`` and ``c: (1,)`` (both zero at
    initialisation).

    Reference: OT-Flow's potential Φ(s) = wᵀN(s) + ½sᵀAᵀAs + bᵀs + c (arXiv:2006.00104).

    Example:
        >>> q = Quadratic(3, rank=2)
        >>> q(torch.randn(4, 3)).shape
        torch.Size([4, 1])
    """

    def __init__(self, in_features: int, rank: int | None = None, *, device=None, dtype=None):
        super().__init__()
        self.in_features = _check_size("in_features", in_features)
        self.out_features = 1
        self.rank = _check_size("rank", rank if rank is not None else in_features)
        fk = {"device": device, "dtype": dtype}
        A = torch.empty(self.rank, in_features, **fk)
        bound = math.sqrt(6.0 / (self.rank + in_features))
        with torch.no_grad():
            A.uniform_(-bound, bound)
        self.A = nn.Parameter(A)
        self.b = nn.Parameter(torch.zeros(in_features, **fk))
        self.c = nn.Parameter(torch.zeros(1, **fk))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, rank={self.rank}"

    def forward(self, u):
        Au = F.linear(u, self.A)
        return 0.5 * (Au * Au).sum(-1, keepdim=True) + (u @ self.b).unsqueeze(-1) + self.c

    def _value_grad(self, u):
        Au = F.linear(u, self.A)
        v = 0.5 * (Au * Au).sum(-1, keepdim=True) + (u @ self.b).unsqueeze(-1) + self.c
        return v, Au @ self.A + self.b

    def _jet(self, u, J, L, ctx):
        v, gu = self._value_grad(u)
        Jv = _scalar_jac(J, gu)  # (n, c, 1)
        if ctx.kind != "lap":
            return v, Jv, None
        AJ = _lmul(self.A, J)
        Lv = _sq_rows(AJ, ctx).sum(-1)  # () or (n,)
        Lv = Lv.unsqueeze(-1).expand(u.shape[0], 1)
        if L is not None:
            with _no_autocast(L):
                Lv = Lv + (gu.to(ctx.acc) * L.to(ctx.acc)).sum(-1, keepdim=True)
        return v, Jv, Lv

    def _record(self, u, J, ctx):
        v, gu = self._value_grad(u)
        if J is None:
            return v, None, (gu, None)
        return v, _scalar_jac(J, gu), (gu, _unit_data(_lmul(self.A, J), ctx))

    def _reverse(self, tape, g, ctx):
        gu, data = tape
        coef = g.expand(*g.shape[:-1], self.rank)  # σ = ½z² on z = Au: σ″ = 1, λ = g
        return g * gu.unsqueeze(-2), _unit_term(data, coef, ctx)


class ICNN(Block):
    r"""Input-convex network (Amos, Xu & Kolter, arXiv:1609.07152), scalar or vector output.

    y_1 = σ(uK_0ᵀ + b_0); y_{i+1} = σ(y_i L_i⁺ᵀ + uK_iᵀ + b_i) for i = 1 … depth−1;
    output y_depth L_out⁺ᵀ + uK_outᵀ + b_out, with L⁺ = softplus(L) ≥ 0 (reparametrisation, so
    any optimizer keeps the weights non-negative). Every output is convex in u when σ is convex
    and nondecreasing (the default :class:`Softplus`).

    Parameters: ``K0 (width, in)``, ``b0 (width,)``, ``L (depth−1, width, width)`` (raw, before
    softplus), ``K (depth−1, width, in)``, ``b (depth−1, width)``, ``L_out (out, width)`` (raw),
    ``K_out (out, in)``, ``b_out (out,)``.

    Example:
        >>> f = ICNN(2, width=8, depth=3)
        >>> f(torch.randn(4, 2)).shape
        torch.Size([4, 1])
    """

    def __init__(
        self,
        in_features: int,
        width: int,
        out_features: int = 1,
        depth: int = 2,
        act: Activation | None = None,
        *,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.in_features = _check_size("in_features", in_features)
        self.out_features = _check_size("out_features", out_features)
        self.width = _check_size("width", width)
        self.depth = _check_size("depth", depth)
        self.act = _check_act(act if act is not None else Softplus())
        fk = {"device": device, "dtype": dtype}
        d, w, m, k = in_features, width, out_features, depth - 1
        self.K0 = nn.Parameter(_uniform_(torch.empty(w, d, **fk), d))
        self.b0 = nn.Parameter(_uniform_(torch.empty(w, **fk), d))
        # raw weights near softplus⁻¹(1/w): L⁺ ≈ 1/w keeps the hidden scale ~1
        raw = math.log(math.expm1(1.0 / w))
        self.L = nn.Parameter(raw + 0.1 * torch.randn(k, w, w, **fk))
        self.K = nn.Parameter(_uniform_(torch.empty(k, w, d, **fk), d))
        self.b = nn.Parameter(_uniform_(torch.empty(k, w, **fk), d))
        self.L_out = nn.Parameter(raw + 0.1 * torch.randn(m, w, **fk))
        self.K_out = nn.Parameter(_uniform_(torch.empty(m, d, **fk), d))
        self.b_out = nn.Parameter(torch.zeros(m, **fk))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, width={self.width}, "
            f"out_features={self.out_features}, depth={self.depth}"
        )

    def _max_width(self) -> int:
        return max(self.in_features, self.width, self.out_features)

    def forward(self, u):
        y = self.act(F.linear(u, self.K0, self.b0))
        Lp = F.softplus(self.L)
        for i in range(self.depth - 1):
            y = self.act(F.linear(y, Lp[i]) + F.linear(u, self.K[i], self.b[i]))
        return F.linear(y, F.softplus(self.L_out)) + F.linear(u, self.K_out, self.b_out)

    def _jet(self, u, J, L, ctx):
        lap = ctx.kind == "lap"
        Lp = F.softplus(self.L)
        s, d1, d2 = self.act.derivatives(F.linear(u, self.K0, self.b0))
        Jz = _lmul(self.K0, J)
        Ly = None
        if lap:
            Ly = d2.to(ctx.acc) * _sq_rows(Jz, ctx)
            Lz = _lin_L(L, self.K0, ctx)
            Ly = Ly if Lz is None else Ly + d1.to(ctx.acc) * Lz
        y, Jy = s, _rows(d1, Jz)
        for i in range(self.depth - 1):
            s, d1, d2 = self.act.derivatives(F.linear(y, Lp[i]) + F.linear(u, self.K[i], self.b[i]))
            Jz = _lmul(Lp[i], Jy) + _lmul(self.K[i], J)
            if lap:
                Lz = _add(_lin_L(Ly, Lp[i], ctx), _lin_L(L, self.K[i], ctx))
                Ly = d2.to(ctx.acc) * _sq_rows(Jz, ctx) + d1.to(ctx.acc) * Lz
            y, Jy = s, _rows(d1, Jz)
        Lo = F.softplus(self.L_out)
        v = F.linear(y, Lo) + F.linear(u, self.K_out, self.b_out)
        Jv = _lmul(Lo, Jy) + _lmul(self.K_out, J)
        Lv = _add(_lin_L(Ly, Lo, ctx), _lin_L(L, self.K_out, ctx)) if lap else None
        return v, Jv, Lv

    def _record(self, u, J, ctx):
        Lp = F.softplus(self.L)
        tape = []
        s, d1, d2 = self.act.derivatives(F.linear(u, self.K0, self.b0))
        Jz = None if J is None else _lmul(self.K0, J)
        tape.append((d1, d2, _unit_data(Jz, ctx)))
        y = s
        Jy = None if J is None else _rows(d1, Jz)
        for i in range(self.depth - 1):
            s, d1, d2 = self.act.derivatives(F.linear(y, Lp[i]) + F.linear(u, self.K[i], self.b[i]))
            Jz = None if J is None else _lmul(Lp[i], Jy) + _lmul(self.K[i], J)
            tape.append((d1, d2, _unit_data(Jz, ctx)))
            y = s
            Jy = None if J is None else _rows(d1, Jz)
        Lo = F.softplus(self.L_out)
        v = F.linear(y, Lo) + F.linear(u, self.K_out, self.b_out)
        Jv = None if J is None else _lmul(Lo, Jy) + _lmul(self.K_out, J)
        return v, Jv, (tape, Lp, Lo)

    def _reverse(self, tape, g, ctx):
        units, Lp, Lo = tape
        gy = g @ Lo
        gu = g @ self.K_out
        acc = None
        for i in reversed(range(self.depth - 1)):
            d1, d2, data = units[i + 1]
            acc = _add(acc, _unit_term(data, gy * d2.unsqueeze(-2), ctx))
            gz = gy * d1.unsqueeze(-2)
            gy = gz @ Lp[i]
            gu = gu + gz @ self.K[i]
        d1, d2, data = units[0]
        acc = _add(acc, _unit_term(data, gy * d2.unsqueeze(-2), ctx))
        return gu + (gy * d1.unsqueeze(-2)) @ self.K0, acc


def _check_blocks(blocks, who: str) -> list[Block]:
    if len(blocks) == 0:
        raise ValueError(f"{who} needs at least one block.")
    for i, b in enumerate(blocks):
        if not isinstance(b, Block):
            raise TypeError(
                f"{who}: item {i} is a {type(b).__name__}, not an odeflow.derivatives block "
                "(Single, ResNet, ICNN, Quadratic, Linear, Sum, Sequential); arbitrary modules go "
                "through odeflow.derivatives(net, x, mode='func') instead."
            )
    return list(blocks)


class Sum(Block):
    r"""Sum of blocks sharing the same input: u ↦ Σ_i f_i(u).

    Needed for OT-Flow's Φ = wᵀN(s) + ½sᵀAᵀAs + bᵀs + c. All blocks must have the same
    ``in_features`` and ``out_features``.

    Raises:
        ValueError: if the sizes differ.

    Example:
        >>> from odeflow.derivatives import LogCosh
        >>> phi = Sum(Sequential(Single(3, 8, act=LogCosh()), Linear(8, 1)), Quadratic(3, rank=2))
        >>> phi(torch.randn(5, 3)).shape
        torch.Size([5, 1])
    """

    def __init__(self, *blocks: Block):
        super().__init__()
        blocks = _check_blocks(blocks, "Sum")
        ins = {b.in_features for b in blocks}
        outs = {b.out_features for b in blocks}
        if len(ins) != 1 or len(outs) != 1:
            sizes = [(b.in_features, b.out_features) for b in blocks]
            raise ValueError(
                f"Sum: all blocks need the same (in_features, out_features), got {sizes}."
            )
        self.blocks = nn.ModuleList(blocks)
        self.in_features = blocks[0].in_features
        self.out_features = blocks[0].out_features

    def _max_width(self) -> int:
        return max(b._max_width() for b in self.blocks)

    def forward(self, u):
        out = self.blocks[0](u)
        for b in self.blocks[1:]:
            out = out + b(u)
        return out

    def _jet(self, u, J, L, ctx):
        v = Jv = Lv = None
        for b in self.blocks:
            vb, Jb, Lb = b._jet(u, J, L, ctx)
            v, Jv, Lv = _add(v, vb), _add(Jv, Jb), _add(Lv, Lb)
        return v, Jv, Lv

    def _record(self, u, J, ctx):
        v = Jv = None
        tapes = []
        for b in self.blocks:
            vb, Jb, tb = b._record(u, J, ctx)
            v, Jv = _add(v, vb), _add(Jv, Jb)
            tapes.append(tb)
        return v, Jv, tapes

    def _reverse(self, tape, g, ctx):
        gin = acc = None
        for b, t in zip(self.blocks, tape):
            gb, ab = b._reverse(t, g, ctx)
            gin, acc = _add(gin, gb), _add(acc, ab)
        return gin, acc


class Sequential(Block):
    r"""Composition f_L ∘ … ∘ f_1 of blocks with checked sizes.

    Raises:
        ValueError: if ``blocks[i].out_features != blocks[i+1].in_features``.

    Example:
        >>> from odeflow.derivatives import LogCosh
        >>> net = Sequential(Single(2, 16, act=LogCosh()), ResNet(16, depth=4), Linear(16, 1))
        >>> net(torch.randn(3, 2)).shape
        torch.Size([3, 1])
    """

    def __init__(self, *blocks: Block):
        super().__init__()
        blocks = _check_blocks(blocks, "Sequential")
        for i in range(len(blocks) - 1):
            a, b = blocks[i], blocks[i + 1]
            if a.out_features != b.in_features:
                raise ValueError(
                    f"Sequential: block {i} ({type(a).__name__}) has out_features={a.out_features} "
                    f"but block {i + 1} ({type(b).__name__}) has in_features={b.in_features}; "
                    "make them equal."
                )
        self.blocks = nn.ModuleList(blocks)
        self.in_features = blocks[0].in_features
        self.out_features = blocks[-1].out_features

    def _max_width(self) -> int:
        return max(b._max_width() for b in self.blocks)

    def forward(self, u):
        for b in self.blocks:
            u = b(u)
        return u

    def _jet(self, u, J, L, ctx):
        for b in self.blocks:
            u, J, L = b._jet(u, J, L, ctx)
        return u, J, L

    def _record(self, u, J, ctx):
        tapes = []
        for b in self.blocks:
            u, J, t = b._record(u, J, ctx)
            tapes.append(t)
        return u, J, tapes

    def _reverse(self, tape, g, ctx):
        acc = None
        for b, t in zip(reversed(self.blocks), reversed(tape)):
            g, a = b._reverse(t, g, ctx)
            acc = _add(acc, a)
        return g, acc
