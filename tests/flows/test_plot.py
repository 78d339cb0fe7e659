"""``plot_flow_2d``: the picture of a 2-D flow draws its samples on the flow's device."""

from __future__ import annotations

import pytest
import torch

from odeflow.flows import OTFlow, make_toy, plot_flow_2d

pytest.importorskip("matplotlib")


class _RecordingGenerator:
    """Stands in for torch.Generator: remembers the device it was made for and its seed."""

    def __init__(self, device="cpu"):
        self.device, self.seed = torch.device(device), None

    def manual_seed(self, seed):
        self.seed = seed
        return self


class _FlowOn:
    """A 2-D flow whose parameters live on ``device`` (sample/log_prob answer on the CPU)."""

    dim = 2

    def __init__(self, device):
        self.device, self.generators = torch.device(device), []

    def parameters(self):
        yield torch.empty(0, device="meta").to(self.device)

    def sample(self, n, generator=None):
        self.generators.append(generator)
        return torch.zeros(n, 2)

    def log_prob(self, x):
        return torch.zeros(x.shape[0])


def test_plot_draws_samples_with_a_generator_on_the_flows_device(tmp_path, monkeypatch):
    data = make_toy("moons", 100)
    monkeypatch.setattr(torch, "Generator", _RecordingGenerator)
    flow = _FlowOn("meta")  # any non-CPU device: the generator must follow it
    path = plot_flow_2d(flow, data, tmp_path / "p.png", n=50, grid=8, seed=7)
    (gen,) = flow.generators
    assert gen.device == torch.device("meta") and gen.seed == 7
    assert path.stat().st_size > 1000


def test_plot_samples_are_the_flows_seeded_samples(tmp_path, monkeypatch):
    flow = OTFlow(2, width=4, nt=2)
    seen = []
    sample = flow.sample
    monkeypatch.setattr(flow, "sample", lambda n, generator=None: seen.append(
        sample(n, generator=generator)) or seen[-1])  # fmt: skip
    plot_flow_2d(flow, make_toy("moons", 100), tmp_path / "p.png", n=40, grid=8, seed=3)
    assert torch.equal(seen[0], flow.sample(40, generator=torch.Generator().manual_seed(3)))


@pytest.mark.gpu
def test_plot_of_a_cuda_flow(tmp_path, cuda):
    flow = OTFlow(2, width=4, nt=2).to(cuda)
    path = plot_flow_2d(flow, make_toy("moons", 100), tmp_path / "p.png", n=50, grid=8)
    assert path.stat().st_size > 1000
