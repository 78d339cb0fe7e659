"""Conditional models at the library's defaults on an SBI task with a closed-form posterior
(gaussian_linear: θ | y ~ N(y/2, 0.05 I)); the C2ST comparisons with sbi's NPE are in
``benchmarks/sbi_peers.py``."""

from __future__ import annotations

import math

import pytest
import torch

from odeflow.flows import PCPMap, sbi_task


@pytest.mark.slow
def test_pcpmap_defaults_recover_gaussian_linear_posterior():
    task = sbi_task("gaussian_linear")
    theta, y = task.simulate(1000, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = PCPMap(10, 10)
    model.fit(theta.float(), y.float(), verbose=False)
    y_obs = 0.3 * torch.randn(8, 10, generator=torch.Generator().manual_seed(1))
    s = model(y_obs.float()).sample((4000,)).double()  # (4000, 8, 10)
    exact = y_obs / 2  # and standard deviation sqrt(0.05) in every coordinate
    # the yardstick: least squares of θ on (1, y) from the same simulations, the estimator
    # of the posterior mean that knows the family is linear
    a = torch.cat([torch.ones(1000, 1, dtype=y.dtype), y], 1)
    coef = torch.linalg.lstsq(a, theta).solution
    ls = torch.cat([torch.ones(8, 1, dtype=y.dtype), y_obs], 1) @ coef
    rms = lambda e: float(e.pow(2).mean().sqrt())  # noqa: E731
    err, err_ls = rms(s.mean(0) - exact), rms(ls - exact)
    assert err <= 2 * err_ls + 0.01, (err, err_ls)
    assert float((s.std(0) / math.sqrt(0.05) - 1).abs().mean()) < 0.1
