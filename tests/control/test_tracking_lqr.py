"""TrackingLQRValue: the tracking problem linearised along its reference (or a nominal closed
loop), with exact derivatives (autograd, a finite difference in t), its terminal condition, a
vanishing HJB residual of the linearised problem, and the Riccati value of a linear system."""

import pytest
import torch

from odeflow.control import (
    HodgkinHuxley,
    LQRValue,
    QuadraticControlProblem,
    TrackingLQRValue,
    hjb_residual,
    rollout,
)


@pytest.fixture(scope="module")
def hh():
    pb = HodgkinHuxley(horizon=2.0)  # the upstroke of the first spike: a cheap reference
    return pb, TrackingLQRValue(pb)


def _states(pb, n, seed, t=0.7):
    g = torch.Generator().manual_seed(seed)
    x = pb.reference(torch.full((n,), t, dtype=torch.float64))
    return x + torch.randn(n, 4, generator=g, dtype=torch.float64) * torch.tensor(
        [3.0, 0.05, 0.05, 0.05], dtype=torch.float64
    )


class _Linear(QuadraticControlProblem):
    """ż = Az + Bu tracking z* = 0: w = 0, so the tracking value is the plain LQR value."""

    def __init__(self, A, B):
        super().__init__(A.shape[0], B, 1.0, horizon=1.5)
        self.A, self.q, self.gamma = A, 3.0, 2.0

    def drift(self, x, t):
        return x @ self.A.mT

    def state_cost(self, x, t):
        return self.q * (x * x).sum(-1)

    def terminal_cost(self, x, log_rho=None):
        return 0.5 * self.gamma * (x * x).sum(-1)

    def reference(self, t):
        return torch.zeros(*torch.as_tensor(t).shape, self.dim, dtype=torch.float64)

    reference_velocity = reference


@pytest.fixture(scope="module")
def linear():
    A = torch.tensor([[0.0, 1.0, 0.0], [-2.0, -0.5, 0.3], [0.1, 0.0, -1.0]], dtype=torch.float64)
    B = torch.tensor([[0.0], [1.0], [0.5]], dtype=torch.float64)
    return _Linear(A, B)


def test_linear_system_gives_the_riccati_value(linear):
    pb = linear
    phi = TrackingLQRValue(pb, steps=300)
    G = (pb.B @ pb.B.mT).numpy()
    ref = LQRValue(3, gain=G, A=pb.A.numpy(), Q=2 * pb.q, Qf=pb.gamma, horizon=pb.horizon)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in (0.0, 0.41, 1.5):
        a, b = phi.jet(x, t, "hessian"), ref.jet(x, t, "hessian")
        for u, v in zip(a, b, strict=True):
            assert (u is None and v is None) or torch.allclose(u, v, rtol=1e-8, atol=1e-9)


def test_linear_system_any_nominal_gives_the_same_value(linear):
    """Linear dynamics and quadratic costs: the LQ model along any path is exact."""
    pb = linear
    phi = TrackingLQRValue(pb, steps=300)
    weak = _Linear(pb.A, 3 * pb.B)
    weak.q = 0.1
    kick = TrackingLQRValue(weak, steps=300)  # another problem's feedback: off the optimum
    other = TrackingLQRValue(pb, steps=300, nominal=kick, start=[1.0, -1.0, 0.5])
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for t in (0.0, 0.8):
        a, b = phi.jet(x, t), other.jet(x, t)
        assert torch.allclose(a.value, b.value, rtol=1e-7, atol=1e-8)
        assert torch.allclose(a.grad, b.grad, rtol=1e-7, atol=1e-8)


def test_gradient_and_hessian_match_autograd(hh):
    pb, phi = hh
    x = _states(pb, 5, 0)
    for t in (0.0, 0.7, 1.31):
        y = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(phi(y, t).sum(), y)
        jet = phi.jet(x, t, "hessian")
        assert torch.allclose(jet.grad, g, rtol=1e-11, atol=1e-9 * float(g.abs().max()))
        H = torch.func.vmap(torch.func.hessian(lambda z, t=t: phi(z[None], t)[0]))(x)
        assert torch.allclose(jet.hessian, H, rtol=1e-10, atol=1e-8 * float(H.abs().max()))
        lap = phi.jet(x, t, "laplacian").laplacian
        assert torch.allclose(lap, H.diagonal(dim1=-2, dim2=-1).sum(-1), rtol=1e-12)


def test_time_derivative_matches_finite_difference(hh):
    pb, phi = hh
    x, h = _states(pb, 5, 1), 1e-6
    for t in (0.3, 0.7013, 1.5):  # at a node and between nodes
        fd = (phi(x, t + h) - phi(x, t - h)) / (2 * h)
        dt = phi.jet(x, t).dt
        assert torch.allclose(dt, fd, rtol=1e-5, atol=1e-6 * float(dt.abs().max()))


def test_feedback_gains_give_the_feedback(hh):
    pb, phi = hh
    x = _states(pb, 4, 5)
    ts = torch.tensor([0.0, 0.3, 0.7013, 2.0], dtype=torch.float64)
    K, k = phi.feedback_gains(ts)
    u = (K @ x[..., None])[..., 0] + k
    ref = pb.feedback(x, phi.jet(x, ts).grad, ts)
    assert torch.allclose(u, ref, rtol=1e-12, atol=1e-9 * float(ref.abs().max()))


def test_terminal_condition_is_the_terminal_cost(hh):
    pb, phi = hh
    x = _states(pb, 6, 2, t=pb.horizon)
    jet = phi.jet(x, pb.horizon)
    assert torch.allclose(jet.value, pb.terminal_cost(x), rtol=1e-12)
    assert torch.allclose(jet.grad, pb.terminal_gradient(x), rtol=1e-12, atol=1e-12)


class _Linearised(HodgkinHuxley):
    """Hodgkin–Huxley with its drift linearised along z*: a(z*) + A(t)(z − z*)."""

    def drift(self, x, t):
        t = float(t)
        zs = self.reference(t)
        A = torch.func.jacrev(lambda y: self.uncontrolled(y[None])[0])(zs)
        return self.uncontrolled(zs[None]) + (x - zs) @ A.mT


def test_hjb_residual_of_the_linearised_problem_vanishes(hh):
    pb, phi = hh
    lin = _Linearised(horizon=pb.horizon)
    x = _states(pb, 8, 3)
    for t in (0.4, 0.7013, 1.6):
        jet = phi.jet(x, t)
        r = hjb_residual(lin, phi, x, t)
        assert float(r.abs().max()) < 1e-6 * float(jet.dt.abs().max())
    # on the true neuron the linearisation is only a baseline
    assert float(hjb_residual(pb, phi, x, 0.7).abs().max()) > 1e-3 * float(jet.dt.abs().max())


def test_a_refined_nominal_lowers_the_closed_loop_cost(hh):
    """One iLQR-like pass: the LQ model along its own closed loop from the start."""
    pb, phi = hh
    x0 = pb.start[None]
    plain = rollout(pb, phi, x0, nt=100).cost
    refined = TrackingLQRValue(pb, nominal=phi, start=pb.start)
    better = rollout(pb, refined, x0, nt=100).cost
    assert float(better) < float(plain)
    assert abs(float(refined(x0, 0.0)) / float(better) - 1) < 0.05  # Φ(x₀, 0) ≈ its cost


def test_bad_input(hh, linear):
    pb, phi = hh
    with pytest.raises(TypeError, match="reference"):
        TrackingLQRValue(QuadraticControlProblem(dim=2))
    with pytest.raises(ValueError, match="steps"):
        TrackingLQRValue(linear, steps=0)
    with pytest.raises(ValueError, match="nominal"):
        TrackingLQRValue(linear, start=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="start"):
        TrackingLQRValue(pb, nominal=phi)
    with pytest.raises(ValueError, match="shape"):
        phi.jet(torch.zeros(2, 3, dtype=torch.float64), 0.0)
