r"""The Laplacian sweep: exact Δf for networks of blocks, one GEMM per layer.

For elementwise units with preactivations z_ℓ, input Jacobians J_ℓ = ∂z_ℓ/∂x' (x' the p
Laplacian coordinates, or the directions V) and adjoints λ_ℓ = ∂f/∂σ(z_ℓ) (ResNet step h
folded in),

    Δf = Σ_ℓ Σ_k σ″(z_{ℓk}) λ_{ℓk} ‖J_ℓ[k, :]‖².

The sweep runs the value forward, the Jacobians forward over the p Laplacian columns only
(the excluded columns, e.g. OT-Flow's time, are never carried), the adjoints backward (one
seed per output, which also gives the full gradient), and contracts the row norms with
σ″ ⊙ λ. Jacobians are laid out transposed, ``(n, p, width)``, so the width × width product
of a layer is one contiguous ``(n·p, width) × (width, width)`` GEMM. Until the first
nonlinearity the Jacobian is shared by the batch (``(p, width)``, a :class:`Jac` with a row
scale). The Jacobian of the last unit of a chain is never formed: its term
Σ_k c_k ‖row_k(K J)‖² is :func:`weighted_row_norms`, a custom autograd function whose backward
costs exactly two GEMMs (dJ = dP·K, dK = dPᵀJ).

Each block carries its own part of the sweep (``Block._lap_record`` / ``Block._lap_reverse``,
built from :func:`lap_unit` and :func:`lap_unit_term` below); this module only drives it.
:func:`supports` says whether every block of a network has a specialised sweep (Single,
ResNet, Linear, Quadratic in Sequential/Sum); the others (ICNN) delegate to their generic
record/reverse sweeps through :func:`lap_record_generic`, and ``compute`` uses the forward
jet for them instead.

Reference: Onken et al., "OT-Flow", arXiv:2006.00104 (exact trace of a ResNet potential).
"""

from __future__ import annotations

import torch
from torch import nn

from ._sweep import Ctx, Kind, no_autocast
from ._sweep import rows as _scale_rows

__all__ = [
    "Jac",
    "lap_record_generic",
    "lap_reverse_generic",
    "lap_unit",
    "lap_unit_term",
    "laplacian_sweep",
    "sum_jacs",
    "supports",
    "weighted_row_norms",
    "wrap",
]


# ---------------------------------------------------------------------------- custom function
def _gemm_dtype(*ts: torch.Tensor) -> torch.dtype:
    """The dtype a GEMM of these operands runs in (autocast's choice inside an autocast region)."""
    dev = ts[0].device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    out = ts[0].dtype
    for t in ts[1:]:
        out = torch.promote_types(out, t.dtype)
    return out


def _rows(J: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """The Jacobian (n, p, w): J itself, or scale[:, None, :] * J for J shared (p, w)."""
    return J if scale is None else _scale_rows(scale, J)


def _sqsum(P: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """Σ_a P[..., a, k]² in acc.

    The reduction accumulates in float32 inside the kernel for bf16/fp16 P and is stored in
    P's dtype before the cast (no float32 copy of P): that rounding is ~2⁻⁹ relative per row
    norm, negligible beside the rounding of P itself (measured on OT-Flow's Φ at d = 43,
    width 256: Laplacian error 2.899e-3 vs 2.893e-3 with a float32 copy).
    """
    return torch.linalg.vecdot(P, P, dim=-2).to(acc)


def _weighted(P: torch.Tensor, c: torch.Tensor, acc: torch.dtype):
    """Q = Σ_a P[n, a, k]² (n, w) and out = Σ_k c[n, s, k] Q[n, k] (n, s), both in acc."""
    Q = _sqsum(P, acc)
    return (c.to(acc) @ Q.unsqueeze(-1)).squeeze(-1), Q


class _WeightedRowNorms(torch.autograd.Function):
    """out[n, s] = Σ_k c[n, s, k] Σ_a (J_n Kᵀ)[a, k]², J_n = diag(scale_n)-scaled or given."""

    generate_vmap_rule = True

    @staticmethod
    def forward(J, K, c, scale, acc):
        gd = _gemm_dtype(J, K) if scale is None else _gemm_dtype(J, K, scale)
        with no_autocast(J):
            Jn = _rows(J.to(gd), None if scale is None else scale.to(gd))
            P = torch.matmul(Jn, K.to(gd).transpose(0, 1))
            out, Q = _weighted(P, c, acc)
        return out, Q, P

    @staticmethod
    def setup_context(ctx, inputs, output):
        J, K, c, scale, acc = inputs
        _, Q, P = output
        ctx.mark_non_differentiable(Q, P)
        ctx.set_materialize_grads(False)  # no zero (n, p, w) gradient for P
        ctx.acc = acc
        ctx.save_for_backward(J, K, c, scale, Q, P)

    @staticmethod
    def backward(ctx, g_out, _gQ, _gP):
        J, K, c, scale, Q, P = ctx.saved_tensors
        if g_out is None:
            return None, None, None, None, None
        acc, gd = ctx.acc, P.dtype
        create_graph = torch.is_grad_enabled()
        with no_autocast(J):
            # the scaled rows are recomputed (one elementwise pass) rather than kept alive
            # from the forward to here
            Jn = _rows(J.to(gd), None if scale is None else scale.to(gd))
            if create_graph:
                # double backward: rebuild P and Q from the inputs so that they carry their
                # dependence on (J, K, scale); the saved ones are constants
                P = torch.matmul(Jn, K.to(gd).transpose(0, 1))
                Q = _sqsum(P, acc)
            g_out = g_out.to(acc)
            g_c = g_out.unsqueeze(-1) * Q.unsqueeze(-2)  # (n, s, w)
            g_Q = (g_out.unsqueeze(-2) @ c.to(acc)).squeeze(-2)  # (n, w)
            dP = (2.0 * g_Q).to(P.dtype).unsqueeze(-2) * P  # (n, p, w)
            w_in = Jn.shape[-1]
            g_Jn = dP @ K.to(P.dtype)  # (n, p, w_in)
            g_K = dP.reshape(-1, dP.shape[-1]).transpose(0, 1) @ Jn.reshape(-1, w_in)
            if scale is None:
                g_J, g_scale = g_Jn.to(J.dtype), None
            else:
                # weight gradients in the GEMM dtype, as autocast's own (fp32 accumulation
                # inside the reduction kernels, no fp32 copy of the (n, p, w) product)
                g_J = (g_Jn * scale.to(gd).unsqueeze(-2)).sum(0).to(J.dtype)
                g_Jn = g_Jn * J.to(gd) if create_graph else g_Jn.mul_(J.to(gd))
                g_scale = g_Jn.sum(-2).to(scale.dtype)
        return g_J, g_K.to(K.dtype), g_c.to(c.dtype), g_scale, None


def weighted_row_norms(
    J: torch.Tensor, K: torch.Tensor, c: torch.Tensor, scale: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Σ_k c[n, s, k] ‖row k of K·J_nᵀ‖², the second-order term of one layer of units.

    With P_n = J_n Kᵀ (J_n: (p, w_in) the transposed input Jacobian of sample n, K: (w, w_in))

    .. math:: \text{out}[n, s] = Σ_k c[n, s, k] Σ_a P_n[a, k]^2.

    The forward is one GEMM ``(n·p, w_in) × (w_in, w)``; the backward is two (dJ = dP·K and
    dK = dPᵀJ with dP = 2 (Σ_s g_s c_s) ⊙ P), reusing the saved P (the only saved
    intermediate; scaled rows are recomputed). GEMMs run in the autocast dtype inside an
    autocast region (bf16/fp16); the sums Q = Σ_a P² accumulate in float32 and the contraction
    with c runs in float32 (float64 for float64 inputs). Double backward is supported (the
    intermediates are recomputed from the inputs when the backward itself is differentiated).

    Args:
        J: (n, p, w_in) transposed Jacobians, or (p, w_in) shared rows when ``scale`` is given.
        K: (w, w_in) the layer weight.
        c: (n, s, w) coefficients (σ″ ⊙ λ for s output seeds).
        scale: optional (n, w_in); then J_n = diag(scale_n)-scaled rows, ``scale[:, None] * J``.

    Returns:
        (n, s) in float32 (float64 for float64 inputs).

    Raises:
        ValueError: on inconsistent shapes.

    Reference: Onken et al., "OT-Flow", arXiv:2006.00104 (the exact trace term of a ResNet layer).

    Example:
        >>> J, K, c = torch.randn(3, 2, 4), torch.randn(5, 4), torch.randn(3, 1, 5)
        >>> out = weighted_row_norms(J, K, c)
        >>> ref = (c[:, 0] * (J @ K.T).pow(2).sum(1)).sum(-1)
        >>> bool(torch.allclose(out[:, 0], ref, atol=1e-4))
        True
    """
    w_in = K.shape[-1]
    batched = scale is None
    if K.ndim != 2 or J.shape[-1] != w_in or J.ndim != (3 if batched else 2):
        raise ValueError(
            f"weighted_row_norms: need J (n, p, w_in) (or (p, w_in) with scale) and K (w, w_in); "
            f"got J {tuple(J.shape)}, K {tuple(K.shape)}, scale "
            f"{None if scale is None else tuple(scale.shape)}."
        )
    n = J.shape[0] if batched else scale.shape[0]
    if c.ndim != 3 or c.shape[0] != n or c.shape[-1] != K.shape[0]:
        raise ValueError(
            f"weighted_row_norms: c must be (n, s, w) = ({n}, s, {K.shape[0]}), "
            f"got {tuple(c.shape)}."
        )
    if not batched and (scale.ndim != 2 or scale.shape[-1] != w_in):
        raise ValueError(
            f"weighted_row_norms: scale must be (n, w_in) = (n, {w_in}), got {tuple(scale.shape)}."
        )
    acc = torch.promote_types(torch.promote_types(c.dtype, J.dtype), torch.float32)
    return _WeightedRowNorms.apply(J, K, c, scale, acc)[0]


# ---------------------------------------------------------------------------- block helpers
class Jac:
    """Transposed Jacobian: ``full`` (n, p, w), or ``scale[:, None, :] * rows`` (rows (p, w)),
    or shared ``rows`` (p, w) (scale None, full None)."""

    # (no __slots__: torch 2.4's dynamo cannot read slot attributes of an object made inside
    # a compiled region, and fullgraph=True then fails on `J.full is None`)

    def __init__(self, full=None, rows=None, scale=None):
        self.full, self.rows, self.scale = full, rows, scale

    @property
    def shared(self) -> bool:
        return self.full is None and self.scale is None

    def tensor(self) -> torch.Tensor:
        """(n, p, w) or (p, w) when shared."""
        if self.full is not None:
            return self.full
        return self.rows if self.scale is None else self.scale.unsqueeze(-2) * self.rows

    def times_kt(self, K: torch.Tensor) -> torch.Tensor:
        """P = J Kᵀ, one GEMM over all rows."""
        return torch.matmul(self.tensor(), K.transpose(0, 1))


def wrap(t: torch.Tensor) -> Jac:
    """A Jacobian tensor, (n, p, w) or shared (p, w), as a :class:`Jac`."""
    return Jac(full=t) if t.ndim == 3 else Jac(rows=t)


def sum_jacs(parts: list[Jac]) -> Jac:
    """The Jacobian of a sum of blocks: the sum of theirs."""
    out = None
    for p in parts:
        t = p.tensor()
        out = t if out is None else out + t
    return wrap(out)


def lap_unit(J: Jac, K: torch.Tensor, need_P: bool, acc):
    """Row-norm data of the units z = (·)Kᵀ: returns (unit, P = J Kᵀ or None).

    The product P is formed only when the Jacobian is shared or ``need_P`` (the next layer
    needs it); otherwise the unit keeps (J, K) and :func:`weighted_row_norms` fuses the
    product with its row norms.
    """
    if J.shared or need_P:
        P = J.times_kt(K)
        return ("q", _sqsum(P, acc)), P
    if J.full is not None:
        return ("fused", J.full, K, None), None
    return ("fused", J.rows, K, J.scale), None


def lap_unit_term(unit, coef: torch.Tensor, acc) -> torch.Tensor:
    """Σ_k coef[n, s, k] ‖row k‖² → (n, s), for a unit made by :func:`lap_unit`."""
    if unit[0] == "q":
        Q = unit[1]
        return (coef.to(acc) @ Q.unsqueeze(-1)).squeeze(-1)
    _, J, K, scale = unit
    return weighted_row_norms(J, K, coef.to(acc), scale)


def lap_record_generic(block, u, J: Jac, need: bool, acc):
    """A block's Laplacian record through its generic record sweep (no specialised kernels).

    For blocks without a specialised sweep (``_lap_supported()`` False); exact, but it forms
    every preactivation Jacobian.
    """
    Jt = J.tensor()
    ctx = Ctx(Kind.LAP, Jt.shape[-2], acc)
    v, Jv, tape = block._record(u, Jt, ctx)
    return v, (wrap(Jv) if need else None), (tape, ctx)


def lap_reverse_generic(block, tape, g: torch.Tensor, acc):
    """The reverse half of :func:`lap_record_generic`: (input adjoint, Laplacian (n, s))."""
    t, ctx = tape
    return block._reverse(t, g, ctx)


# ---------------------------------------------------------------------------- the sweep
def supports(net: nn.Module) -> bool:
    """Whether every block of ``net`` has a specialised Laplacian sweep (Single, ResNet,
    Linear, Quadratic, nested in Sum/Sequential); ``compute``'s auto mode uses the sweep only
    then."""
    return net._lap_supported()


def laplacian_sweep(net: nn.Module, x: torch.Tensor, seed: torch.Tensor, acc: torch.dtype):
    """Value (n, m), input adjoint ∂f/∂x (n, m, d) and Laplacian tr(seed H seedᵀ) (n, m).

    ``seed`` (p, d): the Laplacian coordinates (identity rows) or directions, one per row.
    """
    n = x.shape[0]
    m = net.out_features
    J0 = Jac(rows=seed.contiguous())
    value, _, tape = net._lap_record(x, J0, False, acc)
    g0 = torch.eye(m, dtype=x.dtype, device=x.device).expand(n, m, m)
    g, lap = net._lap_reverse(tape, g0, acc)
    if lap is None:
        lap = torch.zeros(n, m, dtype=acc, device=x.device)
    return value, g, lap
