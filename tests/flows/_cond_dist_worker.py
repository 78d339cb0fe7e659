"""One rank of the data-parallel conditional ``fit`` test (run as a script by
test_cond_distributed.py)."""

import sys

import torch
import torch.distributed as dist

from odeflow._utils._distributed import init_process_group
from odeflow.flows import COTFlow, PCPMap


def data():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(85, 3, generator=g, dtype=torch.float64)
    x = y[:, :2] * torch.tensor([1.0, -0.5], dtype=torch.float64) + 0.2 * y[:, 2:]
    x = x + 0.3 * torch.randn(85, 2, generator=g, dtype=torch.float64)
    return x, y  # 85 rows: 17 held out (not a multiple of 2), 68 to train


KW = dict(iters=4, batch=16, lr=0.02, val_every=2, val_fraction=0.2, verbose=False)


def build(name: str, seed: int):
    torch.manual_seed(seed)
    if name == "pcpmap":
        return PCPMap(2, 3, width=8).double()
    return COTFlow(2, 3, width=8, nt=2).double()


def main(rank: int, world: int, store: str, out: str) -> None:
    init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    group = dist.group.WORLD
    x, y = data()
    got, errors = {}, {}
    for name in ("pcpmap", "cotflow"):
        model = build(name, 100 + rank)  # different initial weights: fit broadcasts rank 0's
        res = model.fit(x, y, process_group=group, **KW)
        got[name] = {"state": {k: v.clone() for k, v in model.state_dict().items()},
                     "history": res.history, "world": res.world_size}  # fmt: skip
    model = build("pcpmap", 0)
    try:  # 15 rows per global batch cannot be split over 2 ranks
        model.fit(x, y, iters=1, batch=15, verbose=False, process_group=group)
    except ValueError as e:
        errors["split"] = str(e)
    try:  # rank 1 passes other pairs
        model.fit(x[: 85 - 2 * rank], y[: 85 - 2 * rank], iters=1, batch=16, verbose=False,
                  process_group=group)  # fmt: skip
    except ValueError as e:
        errors["data"] = str(e)
    if rank == 0:
        torch.save({"got": got, "errors": errors}, out)
    dist.barrier()  # (a destroy racing the peer's hung now and then with torch 2.4's gloo)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
