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
