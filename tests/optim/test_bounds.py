"""minimize_bounded (projected Newton–Krylov) against known solutions and scipy's L-BFGS-B."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from odeflow.optim import Evaluation, LinearOperator, Status, minimize_bounded

F64 = torch.float64


def _rosenbrock(x):
    a, b = x[:-1], x[1:]
    f = float((100 * (b - a**2) ** 2 + (1 - a) ** 2).sum())
    g = torch.zeros_like(x)
    g[:-1] = -400 * a * (b - a**2) - 2 * (1 - a)
    g[1:] += 200 * (b - a**2)
    d = torch.zeros_like(x)
    d[:-1] = 1200 * a**2 - 400 * b + 2
    d[1:] += 200
    off = -400 * a

    def hv(v):
        out = d * v
        out[:-1] += off * v[1:]
        out[1:] += off * v[:-1]
        return out

    return Evaluation(f, g, LinearOperator(hv, x.shape, symmetric=True))


@pytest.mark.parametrize("start", [(-1.2, 1.0), (0.0, 0.0), (0.5, 2.0)])
def test_bounded_rosenbrock_known_solution(start):
    # with x₁ ≤ 0.5 the minimizer is (0.5, 0.25): y = x² kills the first term, x as large as allowed
    res = minimize_bounded(
        _rosenbrock, torch.tensor(start, dtype=F64), bounds=((-2.0, -2.0), (0.5, 2.0))
    )
    assert res.status is Status.CONVERGED
    assert torch.allclose(res.x, torch.tensor([0.5, 0.25], dtype=F64), atol=1e-8, rtol=0)


def test_bounded_quadratic_program_known_solution():
    g = torch.Generator().manual_seed(0)
    n = 40
    M = torch.randn(n, n, generator=g, dtype=F64)
    Q = M @ M.T / n + 0.1 * torch.eye(n, dtype=F64)
    x_star = torch.rand(n, generator=g, dtype=F64)
    x_star[:10], x_star[10:20] = 0.0, 1.0  # 10 at the lower, 10 at the upper bound
    mult = torch.zeros(n, dtype=F64)
    mult[:10] = 0.5 + torch.rand(10, generator=g, dtype=F64)  # ∇f > 0 at a lower bound
    mult[10:20] = -0.5 - torch.rand(10, generator=g, dtype=F64)  # ∇f < 0 at an upper bound
    c = Q @ x_star - mult  # KKT: ∇f(x*) = Qx* − c = mult, so x* is the (unique) minimizer
    H = LinearOperator(lambda v: Q @ v, (n,), symmetric=True)

    def fn(x):
        return Evaluation(float(0.5 * x @ Q @ x - c @ x), Q @ x - c, H)

    res = minimize_bounded(fn, torch.full((n,), 0.5, dtype=F64), bounds=(0.0, 1.0), rank=n)
    assert res.status is Status.CONVERGED
    assert float((res.x - x_star).abs().max()) <= 1e-8
    assert res.iterations <= 15


def test_bounded_logistic_regression_on_digits_matches_lbfgsb():
    pytest.importorskip("sklearn")
    from scipy.optimize import minimize as sp_minimize
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = X[:300] / 16.0, y[:300]
    n, d = X.shape
    C, lam, bound = 10, 1e-3, 0.3
    Xt = torch.cat([torch.tensor(X), torch.ones(n, 1, dtype=F64)], 1)
    Y = torch.nn.functional.one_hot(torch.tensor(y), C).to(F64)

    def parts(w):
        W = w.reshape(d + 1, C)
        logits = Xt @ W
        f = (torch.logsumexp(logits, 1) - (logits * Y).sum(1)).mean() + 0.5 * lam * (w @ w)
        S = torch.softmax(logits, 1)
        return f, W, S

    def fn(w):
        f, _, S = parts(w)
        grad = (Xt.T @ (S - Y) / n).reshape(-1) + lam * w

        def hv(v):
            U = Xt @ v.reshape(d + 1, C)
            R = S * U - S * (S * U).sum(1, keepdim=True)
            return (Xt.T @ R / n).reshape(-1) + lam * v

        return Evaluation(float(f), grad, LinearOperator(hv, w.shape, symmetric=True))

    w0 = torch.zeros((d + 1) * C, dtype=F64)
    res = minimize_bounded(fn, w0, bounds=(-bound, bound), value=lambda w: float(parts(w)[0]))
    assert res.status is Status.CONVERGED

    def sp_fun(w):
        ev = fn(torch.tensor(w))
        return ev.value, ev.grad.numpy()

    ref = sp_minimize(
        sp_fun,
        np.zeros_like(w0.numpy()),
        jac=True,
        method="L-BFGS-B",
        bounds=[(-bound, bound)] * w0.numel(),
        options={"ftol": 1e-14, "gtol": 1e-10, "maxiter": 5000},
    )
    assert abs(res.value - ref.fun) <= 1e-6 * abs(ref.fun)
    assert res.value <= ref.fun + 1e-10  # as good as L-BFGS-B's optimum
    assert int((res.x.abs() >= bound - 1e-12).sum()) > 0  # some bounds are active


def test_bad_input_and_infeasible_start():
    with pytest.raises(ValueError, match="lower > upper"):
        minimize_bounded(_rosenbrock, torch.zeros(2, dtype=F64), bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match="broadcast"):
        minimize_bounded(_rosenbrock, torch.zeros(2, dtype=F64), bounds=(torch.zeros(3), None))
    with pytest.raises(ValueError, match="pair"):
        minimize_bounded(_rosenbrock, torch.zeros(2, dtype=F64), bounds=0.0)
    with pytest.raises(TypeError, match="Hessian"):
        minimize_bounded(
            lambda x: Evaluation(float(x @ x), 2 * x), torch.ones(2, dtype=F64), bounds=(0, 1)
        )
    x0 = torch.tensor([3.0, -5.0], dtype=F64)
    with pytest.warns(UserWarning, match="violates the bounds"):
        res = minimize_bounded(_rosenbrock, x0, bounds=(-2.0, (0.5, 2.0)))
    assert torch.equal(x0, torch.tensor([3.0, -5.0], dtype=F64))  # not modified
    assert torch.allclose(res.x, torch.tensor([0.5, 0.25], dtype=F64), atol=1e-8, rtol=0)
