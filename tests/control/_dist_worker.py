"""One rank of the data-parallel control ``fit`` test (run as a script by test_distributed.py)."""

import sys

import torch
import torch.distributed as dist

from odeflow._utils import init_process_group
from odeflow.control import LQR, ValueNetwork, fit

KW = dict(iterations=4, batch=32, resample_every=2, nt=2, lr=0.05, seed=3, verbose=False)
LBFGS = dict(optimizer="lbfgs", iterations=6, batch=32, resample_every=3, nt=2, seed=4,
             verbose=False)  # fmt: skip


def problem():
    return LQR(dim=3, gamma=2.0, initial_mean=0.5)


def network(seed):
    torch.manual_seed(seed)
    return ValueNetwork(3, width=6).double()


def main(rank: int, world: int, store: str, out: str) -> None:
    init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    group = dist.group.WORLD
    phi = network(100 + rank)  # different initial weights: fit broadcasts rank 0's
    res = fit(problem(), phi, process_group=group, checkpoint=f"{out}.rank{rank}.ck", **KW)
    adam = {k: v.clone() for k, v in phi.state_dict().items()}
    phi_lb = network(200 + rank)
    res_lb = fit(problem(), phi_lb, process_group=group, **LBFGS)
    errors = {}
    try:  # 31 initial states per batch cannot be split over 2 ranks
        fit(problem(), phi, iterations=1, batch=31, verbose=False, process_group=group)
    except ValueError as e:
        errors["split"] = str(e)
    try:  # rank 1 asks for another number of iterations
        fit(problem(), phi, iterations=1 + rank, batch=8, verbose=False, process_group=group)
    except ValueError as e:
        errors["settings"] = str(e)
    res_cb = fit(problem(), phi, iterations=5, batch=8, verbose=False, process_group=group,
                 callback=lambda it, terms: rank == 1 and it == 2)  # fmt: skip
    if rank == 0:
        torch.save({"adam": adam, "history": res.history, "world": res.world_size,
                    "lbfgs": phi_lb.state_dict(), "lbfgs_history": res_lb.history,
                    "errors": errors, "stop": (res_cb.status, res_cb.iterations)}, out)  # fmt: skip
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
