"""The one minimization loop: descents × line searches, the Evaluation protocol, the wrappers."""

from __future__ import annotations

import pytest
import torch

from odeflow.optim import (
    LBFGS,
    AbstractDescent,
    Armijo,
    DescentStep,
    Evaluation,
    FixedStep,
    LinearOperator,
    NewtonCG,
    Status,
    gauss_newton,
    lbfgs,
    minimize,
)

F64 = torch.float64


def _least_squares(seed=0, m=30, n=8, lam=0.1):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(m, n, generator=g, dtype=F64)
    y = torch.randn(m, generator=g, dtype=F64)
    H = LinearOperator(
        lambda v: A.T @ (A @ v) + lam * v, (n,), psd=True, diagonal=(A * A).sum(0) + lam
    )
    ref = torch.linalg.solve(A.T @ A + lam * torch.eye(n, dtype=F64), A.T @ y)

    def tup(x):
        r = A @ x - y
        f = 0.5 * float(r @ r) + 0.5 * lam * float(x @ x)
        return f, A.T @ r + lam * x, H, {"residual": float(r.norm())}

    def ev(x):
        f, g_, H_, info = tup(x)
        return Evaluation(f, g_, H_, info)

    return tup, ev, ref, n


def _rosen(z):
    a, b = z[0], z[1]
    f = (1 - a) ** 2 + 100 * (b - a**2) ** 2
    g = torch.stack([-2 * (1 - a) - 400 * a * (b - a**2), 200 * (b - a**2)])
    return Evaluation(float(f), g)


def test_wrappers_are_the_loop_with_a_fixed_pair():
    """gauss_newton / lbfgs give exactly what minimize gives with their descent and search."""
    tup, ev, ref, n = _least_squares()
    x0 = torch.zeros(n, dtype=F64)
    a = gauss_newton(tup, x0, cg_rtol=0.3, cg_maxiter=3, maxiter=6, ftol=0, xtol=0, gtol=1e-12)
    b = minimize(ev, x0, NewtonCG(rtol=0.3, maxiter=3), Armijo(), maxiter=6, gtol=1e-12)
    assert torch.equal(a.x, b.x) and a.history == b.history and a.status is b.status
    assert 1 <= a.history[1]["cg_iterations"] <= 3 and "residual" in a.history[0]
    c = lbfgs(lambda x: (tup(x)[0], tup(x)[1]), x0, memory=4, maxiter=40, gtol=1e-10)
    d = minimize(ev, x0, LBFGS(memory=4), maxiter=40, gtol=1e-10)
    assert torch.equal(c.x, d.x) and c.iterations == d.iterations
    torch.testing.assert_close(d.x, ref, rtol=1e-7, atol=1e-9)


def test_newton_with_a_unit_fixed_step_solves_a_quadratic_in_one_iteration():
    _, ev, ref, n = _least_squares(seed=1)
    res = minimize(ev, torch.zeros(n, dtype=F64), NewtonCG(rtol=1e-13, maxiter=50), FixedStep(1.0))
    assert res.iterations == 1 and res.status is Status.CONVERGED
    torch.testing.assert_close(res.x, ref, rtol=1e-10, atol=1e-12)


def test_lbfgs_descent_minimizes_rosenbrock():
    res = minimize(_rosen, torch.tensor([-1.2, 1.0], dtype=F64), LBFGS(), maxiter=500, gtol=1e-10)
    assert res.status is Status.CONVERGED
    torch.testing.assert_close(res.x, torch.ones(2, dtype=F64), rtol=0, atol=1e-6)


class _SteepestDescent(AbstractDescent):
    """A stub descent (p = −∇f) to test the loop on its own."""

    def init(self, x, ev):
        return 0, {"calls": 0}

    def step(self, state, x, ev):
        return DescentStep(-ev.grad, state + 1, {"calls": state + 1})

    def update(self, state, x, ev, x_new, ev_new):
        return state


def test_a_new_descent_plugs_into_the_loop():
    """f = ½‖x‖²: steepest descent with t = ½ halves x each step, and the state is threaded."""

    def f(x):
        return Evaluation(0.5 * float(x @ x), x.clone())

    res = minimize(f, torch.ones(3, dtype=F64), _SteepestDescent(), FixedStep(0.5), maxiter=5)
    torch.testing.assert_close(res.x, torch.full((3,), 0.5**5, dtype=F64))
    assert [h["calls"] for h in res.history] == [0, 1, 2, 3, 4, 5]
    assert res.status is Status.MAX_ITERATIONS


def test_fixed_step_refuses_an_infeasible_point():
    def barrier(x):
        v = float("inf") if float(x.abs().max()) >= 1 else float(x @ x)
        return Evaluation(v, 2 * x)

    res = minimize(barrier, torch.tensor([0.5], dtype=F64), _SteepestDescent(), FixedStep(2.0))
    assert res.status is Status.LINE_SEARCH_FAILED and res.iterations == 0
    assert torch.equal(res.x, torch.tensor([0.5], dtype=F64))


def test_bad_objectives_and_settings_are_refused():
    x0 = torch.zeros(2, dtype=F64)
    with pytest.raises(TypeError, match="Evaluation"):
        minimize(lambda x: (0.0, x), x0, LBFGS())
    with pytest.raises(TypeError, match="descent"):
        minimize(_rosen, x0, "lbfgs")
    with pytest.raises(TypeError, match="line search"):
        minimize(_rosen, x0, LBFGS(), search="armijo")
    with pytest.raises(TypeError, match="model Hessian"):
        minimize(_rosen, x0, NewtonCG())
    with pytest.raises(ValueError, match="maxiter"):
        minimize(_rosen, x0, LBFGS(), maxiter=-1)
    with pytest.raises(ValueError, match="gtol"):
        minimize(_rosen, x0, LBFGS(), gtol=float("nan"))
    with pytest.raises(ValueError, match="memory"):
        lbfgs(lambda x: (0.0, x), x0, memory=0)
    with pytest.raises(ValueError, match="step"):
        FixedStep(0.0)
    with pytest.raises(TypeError, match="abstract"):

        class Half(AbstractDescent):
            def init(self, x, ev):
                return None, {}

        Half()
