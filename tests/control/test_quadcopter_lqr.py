"""HoverLQRValue: the quadcopter's value linearised at hover, with exact derivatives (autograd,
a finite difference in t), its terminal condition and a vanishing HJB residual at zero angles."""

import pytest
import torch

from odeflow.control import ControlProblem, HoverLQRValue, Quadcopter, hjb_residual


@pytest.fixture(scope="module")
def quad():
    pb = Quadcopter()
    return pb, HoverLQRValue(pb)


def _states(n, seed, angles=0.3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g, dtype=torch.float64)
    x[:, 3:6] *= angles
    return x


def test_gradient_matches_autograd(quad):
    _, phi = quad
    x = _states(5, 0)
    for t in (0.0, 0.37, 1.0):
        y = x.clone().requires_grad_(True)  # (torch.func cannot enter scipy's dense output in t)
        (ref,) = torch.autograd.grad(phi.jet(y, t).value.sum(), y)
        assert torch.allclose(phi.jet(x, t).grad, ref, rtol=1e-12, atol=1e-9)


def test_time_derivative_matches_finite_difference(quad):
    _, phi = quad
    x, t, h = _states(5, 1), 0.4, 1e-5
    fd = (phi.jet(x, t + h).value - phi.jet(x, t - h).value) / (2 * h)
    dt = phi.jet(x, t).dt
    assert torch.allclose(dt, fd, rtol=1e-6, atol=1e-6 * float(dt.abs().max()))


def test_terminal_condition_is_the_terminal_cost(quad):
    pb, phi = quad
    x = _states(6, 2)
    jet = phi.jet(x, pb.horizon)
    assert torch.allclose(jet.value, pb.terminal_cost(x), rtol=1e-10)
    assert torch.allclose(jet.grad, pb.terminal_gradient(x), rtol=1e-10, atol=1e-8)


def test_hjb_residual_vanishes_at_zero_angles(quad):
    """With ψ = θ = φ = 0 the quadcopter's Hamiltonian equals the linearised one."""
    pb, phi = quad
    x = _states(8, 3, angles=0.0)
    x[:, :3] += pb.start[:3]
    for t in (0.0, 0.5, 0.9):
        scale = float(phi.jet(x, t).value.abs().max())
        assert float(hjb_residual(pb, phi, x, t).abs().max()) < 1e-10 * scale
    tilted = _states(8, 3, angles=0.5)  # and the linearisation is only a baseline elsewhere
    assert float(hjb_residual(pb, phi, tilted, 0.5).abs().max()) > 1.0


def test_hover_feedback_and_bad_problem(quad):
    """At rest on the target the feedback is the hover thrust (a little more: the value trades
    the thrust's linear cost against a small terminal sink velocity −2m²g/α₀)."""
    pb, phi = quad
    z = pb.target[None].expand(2, 12).clone()
    u = pb.feedback(z, phi.jet(z, torch.tensor([0.0, 0.5], dtype=torch.float64)).grad, 0)
    hover = torch.tensor([pb.mass * pb.gravity, 0, 0, 0], dtype=torch.float64)
    assert torch.allclose(u, hover.expand(2, 4), rtol=0, atol=0.02)
    with pytest.raises(TypeError, match="Quadcopter"):
        HoverLQRValue(ControlProblem.__new__(ControlProblem))
