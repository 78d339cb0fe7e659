r"""What every block sweep shares: the work kind, the sweep context and the GEMM kernels.

A sweep context :class:`Ctx` says what a sweep computes (:class:`Kind`), over how many
Laplacian columns and in which accumulation dtype. The kernels below turn a preactivation
Jacobian and the coefficients σ″ ⊙ λ into the second-order term of the identity

    ∇²f = Σ_ℓ J_ℓᵀ diag(σ″(z_ℓ) ⊙ λ_ℓ) J_ℓ (+ constant quadratic terms)

in the form the kind asks for (the trace for a Laplacian, the matrix for a Hessian, its
product with directions for HVPs). Jacobians are held transposed: ``(c, width)`` shared by the
batch or ``(n, c, width)``, so that a layer is one GEMM.
"""

from __future__ import annotations

import contextlib
import enum
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ._activations import Activation

__all__ = [
    "Ctx",
    "Kind",
    "affine_parameters",
    "affine_second",
    "check_act",
    "input_second_by_record",
    "lin_L",
    "lmul",
    "no_autocast",
    "plus",
    "rows",
    "rows_add",
    "sandwich",
    "scalar_jac",
    "sq_rows",
    "uniform_",
    "unit_data",
    "unit_term",
]


class Kind(enum.Enum):
    """The work of a sweep: first derivatives only, or which second-order form."""

    GRAD = "grad"  # value and gradient
    LAP = "lap"  # + the trace Σ_{a<p} ∂²f/∂s_a² (or tr(VᵀHV))
    HESS = "hess"  # + the Hessian over the seed columns
    HVP = "hvp"  # + Hessian–vector products with ctx.V


@dataclass(frozen=True)
class Ctx:
    """What a sweep computes: ``kind``; ``p`` Laplacian columns; ``acc`` the accumulation
    dtype of derivative sums; ``V`` the directions of an HVP.

    (A plain frozen dataclass without ``__slots__``: it is created inside compiled regions,
    where torch 2.4's dynamo cannot read slot attributes.)
    """

    kind: Kind
    p: int
    acc: torch.dtype
    V: torch.Tensor | None = None


def plus(a, b):
    """``a + b`` where ``None`` stands for zero (so a sum may start empty)."""
    if a is None:
        return b
    return a if b is None else a + b


def no_autocast(t: torch.Tensor):
    """Accumulate in ctx.acc even inside an autocast region (a no-op context outside one)."""
    dev = t.device.type
    if torch.is_autocast_enabled(dev):
        return torch.autocast(device_type=dev, enabled=False)
    return contextlib.nullcontext()


def sq_rows(Jz: torch.Tensor, ctx: Ctx) -> torch.Tensor:
    """Per unit j, ‖Jz[:p, j]‖² over the first p seed rows, in ctx.acc: (..., c, w) ↦ (..., w)."""
    with no_autocast(Jz):
        Jp = Jz[..., : ctx.p, :].to(ctx.acc)
        return (Jp * Jp).sum(-2)


def unit_data(Jz: torch.Tensor | None, ctx: Ctx):
    """What the reverse sweep needs from a preactivation Jacobian Jz: (..., c, w)."""
    if Jz is None or ctx.kind is Kind.GRAD:
        return None
    if ctx.kind is Kind.LAP:
        return sq_rows(Jz, ctx)
    return Jz


def unit_term(data, coef: torch.Tensor, ctx: Ctx):
    """Second-order term Σ_j coef_j · (row j of Jz)ᵀ(row j of Jz) in the requested form.

    coef: (n, s, w) — λ ⊙ σ″ per seed. Returns (n, s) for LAP, (n, s, c, c) for HESS,
    (n, s, c, k) for HVP, None for GRAD.
    """
    if data is None:
        return None
    with no_autocast(coef):
        coef = coef.to(ctx.acc)
        if ctx.kind is Kind.LAP:
            return (coef * data.unsqueeze(-2)).sum(-1)
        Jc = data.to(ctx.acc).unsqueeze(-3)  # (n, 1, c, w) or (1, c, w)
        W = Jc * coef.unsqueeze(-2)  # (n, s, c, w)
        if ctx.kind is Kind.HESS:
            return W @ Jc.mT
        return W @ (Jc.mT @ ctx.V.to(ctx.acc))  # HVP: (n, s, c, k)


def affine_second(M: torch.Tensor, Kt: torch.Tensor, ctx: Ctx) -> torch.Tensor:
    """Ktᵀ M Kt in the form ctx asks for, with M (n, s, w, w) symmetric and Kt (w, c) shared.

    HESS: one GEMM writing (n, s, c, c) once; LAP: Σ_{a<p} (Ktᵀ M Kt)_aa = ⟨M, Kt_p Kt_pᵀ⟩, a
    cost independent of c; HVP: Ktᵀ M (Kt V).
    """
    with no_autocast(M):
        M = M.to(ctx.acc)
        Kt = Kt.to(ctx.acc)
        if ctx.kind is Kind.LAP:
            Kp = Kt[:, : ctx.p]
            return (M * (Kp @ Kp.transpose(0, 1))).sum((-1, -2))
        Q = torch.matmul(Kt.transpose(0, 1), M)  # (n, s, c, w)
        if ctx.kind is Kind.HVP:
            return Q @ (Kt @ ctx.V.to(ctx.acc))
        n, s, c, w = Q.shape
        return (Q.reshape(n * s * c, w) @ Kt).view(n, s, c, c)


def sandwich(Jv: torch.Tensor, H: torch.Tensor, ctx: Ctx) -> torch.Tensor:
    """Jvᵀ H Jv in the form ctx asks for; Jv (n, w, c) or (w, c), H (n, s, w, w)."""
    with no_autocast(H):
        Jb = Jv.to(ctx.acc).unsqueeze(-3)
        H = H.to(ctx.acc)
        if ctx.kind is Kind.HESS:
            return Jb.transpose(-1, -2) @ (H @ Jb)
        if ctx.kind is Kind.LAP:
            Jp = Jb[..., : ctx.p]
            return ((H @ Jp) * Jp).sum((-1, -2))
        return Jb.transpose(-1, -2) @ (H @ (Jb @ ctx.V.to(ctx.acc)))


def input_second_by_record(block, u, seed, G, H, ctx: Ctx):
    """A block's input second-order sweep from its record/reverse sweeps (the generic form).

    Records the Jacobian over the seed, reverses the adjoints ``G`` (n, s, out) and adds the
    output second-order adjoint ``H`` (n, s, out, out) sandwiched by the output Jacobian.
    Returns (value, input adjoint (n, s, in), second-order term or None).
    """
    v, Jv, tape = block._record(u, seed, ctx)
    g, second = block._reverse(tape, G, ctx)
    if H is not None and ctx.kind is not Kind.GRAD:
        second = plus(second, sandwich(Jv.mT, H, ctx))
    return v, g, second


def lin_L(L: torch.Tensor | None, K: torch.Tensor, ctx: Ctx) -> torch.Tensor | None:
    """The Laplacian carried through u ↦ uKᵀ (None stays None), in ctx.acc."""
    if L is None:
        return None
    with no_autocast(L):
        return L.to(ctx.acc) @ K.to(ctx.acc).transpose(0, 1)


def lmul(K: torch.Tensor, J: torch.Tensor) -> torch.Tensor:
    """Jacobian of u ↦ uKᵀ: J (c, in) or (..., c, in) ↦ (..., c, out), one GEMM over the batch."""
    return F.linear(J, K)


def rows(d: torch.Tensor, Jz: torch.Tensor) -> torch.Tensor:
    """Jacobian of σ(z) from that of z: d (..., w) = σ′(z), Jz (c, w) or (..., c, w)."""
    return d.unsqueeze(-2) * Jz


def rows_add(J: torch.Tensor, d: torch.Tensor, Jz: torch.Tensor) -> torch.Tensor:
    """J + diag(d) Jz in the transposed layout: J + d ⊙ (each of the c rows of Jz)."""
    return torch.addcmul(J, d.unsqueeze(-2), Jz)


def scalar_jac(J: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Jacobian (n, c, 1) of a scalar with input gradient g (n, in), J (c, in) or (n, c, in)."""
    if J.ndim == 2:  # shared by the batch: one GEMM
        return (g @ J.mT).unsqueeze(-1)
    return J @ g.unsqueeze(-1)


def uniform_(t: torch.Tensor, fan_in: int) -> torch.Tensor:
    """``nn.Linear``'s initialisation: uniform on ±1/√fan_in, in place (under no_grad)."""
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    with torch.no_grad():
        return t.uniform_(-bound, bound)


def affine_parameters(module: nn.Module, out_features, in_features, bias: bool, fk) -> None:
    """Register ``K (out, in)`` and ``b (out,)`` on ``module`` with ``nn.Linear``'s
    initialisation; without ``bias``, ``b`` is a zero buffer."""
    module.K = nn.Parameter(uniform_(torch.empty(out_features, in_features, **fk), in_features))
    if bias:
        module.b = nn.Parameter(uniform_(torch.empty(out_features, **fk), in_features))
    else:
        module.register_buffer("b", torch.zeros(out_features, **fk))


def check_act(act) -> Activation:
    """``act`` if it is an odeflow activation (it knows σ′ and σ″), else a TypeError."""
    if not isinstance(act, Activation):
        raise TypeError(
            f"act must be an odeflow.derivatives activation (LogCosh(), Tanh(), ...), got "
            f"{type(act).__name__}; it has to provide σ, σ′ and σ″."
        )
    return act
