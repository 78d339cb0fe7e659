import math

import numpy as np
import pytest
import torch

from odeflow.testing import observed_order, taylor_test


def f_scalar(x):
    return torch.sin(x).sum() + (x**3).sum() * 0.1


def grad_scalar(x):
    return torch.cos(x) + 0.3 * x**2


def hvp_scalar(x, v):
    return (-torch.sin(x) + 0.6 * x) * v


@pytest.fixture
def xv():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    v = torch.randn(5, 3, generator=g, dtype=torch.float64)
    return x, v


def test_correct_derivatives_give_orders_1_2_3(xv):
    x, v = xv
    r = taylor_test(f_scalar, x, v, grad=grad_scalar, hvp=hvp_scalar(x, v))
    assert abs(r.order0 - 1) < 0.2
    assert abs(r.order1 - 2) < 0.2
    assert abs(r.order2 - 3) < 0.2
    assert r.passed()


def test_wrong_gradient_is_caught(xv):
    x, v = xv
    r = taylor_test(f_scalar, x, v, grad=lambda z: grad_scalar(z) * 1.01, second=False)
    assert abs(r.order1 - 1) < 0.2  # a wrong gradient degrades E1 to O(h)
    assert not r.passed()


def test_wrong_hessian_is_caught(xv):
    x, v = xv
    r = taylor_test(f_scalar, x, v, grad=grad_scalar, hvp=1.05 * hvp_scalar(x, v))
    assert abs(r.order2 - 2) < 0.2
    assert not r.passed()


def test_autograd_defaults_for_vector_function(xv):
    x, v = xv

    def f(z):
        return torch.tanh(z) @ torch.ones(3, 2, dtype=z.dtype)

    r = taylor_test(f, x, v)
    assert r.passed()
    assert r.e2 is not None and r.e2[-1] < r.e1[-1] < r.e0[-1]


def test_observed_order_recovers_power_laws():
    hs = np.array([0.2, 0.1, 0.05, 0.025])
    for p in (1.0, 2.0, 4.0):
        assert observed_order(7.0 * hs**p, hs) == pytest.approx(p, abs=1e-12)
    # noise on top of a power law is tolerated by the least-squares fit
    errs = 3 * hs**2 * (1 + 0.01 * np.array([1, -1, 1, -1]))
    assert observed_order(errs, hs) == pytest.approx(2.0, abs=0.05)


def test_observed_order_with_euler_on_exponential():
    # forward Euler on y' = y over [0, 1]: global error O(h)
    errs, hs = [], []
    for n in (10, 20, 40, 80):
        h = 1.0 / n
        y = 1.0
        for _ in range(n):
            y += h * y
        errs.append(abs(y - math.e))
        hs.append(h)
    assert observed_order(errs, hs) == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize(
    "errors, steps, match",
    [
        ([1.0], [0.1], "at least two"),
        ([1.0, 2.0], [0.1], "one error per step"),
        ([0.0, 1.0], [0.1, 0.2], "positive and finite"),
        ([1.0, float("nan")], [0.1, 0.2], "positive and finite"),
        ([1.0, 2.0], [0.1, 0.1], "distinct"),
    ],
)
def test_observed_order_bad_input(errors, steps, match):
    with pytest.raises(ValueError, match=match):
        observed_order(errors, steps)


def test_taylor_test_bad_input(xv):
    x, v = xv
    with pytest.raises(ValueError, match="shape"):
        taylor_test(f_scalar, x, v[:2])
    with pytest.raises(ValueError, match="floating point"):
        ones = torch.ones(3, dtype=torch.int64)
        taylor_test(lambda z: z.sum(), ones, ones)
    with pytest.raises(ValueError, match="shape of x"):
        taylor_test(f_scalar, x, v, grad=torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="either grad"):
        taylor_test(f_scalar, x, v, grad=grad_scalar, jvp=torch.zeros(()))


def test_exact_derivatives_pass():
    """Remainders at round-off mean the expansion is exact to that order: a pass."""
    g = torch.Generator().manual_seed(1)
    A = torch.randn(4, 4, generator=g, dtype=torch.float64)
    A = A + A.T
    x = torch.randn(4, generator=g, dtype=torch.float64)
    v = torch.randn(4, generator=g, dtype=torch.float64)
    # a quadratic: E2 is round-off (its hvp is exact), E1 is O(h^2)
    r = taylor_test(lambda z: 0.5 * z @ A @ z, x, v, grad=A @ x, hvp=A @ v)
    assert abs(r.order1 - 2) < 0.2 and r.exact(2) and r.passed()
    # a linear function: E1 is round-off
    r = taylor_test(lambda z: (z * x).sum(), x, v, grad=x, second=False)
    assert r.exact(1) and r.passed()
    # at a critical point E0 falls as h^2: still a pass
    r = taylor_test(lambda z: (z**2).sum() + (z**3).sum(), torch.zeros(4, dtype=torch.float64), v)
    assert abs(r.order0 - 2) < 0.2 and r.passed()
    # but a wrong Hessian-vector product of that quadratic is not exact
    r = taylor_test(lambda z: 0.5 * z @ A @ z, x, v, grad=A @ x, hvp=1.01 * (A @ v))
    assert not r.exact(2) and abs(r.order2 - 2) < 0.2 and not r.passed()


def test_bad_input_is_refused(xv):
    x, v = xv
    with pytest.raises(ValueError, match="v is zero"):
        taylor_test(f_scalar, x, torch.zeros_like(x))
    with pytest.raises(ValueError, match=r"f\(x\) is not finite"):
        taylor_test(lambda z: torch.log(z).sum(), -x.abs() - 1, v)
    with pytest.raises(ValueError, match="asymptotic must be an int >= 2"):
        taylor_test(f_scalar, x, v, asymptotic=1)
    with pytest.raises(ValueError, match="jvp must be a tensor with the shape of f"):
        taylor_test(lambda z: torch.sin(z), x, v, jvp=torch.zeros(3, dtype=x.dtype))
    with pytest.raises(ValueError, match="grad and hvp are for a scalar f"):
        taylor_test(lambda z: torch.sin(z), x, v, grad=torch.cos(x))


def test_large_steps_outside_the_domain_are_skipped():
    # log(x + h v) is undefined for the largest steps; the fit uses the small ones
    x = torch.tensor([0.5, 0.7], dtype=torch.float64)
    v = torch.tensor([-1.0, -1.0], dtype=torch.float64)
    r = taylor_test(lambda z: torch.log(z).sum(), x, v, grad=1 / x, hvp=-v / x**2)
    assert r.passed(), (r.order0, r.order1, r.order2)
