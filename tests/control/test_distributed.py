"""Data-parallel control ``fit`` over a torch.distributed process group (gloo, 2 processes):
the ranks take the steps of one process on their shares put together."""

import pytest
import torch
import torch.distributed as dist

from odeflow._utils import Comm
from odeflow.control import control_loss, fit
from odeflow.optim import lbfgs

from . import _dist_worker as worker

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"
)


def _shares(kw, block_seeds=False, n_ranks=2):
    """The samplers of the ranks (seed + 1_000_003·rank): the batch is their shares joined
    (with ``block_seeds``, each stream then draws an L-BFGS block's noise seed, as in fit)."""
    pb = worker.problem()
    gens = [torch.Generator().manual_seed(kw["seed"] + 1_000_003 * r) for r in range(n_ranks)]
    share = kw["batch"] // n_ranks

    def draw():
        x = torch.cat([pb.sample_initial(share, generator=g) for g in gens])
        for g in gens if block_seeds else ():
            torch.randint(0, 2**62, (1,), generator=g)
        return x

    return pb, draw


def _adam_reference():
    """Plain Adam on the joined shares: one process, no fit."""
    kw = worker.KW
    pb, draw = _shares(kw)
    phi = worker.network(100)
    opt = torch.optim.Adam(phi.parameters(), lr=kw["lr"])
    totals = []
    for it in range(kw["iterations"]):
        if it % kw["resample_every"] == 0:
            x = draw()
        opt.zero_grad()
        out = control_loss(pb, phi, x, nt=kw["nt"], gradient="backprop")
        out.total.backward()
        opt.step()
        totals.append(float(out.total.detach()))
    return phi, totals


def _lbfgs_reference():
    """odeflow.optim.lbfgs blocks on the joined shares, restarted at each resample."""
    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    kw = worker.LBFGS
    pb, draw = _shares(kw, block_seeds=True)
    phi = worker.network(200)
    params = list(phi.parameters())
    for _ in range(kw["iterations"] // kw["resample_every"]):
        x = draw()

        def fn(theta, x=x):
            vector_to_parameters(theta, params)
            out = control_loss(pb, phi, x, nt=kw["nt"], gradient="backprop")
            g = torch.autograd.grad(out.total, params, allow_unused=True)
            g = [torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, params)]
            return float(out.total.detach()), torch.cat([gi.reshape(-1) for gi in g])

        def value(theta, x=x):
            vector_to_parameters(theta, params)
            with torch.no_grad():
                return float(control_loss(pb, phi, x, nt=kw["nt"]).total)

        res = lbfgs(fn, parameters_to_vector(params).detach(), value=value,
                    maxiter=kw["resample_every"])  # fmt: skip
        vector_to_parameters(res.x, params)
    return phi


def test_two_ranks_take_the_steps_of_one_process_on_the_joined_shares(tmp_path, launch_ranks):
    """Adam (4 steps, resampling every 2) and L-BFGS (2 blocks of 3): the 2-rank weights equal
    one process's on the two ranks' samples put together (float64, to 1e-10); the logged
    losses are the whole batch's; rank 1's different initial weights are replaced by rank
    0's; only rank 0 writes the checkpoint; bad input is refused on every rank alike (no
    hang); a callback stopping one rank stops both at the same iteration."""
    got = launch_ranks(worker.__file__)
    assert got["world"] == 2
    phi, totals = _adam_reference()
    for k, v in phi.state_dict().items():
        assert torch.allclose(got["adam"][k], v, rtol=1e-10, atol=1e-12), k
    assert [h["total"] for h in got["history"]] == pytest.approx(totals, rel=1e-10)
    phi_lb = _lbfgs_reference()
    for k, v in phi_lb.state_dict().items():
        assert torch.allclose(got["lbfgs"][k], v, rtol=1e-8, atol=1e-10), k
    assert (tmp_path / "rank0.pt.rank0.ck").exists()
    assert not (tmp_path / "rank0.pt.rank1.ck").exists()
    assert "cannot be split evenly over the 2 ranks" in got["errors"]["split"]
    assert "settings" in got["errors"]["settings"] and "differs" in got["errors"]["settings"]
    assert got["stop"] == ("callback", 2)


def test_one_process_without_a_group_is_unchanged():
    """process_group=None: world size 1, the rank-0 seed, the same steps as before."""
    comm = Comm(None, torch.device("cpu"))
    assert (comm.world, comm.seed(7), comm.any(True)) == (1, 7, True)
    phi = worker.network(100)
    res = fit(worker.problem(), phi, **{**worker.KW, "batch": 16})
    assert res.world_size == 1 and len(res.history) == worker.KW["iterations"]
