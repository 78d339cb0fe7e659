"""CUDA-graph capture of the discrete adjoint's per-step work (``cuda_graphs=True``).

Every step of a fixed-grid solve runs the same kernels on tensors of the same shapes: the
forward step ``y -> Φ_n(y)`` (no graph) and the backward step ``(y_n, λ) -> (∂Φ_n/∂y)^T λ,
(∂Φ_n/∂θ)^T λ`` (rebuild + VJP). Each is captured once as a CUDA graph over *static* input
buffers (state, seed, ``τ``, ``h``) and replayed for every step and every later call: one
launch per step instead of hundreds, which is what bounds small and medium workloads on a
GPU. The captures are cached per vector field (weakly referenced) and keyed by everything
the recorded kernels depend on: shapes, dtypes and devices of the state and the parameters,
the parameters' storage addresses (in-place optimizer updates are seen by the replays;
replacing a parameter tensor recaptures), the tableau and the precision policy.

On a device other than CUDA the same static-buffer path runs eagerly (no capture); the
solver only takes it there when its policy asks (``DiscreteAdjoint(cuda_graphs=True,
_static_buffers=True)``, for tests), so the plumbing is exercised without a GPU.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from types import MethodType

import torch
from torch import Tensor

__all__ = ["clear_cuda_graphs", "graph_memory_bytes"]

_MAX_ENTRIES = 4  # captures kept per vector field (e.g. a training and a smaller last batch)
_WARMUP = 2  # eager runs on a side stream before capture (lazy init of cuBLAS/cuDNN, autograd)

# id(owner) -> its captures; an entry is removed when its owner is garbage-collected. Keyed
# by identity, not by hash/equality: equal-but-distinct fields (or unhashable ones, e.g. a
# dataclass instance) never share captures.
_CACHE: dict[int, OrderedDict] = {}


class Captured:
    """A function of static ``inputs`` (and parameters, read in place) captured as a CUDA graph.

    ``fn`` is run for warm-up and capture only and is not kept (it would keep the vector field
    alive through the cache). ``__call__(values, fn)`` copies ``values`` into the static inputs
    and replays; the returned tensors are the graph's static outputs, overwritten by the next
    replay. Off CUDA, the ``fn`` given to the call (built over the same static inputs) runs."""

    def __init__(self, fn: Callable[[], list], inputs: Sequence[Tensor], pool=None):
        self.inputs = list(inputs)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: list = []
        dev = self.inputs[0].device
        if dev.type != "cuda":  # the static path (tests): the warm-up calls a capture makes,
            for _ in range(_WARMUP):  # so that their side effects are seen on CPU too
                fn()
            return
        with torch.cuda.device(dev):  # streams and capture on the state's device
            side, capturing = _streams(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            # warm-up: plain eager runs, whose errors are the field's own and pass unchanged
            with torch.cuda.stream(side):
                for _ in range(_WARMUP):
                    fn()
            torch.cuda.current_stream(dev).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, pool=pool, stream=capturing):
                    self.outputs = fn()
            except torch.cuda.OutOfMemoryError:
                _end_generator_capture(dev)
                raise
            except RuntimeError as e:
                _end_generator_capture(dev)
                raise RuntimeError(
                    "DiscreteAdjoint(cuda_graphs=True) could not capture the RK step as a CUDA "
                    "graph; the vector field must be capture-safe: no host synchronisation "
                    "(.item(), .cpu(), printing tensors, data-dependent Python branches), no CPU "
                    "tensors created per call, no new parameter tensors. Use cuda_graphs=False "
                    f"for such a field. ({type(e).__name__}: {e})"
                ) from e
        self.graph = graph

    def pool(self):
        return None if self.graph is None else self.graph.pool()

    def __call__(self, values: Sequence[Tensor], fn: Callable[[], list]) -> list:
        for buf, v in zip(self.inputs, values):
            buf.copy_(v)
        if self.graph is None:
            self.outputs = fn()
        else:
            with torch.cuda.device(self.inputs[0].device):
                self.graph.replay()
        return self.outputs


def _streams(device: torch.device) -> tuple[torch.cuda.Stream, torch.cuda.Stream]:
    """The warm-up and the capture stream of ``device``, one pair per device for all captures.

    The caching allocator reuses a freed block only on the stream that allocated it: captures
    into a shared pool on one stream reuse each other's freed memory (the pool holds the
    larger of the forward and the backward step's temporaries), on separate streams they
    cannot (it held their sum). Warm-ups on one stream likewise reuse each other's cached
    blocks."""
    pair = _STREAMS.get(device)
    if pair is None:
        pair = _STREAMS[device] = (torch.cuda.Stream(device), torch.cuda.Stream(device))
    return pair


_STREAMS: dict[torch.device, tuple] = {}


def _end_generator_capture(device: torch.device) -> None:
    """Leave the CUDA random generators usable after a failed capture.

    A capture that fails ends without running the generators' capture epilogue, so they stay
    in capture mode and every later random draw outside a capture fails ("Offset increment
    outside graph capture"). One small capture that succeeds runs prologue and epilogue."""
    try:
        with torch.cuda.device(device):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                torch.empty(1, device=device).zero_()
    except RuntimeError:  # nothing more to do: the original error is what matters
        pass


class StepGraphs:
    """The forward and the backward capture of one (field, shapes, policy, ...) key."""

    def __init__(self) -> None:
        self.forward: Captured | None = None
        self.backward: Captured | None = None
        self.mutated: list[Tensor] = []  # buffers the step updates in place (running stats)

    def pool(self):
        for c in (self.forward, self.backward):
            if c is not None and c.graph is not None:
                return c.pool()
        return None

    def capture(self, kind: str, fn: Callable[[], list], inputs: Sequence[Tensor]) -> Captured:
        cap = Captured(fn, inputs, self.pool())
        setattr(self, kind, cap)
        return cap


def _tensor_key(x: Tensor) -> tuple:
    return (tuple(x.shape), x.dtype, x.device, x.data_ptr())


def lookup(func: object, key: tuple, params: Sequence[Tensor], local: OrderedDict) -> StepGraphs:
    """The captures of ``func`` for ``key`` (and the parameters' storage), created if new.

    A bound method is a new object at every attribute access: its captures live with the
    object it is bound to. A field that cannot be weakly referenced keeps its captures in
    ``local`` (the solve's own dict: shared by its forward and backward pass only)."""
    owner, method = (func.__self__, func.__func__) if isinstance(func, MethodType) else (func, None)
    full = (method, key, tuple(_tensor_key(p) for p in params))
    per = _CACHE.get(id(owner))
    if per is None:
        try:
            weakref.finalize(owner, _CACHE.pop, id(owner), None)
        except TypeError:
            per = local
        else:
            per = _CACHE[id(owner)] = OrderedDict()
    entry = per.get(full)
    if entry is None:
        entry = per[full] = StepGraphs()
        while len(per) > _MAX_ENTRIES:
            per.popitem(last=False)
    else:
        per.move_to_end(full)
    return entry


def clear_cuda_graphs() -> None:
    """Drop every cached CUDA-graph capture of ``DiscreteAdjoint(cuda_graphs=True)``.

    Frees the captures' private memory pools (one step's activations per vector field and
    shape) once no solve holds them; a later solve recaptures.

    Example:
        >>> import odeflow
        >>> odeflow.ode.clear_cuda_graphs()
    """
    _CACHE.clear()


def graph_memory_bytes() -> int:
    """Bytes of CUDA memory reserved by the cached captures (their private pools).

    This memory is held between solves (it is the one step's graph that the eager adjoint
    allocates and frees within each backward pass); memory benchmarks should add it.

    Example:
        >>> import odeflow
        >>> odeflow.ode.graph_memory_bytes() >= 0
        True
    """
    pools = {
        tuple(e.pool())
        for per in list(_CACHE.values())
        for e in per.values()
        if e.pool() is not None
    }
    if not pools or not torch.cuda.is_available():
        return 0
    return sum(
        seg["total_size"]
        for seg in torch.cuda.memory_snapshot()
        if tuple(seg.get("segment_pool_id", ())) in pools
    )


def static_like(values: Sequence[Tensor]) -> list[Tensor]:
    """Static input buffers: normal tensors even when made under ``torch.inference_mode``
    (a later call outside it copies into them)."""
    with torch.inference_mode(False):
        return [v.detach().clone() for v in values]
