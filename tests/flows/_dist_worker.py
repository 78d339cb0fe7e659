"""One rank of the data-parallel ``fit`` test (run as a script by test_distributed.py)."""

import sys

import torch
import torch.distributed as dist

from odeflow._utils._distributed import init_process_group
from odeflow.flows import OTFlow, fit


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 2, generator=g, dtype=torch.float64)
    x = x * torch.tensor([1.0, 0.5], dtype=torch.float64) + 0.3
    val = torch.randn(37, 2, generator=g, dtype=torch.float64)  # 37: not a multiple of 2
    return x, val


KW = dict(iters=4, batch=32, lr=0.02, val_every=2, verbose=False)


def main(rank: int, world: int, store: str, out: str) -> None:
    init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    group = dist.group.WORLD
    torch.manual_seed(100 + rank)  # different initial weights: fit broadcasts rank 0's
    flow = OTFlow(2, width=8, nt=2).double()
    x, val = data()
    res = fit(flow, x, val_data=val, process_group=group, **KW)
    state = {k: v.clone() for k, v in flow.state_dict().items()}
    errors = {}
    try:  # 31 rows per global batch cannot be split over 2 ranks
        fit(flow, x, iters=1, batch=31, verbose=False, process_group=group)
    except ValueError as e:
        errors["split"] = str(e)
    try:  # rank 1 passes other data
        fit(flow, x[: 96 - 2 * rank], iters=1, batch=32, verbose=False, process_group=group)
    except ValueError as e:
        errors["data"] = str(e)
    stops = []
    res_cb = fit(flow, x, iters=5, batch=32, verbose=False, process_group=group,
                 callback=lambda it, info: rank == 1 and it == 2)  # fmt: skip
    stops.append((res_cb.status, res_cb.iterations))
    if rank == 0:
        torch.save({"state": state, "history": res.history, "world": res.world_size,
                    "errors": errors, "stops": stops}, out)  # fmt: skip
    dist.barrier()  # (a destroy racing the peer's hung now and then with torch 2.4's gloo)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
