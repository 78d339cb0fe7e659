"""Fixed-grid explicit Runge–Kutta integration with an exact discrete adjoint."""

from __future__ import annotations

import bisect
import contextlib
import enum
import functools
import itertools
import math
import numbers
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import MethodType
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge

from . import _graphs, _tree
from ._precision import AdjointScaler, PrecisionPolicy, _outside_stacklevel, get_precision
from ._tableaus import ButcherTableau, get_tableau

__all__ = [
    "AdjointStats",
    "Backprop",
    "DiscreteAdjoint",
    "Solution",
    "SolveStatus",
    "odeint",
    "solve",
]


# --------------------------------------------------------------------------- policies
_RECOMPUTE = ("step", "stage")


@dataclass(frozen=True)
class DiscreteAdjoint:
    r"""Gradient by the exact adjoint of the discrete RK scheme (discretize-then-optimize).

    The forward pass keeps no graph and stores only the step states (in the policy's
    storage dtype); the backward pass walks the steps in reverse and applies each step's
    vector–Jacobian product, ``λ_n = (∂Φ_n/∂y_n)^T λ_{n+1}`` (plus the injected gradients
    of the outputs), parameter gradients ``Σ_n (∂Φ_n/∂θ)^T λ_{n+1}`` and time gradients
    through ``t_n`` and ``h_n``. In exact arithmetic this is backpropagation through the
    same steps.

    ``recompute`` chooses how much of a step is rebuilt with an autograd graph:

    * ``"step"`` (default): the whole step ``Φ_n`` is rebuilt under autograd and
      differentiated at once. Peak memory: ``steps`` stored states plus one step's
      graph (``s`` stages × the activations of ``f``). Backward cost: ``s`` evaluations of
      ``f`` and their VJPs per step.
    * ``"stage"``: the stages ``k_1..k_{s-1}`` are first recomputed without a graph (kept in
      the dtype ``f`` returns, e.g. bf16 under autocast, which the forward widens to ``H``
      exactly); then for ``i = s..1`` only ``k_i = f(t_i, Y_i)`` is rebuilt with a graph and
      differentiated with the stage adjoint (formed in ``H``)

      .. math::
          μ_i = h\,b_i\,λ + h \sum_{j>i} a_{ji}\,ν_j, \qquad
          ν_i = J_f(t_i, Y_i)^T μ_i, \qquad λ_n = λ + \sum_i ν_i,

      parameter gradients ``Σ_i (∂f/∂θ)(t_i, Y_i)^T μ_i``, and time gradients from
      ``t_i = τ + c_i h``, ``Y_i = y + h Σ_j a_ij k_j`` and ``y + h Σ_i b_i k_i``:
      ``∂τ = Σ_i g_i``, ``∂h = Σ_i c_i g_i + Σ_i ν_i·(Σ_j a_ij k_j) + λ·Σ_i b_i k_i`` with
      ``g_i = (∂f/∂t)(t_i, Y_i)^T μ_i``, chained to the output times through
      ``τ = t_a + j h`` and ``h = (t_b − t_a)/m``. Peak memory: the stored states plus one
      *stage's* graph, at most ``s − 1`` stage values (each freed once read) and a few
      adjoint buffers (``λ``, ``Σ_i ν_i``, ``μ_i``). Cost: one extra forward evaluation of
      the stages per step (``s − 1`` more calls of ``f`` than ``"step"``; 7 instead of 4
      for ``rk4``). Worth it when a step's graph dominates memory (few steps, large
      activations of ``f``); with many steps the stored states dominate and ``"step"`` is
      cheaper.

    Both modes work with every precision policy (stages under autocast, adjoint and
    accumulators in ``H``) and with fp16 dynamic adjoint scaling, and give the same
    gradient up to round-off.

    Stochastic fields (dropout in training mode) are differentiated exactly: the forward pass
    notes the default generators' states before every step (``"step"``, whose rebuild repeats
    the step's evaluations in order) or every evaluation of ``func`` (``"stage"``), kept only
    if ``func`` drew random numbers (about 5 KB per entry then), and the rebuild replays
    them, so the backward pass differentiates the function the forward pass evaluated; the
    caller's random stream after ``backward`` is what it would be without the rebuild.
    Buffers the forward pass updates in place (batch norm's running statistics in training
    mode) are updated once per evaluation, as with backprop: the rebuild's second update is
    undone after the backward pass.

    ``cuda_graphs=True`` (CUDA, ``recompute="step"``) captures the forward step and the
    backward step (rebuild + VJP) each as one CUDA graph over static buffers and replays them
    for every step and every later call with the same field, shapes and parameter tensors:
    one launch per step instead of the hundreds of small kernels that bound medium-sized
    fields (an MLP on a few thousand states, OT-Flow's potential). Same arithmetic, same
    gradient (bitwise on a deterministic field). Requirements: the field is capture-safe (no
    host synchronisation such as ``.item()``, no random draws, no data-dependent Python
    control flow, no tensors replaced between calls except through in-place updates, which
    optimizers do; a plain callable must not close over tensors that are later rebound); the
    tensors differentiated for are parameters of ``func``, an ``nn.Module`` or a method of one
    (the captured backward binds aliases of them by name); capture costs a few eager steps
    once per (field, shapes, train/eval mode). The captures' private memory pool (the larger
    of the forward and the backward step's temporaries, one step's activations included)
    stays reserved between calls: see :func:`odeflow.ode.graph_memory_bytes` and
    :func:`odeflow.ode.clear_cuda_graphs`. Graphs pay off where kernel launches bound the run
    (on an H200, an MLP field on 4096 × 64 states: bf16 2.4× faster than torchdiffeq's
    backprop, 3.5× faster than the eager adjoint); a large convolutional field is bound by
    its arithmetic and gains little while the pool adds to its memory.
    Time gradients (``t.requires_grad``) run the backward eagerly; on other devices the option
    has no effect.

    Higher-order derivatives: with ``create_graph=True`` (``torch.autograd.grad(...,
    create_graph=True)``, e.g. for Hessian-vector products or gradient penalties) the backward
    pass replays the solve from the saved inputs with an autograd graph and differentiates it,
    so the gradients are themselves differentiable in ``y0``, ``t`` and the parameters. That
    pass costs what ``gradient="backprop"`` costs (one graph over all steps, no fp16 adjoint
    scaling); first-order backward passes keep the adjoint's memory.

    ``torch.func`` transforms (``grad``, ``vjp``, ``jacrev``, ``jacfwd``, ``hessian``,
    ``vmap`` of them) differentiate through the same recursion, one step's VJP at a time;
    for second derivatives the outer transform records every step's VJP, which needs about
    backprop's memory. See :func:`odeflow.odeint`.

    Args:
        recompute: ``"step"`` or ``"stage"``.
        cuda_graphs: capture and replay the per-step work as CUDA graphs (``"step"`` only).

    Raises:
        ValueError: for any other ``recompute``, or ``cuda_graphs`` with ``"stage"``.

    Reference: Celledoni, Owren, Ruthotto, Yang, arXiv:2510.23498; Gholami, Keutzer,
    Biros, *ANODE*, arXiv:1902.10298; Hager, *Runge–Kutta methods in optimal control and
    the transformed adjoint system*, Numer. Math. 87 (2000).

    Example:
        >>> import torch, odeflow
        >>> DiscreteAdjoint()
        DiscreteAdjoint(recompute='step', cuda_graphs=False)
        >>> y0 = torch.ones(3, dtype=torch.float64, requires_grad=True)
        >>> ys = odeflow.odeint(lambda t, y: -y, y0, torch.tensor([0.0, 1.0], dtype=torch.float64),
        ...                     gradient=DiscreteAdjoint(recompute="stage"))
        >>> ys[-1].sum().backward()  # one RK4 step of y' = -y: y1 = (1 - 1 + 1/2 - 1/6 + 1/24) y0
        >>> round(y0.grad[0].item(), 6)
        0.375

        A Hessian-vector product through the adjoint (``create_graph=True``): for
        ``y' = -y²`` the loss ``y1`` is a polynomial in ``y0``, differentiated twice exactly.

        >>> y0 = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
        >>> y1 = odeflow.odeint(lambda t, y: -y * y, y0, torch.tensor([0.0, 1.0]).double())[-1]
        >>> (g,) = torch.autograd.grad(y1.sum(), y0, create_graph=True)
        >>> (hv,) = torch.autograd.grad(g.sum(), y0)
        >>> ys = odeflow.odeint(lambda t, y: -y * y, y0, torch.tensor([0.0, 1.0]).double(),
        ...                     gradient="backprop")
        >>> (gb,) = torch.autograd.grad(ys[-1].sum(), y0, create_graph=True)
        >>> bool(torch.allclose(hv, torch.autograd.grad(gb.sum(), y0)[0], rtol=1e-12))
        True
    """

    recompute: str = "step"
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        if self.recompute not in _RECOMPUTE:
            raise ValueError(
                f"unknown recompute {self.recompute!r} for DiscreteAdjoint; valid: 'step' "
                "(rebuild one RK step's graph, the default) or 'stage' (rebuild one stage's "
                "graph at a time: less memory, one extra forward evaluation of the stages)"
            )
        if not isinstance(self.cuda_graphs, bool):
            raise TypeError(f"cuda_graphs must be True or False, got {self.cuda_graphs!r}")
        if self.cuda_graphs and self.recompute != "step":
            raise ValueError(
                "DiscreteAdjoint(cuda_graphs=True) captures whole RK steps; use it with "
                "recompute='step' (recompute='stage' runs eagerly)"
            )


@dataclass(frozen=True)
class Backprop:
    """Gradient by plain autograd through every stage of every step (for comparison).

    Example:
        >>> Backprop()
        Backprop()
    """


def _get_gradient(gradient: str | DiscreteAdjoint | Backprop) -> DiscreteAdjoint | Backprop:
    if isinstance(gradient, (DiscreteAdjoint, Backprop)):
        return gradient
    if gradient == "adjoint":
        return DiscreteAdjoint()
    if gradient == "backprop":
        return Backprop()
    raise ValueError(
        f"unknown gradient {gradient!r}; valid: 'adjoint', 'backprop', "
        "odeflow.DiscreteAdjoint() or odeflow.Backprop()"
    )


class SolveStatus(enum.Enum):
    """Outcome of a fixed-grid solve."""

    SUCCESS = "success"
    NONFINITE = "nonfinite"


@dataclass
class AdjointStats:
    """Statistics of the backward pass, filled in when ``backward`` runs.

    Attributes:
        scales: ``(steps,)`` fp32 tensor of the power-of-two adjoint scale used at each
            step (on the device; ``None`` until a scaled fp16 backward has run).
        retries: overflow recoveries (each recomputes the failed step with half the scale).
        syncs: host synchronisations made by the backward pass.
        nfe: function evaluations of the backward pass (recomputation for the VJPs).
    """

    scales: Tensor | None = None
    retries: int = 0
    syncs: int = 0
    nfe: int = 0


@dataclass
class Solution:
    """Result of :func:`solve`.

    Attributes:
        ts: the output times ``(n,)``.
        ys: the trajectory, ``(n, *y0.shape)`` per leaf, same structure as ``y0``.
        nfe: function evaluations of the forward pass.
        steps: RK steps taken.
        status: :class:`SolveStatus` (``NONFINITE`` if the trajectory has inf/NaN).
        stats: :class:`AdjointStats`, filled when ``backward`` runs through ``ys``.
    """

    ts: Tensor
    ys: Any
    nfe: int
    steps: int
    status: SolveStatus
    stats: AdjointStats = field(default_factory=AdjointStats)

    @property
    def scale_history(self) -> Tensor | None:
        """Per-step fp16 adjoint scales (``None`` before backward or without scaling)."""
        return self.stats.scales


# --------------------------------------------------------------------------- random fields
RngState = tuple[bytes, bytes | None]
_NORM = getattr(nn.modules.batchnorm, "_NormBase", ())  # batch/instance norm with running stats


def _rng_state(device: torch.device) -> RngState:
    """The states of the default generators a field on ``device`` draws from, as bytes
    (cheap to compare; host-side values: no device synchronisation)."""
    cuda = torch.cuda.get_rng_state(device).numpy().tobytes() if device.type == "cuda" else None
    return torch.get_rng_state().numpy().tobytes(), cuda


def _versions(leaves: list[Tensor]) -> list[int] | None:
    """Version counters of the state leaves (None for inference tensors, which have none)."""
    try:
        return [x._version for x in leaves]
    except RuntimeError:  # "Inference tensors do not track version counter"
        return None


def _as_state(b: bytes) -> Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8)


# --------------------------------------------------------------------------- vector field
class _Field:
    """Wraps ``func(t, y)``: (un)flattens the state, validates the output once, counts calls."""

    def __init__(self, func: Callable, spec: _tree.Spec, ref: list[Tensor], hdt: torch.dtype):
        self.func = func
        self.call = func  # what is evaluated: func, or func with rebound parameters
        self.spec = spec
        self.shapes = [r.shape for r in ref]
        self.device = ref[0].device
        self.hdt = hdt
        self.in_dtype = ref[0].dtype  # y0's (16 bit: the state is held in float32)
        self.nfe = 0
        self.checked = False
        # generator states before each call of a recorded forward pass (None: the field drew
        # no random numbers); a stochastic field (dropout) is re-evaluated with the same draws
        self.rng_log: list[RngState] | None = None
        self.recording = False
        # what a log entry precedes: every call (a rebuild that evaluates stages out of order,
        # recompute="stage"), or every RK step of ``stages`` calls (a rebuild that repeats a
        # step's calls in order: a quarter of the state reads for rk4)
        self.per_call = True
        self.stages = 1
        self.mutated: list[Tensor] = []  # buffers of func that the forward pass updated

    def __call__(self, t: Tensor, leaves: list[Tensor]) -> list[Tensor]:
        return [k if k.dtype == self.hdt else k.to(self.hdt) for k in self.raw(t, leaves)]

    def raw(self, t: Tensor, leaves: list[Tensor]) -> list[Tensor]:
        """``func``'s output leaves in the dtype it returned (validated: never wider than H,
        so the cast to H is exact)."""
        if self.recording and self.per_call:
            self.note_rng()
        versions = _versions(leaves)
        if self.checked:
            out = self.call(t, _tree.unflatten(self.spec, leaves))
        else:
            out = self._first_call(t, leaves)
        if versions is not None and versions != _versions(leaves):
            raise ValueError(
                "func(t, y) modified its input y in place (e.g. nn.ReLU(inplace=True) or "
                "y.mul_() on the state); the solver reuses y, so this would corrupt the "
                "trajectory and the gradients: compute a new tensor instead"
            )
        self.nfe += 1
        ks = _tree.flatten_like(self.spec, out, "func(t, y)")
        if not self.checked:
            self._check(ks)
            self.checked = True
        return ks

    @contextlib.contextmanager
    def record(self, rng: bool = True):
        """The adjoint's forward pass: note the generators' states before every call (if
        ``rng``; kept only if the field drew random numbers) and which buffers of ``func``
        it updated (e.g. batch-norm running statistics)."""
        module = _owning_module(self.func)
        bufs = list(module.buffers()) if module is not None else []
        versions = [b._version for b in bufs]
        self.rng_log, self.recording = [], rng
        try:
            yield
        finally:
            self.recording = False
        log = self.rng_log
        if not log or (all(e is log[0] for e in log) and log[0] == _rng_state(self.device)):
            self.rng_log = None
        # in-place updates bump a buffer's version, except batch norm's running statistics,
        # which its kernels update directly
        norm = [
            b
            for m in (module.modules() if module is not None else ())
            if isinstance(m, _NORM) and m.training and m.track_running_stats
            for b in (m.running_mean, m.running_var)
            if b is not None
        ]
        seen: set[int] = set()
        changed = [b for b, v in zip(bufs, versions) if b._version != v]
        self.mutated = [b for b in changed + norm if not (id(b) in seen or seen.add(id(b)))]

    @contextlib.contextmanager
    def aside(self, changed_only: bool = True):
        """Evaluations within the block are not the solve's: they are not counted, and the
        buffers of ``func`` they update (batch-norm running statistics) are restored after
        (only those that changed if ``changed_only``: a copy marks a buffer as updated)."""
        module = _owning_module(self.func)
        bufs = list(module.buffers()) if module is not None else []
        saved = [b.clone() for b in bufs]
        nfe = self.nfe
        try:
            yield
        finally:
            self.nfe = nfe
            with torch.no_grad():
                for b, v in zip(bufs, saved):
                    if not changed_only or not torch.equal(b, v):
                        b.copy_(v)

    @contextlib.contextmanager
    def replaying(self):
        """Around a backward pass that re-evaluates ``func``: afterwards the caller's random
        stream and the buffers the forward pass updated are as the forward pass left them
        (a rebuild does not update running statistics a second time). A differentiable
        backward pass evaluates ``func`` with scratch copies of these buffers instead (see
        :meth:`scratch_buffers`): its graph may have saved them."""
        saved = [] if torch.is_grad_enabled() else [b.clone() for b in self.mutated]
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda, enabled=self.rng_log is not None):
            try:
                yield
            finally:
                with torch.no_grad():
                    for b, v in zip(self.mutated, saved):
                        b.copy_(v)

    def scratch_buffers(self):
        """Within the block, ``func`` updates copies of the buffers the forward pass updated."""
        bind = _bind_module(self.func)
        ids = {id(b) for b in self.mutated}
        scratch = {} if bind is None or not ids else {
            n: b.clone() for n, b in bind.named_buffers() if id(b) in ids
        }  # fmt: skip
        return self.rebound(bind, scratch) if scratch else contextlib.nullcontext()

    def note_rng(self) -> None:
        """Log the generators' state (before a call, or before a step's calls)."""
        st = _rng_state(self.device)
        log = self.rng_log
        # consecutive equal states share one entry (a deterministic field holds one)
        log.append(log[-1] if log and log[-1] == st else st)

    def replay_rng(self, step: int, stage: int = 0) -> None:
        """Set the generators to their state before the forward pass's call ``stage`` of
        step ``step`` (a no-op for a field that drew no random numbers; ``stage`` must be 0
        when steps, not calls, were logged)."""
        if self.rng_log is not None:
            cpu, cuda = self.rng_log[step * self.stages + stage if self.per_call else step]
            torch.set_rng_state(_as_state(cpu))
            if cuda is not None:
                torch.cuda.set_rng_state(_as_state(cuda), self.device)

    @contextlib.contextmanager
    def rebound(self, module: nn.Module, params: dict[str, Tensor]):
        """Within the block, evaluate ``func`` through ``module`` (``func`` itself, or a
        :class:`_MethodModule` around it) with its named parameters replaced by ``params``
        (``torch.func.functional_call``)."""
        self.call = lambda t, y: torch.func.functional_call(module, params, (t, y), strict=False)
        try:
            yield self
        finally:
            self.call = self.func

    def _first_call(self, t: Tensor, leaves: list[Tensor]) -> Any:
        """``func``'s first evaluation; a dtype clash inside it from a 16-bit ``y0`` (held in
        float32 by the solver) is explained, with the fix."""
        try:
            return self.call(t, _tree.unflatten(self.spec, leaves))
        except RuntimeError as e:
            widened = self.in_dtype.itemsize < 4 and leaves[0].dtype != self.in_dtype
            if not widened or "dtype" not in str(e).lower():
                raise
            low = str(self.in_dtype).removeprefix("torch.")
            name = {"bfloat16": "bf16", "float16": "fp16"}.get(low, low)
            fix = (
                "give func float32 weights (func.float()): an operation of func is outside "
                "autocast's casts"
                if torch.is_autocast_enabled(self.device.type)
                else f"pass precision='{name}' (stages in {low} under autocast, state in "
                "float32), or give func float32 weights (func.float())"
            )
            raise RuntimeError(
                f"func failed on a {leaves[0].dtype} state: the solver holds a {self.in_dtype} "
                f"y0 in {leaves[0].dtype}, and func's tensors seem to be {low} ({e}); {fix}"
            ) from e

    def _check(self, ks: list[Tensor]) -> None:
        for i, (k, shp) in enumerate(zip(ks, self.shapes)):
            where = "" if len(ks) == 1 else f" (leaf {i})"
            if k.shape != shp:
                raise ValueError(
                    f"func(t, y) returned shape {tuple(k.shape)}{where} but the state has shape "
                    f"{tuple(shp)}; dy/dt must have the state's shape"
                )
            if not _tree.is_float(k):
                raise TypeError(
                    f"func(t, y) returned dtype {k.dtype}{where}; it must return a real "
                    "floating-point tensor"
                )
            if k.dtype.itemsize > torch.tensor([], dtype=self.hdt).element_size():
                raise TypeError(
                    f"func(t, y) returned {k.dtype}{where} for a {self.hdt} state; this would "
                    "silently promote the solve — make func return the state's dtype"
                )
            if k.device != self.device:
                raise ValueError(
                    f"func(t, y) returned a tensor on {k.device}{where}, state is on {self.device}"
                )


class _MethodModule(nn.Module):
    """A bound method of an ``nn.Module`` as a module whose parameters are the owner's
    (prefixed ``owner.``), so that ``functional_call`` can rebind them."""

    def __init__(self, method: MethodType):
        super().__init__()
        self.owner = method.__self__
        self.fn = method.__func__

    def forward(self, t, y):
        return self.fn(self.owner, t, y)


def _lincomb(
    coeffs: Sequence[float],
    ks: Sequence[list[Tensor] | None],
    leaf: int,
    dtype: torch.dtype | None = None,
) -> Tensor | None:
    """``Σ_j coeffs[j] k_j`` for one leaf, skipping zero coefficients (``None`` if all are zero).

    Stages kept in a narrower dtype than ``dtype`` are cast up first (exactly)."""
    acc = None
    for j, cj in enumerate(coeffs):
        if cj != 0.0:
            k = ks[j][leaf]
            term = (k if dtype is None or k.dtype == dtype else k.to(dtype)) * cj
            acc = term if acc is None else acc + term
    return acc


@dataclass
class _Coeffs:
    """What one RK step is formed from, as 0-d tensors in t's dtype: its start ``tau`` and
    size ``h``, the stage times ``ts[i] = τ + c_i h``, and the products ``h a_ij`` and
    ``h b_j`` of the nonzero tableau entries, ``ca[i] = [(j, h a_ij)]`` and
    ``cb = [(j, h b_j)]``. Stage inputs and the update are then one fused
    multiply-add per term: ``Y_i = y + Σ_j (h a_ij) k_j`` (``addcmul``), a third of the
    elementwise kernels of ``y + h (Σ_j a_ij k_j)``; kernel launches are what bound small
    fields on a GPU."""

    tau: Tensor
    h: Tensor
    ts: list[Tensor]
    ca: list[list[tuple[int, Tensor]]]
    cb: list[tuple[int, Tensor]]


def _assemble(tab: ButcherTableau, tau: Tensor, h: Tensor, value: Callable) -> _Coeffs:
    """:class:`_Coeffs` with ``value(kind, x)`` giving ``τ + x h`` (``kind`` "t", nonzero
    c_i in order), then ``h x`` for the nonzero a_ij (``"a"``, row by row) and b_j (``"b"``)."""
    ts = [tau if c == 0.0 else value("t", c) for c in tab.c]
    ca = [[(j, value("a", a)) for j, a in enumerate(row[:i]) if a != 0.0]
          for i, row in enumerate(tab.a)]  # fmt: skip
    cb = [(j, value("b", b)) for j, b in enumerate(tab.b) if b != 0.0]
    return _Coeffs(tau, h, ts, ca, cb)


def _coeffs(tab: ButcherTableau, tau: Tensor, h: Tensor) -> _Coeffs:
    """One step's :class:`_Coeffs` by scalar ops (captured steps, differentiable times);
    bitwise the values :func:`_grid` forms for every step at once (tested)."""
    return _assemble(tab, tau, h, lambda kind, x: tau + x * h if kind == "t" else h * x)


def _axpy(
    y: list[Tensor],
    ks: Sequence[list[Tensor] | None],
    terms: list[tuple[int, Tensor]],
    hdt: torch.dtype,
    fresh: bool = False,
) -> list[Tensor]:
    """``y + Σ (h a_j) k_j`` per leaf, one ``addcmul`` per term in order, stages widened to
    ``hdt`` first; ``y`` itself when there are no terms, unless ``fresh`` (then always one new
    buffer per leaf, filled in place: the same kernels, bitwise the same values)."""
    out = []
    for leaf, yl in enumerate(y):
        acc = yl.to(hdt, copy=True) if fresh else yl
        for j, c in terms:
            k = ks[j][leaf]
            k = k if k.dtype == hdt else k.to(hdt)
            # (out of place unless filling the fresh buffer: vmap has no rule for addcmul_)
            acc = acc.addcmul_(k, c) if fresh else torch.addcmul(acc, k, c)
        out.append(acc)
    return out


def _stage_seed(
    tab: ButcherTableau,
    q: int,
    h: Tensor,
    lam: Tensor,
    nus: dict[int, list[Tensor]],
    leaf: int,
    dtype: torch.dtype | None,
) -> Tensor:
    """Stage adjoint ``mu_q = h (b_q lam + Σ_{r>q} a_rq nu_r)`` of one leaf, summed in ``lam``'s
    dtype in one fresh buffer, then cast to ``dtype`` (if given)."""
    acc = lam * tab.b[q] if tab.b[q] != 0.0 else None
    for r in range(q + 1, tab.stages):
        if tab.a[r][q] != 0.0 and r in nus:
            if acc is None:
                acc = nus[r][leaf] * tab.a[r][q]
            else:
                acc.add_(nus[r][leaf], alpha=tab.a[r][q])
    if acc is None:  # no path from this stage to the step's output (f ignores its input)
        acc = torch.zeros_like(lam)
    acc.mul_(h)
    return acc if dtype is None or acc.dtype == dtype else acc.to(dtype)


def _rk_step(
    fld: _Field,
    tab: ButcherTableau,
    co: _Coeffs,
    y: list[Tensor],
    pol: PrecisionPolicy,
    enter: bool = True,
) -> list[Tensor]:
    """One explicit RK step; stages under the policy's autocast (entered here unless the caller
    holds it: ``enter=False``), the update in ``H``."""
    ks: list[list[Tensor]] = []
    hdt = fld.hdt
    with pol.context(fld.device) if enter else contextlib.nullcontext():
        for i in range(tab.stages):
            yi = _axpy(y, ks, co.ca[i], hdt)
            ks.append(fld(co.ts[i], yi))
    return _axpy(y, ks, co.cb, hdt)


def _grid(plan: _Plan, t: Tensor) -> _Grid:
    """Every step's :class:`_Coeffs` (a :class:`_Grid`: ``grid[s]``, ``len``, iteration),
    formed with a few vectorised ops per chunk of steps instead of a dozen scalar ops per
    step (the same IEEE operations elementwise as :func:`_times` and :func:`_coeffs`, so
    bitwise their values). Differentiable in ``t``; kept on the plan when ``t`` needs no
    gradient, so that the backward pass reuses the forward's."""
    if plan.grid is not None and not t.requires_grad:
        return plan.grid
    out = _Grid(plan.tab, plan.ms, t)
    if not t.requires_grad:
        plan.grid = out
    return out


class _Grid:
    """The steps' :class:`_Coeffs`, formed :attr:`CHUNK` steps at a time and only the chunk
    in use kept (a few values per step): memory does not grow with the number of steps, as
    it would with a :class:`_Coeffs` of 0-d tensors kept for every step (some 9 KB per step:
    gigabytes for a no-grad solve of 10⁶ steps). ``grid[s]`` forms step ``s``'s; walking the
    steps forwards or backwards forms each chunk once."""

    CHUNK = 1024

    def __init__(self, tab: ButcherTableau, ms: list[int], t: Tensor):
        self.tab, self.ms, self.t = tab, ms, t
        self.offsets = [0, *itertools.accumulate(ms)]  # first step of each interval
        self.chunk: tuple[int, Tensor] | None = None  # (index, rows of its steps)

    def __len__(self) -> int:
        return self.offsets[-1]

    def __iter__(self):
        return (self[s] for s in range(len(self)))

    def __getitem__(self, s: int) -> _Coeffs:
        if not -len(self) <= s < len(self):
            raise IndexError(f"step {s} of a grid of {len(self)}")
        s %= len(self)
        k = s // self.CHUNK
        if self.chunk is None or self.chunk[0] != k:
            self.chunk = (k, self._rows(k * self.CHUNK, min(len(self), (k + 1) * self.CHUNK)))
        v = iter(self.chunk[1][s - k * self.CHUNK].unbind(0))
        tau, h = next(v), next(v)
        return _assemble(self.tab, tau, h, lambda kind, x: next(v))

    def _rows(self, s0: int, s1: int) -> Tensor:
        """``(s1 - s0, columns)``: each step's values in :func:`_assemble`'s order."""
        t, off = self.t, self.offsets
        dt, dev = t.dtype, t.device
        i0 = bisect.bisect_right(off, s0) - 1
        i1 = bisect.bisect_left(off, s1) - 1  # the last interval with a step in the chunk
        counts = [min(off[i + 1], s1) - max(off[i], s0) for i in range(i0, i1 + 1)]
        js = [s - off[i] for i, n in zip(range(i0, i1 + 1), counts)
              for s in range(max(off[i], s0), max(off[i], s0) + n)]  # fmt: skip
        mt = torch.tensor(self.ms[i0 : i1 + 1], device=dev)
        reps = torch.tensor(counts, device=dev)
        tt = t[i0 : i1 + 2]
        n = s1 - s0
        hs = ((tt[1:] - tt[:-1]) / mt.to(dt)).repeat_interleave(reps, output_size=n)
        first = tt[:-1].repeat_interleave(reps, output_size=n)
        jt = torch.tensor(js, dtype=dt, device=dev)
        taus = torch.where(jt == 0, first, first + jt * hs)
        # the columns in _assemble's order, each the vectorised twin of _coeffs' scalar op
        cols = [taus, hs]

        def column(kind: str, x: float) -> None:
            cols.append(taus + x * hs if kind == "t" else hs * x)

        _assemble(self.tab, taus, hs, column)
        return torch.stack(cols, 1)


@dataclass
class _Plan:
    """Everything a solve needs besides the tensors."""

    fld: _Field
    tab: ButcherTableau
    pol: PrecisionPolicy
    ms: list[int]  # substeps per interval
    hdt: torch.dtype
    out_dtypes: list[torch.dtype]
    scaler: AdjointScaler | None
    n_leaf: int
    stats: AdjointStats
    params_mask: list[bool] = field(default_factory=list)
    recompute: str = "step"
    graphs: bool = False  # DiscreteAdjoint(cuda_graphs=True) on a device that captures
    watched: list[Tensor] = field(default_factory=list)  # tensors the captures read in place
    params: list[Tensor] = field(default_factory=list)  # the tensors gradients are taken for
    param_names: list[str] = field(default_factory=list)  # their names in bind_module
    bind_module: nn.Module | None = None  # func, or a _MethodModule around a module's method
    graph_key: tuple = ()  # what else the captures depend on (structure, t dtype, modes)
    graph_entry: _graphs.StepGraphs | None = None  # this solve's captures (looked up once)
    local_graphs: OrderedDict = field(default_factory=OrderedDict)  # a non-weakref-able func's
    grid: _Grid | None = None  # every step's coefficients (t without gradient)
    # the gradient's tensors were collected from a module (no params=[...]): the backward
    # checks once that func's graph reaches no other tensor requiring grad
    hidden_check: bool = False

    @property
    def steps(self) -> list[tuple[int, int]]:
        return [(i, j) for i, m in enumerate(self.ms) for j in range(m)]


def _times(ta: Tensor, tb: Tensor, j: int, m: int) -> tuple[Tensor, Tensor]:
    """Start and size of substep ``j`` of ``m`` on the interval ``[ta, tb]`` (scalar ops: the
    values :func:`_grid` forms for all steps at once)."""
    h = (tb - ta) / m
    return (ta if j == 0 else ta + j * h), h


def _integrate(
    plan: _Plan, t: Tensor, y0: list[Tensor], store: list | None, record: bool = True
) -> list[Tensor]:
    """March over the grid; return per-leaf stacked outputs (in H).

    ``store`` receives the input state of every step (the final state is not needed by the
    backward pass), in the policy's storage dtype; the pass then notes the field's random
    draws and buffer updates for the backward pass, unless ``record`` is false (a replay)."""
    y = [yl.to(plan.hdt) for yl in y0]
    sdt = plan.pol.storage
    outs = [[yl] for yl in y]
    # Without a graph, one autocast context with the weight-cast cache spans the whole solve:
    # each weight is cast to 16 bit once, not once per stage (with a graph the cache stays off
    # so that per-stage weight gradients meet in fp32; see PrecisionPolicy.context).
    free = not torch.is_grad_enabled()
    graphed = free and plan.graphs
    cached = free and not graphed  # a captured step enters its own (cache-free) context
    # the adjoint's forward pass notes the random draws and buffer updates of the field
    record = store is not None and record
    rng0 = _rng_state(plan.fld.device) if record and graphed else None
    with (
        # (captured steps: evaluations inside a capture must not read the generators, and a
        # field that draws is refused below)
        plan.fld.record(rng=not graphed) if record else contextlib.nullcontext(),
        plan.pol.context(plan.fld.device, cache=True) if cached else contextlib.nullcontext(),
    ):
        grid = iter(_grid(plan, t))
        per_step = record and not graphed and not plan.fld.per_call
        for m in plan.ms:
            for _ in range(m):
                if store is not None:
                    store.append([yl if sdt is None else yl.to(sdt) for yl in y])
                if per_step:
                    plan.fld.note_rng()
                co = next(grid)
                if graphed:  # the replay's outputs are overwritten by the next replay
                    step = _captured_forward(plan, y, co.tau, co.h)
                    y = [o.clone() for o in step(*y, co.tau, co.h)]
                    if rng0 is not None:
                        _check_deterministic(plan, rng0)
                        rng0 = None
                else:
                    y = _rk_step(plan.fld, plan.tab, co, y, plan.pol, enter=not free)
            for o, yl in zip(outs, y):
                o.append(yl)
    return [torch.stack(o) for o in outs]


def _check_deterministic(plan: _Plan, before: RngState) -> None:
    """A captured adjoint replays the forward and the backward step as separate graphs, each
    drawing fresh random numbers: the rebuild would not see the forward's draws."""
    if before != _rng_state(plan.fld.device):
        raise ValueError(
            "DiscreteAdjoint(cuda_graphs=True) needs a deterministic vector field, but func "
            "drew random numbers (e.g. dropout in training mode): the captured rebuild could "
            "not repeat the forward pass's draws. Use cuda_graphs=False (the eager adjoint "
            "replays them) or func.eval()"
        )


# --------------------------------------------------------------------------- CUDA graphs
def _captures(plan: _Plan, y: list[Tensor]) -> _graphs.StepGraphs:
    """The captures of this solve (every step has the same key: looked up once per solve)."""
    if plan.graph_entry is None:
        key = (
            plan.tab,
            plan.pol,
            plan.hdt,
            plan.graph_key,
            tuple((tuple(x.shape), x.dtype, x.device) for x in y),
            tuple(p.data_ptr() for p in plan.params),  # what the backward differentiates for
        )
        plan.graph_entry = _graphs.lookup(plan.fld.func, key, plan.watched, plan.local_graphs)
    return plan.graph_entry


def _replayer(
    plan: _Plan, entry: _graphs.StepGraphs, kind: str, build, values, capture: bool = True
) -> Callable | None:
    """``values -> outputs`` of the capture ``kind`` of ``entry`` (captured now if missing and
    ``capture``, else ``None``); ``build(static_inputs)`` makes the eager function over the
    static inputs."""
    cap = getattr(entry, kind)
    if cap is None:
        if not capture:
            return None
        inputs = _graphs.static_like(values)
        with plan.fld.aside():  # (the warm-up and capture evaluations are not the solve's)
            cap = entry.capture(kind, build(inputs), inputs)

    def replay(*vals: Tensor) -> list:
        out = cap(vals, build(cap.inputs))
        if cap.graph is not None:  # (the eager fallback counts its own calls)
            plan.fld.nfe += plan.tab.stages
        return out

    return replay


def _captured_forward(plan: _Plan, y: list[Tensor], tau: Tensor, h: Tensor) -> Callable:
    """The captured no-grad step ``(y leaves, τ, h) -> Φ(y)``."""

    def build(inputs):
        *ys, ts, hs = inputs

        def fn():
            with torch.no_grad():
                return _rk_step(plan.fld, plan.tab, _coeffs(plan.tab, ts, hs), ys, plan.pol)

        return fn

    return _replayer(plan, _captures(plan, y), "forward", build, [*y, tau, h])


def _captured_backward(
    plan: _Plan,
    x: list[Tensor],
    seed: list[Tensor],
    tau: Tensor,
    h: Tensor,
    live: list[Tensor],
    capture: bool,
) -> Callable | None:
    """The captured rebuild + VJP of one step: ``(stored state leaves, seed leaves, τ, h) ->
    (state adjoint leaves, parameter gradients)``.

    Captured by the forward pass (``capture=True``): a capture inside the autograd engine's
    backward would make the engine's stream synchronisation touch the capturing stream. The
    backward pass only looks it up (``None`` if it was evicted meanwhile: eager fallback).

    The parameters are differentiated through fresh aliases (``p.detach()``, same storage,
    bound into the module by name): the engine then never routes a gradient into a parameter's
    own ``AccumulateGrad`` node, which was created on the default stream by earlier eager work
    and kept alive by the caller's graph; waiting on that stream from inside the capture is
    illegal (``cudaErrorStreamCaptureImplicit``)."""
    nl = len(x)

    def build(inputs):
        xs, sd, (ts, hs) = inputs[:nl], inputs[nl : 2 * nl], inputs[2 * nl :]

        def fn():
            with torch.enable_grad():
                yin = [v.detach().to(plan.hdt).requires_grad_() for v in xs]
                alias = [p.detach().requires_grad_() for p in live]
                names = dict(zip(plan.param_names, alias))
                bind = plan.fld.rebound(plan.bind_module, names) if alias else None
                with bind or contextlib.nullcontext():
                    co = _coeffs(plan.tab, ts, hs)
                    yout = _rk_step(plan.fld, plan.tab, co, yin, plan.pol)
                g = torch.autograd.grad(yout, yin + alias, grad_outputs=sd, allow_unused=True)
            gy = [torch.zeros_like(v) if gv is None else gv for gv, v in zip(g[:nl], yin)]
            return gy + list(g[nl:])

        return fn

    values = [*x, *seed, tau, h]
    return _replayer(plan, _captures(plan, seed), "backward", build, values, capture)


# --------------------------------------------------------------------------- the adjoint
class _AdjointFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan: _Plan, t: Tensor, *tensors: Tensor):  # type: ignore[override]
        y0 = list(tensors[: plan.n_leaf])
        store: list[list[Tensor]] = []
        outs = _integrate(plan, t.detach(), [y.detach() for y in y0], store)
        if plan.graph_entry is not None:  # replays update buffers without a version bump:
            entry = plan.graph_entry  # the buffers seen changing once (capture) are kept
            known = {id(b) for b in entry.mutated}
            entry.mutated += [b for b in plan.fld.mutated if id(b) not in known]
            plan.fld.mutated = entry.mutated
        if plan.graphs and not ctx.needs_input_grad[1]:  # (time gradients run eagerly)
            co = _grid(plan, t.detach())[0]
            seed = [torch.zeros(x.shape, dtype=plan.hdt, device=x.device) for x in store[0]]
            live = list(tensors[plan.n_leaf :])
            _captured_backward(plan, store[0], seed, co.tau, co.h, live, True)
        ctx.plan = plan
        ctx.store = store
        # y0 too: the first stored state may alias it, so an in-place change of y0 before
        # the backward pass must raise autograd's error instead of corrupting the gradient;
        # and a differentiable backward (create_graph=True) replays the solve from it
        ctx.save_for_backward(t, *tensors)
        return tuple(o.to(d) for o, d in zip(outs, plan.out_dtypes))

    @staticmethod
    def backward(ctx, *gouts: Tensor | None):  # type: ignore[override]
        plan: _Plan = ctx.plan
        t, *tensors = ctx.saved_tensors
        with plan.fld.replaying():  # random draws replayed, buffer updates undone
            if torch.is_grad_enabled():  # create_graph=True
                needs = ctx.needs_input_grad[1:]
                return None, *_backward_with_graph(plan, t, tensors, gouts, needs)
            need_t = ctx.needs_input_grad[1]
            return _adjoint_backward(plan, ctx.store, t, tensors[plan.n_leaf :], gouts, need_t)


# --------------------------------------------------------------------------- torch.func
def _func_adjoint(
    plan: _Plan, func: Callable, t: Tensor, leaves: list[Tensor], plist: list[Tensor]
) -> list[Tensor]:
    """The discrete adjoint under a ``torch.func`` transform that differentiates."""
    if plan.scaler is not None and plan.scaler.dynamic:
        raise ValueError(
            "precision='fp16' with the discrete adjoint under a torch.func transform (grad, "
            "vjp, jacrev, ...) is not supported: fp16's dynamic adjoint scaling retries steps "
            "after a host check, which a transform cannot batch. Use precision='bf16' or "
            "'fp32', or gradient='backprop'"
        )
    plan.bind_module, plan.param_names = _bind_target(
        func, plist, "the discrete adjoint under a torch.func transform", "use gradient='backprop'"
    )
    plan.graphs = False  # (captures read the module's own parameters: not a transform's)
    # a tensor the transform differentiates for that func reads but that is not among its
    # parameters would get a zero gradient without a word: evaluate func once with the
    # parameters detached and see whether its output still depends on what is transformed
    # (leaving no trace: the solve's random draws and the buffers, e.g. running statistics;
    # a transform's buffers may be batched, where no equality test is possible)
    cuda = [plan.fld.device] if plan.fld.device.type == "cuda" else []
    with (
        plan.fld.aside(changed_only=False),
        torch.enable_grad(),
        _rebound(plan, [p.detach() for p in plist]),
        torch.random.fork_rng(devices=cuda),
    ):
        ks = plan.fld(t[0].detach(), [y.detach().to(plan.hdt) for y in leaves])
    if any(k.requires_grad for k in ks):
        _refuse_transformed_closure()
    outs = _FuncAdjoint.apply(plan, t, *leaves, *plist)
    return list(outs[: plan.n_leaf])


def _rebound(plan: _Plan, params: Sequence[Tensor], scratch: Sequence[str] = ()):
    """Evaluate ``func`` with its parameters (``plan.param_names``) bound to ``params`` and
    the buffers named in ``scratch`` (see :func:`_scratch_names`) bound to fresh copies: a
    replay then updates those, inside the transformed function (a transform refuses in-place
    updates of tensors from outside it), and leaves the buffers as the forward pass left
    them."""
    bound = dict(zip(plan.param_names, params))
    if scratch:
        buffers = dict(plan.bind_module.named_buffers())
        bound.update((n, buffers[n].clone()) for n in scratch)
    if not bound:
        return contextlib.nullcontext()
    return plan.fld.rebound(plan.bind_module, bound)


def _scratch_names(plan: _Plan) -> list[str]:
    """Names of the buffers that a replay of the forward pass updates: those it updated, and
    a training norm layer's (a transform may hide the version bump of its batch counter)."""
    if plan.bind_module is None:
        return []
    norms = [m for m in plan.bind_module.modules() if isinstance(m, _NORM) and m.training]
    ids = {id(b) for b in [*plan.fld.mutated, *(b for m in norms for b in m.buffers())]}
    return [n for n, b in plan.bind_module.named_buffers() if id(b) in ids]


class _FuncAdjoint(torch.autograd.Function):
    """The discrete adjoint under ``torch.func`` transforms that differentiate (``grad``,
    ``vjp``, ``jacrev``, ``hessian``, and ``vmap`` of these, e.g. per-sample gradients).

    The same recursion and stages as :class:`_AdjointFunction` (bitwise its gradients in the
    tests), written for transforms:

    * a transform hands ``forward`` and ``backward`` its inputs unwrapped, so ``func`` is
      evaluated with its parameters rebound by name to those inputs (never the module's own,
      which the transform wraps);
    * the stored step states are extra outputs, differentiable, so that an outer transform
      sees how the backward pass (which reads them) depends on ``y0`` and θ: their
      cotangents join the adjoint;
    * each step's VJP is taken by ``torch.func.vjp`` and summed out of place, so that an
      outer transform can batch (``generate_vmap_rule``) or differentiate the backward pass;
      forward mode (``jvp``) solves again, pushing tangents.

    Not on this path: fp16's dynamic scaling (refused), ``recompute="stage"`` and CUDA
    graphs (the step VJP runs eagerly: the same gradients)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(plan: _Plan, t: Tensor, *tensors: Tensor):  # type: ignore[override]
        return _func_solve(plan, t, tensors, record=True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        plan, t, *tensors = inputs
        stored = output[plan.n_leaf :]
        ctx.plan, ctx.n_in = plan, len(tensors)
        ctx.save_for_backward(t, *tensors, *stored)
        ctx.save_for_forward(t, *tensors)

    @staticmethod
    def jvp(ctx, _plan, t_dot: Tensor | None, *dots: Tensor | None):  # type: ignore[override]
        """Forward mode (``jacfwd``, ``jvp``, ``hessian``): the solve again, pushing tangents
        through the same steps (and the forward pass's random draws)."""
        plan: _Plan = ctx.plan
        t, *tensors = ctx.saved_tensors

        scratch = _scratch_names(plan)

        def solve(t, *tensors):
            return _func_solve(plan, t, tensors, record=False, scratch=scratch)

        dots = [torch.zeros_like(x) if d is None else d for d, x in zip(dots, tensors)]
        t_dot = torch.zeros_like(t) if t_dot is None else t_dot
        with plan.fld.replaying():
            plan.fld.replay_rng(0)
            _, out = torch.func.jvp(solve, (t, *tensors), (t_dot, *dots))
        return out

    @staticmethod
    def backward(ctx, *gouts: Tensor | None):  # type: ignore[override]
        plan: _Plan = ctx.plan
        nl = plan.n_leaf
        t, *rest = ctx.saved_tensors
        tensors, stored = rest[: ctx.n_in], rest[ctx.n_in :]
        with plan.fld.replaying():  # (random draws; the buffers: see _rebound's scratch)
            gy, gp, gt = _func_backward(
                plan, t, stored, tensors[nl:], gouts[:nl], gouts[nl:], ctx.needs_input_grad[1]
            )
        gy = [g.to(x.dtype) for g, x in zip(gy, tensors[:nl])]
        gp = [torch.zeros_like(p) if g is None else g.to(p.dtype) for g, p in zip(gp, tensors[nl:])]
        return None, gt, *gy, *gp


def _func_solve(
    plan: _Plan, t: Tensor, tensors, record: bool, scratch: Sequence[str] = ()
) -> tuple[Tensor, ...]:
    """The outputs of :class:`_FuncAdjoint`: the trajectory, then each leaf's stored step
    states (stacked), ``func`` evaluated with its parameters bound to ``tensors[n_leaf:]``
    (and scratch buffers: a replay, see :func:`_rebound`)."""
    nl = plan.n_leaf
    store: list[list[Tensor]] = []
    with _rebound(plan, tensors[nl:], scratch):
        outs = _integrate(plan, t, list(tensors[:nl]), store, record)
    stored = [torch.stack([x[leaf] for x in store]) for leaf in range(nl)]
    return (*[o.to(d) for o, d in zip(outs, plan.out_dtypes)], *stored)


def _func_backward(plan: _Plan, t: Tensor, stored, params, gouts, gstored, need_t: bool):
    """The adjoint recursion by ``torch.func.vjp`` of each step (see :class:`_FuncAdjoint`);
    ``gstored``: cotangents of the stored states (an outer transform differentiating this
    backward pass, which reads them), added to the adjoint of each step's input state."""
    hdt, steps = plan.hdt, plan.steps
    pos, acc = {0: 0}, 0  # state index of each output time
    for k, m in enumerate(plan.ms):
        acc += m
        pos[acc] = k + 1

    def inject(a: list[Tensor], state: int) -> list[Tensor]:
        k = pos.get(state)
        if k is not None:
            a = [al if g is None else al + g[k].to(hdt) for al, g in zip(a, gouts)]
        if state < len(steps):
            a = [al if g is None else al + g[state].to(hdt) for al, g in zip(a, gstored)]
        return a

    grid = None if need_t else _grid(plan, t)
    scratch = _scratch_names(plan)
    a = inject([torch.zeros(x.shape[1:], dtype=hdt, device=x.device) for x in stored], len(steps))
    gp: list[Tensor | None] = [None] * len(params)
    gt: list[Tensor | None] = [None] * t.shape[0]
    nfe0 = plan.fld.nfe
    for s in range(len(steps) - 1, -1, -1):
        i, j = steps[s]

        def step(ys, ps, ta, tb, s=s, i=i, j=j):
            co = grid[s] if grid is not None else _coeffs(plan.tab, *_times(ta, tb, j, plan.ms[i]))
            with _rebound(plan, ps, scratch):
                return _rk_step(plan.fld, plan.tab, co, ys, plan.pol)

        plan.fld.replay_rng(s)
        ys = [x[s].to(hdt) for x in stored]
        _, vjp = torch.func.vjp(step, ys, list(params), t[i], t[i + 1])
        dy, dp, dta, dtb = vjp(a)
        a = inject(list(dy), s)
        gp = [g if prev is None else prev + g for prev, g in zip(gp, dp)]
        if need_t:
            for k, g in ((i, dta), (i + 1, dtb)):
                gt[k] = g if gt[k] is None else gt[k] + g
    plan.stats.nfe += plan.fld.nfe - nfe0
    g_t = torch.stack([torch.zeros_like(t[0]) if g is None else g for g in gt]) if need_t else None
    return a, gp, g_t


def _backward_with_graph(plan: _Plan, t: Tensor, tensors: list[Tensor], gouts, needs):
    """Differentiable gradients (``create_graph=True``): replay the solve from the saved
    inputs with an autograd graph and differentiate that, so that the gradients are functions
    of ``(t, y0, θ)`` that autograd can differentiate again (Hessian-vector products, gradient
    penalties). Same scheme and stages as the forward pass; backprop's memory and no fp16
    adjoint scaling on this path."""
    nfe0 = plan.fld.nfe
    inputs = [t, *tensors]
    y0 = tensors[: plan.n_leaf]
    plan.fld.replay_rng(0)
    with torch.enable_grad(), plan.fld.scratch_buffers():
        outs = _integrate(plan, t, list(y0), None)
        outs = [o.to(d) for o, d in zip(outs, plan.out_dtypes)]
        used = [(o, g) for o, g in zip(outs, gouts) if g is not None]
        wrt = [x for x, n in zip(inputs, needs) if n]
        grads = iter(
            torch.autograd.grad(
                [o for o, _ in used],
                wrt,
                [g for _, g in used],
                create_graph=True,
                allow_unused=True,
            )
            if used and wrt
            else [None] * len(wrt)
        )
    plan.stats.nfe += plan.fld.nfe - nfe0
    out: list[Tensor | None] = []
    for x, n in zip(inputs, needs):
        g = next(grads) if n else None
        out.append(torch.zeros_like(x) if n and g is None else g)
    return out


def _check_hidden(outs: list[Tensor], known: list[Tensor], edges: Sequence = ()) -> None:
    """Raise if the graph of ``outs`` reaches a tensor requiring grad that is not ``known``.

    ``known``: the VJP's input tensors (leaves are matched by identity, non-leaves stop the
    walk at their ``grad_fn``); ``edges``: further inputs given as gradient edges. One walk of
    one step's graph: the backward's first VJP calls it, so a module whose field reads a
    tensor it does not register (a global layer, a tensor in a list attribute) gets an
    error instead of a silent ``None`` gradient.
    """
    leaves = {id(x) for x in known if x.is_leaf}
    stops = {x.grad_fn for x in known if not x.is_leaf} | {e.node for e in edges}
    stack = [o.grad_fn for o in outs if o.grad_fn is not None]
    seen = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen or node in stops:
            continue
        seen.add(node)
        var = getattr(node, "variable", None)  # an AccumulateGrad: a leaf tensor
        if var is not None:
            if id(var) not in leaves:
                raise ValueError(
                    f"func depends on a tensor that requires grad (shape {tuple(var.shape)}, "
                    f"{var.dtype}) but is not among the parameters of func: the discrete "
                    "adjoint differentiates for those only and would give it no gradient. "
                    "Register it on func (an nn.Parameter or a submodule), pass "
                    "params=[...] including it, or use gradient='backprop'"
                )
            continue
        stack.extend(n for n, _ in node.next_functions)


def _adjoint_backward(plan, store, t, params, gouts, need_t):
    hdt, nl = plan.hdt, plan.n_leaf
    dev = plan.fld.device
    steps = plan.steps
    n_steps = len(steps)
    # state index of each output time
    pos = {0: 0}
    acc = 0
    for k, m in enumerate(plan.ms):
        acc += m
        pos[acc] = k + 1
    live = [p for p in params]
    p_acc = [
        torch.zeros_like(p, dtype=p.dtype if p.dtype.itemsize >= 4 else torch.float32) for p in live
    ]
    # per-time 0-d accumulators: updating them needs no index tensor (no host->device copy)
    g_t = [torch.zeros_like(t[0]) for _ in range(t.shape[0])] if need_t else None
    a = [torch.zeros(s.shape, dtype=hdt, device=dev) for s in store[0]]

    def inject(a_list, state_idx):
        k = pos.get(state_idx)
        if k is None:
            return a_list
        return [al if g is None else al + g[k].to(hdt) for al, g in zip(a_list, gouts)]

    a = inject(a, n_steps)
    scaled = plan.scaler is not None and plan.scaler.dynamic
    stats = plan.stats
    if scaled:
        # a non-finite incoming gradient (a NaN loss) is not an fp16 overflow: no retries and
        # no change to the scaler; the NaN/inf reach the caller as with backprop (one sync)
        seeds = [g for g in gouts if g is not None]
        stats.syncs += 1
        if seeds and not bool(torch.stack([torch.isfinite(g).all() for g in seeds]).all()):
            scaled = False
    nfe0 = plan.fld.nfe
    td = t.detach()
    grid = _grid(plan, td)  # the forward's (kept on the plan)
    unchecked = [True] if plan.hidden_check else []  # the first VJP walks its graph

    def vjp_step(s, seed):
        i, j = steps[s]
        m = plan.ms[i]
        with torch.enable_grad():
            yin = [x.detach().to(hdt).requires_grad_() for x in store[s]]
            if need_t:
                ta = td[i].clone().requires_grad_()
                tb = td[i + 1].clone().requires_grad_()
                co = _coeffs(plan.tab, *_times(ta, tb, j, m))  # the grid's values, of t
                tin = [ta, tb]
            else:
                co = grid[s]
                tin = []
            plan.fld.replay_rng(s)
            yout = _rk_step(plan.fld, plan.tab, co, yin, plan.pol)
            inputs = yin + live + tin
            if unchecked:
                _check_hidden(yout, inputs)
                unchecked.clear()
            g = torch.autograd.grad(yout, inputs, grad_outputs=seed, allow_unused=True)
        gy = [torch.zeros_like(y) if x is None else x for x, y in zip(g[:nl], yin)]
        gp = list(g[nl : nl + len(live)])
        gt = list(g[nl + len(live) :])
        gt = [torch.zeros_like(td[0]) if x is None else x for x in gt]
        return i, gy, gp, gt

    def vjp_graphed(s, seed):
        i = steps[s][0]
        tau, h = grid[s].tau, grid[s].h
        replay = _captured_backward(plan, store[s], seed, tau, h, live, False)
        if replay is None:
            return vjp_step(s, seed)
        out = replay(*store[s], *seed, tau, h)
        # the state adjoint outlives the next replay; parameter gradients are consumed first
        return i, [v.clone() for v in out[:nl]], out[nl:], []

    tab = plan.tab
    n_st = tab.stages
    # stage i influences the step (its adjoint mu_i is not structurally zero)
    alive = [False] * n_st
    for i in range(n_st - 1, -1, -1):
        alive[i] = tab.b[i] != 0.0 or any(
            tab.a[r][i] != 0.0 and alive[r] for r in range(i + 1, n_st)
        )
    # k_i is needed (no-grad recomputation) to form the input of a later evaluated stage
    feeds = [False] * n_st
    for i in range(n_st - 1, -1, -1):
        feeds[i] = any(tab.a[r][i] != 0.0 and (alive[r] or feeds[r]) for r in range(i + 1, n_st))
    dead = [not x for x in alive]
    # nu_r is read by mu_q for q < r with a_rq != 0; last_use[r] is the smallest such q
    reads = [[q for q in range(r) if tab.a[r][q] != 0.0] for r in range(n_st)]
    last_use = [min(qs, default=r) for r, qs in enumerate(reads)]
    # k_q is last read when the input of its first evaluated consumer stage is formed
    first_reader = [
        min((r for r in range(q + 1, n_st) if tab.a[r][q] != 0.0 and alive[r]), default=-1)
        for q in range(n_st)
    ]

    def vjp_stage(s, seed):
        """One step's VJP rebuilding one stage's graph at a time (``recompute="stage"``).

        Memory: the stages are kept in the dtype ``func`` returned (16-bit under autocast;
        exact, the forward casts them up to ``H`` before use), the step state is cast to
        ``H`` per stage, and the stage seed ``mu_q`` is cast to that dtype before the VJP
        (what autograd's cast backward would do)."""
        i, j = steps[s]
        m = plan.ms[i]
        co = grid[s]
        h = co.h

        def state():  # y in H (a fresh copy when the store is 16-bit)
            return [x.detach().to(hdt) for x in store[s]]

        def stage_input(q):  # Y_q without a graph, one fresh buffer per leaf (q >= 1)
            return _axpy(store[s], ks, co.ca[q], hdt, fresh=True)

        ks: list[list[Tensor] | None] = [None] * n_st
        with torch.no_grad(), plan.pol.context(dev, cache=True):
            for q in range(n_st):
                if feeds[q]:
                    tq = co.ts[q]
                    yq = state() if q == 0 else stage_input(q)
                    plan.fld.replay_rng(s, q)
                    ks[q] = plan.fld.raw(tq, yq)
                    del yq
        gy = list(seed)
        own_gy = False
        gp: list[Tensor | None] = [None] * len(live)
        nus: dict[int, list[Tensor]] = {}
        d_tau = d_h = None
        kdt_seen: torch.dtype | None = None  # dtype f returned for the last rebuilt stage
        for q in range(n_st - 1, -1, -1):
            if dead[q]:
                continue
            # mu_q = h (b_q lam + sum_{r>q} a_rq nu_r), in H, cast to the dtype f returns
            # (what autograd's cast backward would do) before the graph is built, so that the
            # nu_r are released first
            mu = [_stage_seed(tab, q, h, lam, nus, leaf, kdt_seen) for leaf, lam in enumerate(seed)]
            for r in [r for r in nus if last_use[r] >= q]:
                del nus[r]
            yq = state() if q == 0 else stage_input(q)
            incs = []
            if need_t:  # the increments sum_j a_qj k_j enter the time gradient
                incs = [_lincomb(tab.a[q][:q], ks, leaf, hdt) for leaf in range(nl)]
            for r in range(q):
                if first_reader[r] == q:
                    ks[r] = None  # no later-processed stage reads k_r
            tq = co.ts[q]
            with torch.enable_grad():
                if need_t:
                    tq = tq.detach().requires_grad_()
                # f's input X = Y_q + z with z = -0.0 (an exact identity, also for signed
                # zeros) a 0-d leaf, added in place: the VJP takes the gradient at X's graph
                # edge, so X can be freed once f's graph holds what it needs (a 16-bit copy
                # under autocast). A state that is the stored tensor itself (first stage, fp32
                # storage) stays a leaf: it costs no memory.
                z = torch.full((), -0.0, dtype=hdt, device=dev, requires_grad=True)
                xs = [
                    x.detach().requires_grad_()
                    if q == 0 and x.data_ptr() == st.data_ptr()
                    else x.detach().add_(z)
                    for x, st in zip(yq, store[s])
                ]
                del yq
                x_in = [x if x.is_leaf else get_gradient_edge(x) for x in xs]
                plan.fld.replay_rng(s, q)
                with plan.pol.context(dev):
                    k = plan.fld.raw(tq, xs)
                del xs
            if unchecked:
                known = [x for x in x_in if isinstance(x, Tensor)] + live + [z]
                _check_hidden(k, known + ([tq] if need_t else []),
                              [x for x in x_in if not isinstance(x, Tensor)])  # fmt: skip
                unchecked.clear()
            # leaves of f's output that depend on no input (e.g. constants) carry no graph
            kg = [leaf for leaf, kl in enumerate(k) if kl.requires_grad]
            # (as edges, so that k can be freed before the VJP; torch < 2.5 takes tensors only)
            k_out = [get_gradient_edge(k[leaf]) if _edge_outputs() else k[leaf] for leaf in kg]
            mm = [mu[leaf] if mu[leaf].dtype == k[leaf].dtype else mu[leaf].to(k[leaf].dtype)
                  for leaf in kg]  # fmt: skip
            del mu
            kdt_seen = k[0].dtype
            lam_k = None
            if need_t and tab.b[q] != 0.0:  # b_q lam . k_q, reduced in H
                for lam, kl in zip(seed, k):
                    dd = (lam * kl.detach().to(hdt)).sum() * tab.b[q]
                    lam_k = dd if lam_k is None else lam_k + dd
                del lam, kl
            del k
            inputs = x_in + live + ([tq] if need_t else [])
            if kg:
                g = torch.autograd.grad(k_out, inputs, grad_outputs=mm, allow_unused=True)
            else:
                g = (None,) * len(inputs)
            del k_out, x_in, mm
            nu = [
                torch.zeros(x.shape, dtype=hdt, device=dev) if gx is None else gx
                for gx, x in zip(g[:nl], store[s])
            ]
            if own_gy:
                for leaf in range(nl):
                    gy[leaf].add_(nu[leaf])
            else:  # the first sum allocates gy; the seed itself is never modified
                gy = [a_ + n_ for a_, n_ in zip(gy, nu)]
                own_gy = True
            for w in range(len(live)):
                gw = g[nl + w]
                if gw is not None:
                    gp[w] = gw if gp[w] is None else gp[w] + gw
            if reads[q]:
                nus[q] = nu
            if need_t:
                gq = g[-1] if g[-1] is not None else torch.zeros_like(td[0])
                dh = None
                if tab.c[q] != 0.0:
                    dh = gq * tab.c[q]
                # nu_q . (sum_j a_qj k_j) and b_q lam . k_q, reduced in H
                dots = [(n_ * inc).sum() for n_, inc in zip(nu, incs) if inc is not None]
                if lam_k is not None:
                    dots.append(lam_k)
                for dd in dots:
                    dd = dd.to(td.dtype)
                    dh = dd if dh is None else dh + dd
                d_tau = gq if d_tau is None else d_tau + gq
                if dh is not None:
                    d_h = dh if d_h is None else d_h + dh
            del g, nu, incs
            ks[q] = None
        gt: list[Tensor] = []
        if need_t:
            z = torch.zeros_like(td[0])
            d_tau = z if d_tau is None else d_tau
            d_h = z if d_h is None else d_h
            # tau = ta + j h, h = (tb - ta) / m
            d_hh = d_h if j == 0 else d_h + d_tau * j
            gt = [d_tau - d_hh / m, d_hh / m]
        return i, gy, gp, gt

    if plan.recompute == "stage":
        vjp = vjp_stage
    else:
        vjp = vjp_graphed if plan.graphs and not need_t else vjp_step

    reached = [False] * len(live)  # a parameter no step depends on gets None, as in backprop
    if not scaled:
        for s in range(n_steps - 1, -1, -1):
            i, gy, gp, gt = vjp(s, a)
            a = inject(gy, s)
            accs, adds = [], []
            for q, x in enumerate(gp):
                if x is not None:
                    reached[q] = True
                    accs.append(p_acc[q])
                    adds.append(x if x.dtype == p_acc[q].dtype else x.to(p_acc[q].dtype))
            if accs:  # in place (no second accumulator), one multi-tensor kernel on a GPU
                torch._foreach_add_(accs, adds)
            if need_t:
                g_t[i] = g_t[i] + gt[0].to(t.dtype)
                g_t[i + 1] = g_t[i + 1] + gt[1].to(t.dtype)
    else:
        sc = plan.scaler
        saved = (sc.headroom, sc.clean_passes, sc.total_overflows)  # restored on failure
        scales = torch.zeros(n_steps, dtype=torch.float32, device=dev)
        ok = torch.ones((), dtype=torch.bool, device=dev)
        fail_at = torch.full((), -1, dtype=torch.long, device=dev)
        every = max(1, math.ceil(n_steps / sc.checks))
        retries = 0
        s = n_steps - 1
        since = 0
        while s >= 0:
            # (an empty leaf, e.g. a zero-size batch, has no maximum: it counts as 0)
            amax = torch.stack([al.abs().amax() if al.numel() else al.new_zeros(()) for al in a])
            amax = amax.amax()
            S = sc.scale_for(amax)
            i, gy, gp, gt = vjp(s, [al * S.to(hdt) for al in a])
            inv = (1.0 / S).to(hdt)
            flags = [torch.isfinite(x).all() for x in gy]
            flags += [torch.isfinite(x).all() for x in gp if x is not None]
            flags += [torch.isfinite(x).all() for x in gt]
            fin = torch.stack(flags).all()
            fail_at = torch.where(ok & ~fin, torch.full_like(fail_at, s), fail_at)
            ok = ok & fin
            cand = inject([x * inv for x in gy], s)
            a = [torch.where(ok, c, al) for c, al in zip(cand, a)]
            for q, x in enumerate(gp):
                if x is not None:
                    reached[q] = True
                    dq = p_acc[q].dtype
                    p_acc[q].add_(torch.where(ok, x.to(dq) * inv.to(dq), 0.0))
            if need_t:
                for k, x in ((i, gt[0]), (i + 1, gt[1])):
                    g_t[k] = torch.where(ok, g_t[k] + x.to(t.dtype) * inv.to(t.dtype), g_t[k])
            scales[s] = S
            s -= 1
            since += 1
            if since >= every or s < 0:
                since = 0
                stats.syncs += 1
                if not bool(ok):
                    retries += 1
                    if retries > sc.max_retries:
                        # a failed call leaves the scaler as it found it (either way out)
                        sc.headroom, sc.clean_passes, sc.total_overflows = saved
                        raise FloatingPointError(
                            f"fp16 adjoint still overflows after {sc.max_retries} halvings of "
                            "the scale; use precision='bf16' or 'fp32'"
                        )
                    try:
                        sc._overflow()
                    except FloatingPointError:
                        sc.headroom, sc.clean_passes, sc.total_overflows = saved
                        raise
                    s = int(fail_at)
                    stats.syncs += 1
                    ok = torch.ones((), dtype=torch.bool, device=dev)
                    fail_at = torch.full((), -1, dtype=torch.long, device=dev)
        sc._end_of_backward(retries)
        stats.retries += retries
        stats.scales = scales
    stats.nfe += plan.fld.nfe - nfe0
    gy0 = [al for al in a]
    g_t = torch.stack(g_t) if need_t else None
    gps = [p.to(q.dtype) if r else None for p, q, r in zip(p_acc, live, reached)]
    return (None, g_t, *gy0, *gps)


# --------------------------------------------------------------------------- validation
_MAX_STEPS = 10_000_000  # a larger grid is almost surely a mistake in step_size's units


def _check_t(t: Any, device: torch.device, hdt: torch.dtype) -> tuple[Tensor, list[float]]:
    if not isinstance(t, Tensor):
        try:
            t = torch.as_tensor(t, dtype=hdt, device=device)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"t must be a 1-D tensor of times, got {type(t).__name__}") from e
    if t.ndim != 1:
        raise ValueError(
            f"t must be 1-D, got shape {tuple(t.shape)}; pass a grid like torch.linspace(0, 1, 11)"
        )
    if t.numel() < 2:
        raise ValueError(f"t needs at least two points (start and end), got {t.numel()}")
    if not _tree.is_float(t):
        raise TypeError(f"t must be a real floating tensor, got {t.dtype}; use t.to(y0.dtype)")
    if t.device != device:
        raise ValueError(f"t is on {t.device} but y0 is on {device}; move them to one device")
    given = t.dtype
    if t.dtype != hdt:
        # step sizes and stage times are formed from t in the state's precision, and func
        # receives them so (as torchdiffeq does): a 16-bit t is widened, a float64 t for a
        # float32 state narrowed (a differentiable cast: time gradients reach the caller's t)
        t = t.to(hdt)
    host = _host(t.detach().to("cpu", torch.float64))  # the one sync of the setup
    if any(isinstance(x, list) for x in host):
        raise ValueError(
            "t is batched by torch.func.vmap; all samples share one time grid: vmap over y0 "
            "or the parameters, or make one call per grid"
        )
    if not all(math.isfinite(x) for x in host):
        raise ValueError("t contains inf or NaN; all times must be finite")
    d = [b - a for a, b in itertools.pairwise(host)]
    if not (all(x > 0 for x in d) or all(x < 0 for x in d)):
        hint = ""
        if given.itemsize > t.dtype.itemsize:
            hint = f" in {t.dtype}, the state's precision (give y0 as {given} to resolve them)"
        raise ValueError(f"t must be strictly increasing or strictly decreasing (no repeats){hint}")
    return t, host


def _check_y0(leaves: list[Tensor]) -> torch.device:
    dev = leaves[0].device
    for i, y in enumerate(leaves):
        name = "y0" if len(leaves) == 1 else f"y0 leaf {i}"
        if not _tree.is_float(y):
            raise TypeError(
                f"{name} has dtype {y.dtype}; the state must be a real floating "
                "tensor, e.g. y0.float()"
            )
        if y.device != dev:
            raise ValueError(f"{name} is on {y.device} but y0 leaf 0 is on {dev}")
    if _functorch_active():  # (vmap: no data-dependent host check possible)
        return dev
    fin = torch.stack([torch.isfinite(y.detach()).all() for y in leaves]).all()
    if not bool(fin):
        raise ValueError("y0 contains inf or NaN; the initial state must be finite")
    return dev


@functools.cache
def _edge_outputs() -> bool:
    """Whether ``torch.autograd.grad`` takes gradient edges as outputs (torch >= 2.5)."""
    x = torch.ones((), requires_grad=True)
    with torch.enable_grad():
        y = x * 2.0
    try:
        torch.autograd.grad([get_gradient_edge(y)], [x], grad_outputs=[torch.ones(())])
    except (AttributeError, TypeError, RuntimeError):
        return False
    return True


def _host(x: Tensor) -> Any:
    """``x.tolist()`` (a Python number for a 0-d tensor), also inside torch.func transforms:
    torch < 2.5 refuses ``.tolist()``/``.item()`` under ``grad``, ``vjp`` or ``jacrev``, even
    for a tensor the transform does not track, and ``vmap`` refuses it for a batched tensor,
    which here gives the values of its whole batch (one more list level per ``vmap``)."""
    x = x.detach()
    if not _functorch_active():
        return x.tolist()
    ft = torch._C._functorch
    while ft.is_gradtrackingtensor(x) or ft.is_batchedtensor(x):
        x = ft.get_unwrapped(x)
    with torch._C._DisableFuncTorch():
        return x.tolist()


def _flat(v: Any) -> list:
    """The scalars of a nested list (``_host`` of a batched tensor), or ``[v]``."""
    return [w for u in v for w in _flat(u)] if isinstance(v, list) else [v]


def _functorch_active() -> bool:
    """Whether a torch.func transform (vmap, grad, jacrev, ...) is tracing this call."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


def _steps_per_interval(
    host: list[float], spi: int, step_size: Any, eps: float = 2.0**-52
) -> list[int]:
    """Steps per interval of ``host``; ``eps`` is the machine epsilon of the times' dtype."""
    n = len(host) - 1
    if isinstance(spi, bool) or not isinstance(spi, numbers.Integral) or spi < 1:
        raise ValueError(f"steps_per_interval must be a positive int, got {spi!r}")
    if step_size is None:
        ms = [int(spi)] * n
    else:
        if spi != 1:
            raise ValueError("give either steps_per_interval or step_size, not both")
        if isinstance(step_size, Tensor) and step_size.numel() == 1 and _tree.is_float(step_size):
            step_size = float(step_size)  # (a 0-d tensor; the setup reads t to the host anyway)
        if (
            isinstance(step_size, bool)
            or not isinstance(step_size, numbers.Real)
            or not (math.isfinite(step_size) and step_size > 0)
        ):
            raise ValueError(f"step_size must be a positive finite number, got {step_size!r}")
        # |b − a| carries the rounding of the times (float32 0.1 is 0.1000000015): a ratio
        # within that rounding (or 1e-9) of an integer is that integer, not one step more
        ms = []
        for a, b in itertools.pairwise(host):
            tol = max(1e-9, 4 * eps * max(abs(a), abs(b)) / step_size)
            ms.append(max(1, math.ceil(abs(b - a) / step_size - tol)))
    if sum(ms) > _MAX_STEPS:
        raise ValueError(
            f"this grid needs {sum(ms):,} RK steps (more than {_MAX_STEPS:,}); check "
            "step_size / steps_per_interval against the length of t"
        )
    return ms


# --------------------------------------------------------------------------- entry points
def _owning_module(func: Callable) -> nn.Module | None:
    """``func`` if it is an ``nn.Module``, the module a bound method belongs to, else None."""
    if isinstance(func, MethodType) and isinstance(func.__self__, nn.Module):
        return func.__self__
    return func if isinstance(func, nn.Module) else None


def _bind_module(func: Callable) -> nn.Module | None:
    """The module through which ``func``'s parameters and buffers can be rebound by name
    (``functional_call``): ``func`` itself, a :class:`_MethodModule` around a module's
    method, or None."""
    if isinstance(func, nn.Module):
        return func
    return _MethodModule(func) if _owning_module(func) is not None else None


def _bind_target(
    func: Callable,
    plist: list[Tensor],
    who: str = "DiscreteAdjoint(cuda_graphs=True)",
    instead: str = "use cuda_graphs=False",
) -> tuple[nn.Module | None, list[str]]:
    """The module through which the parameters ``plist`` are rebound by name (a captured
    backward step's aliases, see ``_captured_backward``; the inputs of :class:`_FuncAdjoint`),
    and their names in it."""
    bind = _bind_module(func)
    names = {} if bind is None else {id(p): n for n, p in bind.named_parameters()}
    missing = sum(id(p) not in names for p in plist)
    if missing:
        raise ValueError(
            f"{who} needs the tensors it differentiates for to be parameters of func (an "
            f"nn.Module, or a method of one); {missing} of the {len(plist)} tensors in params "
            f"are not among them. Register them on the module (nn.Parameter), or {instead}"
        )
    return bind, [names[id(p)] for p in plist]


def _prepare(
    func,
    y0,
    t,
    method,
    gradient,
    precision,
    steps_per_interval,
    step_size,
    params,
    scaler,
    output_dtype,
):
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}")
    leaves, spec = _tree.flatten(y0)
    dev = _check_y0(leaves)
    hdt = leaves[0].dtype if leaves[0].dtype in (torch.float32, torch.float64) else torch.float32
    for y in leaves[1:]:
        if y.dtype != leaves[0].dtype:
            raise TypeError(
                f"all y0 leaves must share one dtype; got {leaves[0].dtype} and {y.dtype}"
            )
    t, host = _check_t(t, dev, hdt)
    tab = get_tableau(method)
    grad = _get_gradient(gradient)
    pol = get_precision(precision, dev)
    if pol.compute is not None and hdt == torch.float64:
        warnings.warn(
            f"precision={precision!r} on a float64 state: autocast leaves float64 operations "
            f"alone, so the stages run in float64 ({pol.compute} only reaches float32 tensors). "
            "For mixed precision use a float32 state and func (y0.float(), func.float())",
            UserWarning,
            stacklevel=_outside_stacklevel(),  # the caller's line, also through OTFlow etc.
        )
    ms = _steps_per_interval(host, steps_per_interval, step_size, torch.finfo(t.dtype).eps)
    if params is None:
        plist = (
            [p for p in func.parameters() if p.requires_grad] if isinstance(func, nn.Module) else []
        )
    else:
        plist = list(params)
        for p in plist:
            if not isinstance(p, Tensor):
                raise TypeError(f"params must be tensors, got {type(p).__name__}")
        seen: set[int] = set()  # a tensor listed twice gets its gradient once
        plist = [p for p in plist if p.requires_grad and not (id(p) in seen or seen.add(id(p)))]
    if scaler is not None and not isinstance(scaler, AdjointScaler):
        raise TypeError(
            "scaler must be an odeflow.AdjointScaler (AdjointScaler(dynamic=False) "
            "to pair with torch.amp.GradScaler)"
        )
    if pol.compute is torch.float16 and isinstance(grad, DiscreteAdjoint):
        scaler = AdjointScaler() if scaler is None else scaler
    else:
        scaler = None
    if output_dtype is not None and not (
        isinstance(output_dtype, torch.dtype) and output_dtype.is_floating_point
    ):
        raise TypeError(
            f"output_dtype must be a floating torch.dtype (e.g. torch.float64), got "
            f"{output_dtype!r}"
        )
    out_dtypes = [output_dtype or y.dtype for y in leaves]
    fld = _Field(func, spec, leaves, hdt)
    fld.stages = tab.stages
    plan = _Plan(fld, tab, pol, ms, hdt, out_dtypes, scaler, len(leaves), AdjointStats())
    plan.hidden_check = params is None and _owning_module(func) is not None
    if isinstance(grad, DiscreteAdjoint):
        plan.recompute = grad.recompute
        fld.per_call = grad.recompute == "stage"
        plan.graphs = grad.cuda_graphs and _graphs.enabled(dev)
        if plan.graphs:
            plan.bind_module, plan.param_names = _bind_target(func, plist)
            mod = _owning_module(func)
            # every tensor the captured kernels read by address
            extra = [*mod.parameters(), *mod.buffers()] if mod is not None else []
            seen: set[int] = set()
            plan.watched = [x for x in plist + extra if not (id(x) in seen or seen.add(id(x)))]
            plan.params = plist
            # recorded kernels also depend on the state's structure (leaf order), t's dtype
            # (the static time buffers) and train/eval mode (dropout, batch norm)
            modes = tuple(m.training for m in mod.modules()) if mod is not None else ()
            plan.graph_key = (spec, t.dtype, modes)
    return plan, leaves, spec, t, grad, plist, params is None and not isinstance(func, nn.Module)


def _run(
    func,
    y0,
    t,
    method,
    gradient,
    precision,
    steps_per_interval,
    step_size,
    params,
    scaler,
    output_dtype,
):
    plan, leaves, spec, t, grad, plist, closure_risk = _prepare(
        func,
        y0,
        t,
        method,
        gradient,
        precision,
        steps_per_interval,
        step_size,
        params,
        scaler,
        output_dtype,
    )
    needs = torch.is_grad_enabled() and (
        any(y.requires_grad for y in leaves) or t.requires_grad or len(plist) > 0
    )
    if isinstance(grad, Backprop) and torch.is_grad_enabled():
        outs = _integrate(plan, t, leaves, None)
        outs = [o.to(d) for o, d in zip(outs, plan.out_dtypes)]
    elif not needs:
        if torch.is_grad_enabled():
            _attribute_check(plan, t, leaves, plist)
            if closure_risk:
                _closure_check(plan, t, leaves)
        with torch.no_grad():
            outs = _integrate(plan, t, leaves, None)
        outs = [o.to(d) for o, d in zip(outs, plan.out_dtypes)]
    else:
        if _functorch_active():
            outs = _func_adjoint(plan, func, t, leaves, plist)
            return plan, spec, t, _tree.unflatten(spec, outs)
        _attribute_check(plan, t, leaves, plist)
        if closure_risk:
            _closure_check(plan, t, leaves)
        outs = list(_AdjointFunction.apply(plan, t, *leaves, *plist))
    return plan, spec, t, _tree.unflatten(spec, outs)


def _attribute_check(plan: _Plan, t: Tensor, leaves: list[Tensor], plist: list[Tensor]) -> None:
    """A module (or a module's method) that uses a tensor requiring grad held as a plain
    attribute (e.g. a conditioning input set before the solve) would lose its gradient.

    Attributes are scanned (cheap); only if one requires grad is ``func`` evaluated once
    with a graph to see whether its output depends on it (an attribute that merely keeps a
    tensor from an earlier call, e.g. for logging, is fine)."""
    module = _owning_module(plan.fld.func)
    if module is None:
        return
    declared = {id(p) for p in plist}
    found = {
        id(v): (f"{prefix}.{name}" if prefix else name, v)
        for prefix, m in module.named_modules()
        for name, v in vars(m).items()
        if isinstance(v, Tensor)
        and v.requires_grad
        and not isinstance(v, nn.Parameter)
        and id(v) not in declared
    }
    if not found:
        return
    suspects = {i: where for i, (where, _) in found.items()}
    tensors = {i: v for i, (_, v) in found.items()}
    nfe = plan.fld.nfe
    with torch.enable_grad():
        ks = plan.fld(t[0].detach(), [y.detach().to(plan.hdt) for y in leaves])
    plan.fld.nfe = nfe
    nodes = {v.grad_fn: i for i, v in tensors.items() if v.grad_fn is not None}
    stack = [k.grad_fn for k in ks if k.grad_fn is not None]
    seen = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        var = getattr(node, "variable", None)  # an AccumulateGrad: a leaf tensor
        hit = nodes.get(node, id(var) if var is not None and id(var) in suspects else None)
        if hit is not None:
            where = suspects[hit]
            raise ValueError(
                f"func.{where} is a tensor that requires grad but is not a parameter: the "
                "discrete adjoint differentiates only for the parameters (or params=[...]) "
                f"and would give it no gradient. Pass params=[*func.parameters(), "
                f"func.{where}], or use gradient='backprop'"
            )
        stack.extend(n for n, _ in node.next_functions)


def _closure_check(plan: _Plan, t: Tensor, leaves: list[Tensor]) -> None:
    """A plain callable that closes over tensors needing grad would lose those gradients."""
    with torch.enable_grad():
        ks = plan.fld(t[0].detach(), [y.detach().to(plan.hdt) for y in leaves])
    if any(k.requires_grad for k in ks):
        if _functorch_active():
            _refuse_transformed_closure()
        raise ValueError(
            "func depends on tensors that require grad but are not visible to the discrete "
            "adjoint; pass them as params=[...], make func an nn.Module, or use "
            "gradient='backprop'"
        )


def _refuse_transformed_closure():
    raise ValueError(
        "func depends on a tensor that the torch.func transform differentiates for but that is "
        "not one of its parameters (a closed-over tensor, or a tensor attribute); the discrete "
        "adjoint would give it no gradient. Make it a parameter of an nn.Module func and pass "
        "it through torch.func.functional_call(module, params, ...), or use "
        "gradient='backprop'"
    )


def odeint(
    func: Callable[[Tensor, Any], Any],
    y0: Tensor | Sequence[Tensor] | dict[str, Tensor],
    t: Tensor,
    *,
    method: str | ButcherTableau = "rk4",
    gradient: str | DiscreteAdjoint | Backprop = "adjoint",
    precision: str | PrecisionPolicy = "fp32",
    steps_per_interval: int = 1,
    step_size: float | None = None,
    params: Sequence[Tensor] | None = None,
    scaler: AdjointScaler | None = None,
    output_dtype: torch.dtype | None = None,
) -> Any:
    r"""Solve ``dy/dt = func(t, y)`` on a fixed grid, differentiable by the discrete adjoint.

    Each step of size ``h`` is an explicit Runge–Kutta step
    ``y_{k+1} = y_k + h Σ_i b_i f(t_k + c_i h, y_k + h Σ_j a_ij k_j)``. With the default
    ``gradient="adjoint"`` the backward pass runs the adjoint recursion of exactly this
    scheme, ``λ_k = λ_{k+1} + (∂Φ_k/∂y_k)^T λ_{k+1}`` (Φ_k the step map) with parameter and
    time gradients ``Σ_k (∂Φ_k/∂θ)^T λ_{k+1}``, ``(∂Φ_k/∂t)^T λ_{k+1}``; in exact arithmetic
    it equals backpropagation through the same steps.

    Mixed precision (``bf16``/``fp16``): stages run under ``torch.autocast`` on the state's
    device; the state update, adjoint and accumulators stay in the state dtype (fp32);
    step states are stored in 16 bit; fp16 adds sync-free dynamic adjoint scaling
    (:class:`AdjointScaler`).

    Args:
        func: the vector field ``func(t, y) -> dy/dt``, a callable or ``nn.Module``; ``t`` is a
            0-d tensor, ``y`` has the structure of ``y0``. ``torch.compile(module)`` works
            with every gradient mode: the discrete adjoint calls it with grad mode off
            (forward) and on (rebuild), i.e. two compiled graphs, and no recompilation per
            step or call.
        y0: initial state: a tensor ``(*shape)``, a tuple/list or a dict of tensors (any
            shapes, one floating dtype).
        t: ``(n,)`` output times, ``n >= 2``, strictly increasing or decreasing, finite;
            converted to the state's precision (differentiably; float32 for a 16-bit state)
            before steps and stage times are formed from it, so ``func`` receives ``t`` in
            the state's dtype, as with torchdiffeq.
        method: a name (``euler, midpoint, heun, ralston, rk3, ssprk3, rk4, rk38``) or a
            :class:`ButcherTableau`. ``rk4`` is the classical method; torchdiffeq's ``rk4`` is
            the 3/8 rule (``rk38`` here).
        gradient: ``"adjoint"`` (exact discrete adjoint, default), ``"backprop"``, or
            :class:`DiscreteAdjoint` / :class:`Backprop`; ``DiscreteAdjoint(recompute="stage")``
            rebuilds one stage's graph at a time (less memory when a step's graph dominates,
            ``s − 1`` extra evaluations of ``func`` per step).
        precision: ``"fp32" | "tf32" | "bf16" | "fp16" | "fp64"`` or a :class:`PrecisionPolicy`.
            A 16-bit compute dtype needs a float32 state and ``func`` (autocast does not cast
            float64; on a float64 state a ``UserWarning`` says so). On a CPU that emulates
            16-bit matrix products, the first such solve warns with a
            :class:`~odeflow.PerformanceWarning`: there fp32 is the faster choice.
        steps_per_interval: RK steps between consecutive output times (intermediate states
            are not returned).
        step_size: alternatively, the largest step; each interval gets
            ``ceil(|Δt| / step_size)`` equal steps.
        params: tensors the gradient is taken for (each once, however often listed);
            default: the parameters of an ``nn.Module`` func that require grad. A plain
            callable that closes over tensors requiring grad, or a module holding such a
            tensor as a plain attribute (e.g. a conditioning input), must list them here
            (else a ``ValueError`` says so; for a module whose field reaches such a tensor
            some other way, e.g. a layer that is not a submodule, the backward pass raises
            it). Parameters no step depends on get ``None``.
        scaler: an :class:`AdjointScaler` persisting the fp16 adjoint scale across calls
            (default: a fresh one per call); ``AdjointScaler(dynamic=False)`` turns internal
            scaling off to pair with ``torch.amp.GradScaler``. Used only for fp16 + adjoint.
        output_dtype: dtype of the returned trajectory (default: ``y0``'s dtype).

    Returns:
        The trajectory ``(n, *y0.shape)`` (per leaf, same structure as ``y0``), ``ys[0]``
        equal to ``y0``, in ``output_dtype`` or ``y0``'s dtype.

    Raises:
        ValueError: ``t`` not 1-D, fewer than two points, not strictly monotone, non-finite,
            or on another device than ``y0``; ``y0`` non-finite; ``func`` output of the wrong
            shape, or ``func`` modifying its input ``y`` in place; tensors requiring grad
            that the adjoint cannot see (see ``params``); a grid of more than 10⁷ steps;
            unknown method/precision/gradient name (the message lists the valid ones).
        TypeError: integer/complex ``y0`` or ``t``; ``func`` returning a non-tensor, a
            different structure, a non-floating or a higher-precision dtype; a non-floating
            ``output_dtype``.
        FloatingPointError: fp16 adjoint overflow that scaling cannot recover.
        RuntimeError: (autograd's) ``y0`` or a parameter changed in place between the solve
            and its backward pass.

    Higher-order gradients (``create_graph=True``) work with every gradient mode; through
    the discrete adjoint they replay the solve with a graph (see :class:`DiscreteAdjoint`).
    ``torch.func``: every transform works with either gradient mode, ``grad``, ``vjp``,
    ``jacrev``, ``jacfwd``, ``hessian`` and ``vmap`` of them (per-sample gradients). The
    discrete adjoint then differentiates for the parameters of an ``nn.Module`` ``func``
    handed to the transform by ``torch.func.functional_call``, with the same gradients as
    without a transform; it refuses, naming the fix, a tensor being differentiated that
    ``func`` reads but that is not among its parameters, and ``precision="fp16"`` (its
    dynamic scaling retries steps after a host check). Under a transform it rebuilds whole
    steps (``recompute="stage"`` and ``cuda_graphs`` do not apply).

    Example (per-sample parameter gradients through the adjoint):
        >>> import torch, odeflow
        >>> from torch.func import functional_call, grad, vmap
        >>> class Field(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lin = torch.nn.Linear(2, 2).double()
        ...     def forward(self, t, y):
        ...         return torch.tanh(self.lin(y))
        >>> class NeuralODE(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.field = Field()
        ...     def forward(self, y0):
        ...         t = torch.tensor([0.0, 1.0], dtype=torch.float64)
        ...         return odeflow.odeint(self.field, y0, t)[-1]
        >>> model = NeuralODE()
        >>> params = {n: p.detach() for n, p in model.named_parameters()}
        >>> loss = lambda p, y: functional_call(model, p, (y[None],)).square().sum()
        >>> per_sample = vmap(grad(loss), in_dims=(None, 0))(params, torch.ones(5, 2).double())
        >>> per_sample["field.lin.weight"].shape
        torch.Size([5, 2, 2])

    Reference:
        Celledoni, Owren, Ruthotto, Yang, *Mixed precision training of neural ODEs*,
        arXiv:2510.23498; Chen et al., *Neural ODEs*, arXiv:1806.07366.

    Example:
        >>> import torch, odeflow
        >>> y0 = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
        >>> t = torch.linspace(0, 1, 3, dtype=torch.float64)
        >>> ys = odeflow.odeint(lambda t, y: -y, y0, t, steps_per_interval=10)
        >>> round(ys[-1].item(), 6), ys.shape
        (0.367879, torch.Size([3, 1]))
        >>> ys[-1].sum().backward(); round(y0.grad.item(), 6)
        0.367879
    """
    return _run(
        func,
        y0,
        t,
        method,
        gradient,
        precision,
        steps_per_interval,
        step_size,
        params,
        scaler,
        output_dtype,
    )[3]


def solve(
    func: Callable[[Tensor, Any], Any],
    y0: Tensor | Sequence[Tensor] | dict[str, Tensor],
    t: Tensor,
    *,
    method: str | ButcherTableau = "rk4",
    gradient: str | DiscreteAdjoint | Backprop = "adjoint",
    precision: str | PrecisionPolicy = "fp32",
    steps_per_interval: int = 1,
    step_size: float | None = None,
    params: Sequence[Tensor] | None = None,
    scaler: AdjointScaler | None = None,
    output_dtype: torch.dtype | None = None,
) -> Solution:
    r"""Like :func:`odeint` but return a :class:`Solution` (trajectory, NFE, steps, status).

    ``nfe`` counts every call of ``func`` in the forward pass, including the one extra call
    made when ``func`` is a plain callable (not an ``nn.Module``), ``params`` is not given and
    grad mode is on: it checks that ``func`` does not close over tensors requiring grad.
    The status check costs one host sync per call. ``Solution.stats`` (adjoint scales,
    retries, syncs, backward NFE) is filled when ``backward`` runs through ``ys``.

    Args:
        func, y0, t, method, gradient, precision, steps_per_interval, step_size, params,
        scaler, output_dtype: exactly as in :func:`odeint`.

    Returns:
        A :class:`Solution`.

    Raises:
        The errors of :func:`odeint`.

    Reference:
        Celledoni, Owren, Ruthotto, Yang, arXiv:2510.23498.

    Example:
        >>> import torch, odeflow
        >>> sol = odeflow.solve(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]),
        ...                     steps_per_interval=4)
        >>> sol.nfe, sol.steps, sol.status.value  # 4 steps x 4 stages + 1 closure check
        (17, 4, 'success')
    """
    plan, _spec, tt, ys = _run(
        func,
        y0,
        t,
        method,
        gradient,
        precision,
        steps_per_interval,
        step_size,
        params,
        scaler,
        output_dtype,
    )
    leaves = _tree.flatten(ys)[0]
    # (under vmap: the status of the whole batch)
    fin = all(_flat(_host(torch.stack([torch.isfinite(x.detach()).all() for x in leaves]).all())))
    return Solution(
        ts=tt,
        ys=ys,
        nfe=plan.fld.nfe,
        steps=sum(plan.ms),
        status=SolveStatus.SUCCESS if fin else SolveStatus.NONFINITE,
        stats=plan.stats,
    )
