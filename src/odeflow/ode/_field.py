"""The bound vector field: ``func(t, y)`` on flat state leaves, validated once, counted,
with module binding (parameters rebound by name) and the record/replay of random draws
and buffer updates that lets the adjoint rebuild exactly what the forward pass evaluated."""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable
from types import MethodType
from typing import Any

import torch
from torch import Tensor, nn

from . import _tree
from ._compat import NORM_LAYERS as _NORM
from ._compat import version
from ._compat import versions as _versions

__all__ = ["_Field", "_MethodModule", "_bind_module", "_bind_target", "_owning_module"]

# --------------------------------------------------------------------------- random fields
RngState = tuple[bytes, bytes | None]


def _rng_state(device: torch.device) -> RngState:
    """The states of the default generators a field on ``device`` draws from, as bytes
    (cheap to compare; host-side values: no device synchronisation)."""
    cuda = torch.cuda.get_rng_state(device).numpy().tobytes() if device.type == "cuda" else None
    return torch.get_rng_state().numpy().tobytes(), cuda


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
        # no random numbers); a stochastic field (dropout) is re-evaluated with the same draws.
        # Run-length encoded: entry k holds from note rng_at[k] on (a deterministic field
        # holds one entry however many steps: nothing per step)
        self.rng_log: list[RngState] | None = None
        self.rng_at: list[int] = []
        self.notes = 0
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
        versions = [version(b) for b in bufs]
        self.rng_log, self.rng_at, self.notes, self.recording = [], [], 0, rng
        try:
            yield
        finally:
            self.recording = False
        log = self.rng_log
        if not log or (len(log) == 1 and log[0] == _rng_state(self.device)):
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
        changed = [b for b, v in zip(bufs, versions) if version(b) != v]
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
        if not self.rng_log or self.rng_log[-1] != st:  # (equal consecutive states: one entry)
            self.rng_log.append(st)
            self.rng_at.append(self.notes)
        self.notes += 1

    def replay_rng(self, step: int, stage: int = 0) -> None:
        """Set the generators to their state before the forward pass's call ``stage`` of
        step ``step`` (a no-op for a field that drew no random numbers; ``stage`` must be 0
        when steps, not calls, were logged)."""
        if self.rng_log is not None:
            note = step * self.stages + stage if self.per_call else step
            cpu, cuda = self.rng_log[bisect.bisect_right(self.rng_at, note) - 1]
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
