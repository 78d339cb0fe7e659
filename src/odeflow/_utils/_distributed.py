"""Data-parallel training over a ``torch.distributed`` process group (one process per device),
shared by ``odeflow.flows.fit`` and ``odeflow.control.fit``.

Every rank holds the same model; each global minibatch is cut into equal per-rank shares
(rows of the same data, or fresh samples that each rank draws from its own stream,
:meth:`Comm.seed`), and the ranks' gradients are averaged with one all-reduce per iteration,
so that ``W`` ranks with a global batch ``b`` take the same optimisation steps as one process
with batch ``b`` (up to the order of floating-point summation). No wrapper module is needed:
the reduction is explicit, which keeps the trainers' ``loss`` functions (not ``forward``) the
training entry point.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

#: the seeds of two ranks' sample streams differ by this (a prime)
_RANK_SEED_STRIDE = 1_000_003


def init_process_group(backend: str, **kwargs: Any) -> None:
    """``torch.distributed.init_process_group(backend, **kwargs)``, after importing
    ``torch._dynamo``: imported later (``torch.optim`` imports it on first use), it keeps
    references to a group that exists then, so ``destroy_process_group`` cannot free the
    group and gloo's threads run on into interpreter exit, where their teardown occasionally
    aborts the process ("terminate called without an active exception")."""
    import importlib

    import torch.distributed as dist

    importlib.import_module("torch._dynamo")
    dist.init_process_group(backend, **kwargs)


class Comm:
    """The collectives ``fit`` needs; with ``group=None`` every call is a local no-op."""

    def __init__(self, group: Any, device: torch.device):
        self.group = group
        self.device = device
        self.world = 1
        self.rank = 0
        if group is None:
            return
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise ValueError(
                "process_group was given but torch.distributed is not initialised: call "
                "torch.distributed.init_process_group(...) first (or launch with torchrun), "
                "or pass process_group=None for single-process training"
            )
        if not isinstance(group, dist.ProcessGroup):
            raise TypeError(
                "process_group must be a torch.distributed.ProcessGroup (e.g. "
                f"torch.distributed.group.WORLD) or None, got {type(group).__name__}"
            )
        self.dist = dist
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        if self.rank < 0:
            raise ValueError("this process is not a member of process_group")
        if dist.get_backend(group) == "nccl" and device.type != "cuda":
            raise ValueError(
                f"process_group uses the NCCL backend, which needs CUDA tensors, but the model "
                f"is on {device}; move it to this rank's GPU (device=...) or use the gloo backend"
            )
        self.root = dist.get_global_rank(group, 0)

    @property
    def active(self) -> bool:
        return self.world > 1

    def _reduce(self, x: Tensor, op: str = "sum") -> Tensor:
        ops = {"sum": self.dist.ReduceOp.SUM, "max": self.dist.ReduceOp.MAX,
               "min": self.dist.ReduceOp.MIN}  # fmt: skip
        self.dist.all_reduce(x, op=ops[op], group=self.group)
        return x

    def values(self, xs: list[float], op: str = "sum") -> list[float]:
        """Reduce a few host numbers (in float64) over the ranks."""
        if not self.active:
            return list(xs)
        t = torch.tensor(xs, dtype=torch.float64, device=self.device)
        return self._reduce(t, op).tolist()

    def same(self, what: str, xs: list[float]) -> None:
        """Raise on every rank if ``xs`` differs between the ranks (each rank's ValueError
        names ``what``)."""
        if not self.active:
            return
        hi, lo = self.values(xs, "max"), self.values(xs, "min")
        if hi != lo:
            raise ValueError(
                f"{what} differs between the ranks of process_group (max {hi}, min {lo}); "
                "every rank must call fit with the same data and settings"
            )

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (a callback stopping one rank stops all)."""
        if not self.active:
            return bool(flag)
        return self.values([float(bool(flag))], "max")[0] > 0

    def seed(self, seed: int) -> int:
        """This rank's seed for fresh samples: ``seed + 1_000_003·rank`` (rank 0 draws what a
        single process draws)."""
        return int(seed) + _RANK_SEED_STRIDE * self.rank

    def check_split(self, b: int, what: str) -> None:
        """Raise ValueError (naming ``what``) if ``b`` rows cannot be shared evenly."""
        if b % self.world:
            raise ValueError(
                f"{what} = {b} cannot be split evenly over the {self.world} ranks of "
                f"process_group; use a multiple of {self.world}"
            )

    def broadcast_(self, module: nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers."""
        if not self.active:
            return
        with torch.no_grad():
            for x in [*module.parameters(), *module.buffers()]:
                self.dist.broadcast(x.data, src=self.root, group=self.group)

    def average_grads_(self, params: list[Tensor]) -> None:
        """Replace each ``.grad`` by its mean over the ranks (one flat all-reduce). Parameters
        without a gradient are skipped: every rank has the same ones (same model, same loss),
        so the flat buffers line up."""
        if not self.active:
            return
        have = [p for p in params if p.grad is not None]
        if not have:
            return
        flat = torch.cat([p.grad.reshape(-1).to(torch.float64 if p.dtype == torch.float64
                                                 else torch.float32) for p in have])  # fmt: skip
        self._reduce(flat).div_(self.world)
        i = 0
        for p in have:
            n = p.grad.numel()
            p.grad.copy_(flat[i : i + n].view_as(p.grad))
            i += n

    def shard(self, x: Tensor) -> Tensor:
        """This rank's contiguous share of the rows of ``x`` (equal shares)."""
        if not self.active:
            return x
        n = x.shape[0] // self.world
        return x[self.rank * n : (self.rank + 1) * n]
