"""Gauss–Newton, L-BFGS and Armijo on Rosenbrock and least squares (closed forms)."""

from __future__ import annotations

import itertools

import pytest
import torch

from odeflow.optim import LinearOperator, Status, armijo, gauss_newton, lbfgs

F64 = torch.float64


def rosen_residual(z):
    return torch.stack([10 * (z[1] - z[0] ** 2), 1 - z[0]])


def rosen_gn(z):
    r = rosen_residual(z)
    J = torch.stack(
        [
            torch.stack([-20 * z[0], torch.tensor(10.0, dtype=F64)]),
            torch.tensor([-1.0, 0.0], dtype=F64),
        ]
    )
    H = LinearOperator(lambda v: J.T @ (J @ v), (2,), psd=True, diagonal=(J * J).sum(0))
    return 0.5 * float(r @ r), J.T @ r, H


def rosen_fg(z):
    r = rosen_residual(z)
    f = 0.5 * (r @ r)
    return float(f), torch.func.grad(lambda y: 0.5 * (rosen_residual(y) ** 2).sum())(z)


def test_gauss_newton_rosenbrock():
    res = gauss_newton(
        rosen_gn,
        torch.tensor([-1.2, 1.0], dtype=F64),
        maxiter=100,
        cg_rtol=1e-12,
        cg_maxiter=10,
        gtol=1e-12,
        ftol=0.0,
        xtol=0.0,
    )
    torch.testing.assert_close(res.x, torch.ones(2, dtype=F64), rtol=0, atol=1e-8)
    assert res.status is Status.CONVERGED
    vals = [h["value"] for h in res.history]
    assert all(b <= a for a, b in itertools.pairwise(vals))  # monotone (Armijo)


def test_lbfgs_rosenbrock():
    res = lbfgs(rosen_fg, torch.tensor([-1.2, 1.0], dtype=F64), maxiter=500, gtol=1e-10)
    torch.testing.assert_close(res.x, torch.ones(2, dtype=F64), rtol=0, atol=1e-6)
    assert res.status is Status.CONVERGED


@pytest.mark.parametrize("method", ["gn", "lbfgs"])
def test_least_squares_closed_form(method):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(40, 12, generator=g, dtype=F64)
    y = torch.randn(40, generator=g, dtype=F64)
    lam = 0.1
    ref = torch.linalg.solve(A.T @ A + lam * torch.eye(12, dtype=F64), A.T @ y)
    H = LinearOperator(
        lambda v: A.T @ (A @ v) + lam * v, (12,), psd=True, diagonal=(A * A).sum(0) + lam
    )

    def fn(x):
        r = A @ x - y
        return 0.5 * float(r @ r) + 0.5 * lam * float(x @ x), A.T @ r + lam * x, H

    x0 = torch.zeros(12, dtype=F64)
    if method == "gn":
        res = gauss_newton(fn, x0, cg_rtol=1e-12, cg_maxiter=100, maxiter=5, gtol=1e-10)
        assert res.iterations == 1  # one exact Newton step on a quadratic
    else:
        res = lbfgs(lambda x: fn(x)[:2], x0, maxiter=300, gtol=1e-10)
    torch.testing.assert_close(res.x, ref, rtol=1e-6, atol=1e-8)


def test_armijo_sufficient_decrease_and_feasibility():
    f = lambda z: float((z**4).sum())  # noqa: E731
    x = torch.tensor([1.0, -2.0], dtype=F64)
    g = 4 * x**3
    p = -g
    ls = armijo(f, x, f(x), g, p, c1=1e-4)
    assert ls.success
    assert ls.value <= f(x) + 1e-4 * ls.step * float(g @ p)
    # the previous (twice as long) step violated the condition
    t = 2 * ls.step
    assert f(x + t * p) > f(x) + 1e-4 * t * float(g @ p)

    # infinite values (a barrier) are rejected
    def barrier(z):
        return float("inf") if float(z.abs().max()) >= 1 else float((z**2).sum())

    x = torch.tensor([0.5], dtype=F64)
    ls = armijo(barrier, x, barrier(x), 2 * x, torch.tensor([-10.0], dtype=F64))
    assert ls.success and abs(float(ls.x)) < 1


def test_armijo_errors_and_failure():
    x = torch.tensor([1.0], dtype=F64)
    with pytest.raises(ValueError, match="descent"):
        armijo(lambda z: float(z @ z), x, 1.0, 2 * x, 2 * x)
    with pytest.raises(ValueError, match="c1"):
        armijo(lambda z: float(z @ z), x, 1.0, 2 * x, -x, c1=2.0)
    ls = armijo(lambda z: float("inf"), x, 1.0, 2 * x, -x, max_steps=3)
    assert not ls.success and ls.evaluations == 3 and torch.equal(ls.x, x)


def test_non_finite_start_is_an_error():
    bad = lambda x: (float("nan"), x, None)  # noqa: E731
    with pytest.raises(ValueError, match="not finite"):
        gauss_newton(bad, torch.zeros(2, dtype=F64))
    with pytest.raises(ValueError, match="not finite"):
        lbfgs(lambda x: (float("inf"), x), torch.zeros(2, dtype=F64))


@pytest.mark.parametrize("method", ["gn", "lbfgs"])
def test_a_stalled_objective_is_stagnated_not_converged(method):
    """f = 1e8 + ½‖x‖²: near the minimum no decrease is representable in float64, so the
    gradient test (gtol) cannot be met; with ftol = xtol = 0 (their tests off) that is
    STAGNATED, never CONVERGED. Gauss–Newton gets H = 2I, so that its step halves x instead of
    landing on the minimum in one step."""
    off = 1e8

    def fg(z):
        return off + 0.5 * float(z @ z), z.clone()

    H = LinearOperator(lambda v: 2 * v, (2,), psd=True)
    x0 = torch.tensor([1e-5, -1e-5], dtype=F64)
    if method == "gn":
        res = gauss_newton(lambda z: (*fg(z), H), x0, gtol=1e-12, ftol=0.0, xtol=0.0)
    else:
        res = lbfgs(fg, x0, gtol=1e-12)
    assert res.status is Status.STAGNATED, res.status
    assert res.grad_norm > 1e-12 * float(torch.linalg.vector_norm(x0))
