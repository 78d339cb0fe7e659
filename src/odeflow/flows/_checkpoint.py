"""OT-Flow checkpoints: ``{format, config, dtype, state_dict, extra}`` written atomically
with ``torch.save`` and read back with ``torch.load(weights_only=True)``.

The flow's class is an argument of :func:`read_checkpoint`, so this module needs nothing of
the model (:func:`odeflow.flows.load_checkpoint` binds :class:`~odeflow.flows.OTFlow`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from .._utils import atomic_write, jsonable
from ._checks import check_int
from ._finite import nonfinite_report, nonfinite_tensors, state_shapes

__all__ = ["FORMAT", "read_checkpoint", "save_checkpoint"]

#: the format tag of an OT-Flow checkpoint
FORMAT = "odeflow.otflow/1"

F = TypeVar("F", bound=nn.Module)


def save_checkpoint(flow: nn.Module, path: str | Path, **extra: Any) -> None:
    """Save ``{format, config, state_dict, extra}`` with ``torch.save``.

    The file is written to a temporary file in the same folder and then moved over
    ``path`` (``os.replace``), so an existing checkpoint survives a failed save.

    Args:
        flow: the flow.
        path: checkpoint file (parent folders are created).
        **extra: JSON-like metadata kept with the checkpoint (``None``, bool, int, float,
            str, and lists, tuples and dicts of them); a ``Path`` is stored as ``str``,
            NumPy/torch arrays as (nested) lists and NumPy scalars as Python numbers, so
            that :func:`load_checkpoint` can read them with ``weights_only=True``.

    Raises:
        TypeError: an ``extra`` value is not JSON-like (the key is named); nothing is
            written.
        ValueError: the flow's weights hold NaN or inf (named); nothing is written.
        IsADirectoryError: ``path`` is an existing folder.

    Example:
        >>> import tempfile, os
        >>> from odeflow.flows import OTFlow, load_checkpoint
        >>> f = OTFlow(2, width=4)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     save_checkpoint(f, os.path.join(d, "c.pt"), note="demo")
        ...     g = load_checkpoint(os.path.join(d, "c.pt"), dim=2)
        >>> g.config() == f.config()
        True
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a folder; give the checkpoint's file name, e.g. {path / 'flow.pt'}"
        )
    bad = nonfinite_tensors(flow.state_dict().items())
    if bad:
        raise ValueError(
            f"the flow's weights hold NaN or inf ({', '.join(bad[:4])}); load_checkpoint "
            "would refuse this checkpoint, so it is not written. Retrain the flow (e.g. a "
            "lower learning rate, or fit(restore_best=True))"
        )
    state = {k: v.detach().cpu() for k, v in flow.state_dict().items()}
    dt = str(next(flow.parameters()).dtype).removeprefix("torch.")
    payload = {"format": FORMAT, "config": flow.config(), "dtype": dt, "state_dict": state,
               "extra": jsonable(extra, "checkpoint extra", nonfinite="keep")}  # fmt: skip
    # written beside the target, then renamed over it: a failed save leaves the old file
    atomic_write(path, lambda fh: torch.save(payload, fh))


def load_payload(path: Path, map_location: Any, fix: str, *, example: str) -> Any:
    """``torch.load(path, weights_only=True)`` (plain data only, never arbitrary objects),
    with a FileNotFoundError for a folder or a missing file and a ValueError, ending with
    ``fix``, for a file ``torch.load`` cannot read."""
    if path.is_dir():
        raise FileNotFoundError(
            f"checkpoint {path} is a folder; pass the checkpoint file in it (e.g. {path / example})"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{path} is not an odeflow checkpoint (torch.load failed: {_load_reason(exc)}); {fix}"
        ) from None


def _load_reason(exc: Exception) -> str:
    """The gist of a ``torch.load`` failure in one short line (without torch's advice to
    retry with ``weights_only=False``, which would run arbitrary code from the file)."""
    msg = str(exc)
    if "WeightsUnpickler error:" in msg:  # the cause, after torch's paragraph of advice
        msg = msg.split("WeightsUnpickler error:", 1)[1]
    line = next((ln.strip() for ln in msg.splitlines() if ln.strip()), "")
    line = line.split(". ", 1)[0].rstrip(".")
    reason = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return reason if len(reason) <= 160 else reason[:157] + "..."


_STANDARDIZATION = ("data_loc", "data_scale")  # OTFlow's buffers, absent from old files


def _check_state(path: Path, shapes: dict[str, tuple[int, ...]], state: dict) -> None:
    """Refuse a ``state_dict`` whose keys or shapes differ from what its config builds
    (checked before the flow is built: a config edited to ``width=200000`` must not
    allocate), or whose weights hold NaN/inf. A checkpoint written before the data
    standardization existed lacks both of its buffers and loads as the identity map."""
    missing = [k for k in shapes if k not in state]
    if set(_STANDARDIZATION) <= set(missing):  # (one of the two alone is damage)
        missing = [k for k in missing if k not in _STANDARDIZATION]
    unexpected = [k for k in state if k not in shapes]
    wrong = [f"{k}: a {type(state[k]).__name__}, not a tensor" if not isinstance(state[k], Tensor)
             else f"{k}: {tuple(state[k].shape)} in the file, {shapes[k]} from the config"
             for k in shapes if k in state and (not isinstance(state[k], Tensor)
                                                or tuple(state[k].shape) != shapes[k])]  # fmt: skip
    if missing or unexpected or wrong:
        why = "; ".join(
            f"{label} {', '.join(items[:3])}{', ...' if len(items) > 3 else ''}"
            for label, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch", wrong),
            )
            if items
        )
        raise ValueError(
            f"checkpoint {path} is damaged: its state_dict does not fit its config ({why}). "
            "Save the flow again with OTFlow.save"
        )
    bad = nonfinite_tensors(state.items())
    if bad:
        where = "; ".join(f"{k}: {nonfinite_report(state[k])}" for k in bad[:3])
        raise ValueError(
            f"checkpoint {path} holds non-finite weights ({where}"
            f"{'; ...' if len(bad) > 3 else ''}); a flow with NaN/inf weights gives NaN "
            "samples and densities. Use a checkpoint of a run that did not diverge"
        )


def read_checkpoint(
    path: str | Path, cls: type[F], *, dim: int | None = None, map_location=None
) -> F:
    """Rebuild a flow of class ``cls`` (``cls(**config)``) from a checkpoint written by
    :func:`save_checkpoint`; :func:`odeflow.flows.load_checkpoint` is this with
    :class:`~odeflow.flows.OTFlow`.

    Args:
        path: checkpoint file.
        dim: expected data dimension; a checkpoint of another dimension is refused.
        map_location: as in ``torch.load``; a device (``str`` or ``torch.device``) is also
            where the returned flow lives. Other mappings (dict, callable) only steer
            ``torch.load``; the flow is then on the CPU.

    The file is read with ``torch.load(weights_only=True)``: only plain data are unpickled.

    Raises:
        FileNotFoundError: no such file (or a folder was given).
        ValueError: not an odeflow OT-Flow checkpoint (unreadable by ``torch.load``, or
            without the format tag, a ``config`` or a ``state_dict``), damaged (a dtype,
            config or ``state_dict`` that do not fit together: the config's shapes are
            checked against the file's tensors before anything is allocated), holding NaN
            or inf weights, or of another dimension; ``dim`` not an integer >= 1.
    """
    if dim is not None:
        dim = check_int("dim", dim, 1, "the expected data dimension")
    path = Path(path)
    ck = load_payload(
        path,
        map_location,
        "pass a file written by OTFlow.save, save_checkpoint or `odeflow flow train`",
        example="flow.pt",
    )
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise ValueError(f"{path} is not an odeflow OT-Flow checkpoint (format {FORMAT})")
    cfg, state = ck.get("config"), ck.get("state_dict")
    if not isinstance(cfg, dict) or not isinstance(state, dict):
        missing = " and ".join(repr(k) for k, v in (("config", cfg), ("state_dict", state))
                               if not isinstance(v, dict))  # fmt: skip
        raise ValueError(
            f"checkpoint {path} is incomplete: it has the {FORMAT} tag but lacks a valid "
            f"{missing} (a dict); the file is damaged or was not written by "
            "save_checkpoint. Save the flow again with OTFlow.save"
        )
    try:  # the config's shapes on the meta device (nothing allocated) against the file's
        shapes = state_shapes(cls, cfg)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:  # (sizes overflow)
        raise ValueError(
            f"checkpoint {path} has an invalid config ({exc}); the file is damaged or was "
            "edited. Save the flow again with OTFlow.save"
        ) from None
    _check_state(path, shapes, state)
    flow = cls(**cfg)
    if dim is not None and flow.dim != dim:
        raise ValueError(
            f"checkpoint {path} holds a flow of dim={flow.dim}, but dim={dim} was expected; "
            "use a checkpoint trained on data of this dimension"
        )
    dt = ck.get("dtype", "float32")
    dtype = getattr(torch, dt, None) if isinstance(dt, str) else None
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(
            f"checkpoint {path} has an invalid dtype {dt!r} (not a floating-point torch "
            "dtype); the file is damaged or was edited. Save the flow again with OTFlow.save"
        )
    flow.to(dtype)
    if isinstance(map_location, str | torch.device):
        flow.to(torch.device(map_location))
    try:
        flow.load_state_dict(state)
    except RuntimeError as exc:  # (values that are not tensors, ...)
        why = " ".join(str(exc).split())
        raise ValueError(
            f"checkpoint {path} is damaged: its state_dict does not fit its config "
            f"({why[:300]}). Save the flow again with OTFlow.save"
        ) from None
    flow.eval()
    flow.checkpoint_extra = ck.get("extra", {})
    return flow
