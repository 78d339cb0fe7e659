"""Densities against a brute-force Jacobian log-determinant; Taylor tests of the losses."""

import pytest
import torch
from torch.func import jacrev
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from odeflow.control import (
    LQR,
    CrowdMotion,
    GaussianOT,
    LossWeights,
    ValueNetwork,
    control_loss,
    solve_characteristics,
    stochastic_loss,
)
from odeflow.testing import taylor_test


def _perturbed_net(dim, seed):
    torch.manual_seed(seed)
    phi = ValueNetwork(dim, width=8).double()
    with torch.no_grad():
        for p in phi.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return phi


def test_log_det_matches_brute_force_jacobian():
    """ℓ(T) from the augmented ODE and log|det ∂z_T/∂x| of the RK4 flow map (torch.func,
    float64) agree up to the O(h⁴) error of RK4."""
    problem = GaussianOT(dim=3)
    phi = _perturbed_net(3, 1)
    x = problem.sample_initial(2, generator=torch.Generator().manual_seed(2))
    errs = []
    for nt in (8, 16):
        ell = solve_characteristics(problem, phi, x, nt=nt, gradient="backprop").log_det
        flow = lambda xi, nt=nt: solve_characteristics(  # noqa: E731
            problem, phi, xi[None], nt=nt, gradient="backprop"
        ).z[0]
        brute = torch.stack([torch.linalg.slogdet(jacrev(flow)(xi))[1] for xi in x])
        errs.append(float((ell - brute).detach().abs().max()))
    assert errs[1] < 1e-4, errs
    assert errs[1] < errs[0] / 8, errs  # fourth order: the gap shrinks ~16× per halving


def test_log_det_with_drift_and_density():
    """The drift's divergence enters ℓ̇ (a density problem with a linear drift)."""

    class DriftOT(GaussianOT):
        def drift(self, x, t):
            return -0.5 * x

        def drift_divergence(self, x, t):
            return torch.full((x.shape[0],), -0.5 * self.dim, dtype=x.dtype)

    pb = DriftOT(dim=2)
    phi = _perturbed_net(2, 4)
    x = pb.sample_initial(2, generator=torch.Generator().manual_seed(0))
    ell = solve_characteristics(pb, phi, x, nt=16, gradient="backprop").log_det
    flow = lambda xi: solve_characteristics(pb, phi, xi[None], nt=16, gradient="backprop").z[0]  # noqa: E731
    brute = torch.stack([torch.linalg.slogdet(jacrev(flow)(xi))[1] for xi in x])
    torch.testing.assert_close(ell.detach(), brute.detach(), rtol=0, atol=1e-4)


def _taylor(loss_of, phi):
    """Taylor test of θ ↦ loss_of() in the network weights θ, gradient by backward()."""
    theta = parameters_to_vector(phi.parameters()).detach().clone()
    phi.zero_grad()
    loss_of().backward()
    g = torch.cat([p.grad.reshape(-1) for p in phi.parameters()])

    def f(v):
        with torch.no_grad():
            vector_to_parameters(v, phi.parameters())
            out = loss_of().detach()
        vector_to_parameters(theta, phi.parameters())
        return out

    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(7), dtype=theta.dtype)
    return taylor_test(f, theta, v, grad=g, second=False, h0=0.1)


@pytest.mark.parametrize("gradient", ["adjoint", "backprop"])
def test_taylor_deterministic_loss(gradient):
    pb = CrowdMotion(dim=2)
    phi = _perturbed_net(2, 3)
    x = pb.sample_initial(8, generator=torch.Generator().manual_seed(1))
    res = _taylor(lambda: control_loss(pb, phi, x, nt=3, gradient=gradient).total, phi)
    assert res.order1 > 1.8, res


def test_taylor_stochastic_loss():
    pb = LQR(dim=2, sigma=0.3)
    phi = _perturbed_net(2, 5)
    x = pb.sample_initial(8, generator=torch.Generator().manual_seed(1))
    w = LossWeights(objective=1.0, hjb=1.0, terminal_gradient=1.0, value_match=1.0)

    def loss():
        gen = torch.Generator().manual_seed(11)
        return stochastic_loss(pb, phi, x, w, nt=4, generator=gen).total

    res = _taylor(loss, phi)
    assert res.order1 > 1.8, res
