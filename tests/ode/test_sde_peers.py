"""sdeint agrees in distribution with torchsde on the same SDE (a test oracle only)."""

from __future__ import annotations

import pytest
import torch

from odeflow import sdeint

torchsde = pytest.importorskip("torchsde")
stats = pytest.importorskip("scipy.stats")

F64 = torch.float64


class GBM(torch.nn.Module):
    noise_type, sde_type = "diagonal", "ito"

    def f(self, t, y):
        return 0.5 * y

    def g(self, t, y):
        return 0.4 * y


def _compare(paths: int, method: str):
    torch.manual_seed(0)
    y0 = torch.ones(paths, 1, dtype=F64)
    ts = torch.tensor([0.0, 1.0], dtype=F64)
    with torch.no_grad():
        ours = sdeint(GBM(), y0, ts, dt=0.05, method=method)[-1, :, 0]
        peer = torchsde.sdeint(GBM(), y0, ts, dt=0.05, method=method)[-1, :, 0]
    se = (ours.var() / paths + peer.var() / paths).sqrt()
    assert abs(ours.mean() - peer.mean()) < 5 * se
    ks = stats.ks_2samp(ours.numpy(), peer.numpy())
    assert ks.pvalue > 1e-3, ks


@pytest.mark.parametrize("method", ["euler", "milstein"])
def test_same_distribution_as_torchsde(method):
    _compare(2000, method)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["euler", "milstein"])
def test_same_distribution_as_torchsde_many_paths(method):
    _compare(50_000, method)
