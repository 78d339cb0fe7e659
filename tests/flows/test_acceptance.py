"""Issue-5 acceptance: trained flows reach the exact entropies (slow: a few minutes each).

Run with ``pytest -m slow tests/flows/test_acceptance.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from odeflow.flows import (
    OTFlow,
    eight_gaussians_entropy,
    eight_gaussians_means,
    evaluate_nll,
    fit,
    make_toy,
)

pytestmark = pytest.mark.slow


def _gaussian(d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    B = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    cov = B @ B.T + 0.5 * torch.eye(d, dtype=torch.float64)
    Lc = torch.linalg.cholesky(cov)
    draw = lambda n: mu + torch.randn(n, d, generator=g, dtype=torch.float64) @ Lc.T  # noqa: E731
    entropy = 0.5 * d * (1 + math.log(2 * math.pi)) + 0.5 * float(torch.logdet(cov))
    return draw(20_000).float(), draw(2_000).float(), draw(5_000).float(), entropy


@pytest.mark.parametrize("d", [2, 10])
def test_gaussian_entropy_and_round_trip(d):
    torch.manual_seed(0)
    train, val, test, H = _gaussian(d)
    flow = OTFlow(d, width=32, alpha=(1.0, 20.0, 2.0), nt=4, nt_eval=8)
    res = fit(
        flow,
        train,
        val_data=val,
        iters=400,
        batch=1024,
        lr=0.02,
        val_every=25,
        patience=3,
        verbose=False,
    )
    nll = evaluate_nll(flow, test, nt=16)
    print(
        f"d={d}: test NLL {nll:.4f}, exact entropy {H:.4f}, per dim {(nll - H) / d:+.4f}; "
        f"{res.iterations} iters, {res.seconds:.0f} s"
    )
    assert abs(nll - H) / d < 0.05
    with torch.no_grad():
        err = (flow.inverse(flow.transform(test, nt=16), nt=16) - test).abs().max()
    assert float(err) < 1e-4


def test_eight_gaussians_entropy_and_mode_coverage():
    torch.manual_seed(0)
    flow = OTFlow(2, width=32, alpha=(1.0, 30.0, 1.0), nt=8, nt_eval=12)
    res = fit(
        flow, "8gaussians", iters=600, batch=1024, lr=0.05, val_every=50, patience=3, verbose=False
    )
    H, se = eight_gaussians_entropy(200_000, seed=7)
    test = make_toy("8gaussians", 20_000, seed=99)
    nll = evaluate_nll(flow, test, nt=16)
    print(
        f"8gaussians: test NLL {nll:.4f} vs MC entropy {H:.4f} ± {se:.4f}; "
        f"{res.iterations} iters, {res.seconds:.0f} s"
    )
    assert abs(nll - H) < 0.1
    xs = flow.sample(8_000, generator=torch.Generator().manual_seed(1), nt=16)
    mu = eight_gaussians_means(torch.float32)
    dist = torch.cdist(xs, mu)
    nearest = dist.argmin(1)
    close = dist.min(1).values < 3 * 0.5 / 1.414  # within 3σ of a mode
    counts = torch.bincount(nearest[close], minlength=8)
    print("samples per mode:", counts.tolist(), "within 3σ:", float(close.float().mean()))
    assert int((counts > 0.05 * xs.shape[0]).sum()) == 8  # every mode holds ≥ 5 % (1/8 ideal)
    assert float(close.float().mean()) > 0.8


@pytest.mark.parametrize("dev", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_bf16_training_matches_fp32(dev):
    train, val, test, _ = _gaussian(2, seed=3)
    nlls = {}
    for prec in ("fp32", "bf16"):
        torch.manual_seed(0)
        flow = OTFlow(2, width=16, alpha=(1.0, 20.0, 2.0), nt=4, nt_eval=8)
        fit(
            flow,
            train,
            val_data=val,
            iters=200,
            batch=512,
            lr=0.02,
            val_every=25,
            precision=prec,
            seed=0,
            device=dev,
            verbose=False,
        )
        flow.precision = "fp32"  # evaluate both the same way
        nlls[prec] = evaluate_nll(flow, test.to(dev), nt=16)
    print(f"{dev} test NLL fp32 / bf16:", nlls)
    assert abs(nlls["bf16"] - nlls["fp32"]) < 0.05
