"""Data-parallel ``fit`` over a torch.distributed process group (gloo, two CPU processes)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from odeflow.flows import OTFlow, fit

from . import _dist_worker as worker

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"
)


def test_two_ranks_take_the_steps_of_one_process_with_the_same_batch(launch_ranks):
    """2 ranks with a global batch of 32 (16 rows each) = 1 process with batch 32: same
    weights after 4 Adam steps, same logged losses and validation NLLs (float64, up to the
    order of summation); rank 1's different initial weights are replaced by rank 0's."""
    got = launch_ranks(worker.__file__)
    torch.manual_seed(100)
    flow = OTFlow(2, width=8, nt=2).double()
    x, val = worker.data()
    res = fit(flow, x, val_data=val, **worker.KW)
    assert got["world"] == 2 and res.world_size == 1
    for k, v in flow.state_dict().items():
        assert torch.allclose(got["state"][k], v, rtol=1e-10, atol=1e-12), k
    assert len(got["history"]) == len(res.history) == 4
    for a, b in zip(got["history"], res.history):
        for key in ("loss", "nll", "transport", "hjb", "val_nll"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-10, abs=1e-12), key
    assert "val_nll" in got["history"][1]
    # bad input is refused on every rank alike (no hang), naming the problem
    assert "cannot be split evenly over the 2 ranks" in got["errors"]["split"]
    assert "training data" in got["errors"]["data"] and "differs" in got["errors"]["data"]
    # a callback stopping one rank stops them all at the same iteration
    assert got["stops"] == [("callback", 2)]


def test_process_group_needs_initialised_distributed():
    if dist.is_initialized():
        pytest.skip("a default process group exists in this process")
    flow = OTFlow(2, width=4, nt=2).double()
    with pytest.raises(ValueError, match="not initialised"):
        fit(flow, torch.randn(8, 2, dtype=torch.float64), iters=1, batch=4, verbose=False,
            process_group=object())  # fmt: skip


def test_cli_train_under_torchrun(tmp_path, rank_env):
    """`torchrun --nproc-per-node 2 -m odeflow flow train ...`: the ranks train together and
    rank 0 alone writes the outputs and reports. Each rank's process group is really freed
    when the command ends: no gloo thread runs on into interpreter exit (where its teardown
    aborted a rank now and then, before the CLI imported torch._dynamo ahead of the group)."""
    out = tmp_path / "run"
    rank_script = str(Path(__file__).with_name("_cli_rank.py"))  # `python -m odeflow` + threads
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", rank_script, "flow", "train", "--data", "8gaussians", "--iters", "3",
           "--batch", "64", "--n-test", "500", "--out", str(out), "--quiet"]  # fmt: skip
    env = dict(rank_env)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("test NLL") == 1
    counts = [tuple(map(int, line.split()[1:])) for line in p.stdout.splitlines()
              if line.startswith("threads ")]  # fmt: skip
    assert len(counts) == 2, p.stdout
    for before, after in counts:
        assert after <= before, f"native threads {before} -> {after}: the group outlived the run"
    import json

    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["iterations"] == 3
    assert sorted(x.name for x in out.iterdir()) == ["flow.pt", "metrics.json", "samples.png"]


_NCCL_RANK = """
import sys, torch, torch.distributed as dist
from odeflow.flows import OTFlow, fit
from odeflow._utils._distributed import init_process_group
sys.path.insert(0, {tests!r})
from flows._dist_worker import KW, data
torch.cuda.set_device(0)
init_process_group("nccl", init_method="file://{store}", rank=0, world_size=1)
torch.manual_seed(100)
flow = OTFlow(2, width=8, nt=2).double()
x, val = data()
fit(flow, x, val_data=val, device="cuda", process_group=dist.group.WORLD, **KW)
torch.save({{k: v.cpu() for k, v in flow.state_dict().items()}}, {out!r})
dist.destroy_process_group()
"""


@pytest.mark.gpu
def test_gpu_fit_over_nccl_equals_a_plain_fit(cuda, tmp_path, rank_env):
    """One rank over NCCL (the GPU backend: every collective on the rank's device) takes the
    steps of a plain fit on that GPU."""
    if not dist.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    out = tmp_path / "nccl.pt"
    code = _NCCL_RANK.format(tests=str(Path(__file__).parents[1]), store=tmp_path / "store",
                             out=str(out))  # fmt: skip
    p = subprocess.run([sys.executable, "-c", code], env=rank_env, capture_output=True,
                       text=True, timeout=240)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    got = torch.load(out)
    torch.manual_seed(100)
    flow = OTFlow(2, width=8, nt=2).double()
    x, val = worker.data()
    fit(flow, x, val_data=val, device=cuda, **worker.KW)
    for k, v in flow.state_dict().items():
        assert torch.allclose(got[k], v.cpu(), rtol=1e-12, atol=1e-14), k
