"""The HJB residual vanishes on the exact value functions (Riccati, closed forms)."""

import math

import pytest
import torch

from odeflow.control import HJB, LQR, LQRValue, hjb_residual, solve_characteristics


def _x(d, n=16, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("sigma", [None, 0.4])
def test_lqr_closed_form_and_residual(sigma):
    d, gamma = 5, 3.0
    pb = LQR(dim=d, gamma=gamma, sigma=sigma, control_weight=2.0)
    V = pb.exact_value()
    x = _x(d)
    for t in (0.0, 0.3, 1.0):
        tau = 1.0 - t
        closed = gamma * (x * x).sum(-1) / (2 * (1 + gamma * tau / 2.0))
        if sigma is not None:
            closed = closed + 0.5 * sigma**2 * d * 2.0 * math.log(1 + gamma * tau / 2.0)
        torch.testing.assert_close(V(x, t), closed, rtol=1e-10, atol=1e-10)
        assert hjb_residual(pb, V, x, t).abs().max() <= 1e-10


def test_general_riccati_residual_and_neuralsoc_value():
    d = 4
    g = torch.Generator().manual_seed(3)
    A = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.5
    Q = torch.eye(d, dtype=torch.float64) * 0.7
    pb = LQR(dim=d, A=A, Q=Q, gamma=2.0, target=[1.0, -1.0, 0.5, 0.0], sigma=0.3)
    V = pb.exact_value()
    x = _x(d)
    t = torch.rand(16, generator=g, dtype=torch.float64)
    assert hjb_residual(pb, V, x, t).abs().max() <= 1e-10
    # NeuralSOC's stochastic LQR: γ = 100, |x|² = 18, σ = 0.4 → J* = 9.6493
    pb2 = LQR(dim=2, gamma=100.0, sigma=0.4)
    x2 = torch.tensor([[3.0, 3.0]], dtype=torch.float64)
    assert abs(float(pb2.exact_value()(x2, 0.0)) - 9.6493) < 5e-5


def test_residual_detects_wrong_diffusion_factor():
    """A ¼ instead of ½ in the trace term (NeuralSOC's quirk) leaves a visible residual."""
    pb = LQR(dim=3, sigma=0.5)
    wrong = LQRValue(3, gain=1.0, Qf=1.0, noise=0.5 * 0.25)
    assert hjb_residual(pb, wrong, _x(3), 0.2).abs().min() > 1e-3


def test_benchmark_hjb_residual_on_quadratic_solution():
    """∂ₜΦ + ΔΦ − |∇Φ|² = 0 has the quadratic solutions Φ = ½P(t)|x|² + c(t) with
    Ṗ = 2P², ċ = −Pd: the Riccati value with gain 2 and noise 2."""
    pb = HJB(dim=3)
    V = LQRValue(3, gain=2.0, Qf=1.0, noise=2.0)
    assert hjb_residual(pb, V, _x(3), 0.5).abs().max() <= 1e-10
    assert hjb_residual(pb, LQRValue(3, gain=2.0, Qf=1.0, noise=1.0), _x(3), 0.5).abs().min() > 0.1


def test_exact_feedback_gives_exact_cost():
    pb = LQR(dim=3, gamma=2.0)
    V = pb.exact_value()
    x = _x(3, 8)
    ch = solve_characteristics(pb, V, x, nt=20)
    cost = ch.running + pb.terminal_cost(ch.z)
    torch.testing.assert_close(cost, V(x, 0.0), rtol=1e-8, atol=1e-10)
    assert ch.hjb.abs().max() <= 1e-10
