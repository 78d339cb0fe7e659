"""Precision policies and the dynamic adjoint scaler for fp16."""

from __future__ import annotations

import contextlib
import functools
import platform
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .._utils import outside_stacklevel as _outside_stacklevel  # re-exported for ode/_solve

__all__ = ["AdjointScaler", "PerformanceWarning", "PrecisionPolicy", "get_precision"]


class PerformanceWarning(UserWarning):
    """A request that works but will run far slower than its alternative on this machine.

    Silence it with ``warnings.filterwarnings("ignore", category=odeflow.PerformanceWarning)``.
    """


@dataclass(frozen=True)
class PrecisionPolicy:
    """Which precision each quantity of a solve lives in.

    * ``compute``: dtype of the RK stage evaluations ``f(t, Y)``, applied with
      ``torch.autocast`` on the state's device (CUDA and CPU alike); ``None`` = no autocast.
      The autocast weight-cast cache is off, so the gradients of a weight used by several
      stages are summed in fp32, not in a shared 16-bit copy.
    * state update ``y + h Σ b_i k_i``, adjoint, gradient accumulators: the state dtype ``H``
      (``y0``'s dtype; float32 when ``y0`` is 16-bit).
    * ``storage``: dtype of the step states kept for the backward pass; ``None`` = ``H``.
    * ``tf32``: allow TF32 tensor-core matmuls/convolutions during the solve (CUDA only;
      the flags are restored afterwards).

    Args:
        name: a label.
        compute: ``torch.float16``, ``torch.bfloat16`` or ``None``.
        storage: dtype of stored step states, or ``None``.
        tf32: enable TF32 inside the solve.

    Reference:
        Celledoni, Owren, Ruthotto, Yang, *Mixed precision training of neural ODEs*,
        arXiv:2510.23498.

    Example:
        >>> get_precision("bf16", torch.device("cpu")).storage
        torch.bfloat16
    """

    name: str
    compute: torch.dtype | None = None
    storage: torch.dtype | None = None
    tf32: bool = False

    def __post_init__(self) -> None:
        if self.compute not in (None, torch.float16, torch.bfloat16):
            raise ValueError(f"compute dtype must be float16, bfloat16 or None, got {self.compute}")
        if self.storage is not None and not (
            isinstance(self.storage, torch.dtype) and self.storage.is_floating_point
        ):
            raise ValueError(
                f"storage dtype must be a floating torch.dtype (e.g. torch.bfloat16) or None, "
                f"got {self.storage!r}"
            )

    @contextlib.contextmanager
    def context(self, device: torch.device, cache: bool = False) -> Iterator[None]:
        """Autocast (and TF32 flags) for the stage evaluations on ``device``.

        ``cache=True`` keeps autocast's weight-cast cache for the life of the context: for
        graph-free evaluations only (the adjoint's forward pass and its no-grad stage
        recomputation), where each weight is then cast to 16 bit once per context instead of
        once per stage."""
        if self.compute is None and not self.tf32 and not _autocast_on(device):
            yield  # fp32/fp64: nothing to switch (the common case: no context objects)
            return
        tf32_saved = None
        if self.tf32 and device.type == "cuda":
            tf32_saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        try:
            # enabled=False also switches off an ambient autocast: behaviour comes from the policy.
            # cache_enabled=False: with the cast cache, all stages of a step share one 16-bit
            # copy of each weight and autograd sums their weight gradients in 16 bit; without
            # it each use casts the weight itself and the gradients meet in the fp32 leaf.
            with torch.autocast(
                device_type=device.type,
                dtype=self.compute or torch.bfloat16,
                enabled=self.compute is not None,
                cache_enabled=cache,
            ):
                yield
        finally:
            if tf32_saved is not None:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32_saved


def _autocast_on(device: torch.device) -> bool:
    """Whether an ambient autocast region is active for ``device``'s type."""
    try:
        return torch.is_autocast_enabled(device.type)
    except TypeError:  # torch < 2.4 took no device type
        if device.type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


_POLICIES = {
    "fp32": PrecisionPolicy("fp32"),
    "fp64": PrecisionPolicy("fp64"),
    "tf32": PrecisionPolicy("tf32", tf32=True),
    "bf16": PrecisionPolicy("bf16", compute=torch.bfloat16, storage=torch.bfloat16),
    "fp16": PrecisionPolicy("fp16", compute=torch.float16, storage=torch.float16),
}


def get_precision(precision: str | PrecisionPolicy, device: torch.device) -> PrecisionPolicy:
    """Resolve a precision name (``fp32, tf32, bf16, fp16, fp64``) or pass a policy through.

    ``"fp32"`` and ``"fp64"`` both mean "no autocast, the state's own dtype"; the state
    dtype itself comes from ``y0``. If autocast for the requested dtype is not available on
    ``device`` the solve falls back to the state dtype with a warning.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).

    Example:
        >>> get_precision("fp16", torch.device("cpu")).compute
        torch.float16
    """
    if isinstance(precision, PrecisionPolicy):
        pol = precision
    elif isinstance(precision, str) and precision in _POLICIES:
        pol = _POLICIES[precision]
    else:
        raise ValueError(
            f"unknown precision {precision!r}; valid: {', '.join(_POLICIES)} "
            "or an odeflow.PrecisionPolicy"
        )
    if pol.compute is not None and not _autocast_ok(device.type, pol.compute):
        warnings.warn(
            f"autocast to {pol.compute} is not available on {device.type} in this torch build; "
            "falling back to the state dtype (precision='fp32')",
            RuntimeWarning,
            stacklevel=_outside_stacklevel(),
        )
        return _POLICIES["fp32"]
    if pol.compute is not None and device.type == "cpu":
        _warn_if_emulated(pol.compute)
    return pol


# x86 CPU flags (as /proc/cpuinfo names them) of native 16-bit matrix products
_NATIVE_FLAGS = {
    torch.bfloat16: ("avx512_bf16", "amx_bf16"),
    torch.float16: ("avx512_fp16", "amx_fp16"),
}
_warned: set[torch.dtype] = set()


@functools.cache
def _cpu_flags() -> frozenset[str] | None:
    """The flags of this x86 CPU under Linux, else ``None`` (not known here)."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return None


def _cpu_native(dtype: torch.dtype) -> bool | None:
    """Whether this CPU multiplies ``dtype`` matrices in hardware (``None``: not known)."""
    flags = _cpu_flags()
    return None if flags is None else any(f in flags for f in _NATIVE_FLAGS[dtype])


def _warn_if_emulated(dtype: torch.dtype) -> None:
    if dtype in _warned:
        return
    _warned.add(dtype)
    if _cpu_native(dtype) is False:
        name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
        need = " or ".join(f.upper().replace("_", "-") for f in _NATIVE_FLAGS[dtype])
        warnings.warn(
            f"precision={name!r} on this CPU: it has no {need}, so its {dtype} matrix "
            "products are emulated, typically 10-300x slower than in float32 (more for larger "
            "matrices), and the solve will be slower than with precision='fp32', not faster. "
            "The results are correct; to silence this, filter odeflow.PerformanceWarning",
            PerformanceWarning,
            stacklevel=_outside_stacklevel(),
        )


@functools.cache
def _autocast_ok(device_type: str, dtype: torch.dtype) -> bool:
    if not torch.amp.is_autocast_available(device_type):
        return False
    try:
        x = torch.ones(2, 2, device=device_type)
        with torch.autocast(device_type=device_type, dtype=dtype):
            return (x @ x).dtype == dtype
    except (RuntimeError, TypeError):
        return False


class AdjointScaler:
    r"""Power-of-two dynamic scaling of the fp16 discrete adjoint; persists across calls.

    **Per step (no host sync).** Before step ``i`` of the backward recursion the scale is
    chosen on the device from the current fp32 adjoint ``a``:

    .. math::
        S_i = 2^{\,e - \lceil \log_2 \max|a| \rceil},
        \qquad\text{so } S_i\max|a| \in (2^{e-1}, 2^e],

    where ``e`` (``headroom``) is this object's persistent exponent. The vector–Jacobian
    products are seeded with ``S_i a`` (exact: a power of two), evaluated in fp16, and
    unscaled in fp32. Because ``S_i`` follows ``a`` on every step, an adjoint that spans
    many orders of magnitude stays in fp16 range without ever overflowing *because of
    growth*; the headroom only has to absorb the amplification by the Jacobian.

    **Overflow.** Each step yields a finiteness flag as a device tensor. A failed step and
    every later one are frozen with ``torch.where`` (the adjoint and accumulators keep their
    last good value). The host reads the flag once every ``ceil(N / checks)`` steps and at
    the end (``checks`` + 1 syncs per backward); on a failure ``e`` is lowered by one and
    the recursion resumes at the failed step, which is thereby recomputed with half the
    scale. After ``max_retries`` failures a ``FloatingPointError`` is raised.

    **Growth rule.** ``e`` rises by one after ``growth_interval`` consecutive backward
    passes without overflow (like ``torch.amp.GradScaler``'s growth interval, counted in
    solves, not steps), up to ``max_headroom`` (fp16's largest finite value is < 2^16).

    With ``dynamic=False`` no scaling and no checks happen: non-finite values propagate to
    the gradients so that a ``torch.amp.GradScaler`` wrapped around the loss detects them
    and skips the optimizer step.

    Args:
        headroom: initial exponent ``e`` (default 8: ``S·max|a| ≈ 2^8``, room for the
            parameter-gradient reductions over batch and space that the state adjoint
            does not show; entries down to ``2^-22·max|a|`` stay normal fp16 numbers).
        growth_interval: clean backward passes before ``e`` grows by one.
        max_headroom: upper bound for ``e``.
        min_headroom: lower bound for ``e``; reaching it raises.
        max_retries: overflow recoveries allowed per backward pass.
        checks: host checks per backward pass (each is one sync).
        dynamic: ``False`` disables scaling (for ``torch.amp.GradScaler``).

    Reference:
        Celledoni, Owren, Ruthotto, Yang, arXiv:2510.23498 (dynamic adjoint scaling);
        Micikevicius et al., *Mixed Precision Training*, arXiv:1710.03740 (loss scaling).

    Example:
        >>> s = AdjointScaler(growth_interval=2)
        >>> s.headroom
        8
        >>> s.end_of_backward(retries=0); s.end_of_backward(retries=0); s.headroom
        9
    """

    def __init__(
        self,
        headroom: int = 8,
        *,
        growth_interval: int = 16,
        max_headroom: int = 14,
        min_headroom: int = -30,
        max_retries: int = 40,
        checks: int = 4,
        dynamic: bool = True,
    ) -> None:
        if not min_headroom <= headroom <= max_headroom:
            raise ValueError("need min_headroom <= headroom <= max_headroom")
        if growth_interval < 1 or checks < 1 or max_retries < 0:
            raise ValueError("growth_interval and checks must be >= 1, max_retries >= 0")
        self.headroom = int(headroom)
        self.growth_interval = int(growth_interval)
        self.max_headroom = int(max_headroom)
        self.min_headroom = int(min_headroom)
        self.max_retries = int(max_retries)
        self.checks = int(checks)
        self.dynamic = bool(dynamic)
        self.clean_passes = 0
        self.total_overflows = 0

    def __repr__(self) -> str:
        return (
            f"AdjointScaler(headroom={self.headroom}, growth_interval={self.growth_interval}, "
            f"dynamic={self.dynamic}, clean_passes={self.clean_passes}, "
            f"total_overflows={self.total_overflows})"
        )

    _STATE = ("headroom", "growth_interval", "max_headroom", "min_headroom", "max_retries",
              "checks", "dynamic", "clean_passes", "total_overflows")  # fmt: skip

    def state_dict(self) -> dict[str, int | bool]:
        """The scaler's settings and learned state (the exponent ``e``, the clean passes
        towards its next growth, the overflow count), plain Python values: save it with a
        training checkpoint, as ``torch.amp.GradScaler.state_dict``.

        Example:
            >>> s = AdjointScaler(headroom=6); s.clean_passes = 3
            >>> t = AdjointScaler(); t.load_state_dict(s.state_dict())
            >>> (t.headroom, t.clean_passes)
            (6, 3)
        """
        return {k: getattr(self, k) for k in self._STATE}

    def load_state_dict(self, state: dict[str, int | bool]) -> None:
        """Restore :meth:`state_dict`'s values (checked as the constructor checks them).

        Raises:
            ValueError: a missing or unknown key, or values the constructor would refuse.
        """
        if not isinstance(state, dict) or set(state) != set(self._STATE):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"not an AdjointScaler state: expected the keys {list(self._STATE)}, got {got}"
            )
        new = AdjointScaler(
            state["headroom"],
            growth_interval=state["growth_interval"],
            max_headroom=state["max_headroom"],
            min_headroom=state["min_headroom"],
            max_retries=state["max_retries"],
            checks=state["checks"],
            dynamic=state["dynamic"],
        )
        passes, overflows = int(state["clean_passes"]), int(state["total_overflows"])
        if not 0 <= passes < new.growth_interval or overflows < 0:
            raise ValueError(
                f"not an AdjointScaler state: clean_passes={passes} must be in "
                f"[0, {new.growth_interval}) and total_overflows={overflows} >= 0"
            )
        new.clean_passes, new.total_overflows = passes, overflows
        self.__dict__.update(new.__dict__)

    def scale_for(self, amax: torch.Tensor) -> torch.Tensor:
        """The power-of-two scale ``2^(e - ceil(log2 amax))`` as a device tensor (no sync)."""
        tiny = torch.finfo(torch.float32).tiny
        ex = self.headroom - torch.ceil(torch.log2(amax.float().clamp_min(tiny)))
        return torch.exp2(ex.clamp(-120.0, 120.0))

    def overflow(self) -> None:
        """Note an overflow of the backward pass: the headroom ``e`` drops by one (the
        failed step is then recomputed with half the scale) and the clean-pass count restarts.

        Raises:
            FloatingPointError: the headroom is already at ``min_headroom``.
        """
        self.total_overflows += 1
        self.clean_passes = 0
        if self.headroom <= self.min_headroom:
            raise FloatingPointError(
                "fp16 adjoint overflows even at the minimum scale; the gradient is not "
                "representable in float16 — use precision='bf16' or 'fp32'"
            )
        self.headroom -= 1

    def end_of_backward(self, retries: int) -> None:
        """Note a finished backward pass that needed ``retries`` overflow recoveries: after
        ``growth_interval`` clean passes in a row the headroom grows by one."""
        if retries:
            return
        self.clean_passes += 1
        if self.clean_passes >= self.growth_interval:
            self.clean_passes = 0
            self.headroom = min(self.headroom + 1, self.max_headroom)
