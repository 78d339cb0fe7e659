"""Crowd motion (the obstacle, its core, the density along the flow) and the 2-D stochastic
obstacle problem with its finite-difference reference."""

import math

import pytest
import torch
from torch.func import jacrev

from odeflow.control import (
    CrowdMotion,
    StochasticObstacle,
    ValueFunction,
    ValueJet,
    ValueNetwork,
    crowd_metrics,
    solve_characteristics,
    solve_hjb_grid,
)

A_SOC = [[0.2, -0.16], [-0.16, 0.2]]


def test_crowd_obstacle_is_a_gaussian_of_mass_50():
    """Q = 50·N(0, diag(1, 0.5)) (MFGnet.jl): its integral is the mass, its core is
    {Q > Q(0)/2}, and only (x₁, x₂) matter (d = 2 and 5)."""
    for d in (2, 5):
        pb = CrowdMotion(dim=d)
        g = torch.linspace(-8, 8, 321, dtype=torch.float64)
        X, Y = torch.meshgrid(g, g, indexing="ij")
        x = torch.zeros(X.numel(), d, dtype=torch.float64)
        x[:, 0], x[:, 1] = X.reshape(-1), Y.reshape(-1)
        if d > 2:
            x[:, 2:] = torch.randn(x.shape[0], d - 2, dtype=torch.float64)
        Q = pb.obstacle(x, torch.tensor(0.0))
        assert abs(float(Q.sum()) * float(g[1] - g[0]) ** 2 - 50.0) < 1e-8
        assert math.isclose(float(Q.max()), 50 / (2 * math.pi * math.sqrt(0.5)), rel_tol=1e-12)
        assert torch.equal(pb.in_core(x), Q > 0.5 * pb.peak)
    assert math.isclose(CrowdMotion(peak=50.0).peak, 50.0) and CrowdMotion(peak=50.0).mass > 222
    with pytest.raises(ValueError, match="not both"):
        CrowdMotion(mass=1.0, peak=1.0)


class _Drift(ValueFunction):
    """Φ = c·x₂: every particle moves by ż = (0, −c) (a rigid translation, ℓ = 0)."""

    def __init__(self, dim, c):
        super().__init__()
        self.dim, self.c = dim, c

    def jet(self, x, t, second=None):
        g = torch.zeros_like(x)
        g[:, 1] = self.c
        z = x.new_zeros(x.shape[0])
        hess = x.new_zeros(x.shape[0], self.dim, self.dim) if second else None
        return ValueJet(self.c * x[:, 1], g, z, z if second == "laplacian" else None, hess)


def test_core_mass_and_terms_on_a_known_flow():
    """A rigid translation by (0, −6): at t = T/2 the crowd is N(0, 0.3I), whose mass in the
    core x₁² + 2x₂² < 2 ln 2 is computed independently; kinetic 18, KL 0, and the obstacle
    cost equals the time integral of E Q over the translated Gaussians (quadrature)."""
    pb = CrowdMotion(dim=3)
    m = crowd_metrics(pb, _Drift(3, 6.0), samples=20000, nt=16, seed=1)
    w = torch.randn(400000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    w = math.sqrt(0.3) * w
    exact = float((w[:, 0] ** 2 + 2 * w[:, 1] ** 2 < 2 * math.log(2)).double().mean())
    assert abs(m["core_mass_by_time"][8] - exact) < 0.015
    assert m["core_mass"] == max(m["core_mass_by_time"]) and m["core_mass_by_time"][0] < 1e-3
    assert abs(m["kinetic"] - 18.0) < 1e-9 and abs(m["kl"]) < 1e-9
    # E Q(N((0, 3 − 6t), 0.3I)) = 50 N(0; (0, 3 − 6t), diag(1.3, 0.8)), integrated over t
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    eq = 50 / (2 * math.pi * math.sqrt(1.3 * 0.8)) * torch.exp(-0.5 * (3 - 6 * t) ** 2 / 0.8)
    assert abs(m["obstacle"] - float(torch.trapezoid(eq, t))) < 0.05


@pytest.mark.parametrize("d", [2, 4])
def test_crowd_density_against_brute_force_jacobian(d):
    """log ρ_T from the augmented ODE equals log ρ₀ − log|det ∂z_T/∂x| of the RK4 map
    (torch.func, float64) on a perturbed network, up to RK4's O(h⁴) gap between the two;
    the KL and entropy terms read this density."""
    pb = CrowdMotion(dim=d)
    torch.manual_seed(3)
    phi = ValueNetwork(d, width=8).double()
    with torch.no_grad():
        for p in phi.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = pb.sample_initial(3, generator=torch.Generator().manual_seed(4))
    ch = solve_characteristics(pb, phi, x, nt=16, gradient="backprop")
    flow = lambda xi: solve_characteristics(pb, phi, xi[None], nt=16, gradient="backprop").z[0]  # noqa: E731
    logdet = torch.stack([torch.linalg.slogdet(jacrev(flow)(xi))[1] for xi in x])
    brute = pb.initial_log_density(x) - logdet
    torch.testing.assert_close((ch.log_density0 - ch.log_det).detach(), brute.detach(),
                               rtol=0, atol=1e-4)  # fmt: skip


def _lqr_exact(pts, gam, y):
    return gam * ((pts - y) ** 2).sum(-1) / (2 * (1 + gam)) + 0.5 * 0.4 * math.log(1 + gam)


def test_grid_hjb_observed_order_on_anisotropic_lqr():
    """The grid solver on the LQR with σσᵀ of the obstacle problem (Φ(x, 0) = γ|x − y|²/
    (2(1 + γ)) + ½tr(σσᵀ)log(1 + γ)): first order in h, Richardson removes most of the error."""
    gam, y = 2.0, torch.tensor([0.5, -0.3], dtype=torch.float64)
    pts = torch.tensor([[0.0, 0.0], [-1.0, 0.5], [0.8, 0.8], [0.3, -1.0]], dtype=torch.float64)
    exact = _lqr_exact(pts, gam, y)
    sols = [solve_hjb_grid(lambda x: 0.5 * gam * ((x - y) ** 2).sum(-1), noise=A_SOC,
                           bounds=(-3, 3), n=n) for n in (31, 61, 121)]  # fmt: skip
    errs = [float((s(pts) - exact).abs().max()) for s in sols]
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(0.85 < o < 1.2 for o in orders), (errs, orders)
    rich = 2 * sols[2](pts) - sols[1](pts)
    assert float((rich - exact).abs().max()) < errs[2] / 5, errs


def test_grid_hjb_errors():
    G = lambda x: (x * x).sum(-1)  # noqa: E731
    with pytest.raises(ValueError, match="diagonally dominant"):
        solve_hjb_grid(G, noise=[[0.1, 0.2], [0.2, 0.1]])
    with pytest.raises(ValueError, match="symmetric"):
        solve_hjb_grid(G, noise=[[0.1, 0.0], [0.05, 0.1]])
    sol = solve_hjb_grid(G, noise=[[0.1, 0.0], [0.0, 0.1]], bounds=(-1, 1), n=11, times=(0, 0.5))
    with pytest.raises(ValueError, match="widen the domain"):
        sol(torch.tensor([[2.0, 0.0]]))
    with pytest.raises(ValueError, match="was not kept"):
        sol(torch.zeros(1, 2), t=0.25)
    with pytest.raises(ValueError, match="NaN or inf"):
        solve_hjb_grid(lambda x: G(x) / 0.0 * 0.0, noise=[[0.1, 0.0], [0.0, 0.1]], n=11)


def test_obstacle_preset_and_its_grid_reference():
    """The preset's costs (the paper's code), the swap symmetry x₁ ↔ x₂ of its grid value,
    and, with the obstacle removed, the grid value against the LQR value (γ = 100)."""
    pb = StochasticObstacle()
    torch.testing.assert_close(pb.noise_matrix(), torch.tensor(A_SOC, dtype=torch.float64))
    x = torch.tensor([[0.0, 0.0], [1.5, 1.5]], dtype=torch.float64)
    assert math.isclose(float(pb.obstacle(x, 0.0)[0]), 50 / (2 * math.pi * 0.4))
    assert float(pb.terminal_cost(x)[1]) == 0.0
    ref = pb.reference(n=41, extrapolate=False)
    V = torch.from_numpy(ref.values[0])
    torch.testing.assert_close(V, V.T)
    with pytest.raises(ValueError, match="2-D problem"):
        StochasticObstacle(dim=3)
    # the value of a problem with the obstacle removed is the LQR value (γ = 100)
    flat = StochasticObstacle(obstacle=1e-12)
    pts = torch.tensor([[-1.5, -1.5], [-1.0, -2.0]], dtype=torch.float64)
    y = flat.target
    exact = _lqr_exact(pts, 100.0, y)
    grid = flat.reference(n=81, bounds=(-3.0, 3.5))(pts)
    assert float(((grid - exact) / exact).abs().max()) < 0.02, (grid, exact)
