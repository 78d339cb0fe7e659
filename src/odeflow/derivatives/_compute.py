"""The entry function: value, gradient, Hessian and Laplacian of a network, batched and exact."""

from __future__ import annotations

import torch
from torch import nn

from ._blocks import Block
from ._fallback import func_derivatives
from ._forward_laplacian import check_unsupported, fl_compute
from ._laplacian import laplacian_sweep, supports
from ._result import Derivatives, _finish
from ._sweep import Ctx, Kind

__all__ = ["Derivatives", "compute"]

_WANTS = ("gradient", "hessian", "laplacian", "hvp")
_MODES = ("auto", "forward", "mixed", "backward", "func")
_KINDS = {"gradient": Kind.GRAD, "hessian": Kind.HESS, "laplacian": Kind.LAP, "hvp": Kind.HVP}


def _select(net: Block, want: str, n: int, m: int, d: int, c: int) -> str:
    """Auto mode: the cheapest path by a flop model (documented in :func:`compute`)."""
    if want == "gradient":
        return "forward" if d < m else "mixed"
    # backward contracts the input seed only at the first affine map of every path; it wins when
    # that map narrows the input (d ≫ width), e.g. hessQuik's d → 16 network.
    w = net._entry_width()
    if want == "laplacian":
        # backward contracts the input seed only at the entry layer (width w, m seeds); its
        # width×width sweeps have a fixed cost that small batches do not amortise
        if w * m * (1 if n >= 100 else 2) < c:
            return "backward"
        if not supports(net):  # ICNN & co.: the forward jet needs no reverse sweep
            return "forward"
        # the sweep carries c Jacobian columns plus m adjoints, the forward jet d columns plus
        # the Laplacian; tiny problems are dominated by the sweep's fixed per-call overhead
        work = n * c * sum(p.numel() for p in net.parameters())
        return "mixed" if c + m <= d + 1 and work >= _SWEEP_MIN_WORK else "forward"
    return "backward" if w < c else "mixed"


_SWEEP_MIN_WORK = 3e6  # multiply-adds below which the forward jet's lower overhead wins (CPU)


def _is_traced(x: torch.Tensor) -> bool:
    """Under torch.compile, a torch.func transform or a CUDA-graph capture a data-dependent
    check is impossible (it would synchronise with the host)."""
    if torch.compiler.is_compiling():
        return True
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        return True
    is_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(is_wrapped(x)) if is_wrapped is not None else False


def _validate(net, x, want, mode, directions, exclude_last, check_finite=True):
    if not isinstance(net, nn.Module):
        raise TypeError(f"derivatives: net must be a torch.nn.Module, got {type(net).__name__}.")
    if want not in _WANTS:
        raise ValueError(f"derivatives: unknown want={want!r}; choose one of {_WANTS}.")
    if mode not in _MODES:
        raise ValueError(f"derivatives: unknown mode={mode!r}; choose one of {_MODES}.")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"derivatives: x must be a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(
            f"derivatives: x has dtype {x.dtype}; derivatives need a floating dtype, "
            "e.g. x.to(torch.float32) or x.double()."
        )
    if x.ndim != 2:
        raise ValueError(
            f"derivatives: x must be a batch of shape (n, d), got shape {tuple(x.shape)}; "
            "use x.unsqueeze(0) for a single point."
        )
    d = x.shape[1]
    if isinstance(net, Block) and d != net.in_features:
        raise ValueError(
            f"derivatives: x has trailing size {d} but the network expects in_features="
            f"{net.in_features}; pass x of shape (n, {net.in_features})."
        )
    if isinstance(net, Block) and not _is_traced(x):
        w = next((p for p in net.parameters() if p.is_floating_point()), None)
        dev = x.device.type
        if w is not None and w.dtype != x.dtype and not torch.is_autocast_enabled(dev):
            raise TypeError(
                f"derivatives: x is {x.dtype} but the network's weights are {w.dtype}; convert "
                f"one to the other (x.to({w.dtype}) or net.to({x.dtype})), or run under "
                "torch.autocast for mixed precision."
            )
    if (
        isinstance(exclude_last, bool)
        or not isinstance(exclude_last, int)
        or not 0 <= exclude_last < d
    ):
        raise ValueError(
            f"derivatives: exclude_last must be an int in [0, {d - 1}] (the number of trailing "
            f"inputs left out of the Hessian/Laplacian), got {exclude_last!r}."
        )
    if want == "hvp" and directions is None:
        raise ValueError("derivatives: want='hvp' needs directions V of shape (d, k).")
    if directions is not None:
        if not isinstance(directions, torch.Tensor) or directions.ndim != 2:
            raise ValueError(
                "derivatives: directions must be a 2-D tensor V of shape (d, k) "
                f"with d = {d}, got {getattr(directions, 'shape', type(directions).__name__)}."
            )
        if directions.shape[0] != d:
            raise ValueError(
                f"derivatives: directions have shape {tuple(directions.shape)} but x has d = {d} "
                f"inputs; pass V of shape ({d}, k)."
            )
        if exclude_last and want != "hvp":
            raise ValueError(
                "derivatives: directions already choose the coordinates; set exclude_last=0 and "
                "zero the rows of V for the excluded inputs instead."
            )
        if directions.is_complex():
            raise TypeError("derivatives: directions must be real, got a complex tensor.")
    if check_finite and not _is_traced(x):
        ok = torch.isfinite(x).all()
        if directions is not None and directions.is_floating_point():
            ok = ok & torch.isfinite(directions).all()  # (one host synchronisation for both)
        if not bool(ok):
            bad = "x" if not bool(torch.isfinite(x).all()) else "directions"
            raise ValueError(
                f"derivatives: {bad} contains NaN or infinite values; clean the input first."
            )


def compute(
    net: nn.Module,
    x: torch.Tensor,
    want: str = "gradient",
    mode: str = "auto",
    directions: torch.Tensor | None = None,
    exclude_last: int = 0,
    *,
    check_finite: bool = True,
    unsupported: str = "error",
) -> Derivatives:
    r"""Exact value, gradient, Hessian or Laplacian of a network for a batch of inputs.

    Also callable as ``odeflow.derivatives(net, x, ...)`` (the package module is callable).

    For blocks whose nonlinearities are elementwise, with preactivations z_ℓ, their input
    Jacobians J_ℓ = ∂z_ℓ/∂x and adjoints λ_ℓ = ∂f/∂σ(z_ℓ) (ResNet step h folded in),

    .. math::
        ∇²f = Σ_ℓ J_ℓᵀ \operatorname{diag}(σ″(z_ℓ) ⊙ λ_ℓ) J_ℓ + (\text{quadratic terms } AᵀA),
        \qquad Δf = Σ_ℓ Σ_j σ″(z_{ℓj}) λ_{ℓj} ‖J_ℓ[j,:]‖².

    Modes (all exact, all plain batched torch ops, hence differentiable in the weights and
    safe under ``torch.compile``/double backward; none forms an (n, d, d, width) tensor):

    * ``"forward"``: one forward jet (u, J, Δu) (the forward Laplacian); gradient and Laplacian,
      cost independent of the output size m.
    * ``"mixed"``: forward Jacobians J_ℓ, then one reverse sweep of the adjoints λ_ℓ (one seed
      per output), summing the identity above; gradient, Hessian, HVP and Laplacian.
    * ``"backward"``: a reverse second-order sweep over the blocks of a :class:`Sequential`
      (gradient and Hessian in each block's input space), contracted with the input seed at
      the first block only; the cheapest when the first block narrows a wide input (d ≫ width).
    * ``"func"``: vmapped torch.func (jacfwd∘jacrev, forward-over-reverse HVPs); the mode
      for arbitrary ``nn.Module`` networks and the oracle in the tests. For
      ``want="laplacian"`` on a module that is not a block, ``"auto"`` and ``"forward"`` run
      :func:`~odeflow.derivatives.forward_laplacian` (torch.fx-traced forward Laplacian) when
      every op has a rule; ``"auto"`` falls back to ``"func"`` otherwise, ``"forward"`` raises.
      With ``unsupported="torch.func"`` only the ops without a rule go through torch.func
      inside the forward Laplacian (see :func:`~odeflow.derivatives.forward_laplacian`).

    For the Laplacian of networks made of :class:`Single`, :class:`ResNet`, :class:`Linear` and
    :class:`Quadratic` blocks (in :class:`Sequential`/:class:`Sum`), ``"mixed"`` is the Laplacian
    sweep of ``_laplacian.py``: Jacobians over the c Laplacian columns only (excluded inputs
    such as OT-Flow's time are never carried), laid out (n, c, width) so a layer is one GEMM,
    and a fused last-layer term whose backward costs two GEMMs.

    ``"auto"`` picks: gradient → forward if d < m else mixed; Hessian and HVP → backward when
    the first affine map of every path narrows the input to w < c outputs (c = d', or k with
    directions), else mixed; Laplacian → backward when w·m < c (2·w·m < c when n < 100),
    else the Laplacian sweep (mixed) when the network is made of the blocks above,
    c + m ≤ d + 1 and n·c·(number of weights) ≥ 3·10⁶, else forward (the forward jet has less
    per-call overhead for tiny problems and carries no m adjoints). Under bf16/fp16 autocast
    the network runs in low precision (GEMMs in bf16/fp16) and every derivative accumulator
    (J-row norms, Hessian and Laplacian sums) is float32.

    Args:
        net: a block (:class:`Single`, :class:`ResNet`, :class:`Sequential`, :class:`Sum`, ...)
            or any module mapping (n, d) to (n,), (n, 1) or (n, m) (then ``mode`` is "func").
        x: (n, d) inputs, floating point, finite.
        want: "gradient", "hessian", "laplacian" or "hvp" (Hessian–vector products with the
            columns of ``directions``). "hessian" also fills ``laplacian`` with tr(H).
        mode: "auto", "forward", "mixed", "backward" or "func".
        directions: optional V (d, k): gradient → Vᵀ∇f, hessian → VᵀHV, laplacian → tr(VᵀHV);
            for "hvp" the vectors multiplied by the d'×d' Hessian (rows d'… ignored).
        exclude_last: number of trailing inputs (e.g. the time t of Φ(x, t)) left out of the
            Hessian/Laplacian; the gradient stays over all d inputs.
        check_finite: check ``x`` for NaN/inf (one host synchronisation per call on a GPU;
            skipped by itself under ``torch.compile``, torch.func transforms and CUDA-graph
            capture). Pass ``False`` in hot loops whose inputs are checked elsewhere, such as
            the right-hand side of an ODE called at every stage.
        unsupported: "error" (default) or "torch.func": for the forward Laplacian of a plain
            module (want="laplacian", mode "auto"/"forward"), what an op without a rule does:
            "error" makes ``"forward"`` raise and ``"auto"`` use ``"func"`` for the whole
            network; "torch.func" propagates just those ops by torch.func (exact, slower per
            op), keeping the rules for the rest.

    Returns:
        :class:`Derivatives` (value, gradient, hessian, laplacian); shapes in its docstring.

    Raises:
        TypeError: x not a floating tensor, or net not a module.
        ValueError: x not (n, d), wrong trailing size, non-finite values, unknown want/mode,
            directions of the wrong shape, exclude_last out of range, an unknown
            ``unsupported``, or a mode that cannot give the request (forward mode has no
            Hessian).

    Reference: Onken et al., "OT-Flow", arXiv:2006.00104 (exact trace); Newman et al., hessQuik,
    JOSS 2022 (doi:10.21105/joss.04171); Li et al., "Forward Laplacian", arXiv:2307.08214.

    Example:
        >>> from odeflow.derivatives import Sequential, Single, ResNet, Linear, LogCosh
        >>> net = Sequential(Single(3, 8, act=LogCosh()), ResNet(8, depth=2), Linear(8, 1))
        >>> out = compute(net, torch.randn(5, 3), want="laplacian", exclude_last=1)
        >>> out.value.shape, out.gradient.shape, out.laplacian.shape
        (torch.Size([5]), torch.Size([5, 3]), torch.Size([5]))
    """
    _validate(net, x, want, mode, directions, exclude_last, check_finite)
    check_unsupported(unsupported, "derivatives")
    n, d = x.shape
    dp = d - exclude_last
    V = None if directions is None else directions.to(device=x.device, dtype=x.dtype)
    acc = torch.promote_types(x.dtype, torch.float32)

    if not isinstance(net, Block) and want == "laplacian" and mode in ("auto", "forward"):
        # any traceable module of supported ops: the forward Laplacian (torch.func otherwise)
        res = fl_compute(net, x, V, exclude_last, mode == "forward", unsupported)
        if res is not None:
            return _finish(res[0], res[1], None, res[2], want)
    if not isinstance(net, Block) or mode == "func":
        if mode not in ("auto", "func"):
            raise ValueError(
                f"derivatives: mode={mode!r} needs an odeflow.derivatives block network; "
                f"{type(net).__name__} is handled by mode='func' (vmapped torch.func)."
            )
        value, grad, second, lap = func_derivatives(net, x, want, V, exclude_last)
        return _finish(value, grad, second, lap, want)

    m = net.out_features
    if want == "hvp":
        c = dp
    else:
        c = V.shape[1] if V is not None else dp
    if mode == "auto":
        mode = _select(net, want, n, m, d, c)
    if mode == "forward" and want in ("hessian", "hvp"):
        raise ValueError(
            f"derivatives: mode='forward' propagates (J, Δ) only and gives no {want}; "
            "use mode='mixed' or 'backward' (or 'auto')."
        )
    eye_d = torch.eye(d, dtype=x.dtype, device=x.device)

    if mode == "forward":
        seed = V.mT if V is not None else eye_d  # the blocks hold Jacobians transposed
        p = V.shape[1] if V is not None else dp
        ctx = Ctx(Kind.LAP if want == "laplacian" else Kind.GRAD, p, acc)
        value, J, L = net._jet(x, seed, None, ctx)
        grad = J.mT.expand(n, m, J.shape[-2]).contiguous()  # (free for m = 1 and a batched J)
        lap = None
        if want == "laplacian":
            lap = torch.zeros(n, m, dtype=acc, device=x.device) if L is None else L
        return _finish(value, grad, None, lap, want)

    kind = _KINDS[want]
    if kind is Kind.GRAD:
        seed = None
    elif V is not None and want != "hvp":
        seed = V.mT  # (c, d): the blocks hold Jacobians transposed
    else:
        seed = eye_d[:dp]
    p = 0 if seed is None else seed.shape[0]
    ctx = Ctx(kind, p, acc, None if want != "hvp" else V[:dp])
    g0 = torch.eye(m, dtype=x.dtype, device=x.device).expand(n, m, m)

    if mode == "mixed" and kind is Kind.LAP and supports(net):
        value, g, second = laplacian_sweep(net, x, seed, acc)
    elif mode == "mixed" or kind is Kind.GRAD:
        value, _, tape = net._record(x, seed, ctx)
        g, second = net._reverse(tape, g0, ctx)
    else:  # backward: the reverse second-order sweep, the input seed contracted last
        value, g, second = net._input_second(x, seed, g0, None, ctx)

    if V is not None and want != "hvp":
        grad = g @ V
    else:
        grad = g
    lap = None
    if second is None and kind is not Kind.GRAD:
        if kind is Kind.LAP:
            shape = (n, m)
        elif kind is Kind.HESS:
            shape = (n, m, p, p)
        else:
            shape = (n, m, dp, V.shape[1])
        second = torch.zeros(shape, dtype=acc, device=x.device)
    if kind is Kind.LAP:
        lap, second = second, None
    elif kind is Kind.HESS:
        lap = second.diagonal(dim1=-2, dim2=-1).sum(-1)
    return _finish(value, grad, second, lap, want)
