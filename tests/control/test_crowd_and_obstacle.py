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
    x = pb.sample_initial(2, generator=torch.Generator().manual_seed(4))
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
    grid = flat.reference(n=56, bounds=(-3.0, 2.5))(pts)
    assert float(((grid - exact) / exact).abs().max()) < 0.02, (grid, exact)


def test_residual_value_jet_is_the_sum():
    from odeflow.control import LQRValue, ResidualValue

    base = LQRValue(2, Qf=3.0, noise=torch.tensor(A_SOC, dtype=torch.float64))
    net = ValueNetwork(2, width=4).double()
    phi = ResidualValue(base, net)
    x = torch.randn(5, 2, dtype=torch.float64)
    for second in (None, "laplacian", "hessian"):
        a, b, c = base.jet(x, 0.3, second), net.jet(x, 0.3, second), phi.jet(x, 0.3, second)
        for u, v, w in zip(a, b, c, strict=True):
            assert (w is None) if u is None else torch.allclose(w, u + v)
    assert [p is q for p, q in zip(phi.parameters(), net.parameters(), strict=True)]
    with pytest.raises(ValueError, match="same dimension"):
        ResidualValue(base, ValueNetwork(3, width=4))


def test_obstacle_training_reduces_the_baseline_error():
    """Fast version of the obstacle acceptance: 40 stochastic-solver iterations on
    Φ = Riccati(no obstacle) + network cut the baseline's error against the grid reference
    (Richardson, 41/81 points) by 30 % at each of the 5 test points and halve its mean.
    The 2 % acceptance run is ``benchmarks/control_mfg_acceptance.py`` (100 Euler–Maruyama
    steps)."""
    from odeflow.control import LossWeights, ResidualValue, fit

    pb = StochasticObstacle()
    pts = torch.tensor([[-1.5, -1.5], [-1.0, -1.5], [-2.0, -1.5], [-1.0, -2.0], [-0.5, -1.0]],
                       dtype=torch.float64)  # fmt: skip
    ref = pb.reference(n=41)(pts)
    torch.manual_seed(0)
    phi = ResidualValue(pb.baseline(), ValueNetwork(2, width=8).double())
    with torch.no_grad():
        before = ((phi(pts, 0.0) - ref) / ref).abs()
    w = LossWeights(objective=1.0, hjb=0.0, terminal_value=1.0, bsde=1.0)
    fit(pb, phi, iterations=40, batch=32, nt=10, lr=3e-2, verbose=False, seed=0,
        resample_every=1, weights=w)  # fmt: skip
    with torch.no_grad():
        after = ((phi(pts, 0.0) - ref) / ref).abs()
    assert bool((before > 0.1).all()) and bool((after < 0.7 * before).all()), (before, after)
    assert float(after.mean()) < 0.5 * float(before.mean()), (before, after)


def _best_path_cost(pb, x1, detour):
    """min over paths (0 → T, 64 steps) from (x1, 3) to (x1, −3) of ∫½|ż|² + Q(z) dt, from a
    start bent sideways by ``detour``; returns (cost, largest |z₁| on the path)."""
    n, h = 64, 1 / 64
    t = torch.linspace(0, 1, n + 1, dtype=torch.float64)[1:-1]
    inner = torch.stack([x1 + detour * torch.sin(math.pi * t), 3 - 6 * t], 1)
    inner = inner.clone().requires_grad_(True)
    a, b = torch.tensor([[x1, 3.0]]).double(), torch.tensor([[x1, -3.0]]).double()

    def cost():
        p = torch.cat([a, inner, b])
        v = (p[1:] - p[:-1]) / h
        return 0.5 * h * (v * v).sum() + h * pb.obstacle(0.5 * (p[1:] + p[:-1]), 0.0).sum()

    opt = torch.optim.LBFGS([inner], max_iter=400, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10)  # fmt: skip

    def closure():
        opt.zero_grad()
        c = cost()
        c.backward()
        return c

    opt.step(closure)
    return float(cost().detach()), float(inner.detach()[:, 0].abs().max())


def test_paper_bump_is_crossed_a_peak_50_bump_is_avoided():
    """Why the crowd of the paper's problem crosses the obstacle: for the bump of mass 50
    (peak 11.25) one agent from (0, 3) to (0, −3) does best going straight (21.13; a bent
    start relaxes to the straight path), while for a bump of peak 50 a detour beats the
    straight path (28.1 < 29.8)."""
    c, wide = _best_path_cost(CrowdMotion(), 0.0, 1.5)
    assert abs(c - 21.13) < 0.01 and wide < 1e-3
    c_straight, _ = _best_path_cost(CrowdMotion(peak=50.0), 0.0, 0.0)
    c_detour, wide = _best_path_cost(CrowdMotion(peak=50.0), 0.0, 1.5)
    assert c_detour < c_straight - 1.0 and wide > 1.0


@pytest.mark.slow
def test_crowd_demo(tmp_path):
    """`odeflow demo --only crowd`: 2-D crowd motion, pictures and metrics (about 20 s)."""
    from odeflow.cli._demo_control import run_demo

    r = run_demo(tmp_path, verbose=False)
    assert (tmp_path / "crowd.png").is_file() and (tmp_path / "metrics.json").is_file()
    assert r["objective"] < 21.13  # below one agent's best cost from the crowd's centre
    assert r["kl"] < 0.5


class _Embedded(ValueFunction):
    """Φ_d(x, t) = Φ_2(x₁, x₂, t): a 2-D value function seen in d dimensions."""

    def __init__(self, inner, dim):
        super().__init__()
        self.inner, self.dim = inner, dim

    def jet(self, x, t, second=None):
        j = self.inner.jet(x[:, :2], t, second)
        hess = None
        if j.hessian is not None:
            hess = x.new_zeros(x.shape[0], self.dim, self.dim)
            hess[:, :2, :2] = j.hessian
        grad = torch.cat([j.grad, x.new_zeros(x.shape[0], self.dim - 2)], 1)
        return ValueJet(j.value, grad, j.dt, j.laplacian, hess)


def test_crowd_terms_are_d_invariant_for_embedded_policies():
    """The crowd problem separates: a 2-D policy embedded in d = 7 has the same obstacle cost,
    KL, kinetic energy and core mass on the same particles; the entropy term differs by
    exactly 0.01·E log N(x₃…x_d; 0, 0.3) (the extra coordinates do not move)."""
    torch.manual_seed(0)
    phi = ValueNetwork(2, width=8).double()
    with torch.no_grad():
        for p in phi.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = CrowdMotion(dim=7).sample_initial(256, generator=torch.Generator().manual_seed(1))
    m2 = crowd_metrics(CrowdMotion(dim=2), phi, x=x[:, :2].contiguous(), nt=8)
    m7 = crowd_metrics(CrowdMotion(dim=7), _Embedded(phi, 7), x=x, nt=8)
    for k in ("obstacle", "kl", "kinetic", "core_mass"):
        assert abs(m2[k] - m7[k]) <= 1e-10 * max(1.0, abs(m2[k])), k
    extra = -0.5 * (x[:, 2:] ** 2).sum(1) / 0.3 - 2.5 * math.log(2 * math.pi * 0.3)
    assert abs(m7["entropy"] - m2["entropy"] - 0.01 * float(extra.mean())) < 1e-10
