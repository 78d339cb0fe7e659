"""The trust-region descent (Steihaug CG) in the minimize loop."""

from __future__ import annotations

import pytest
import torch

from odeflow.optim import (
    Armijo,
    Evaluation,
    LinearOperator,
    NewtonCG,
    SteihaugCG,
    minimize,
    steihaug_cg,
)

F64 = torch.float64


def _rosenbrock(z):
    x, y = z[0], z[1]
    f = (1 - x) ** 2 + 100 * (y - x**2) ** 2
    g = torch.stack([-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)])
    a, b = float(x), float(y)
    Hm = torch.tensor(
        [[2 - 400 * (b - a * a) + 800 * a * a, -400 * a], [-400 * a, 200.0]], dtype=F64
    )
    return Evaluation(float(f), g, LinearOperator(lambda v: Hm @ v, (2,), symmetric=True))


def test_rosenbrock_converges():
    res = minimize(
        _rosenbrock,
        torch.tensor([-1.2, 1.0], dtype=F64),
        SteihaugCG(radius=0.5, rtol=1e-10, maxiter=4),
        Armijo(),
        gtol=1e-12,
        maxiter=200,
    )
    assert res.status.name == "CONVERGED", res.status
    assert float((res.x - 1).abs().max()) < 1e-8
    stops = {h.get("cg_stop") for h in res.history[1:]}
    assert "negative_curvature" in stops or "boundary" in stops  # the region was active


def _quadratic(seed=0, n=30):
    g = torch.Generator().manual_seed(seed)
    Q = torch.randn(n, n, generator=g, dtype=F64)
    H = Q @ Q.T / n + 0.1 * torch.eye(n, dtype=F64)
    c = torch.randn(n, generator=g, dtype=F64)

    def fn(x):
        return Evaluation(
            float(0.5 * x @ H @ x - c @ x),
            H @ x - c,
            LinearOperator(lambda v: H @ v, (n,), psd=True),
        )

    return fn, H, c


def test_equals_newton_cg_inside_the_region_on_a_convex_quadratic():
    fn, H, c = _quadratic()
    x0 = torch.zeros(30, dtype=F64)
    kw, it = {"rtol": 1e-3, "maxiter": 8}, {"maxiter": 4, "gtol": 0.0}
    tr = minimize(fn, x0, SteihaugCG(radius=1e6, max_radius=1e6, **kw), Armijo(), **it)
    nc = minimize(fn, x0, NewtonCG(precondition=False, **kw), Armijo(), **it)
    assert tr.iterations == nc.iterations
    assert torch.allclose(tr.x, nc.x, rtol=0, atol=1e-12)
    assert [h["step"] for h in tr.history] == [h["step"] for h in nc.history]
    sol = torch.linalg.solve(H, c)
    assert float((tr.x - sol).norm() / sol.norm()) < 1e-3  # 4 inexact Newton steps
    assert [h["cg_iterations"] for h in tr.history] == [h["cg_iterations"] for h in nc.history]


def test_steihaug_boundary_behaviour():
    _, H, c = _quadratic(seed=1)
    Hop = LinearOperator(lambda v: H @ v, (30,), psd=True)
    g = -c

    def model(p):
        return float(g @ p + 0.5 * p @ H @ p)

    # a tiny radius: the first CG step leaves it, so p is the Cauchy step -Δ g/‖g‖
    p, reason, its = steihaug_cg(Hop, g, 1e-3, rtol=1e-12, maxiter=50)
    assert reason == "boundary" and its == 1
    assert torch.allclose(p, -1e-3 * g / g.norm(), rtol=1e-12, atol=0)
    # a moderate radius: on the boundary, and at least the Cauchy point's decrease
    newton = torch.linalg.solve(H, -g)
    radius = 0.3 * float(newton.norm())
    p, reason, _ = steihaug_cg(Hop, g, radius, rtol=1e-12, maxiter=50)
    assert reason == "boundary"
    assert float(p.norm()) == pytest.approx(radius, rel=1e-12)
    tc = min(float(g @ g) / float(g @ H @ g), radius / float(g.norm()))
    assert model(p) <= model(-tc * g) < 0
    # a large radius: the Newton step itself
    p, reason, _ = steihaug_cg(Hop, g, 10 * float(newton.norm()), rtol=1e-12, maxiter=100)
    assert reason == "converged" and torch.allclose(p, newton, atol=1e-9)
    # negative curvature: to the boundary, with a decrease
    Hi = H - 2 * torch.eye(30, dtype=F64) * float(torch.linalg.eigvalsh(H)[-1])
    p, reason, _ = steihaug_cg(lambda v: Hi @ v, g, 0.5, rtol=1e-12, maxiter=50)
    assert reason == "negative_curvature"
    assert float(p.norm()) == pytest.approx(0.5, rel=1e-12)
    assert float(g @ p + 0.5 * p @ Hi @ p) < 0


def test_bad_input():
    with pytest.raises(ValueError, match="radius"):
        SteihaugCG(radius=0.0)
    with pytest.raises(ValueError, match="max_radius"):
        SteihaugCG(radius=2.0, max_radius=1.0)
    with pytest.raises(ValueError, match="radius"):
        steihaug_cg(lambda v: v, torch.ones(2), -1.0)
    with pytest.raises(TypeError, match="Hessian"):
        minimize(
            lambda x: Evaluation(float(x @ x), 2 * x),
            torch.ones(2, dtype=F64),
            SteihaugCG(),
        )
