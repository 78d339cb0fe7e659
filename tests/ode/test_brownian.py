"""BrownianPath: additive increments, the law of Brownian motion, reproducibility."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from odeflow.ode import BrownianPath

F64 = torch.float64


def test_increments_add_up_on_any_grid():
    bm = BrownianPath(0.0, 2.0, (5,), seed=7, dtype=F64, dt=0.1)
    # grid points, off-grid points and points in one finest cell
    pts = [0.0, 0.1, 0.3, 0.3141, 0.31410001, 0.7, 1.23456, 1.9, 2.0]
    for a, b, c in itertools.combinations(pts, 3):
        torch.testing.assert_close(bm(a, c), bm(a, b) + bm(b, c), rtol=0, atol=1e-14)
    inc = bm.increments(pts)
    assert inc.shape == (len(pts) - 1, 5)
    torch.testing.assert_close(inc.sum(0), bm(0.0, 2.0), rtol=0, atol=1e-14)
    torch.testing.assert_close(inc[3], bm(pts[3], pts[4]), rtol=0, atol=0)
    assert torch.equal(bm(0.0), torch.zeros(5, dtype=F64))
    torch.testing.assert_close(bm(1.9), bm(0.0, 1.9), rtol=0, atol=0)


def test_same_seed_same_path_in_any_query_order():
    times = [k / 37 for k in range(38)] + [0.5, 0.25, 0.123456789, 0.987654321]
    ref = BrownianPath(0.0, 1.0, (3, 2), seed=11, dtype=F64, dt=0.01)
    values = {t: ref(t) for t in sorted(times)}
    for order in range(3):
        shuffled = list(times)
        random.Random(order).shuffle(shuffled)
        bm = BrownianPath(0.0, 1.0, (3, 2), seed=11, dtype=F64, dt=0.01)
        for t in shuffled:
            assert torch.equal(bm(t), values[t])
    other = BrownianPath(0.0, 1.0, (3, 2), seed=12, dtype=F64, dt=0.01)
    assert not torch.equal(other(0.5), values[0.5])


def test_law_of_brownian_motion():
    """Increments over disjoint intervals are independent N(0, t − s), also off the grid
    and below the finest cells' ancestors: sample moments within 5 standard errors."""
    n = 40_000
    bm = BrownianPath(0.0, 1.0, (n,), seed=3, dtype=F64, dt=1 / 64)
    edges = [0.0, 1 / 64, 0.1, 0.1 + 1e-3, 0.33333, 0.5, 0.5 + 2.0**-12, 1.0]
    inc = bm.increments(edges)
    for k, (s, t) in enumerate(itertools.pairwise(edges)):
        v = t - s
        assert abs(inc[k].mean().item()) < 5 * (v / n) ** 0.5
        assert abs(inc[k].var().item() - v) < 5 * v * (2 / n) ** 0.5
    corr = torch.corrcoef(inc)
    off = corr - torch.eye(len(edges) - 1, dtype=F64)
    assert off.abs().max().item() < 5 / n**0.5


def test_sequential_queries_cost_about_one_draw_each():
    bm = BrownianPath(0.0, 1.0, (4,), seed=0, dt=0.01)
    start = bm.draws
    for k in range(101):
        bm(k * 0.01)
    forward = bm.draws - start
    for k in reversed(range(101)):  # a backward pass regenerates in reverse order
        bm(k * 0.01)
    assert forward <= 2 * 101
    assert bm.draws - start <= 4 * 101


def test_dtype_device_shape():
    bm = BrownianPath(0.0, 1.0, 3, seed=0)
    assert bm(0.5).dtype == torch.float32 and bm(0.5).shape == (3,)
    assert bm.device == torch.device("cpu") and bm.shape == (3,)
    w = BrownianPath(0.0, 1.0, (2, 3), seed=0, dtype=torch.bfloat16)(0.2, 0.7)
    assert w.dtype == torch.bfloat16 and w.shape == (2, 3)
    t = torch.tensor(0.5, dtype=F64)
    assert torch.equal(bm(t), bm(0.5))


def test_default_seed_follows_torch_manual_seed():
    torch.manual_seed(5)
    a = BrownianPath(0.0, 1.0, (3,))(1.0)
    torch.manual_seed(5)
    b = BrownianPath(0.0, 1.0, (3,))(1.0)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"t0": 1.0, "t1": 1.0}, "t0 < t1"),
        ({"t1": float("nan")}, "finite"),
        ({"dt": 0.0}, "dt must be a positive"),
        ({"dt": -0.1}, "dt must be a positive"),
        ({"tol": 0.0}, "tol must be a positive"),
        ({"shape": (2, -1)}, "non-negative"),
    ],
)
def test_bad_construction(kwargs, match):
    args = {"t0": 0.0, "t1": 1.0, "shape": (2,), **kwargs}
    with pytest.raises(ValueError, match=match):
        BrownianPath(args.pop("t0"), args.pop("t1"), args.pop("shape"), **args)


def test_bad_types_and_queries():
    with pytest.raises(TypeError, match="seed must be an int"):
        BrownianPath(0.0, 1.0, (2,), seed=1.5)
    with pytest.raises(TypeError, match="floating"):
        BrownianPath(0.0, 1.0, (2,), dtype=torch.int64)
    bm = BrownianPath(0.0, 1.0, (2,), seed=0)
    with pytest.raises(ValueError, match=r"outside the Brownian path's interval \[0.0, 1.0\]"):
        bm(0.5, 1.5)
    with pytest.raises(ValueError, match="finite"):
        bm(float("inf"))
    with pytest.raises(TypeError, match="one-element"):
        bm(torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="at least two"):
        bm.increments([0.5])
