"""The HJB benchmark of Han, Jentzen and E against its Cole–Hopf reference."""

import time

import pytest
import torch

from odeflow.control import HJB, ValueNetwork, fit


def _train_hjb(dim, iterations, drops, samples, seed=0):
    torch.manual_seed(seed)
    pb = HJB(dim=dim)
    ref = pb.reference(samples=samples)
    phi = ValueNetwork(dim, width=32).float()
    t0 = time.perf_counter()
    fit(pb, phi, iterations=iterations, batch=64, lr=1e-2, lr_drops=drops, nt=20,
        resample_every=1, verbose=False, seed=seed)  # fmt: skip
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        u00 = float(phi(torch.zeros(1, dim), 0.0))
    return abs(u00 - ref.value) / ref.value, ref, seconds


def test_hjb_10d_value_at_origin():
    """Cheap version (d = 10, 150 Adam steps): this budget reaches about 7e-3."""
    err, ref, _ = _train_hjb(10, 150, (100,), 10**5)
    assert ref.stderr / ref.value < 1e-3
    assert err < 2e-2, err


@pytest.mark.slow
def test_hjb_100d_value_at_origin_within_3e3():
    """d = 100, 2000 Adam steps (~5 min on 2 busy CPU cores), 10⁶ reference samples."""
    err, ref, seconds = _train_hjb(100, 2000, (300, 1200), 10**6)
    assert ref.stderr / ref.value < 1e-4
    assert err <= 3e-3, (err, seconds)
