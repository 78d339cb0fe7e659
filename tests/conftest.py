"""Test options: ``--device`` (cpu/cuda) and ``--dtype`` (float32/float64) are test axes.

Tests that take the ``device`` fixture run there (``pytest --device cuda`` moves them onto a
GPU, or skips them cleanly without one): the fp16 stress figure (tests/ode/test_stress_figure.py)
and the EPI forward-model checks (tests/imaging/epi/test_forward_independent.py), which also
take ``dtype``. Tests that need CUDA whatever the option take ``cuda`` or are marked ``gpu``.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two xdist workers on two cores: one intra-op thread each avoids oversubscription.
    torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=["cpu", "cuda"], help="device under test")
    parser.addoption(
        "--dtype",
        default="float64",
        choices=["float32", "float64"],
        help="dtype for numerical tests",
    )


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device(request) -> torch.device:
    name = request.config.getoption("--device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda given but CUDA is not available")
    return torch.device(name)


@pytest.fixture
def dtype(request) -> torch.dtype:
    return getattr(torch, request.config.getoption("--dtype"))


@pytest.fixture
def cuda() -> torch.device:
    """A CUDA device, or a clean skip."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda")


def gloo_env() -> dict:
    """The environment of a gloo rank started by a test: one intra-op thread, and gloo over
    the loopback interface where there is one (no hostname lookup needed)."""
    from pathlib import Path

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


@pytest.fixture
def launch_ranks(tmp_path):
    """``launch(script, world=2) -> dict``: run ``script RANK WORLD STORE OUT`` as ``world``
    processes (a gloo group on a file store under ``tmp_path``), wait for all of them (240 s
    each; every rank is killed if one hangs), assert each exited 0 (its log is the message),
    and return rank 0's result, saved to ``tmp_path / "rank0.pt"``, loaded with
    ``weights_only=True``."""
    import subprocess
    import sys

    def launch(script, world: int = 2) -> dict:
        out, store = tmp_path / "rank0.pt", tmp_path / "store"
        procs = [
            subprocess.Popen([sys.executable, str(script), str(r), str(world), str(store),
                              str(out)], env=gloo_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
            for r in range(world)
        ]  # fmt: skip
        logs = []
        for p in procs:
            try:
                logs.append(p.communicate(timeout=240)[0])
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                raise
        for p, log in zip(procs, logs, strict=True):
            assert p.returncode == 0, log
        return torch.load(out, weights_only=True)

    return launch


@pytest.fixture
def rank_env() -> dict:
    """:func:`gloo_env` as a fixture, for tests that start their own ranks (torchrun, NCCL)."""
    return gloo_env()
