"""The conditional models' training loop: a learning-rate drop restarts from the best weights."""

from __future__ import annotations

import pytest
import torch

from odeflow.flows import COTFlow, PCPMap


def _pairs(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    x = torch.cat([y, -y], 1) + 0.3 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x, y


@pytest.mark.parametrize(
    "make",
    [lambda: PCPMap(2, 1, width=8), lambda: COTFlow(2, 1, width=8, nt=2)],
    ids=["pcp-map", "cot-flow"],
)
def test_a_drop_restarts_from_the_best_weights(make):
    """At a drop the weights are reset to the best validated ones: with the lr then divided
    by 10¹² the next step cannot move them, so the next validation NLL equals the best one
    (without the restore it would equal the stalled, worse one)."""
    torch.manual_seed(0)
    model = make().double()
    x, y = _pairs()
    # lr 0.2: steps large enough that a validation soon fails to improve
    r = model.fit(x, y, iters=60, batch=64, lr=0.2, val_every=1, patience=1, lr_drop=1e12,
                  max_drops=1, verbose=False)  # fmt: skip
    h = r.history
    drop = next(i for i in range(1, len(h)) if h[i]["lr"] != h[i - 1]["lr"])
    best_before = min(rec["val_nll"] for rec in h[:drop])
    assert h[drop - 1]["val_nll"] > best_before + 1e-3  # the stall that caused the drop
    assert h[drop]["lr"] == pytest.approx(1e-12)
    assert h[drop]["val_nll"] == pytest.approx(best_before, rel=1e-9)
