"""Data-parallel ``fit`` of COT-Flow and PCP-Map over a gloo process group (two CPU ranks)."""

import pytest
import torch
import torch.distributed as dist

from . import _cond_dist_worker as worker

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"
)


def test_two_ranks_take_the_steps_of_one_process_on_the_joined_batches(launch_ranks):
    """2 ranks with a global batch of 16 (8 rows each) = 1 process with batch 16, for both
    models: same weights and standardization after 4 Adam steps, same logged losses and
    validation NLLs (17 validation rows shared 9/8), in float64 up to summation order;
    rank 1's different initial weights are replaced by rank 0's."""
    res = launch_ranks(worker.__file__)
    x, y = worker.data()
    for name in ("pcpmap", "cotflow"):
        got = res["got"][name]
        model = worker.build(name, 100)
        one = model.fit(x, y, **worker.KW)
        assert got["world"] == 2 and one.world_size == 1
        for k, v in model.state_dict().items():
            assert torch.allclose(got["state"][k], v, rtol=1e-10, atol=1e-12), (name, k)
        assert len(got["history"]) == len(one.history) == 4
        for a, b in zip(got["history"], one.history, strict=True):
            assert a.keys() == b.keys()
            for key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-10, abs=1e-12), (name, key)
        assert "val_nll" in got["history"][1]
    assert "cannot be split evenly over the 2 ranks" in res["errors"]["split"]
    assert "training pairs" in res["errors"]["data"] and "differs" in res["errors"]["data"]


def test_process_group_needs_initialised_distributed():
    if dist.is_initialized():
        pytest.skip("a default process group exists in this process")
    x, y = worker.data()
    with pytest.raises(ValueError, match="not initialised"):
        worker.build("pcpmap", 0).fit(x, y, iters=1, verbose=False, process_group=object())
