"""ILQRValue: a control-affine problem linearised along a closed loop (state-dependent control
matrix), against the Riccati value of a linear system (any path), TrackingLQRValue on
Hodgkin–Huxley, a vanishing HJB residual of the linearised quadcopter, Taylor tests of its
derivatives, the fixed point of the refinement, and bad input."""

import pytest
import torch
from torch.func import hessian, jacfwd

from odeflow.control import (
    HodgkinHuxley,
    HoverLQRValue,
    ILQRValue,
    LQRValue,
    Quadcopter,
    QuadraticControlProblem,
    TrackingLQRValue,
    rollout,
)

F64 = torch.float64


class _Linear(QuadraticControlProblem):
    """ż = Az + Bu, L = ½uᵀRu + ½zᵀQz, G = ½(z − y)ᵀQ_f(z − y)."""

    def __init__(self):
        B = torch.tensor([[0.0, 0.2], [1.0, 0.0], [0.5, -1.0]], dtype=F64)
        super().__init__(3, B, torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=F64), horizon=1.5)
        self.A = torch.tensor([[0.0, 1.0, 0.0], [-2.0, -0.5, 0.3], [0.1, 0.0, -1.0]], dtype=F64)
        self.Q = torch.tensor([[3.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 2.0]], dtype=F64)
        self.Qf, self.y = 4.0, torch.tensor([1.0, -0.5, 0.2], dtype=F64)

    def drift(self, x, t):
        return x @ self.A.mT

    def state_cost(self, x, t):
        return 0.5 * (x * (x @ self.Q)).sum(-1)

    def terminal_cost(self, x, log_rho=None):
        r = x - self.y
        return 0.5 * self.Qf * (r * r).sum(-1)


@pytest.fixture(scope="module")
def linear():
    pb = _Linear()
    Gc = (pb.B @ pb.R_inv @ pb.B.mT).numpy()
    ref = LQRValue(3, gain=Gc, A=pb.A.numpy(), Q=pb.Q.numpy(), Qf=pb.Qf, target=pb.y.numpy(),
                   horizon=pb.horizon)  # fmt: skip
    return pb, ref


@pytest.fixture(scope="module")
def quad():
    """A gentle quadcopter (α₀ = 50: 100 steps are stable; a 2.5 hop in x, 1.5 in y) refined
    twice from hover."""
    pb = Quadcopter(terminal_weight=50.0, start=[0.0, 1.0, 2.0], target=[2.5, 2.5, 2.0])
    phi = ILQRValue(pb, pb.start, nominal=HoverLQRValue(pb), steps=100)
    return pb, ILQRValue(pb, pb.start, nominal=phi, steps=100)


def _close(a, b, tol):
    for u, v in zip(a, b, strict=True):
        assert (u is None and v is None) or torch.allclose(u, v, rtol=tol, atol=tol)


@pytest.mark.parametrize("nominal", ["none", "open-loop", "value"])
def test_linear_problem_gives_the_riccati_value_along_any_path(linear, nominal):
    pb, ref = linear
    x0 = torch.tensor([1.0, -1.0, 0.5], dtype=F64)
    nom = {
        "none": None,
        "open-loop": lambda t: [3.0 * t, -1.0],
        "value": ILQRValue(pb, -x0, steps=50),
    }[nominal]
    phi = ILQRValue(pb, x0, nominal=nom, steps=300)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    for t in (0.0, 0.41, 1.5):
        _close(phi.jet(x, t, "hessian"), ref.jet(x, t, "hessian"), 1e-8)


def test_hodgkin_huxley_equals_tracking_lqr_along_the_same_closed_loop():
    """Constant B and a tracking cost: ILQRValue is TrackingLQRValue."""
    pb = HodgkinHuxley(horizon=2.0)
    base = TrackingLQRValue(pb)
    a = TrackingLQRValue(pb, nominal=base, start=pb.start)
    b = ILQRValue(pb, pb.start, nominal=base, steps=base.steps)
    x = pb.start[None] + torch.tensor([[1.0, 0.01, -0.01, 0.02]], dtype=F64)
    for t in (0.0, 0.7, 1.3, 2.0):
        _close(a.jet(x, t), b.jet(x, t), 1e-12)


def _linearised_hamiltonian(pb, phi, k, x):
    """H of the LQ model at the node k, in z: −pᵀ(a(z̄) + Aδ) + ½pᵀG_cp − ℓ₂(δ)."""
    t = torch.tensor(k * pb.horizon / phi.steps, dtype=F64)
    zb, vb = phi.path[k], phi.controls[k]

    def f(z, v):
        return pb.dynamics(z[None], v[None], t)[0]

    def ell(z):
        return pb.running_cost(z[None], torch.zeros(1, 4, dtype=F64), t)[0]

    A, B = jacfwd(f, 0)(zb, vb), jacfwd(f, 1)(zb, vb)
    R = hessian(lambda v: pb.running_cost(zb[None], v[None], t)[0])(vb)
    a = f(zb, torch.zeros(4, dtype=F64))
    d = x - zb
    jet = phi.jet(x, t)
    p = jet.grad
    Gc = B @ torch.linalg.solve(R, B.T)
    ell2 = ell(zb) + d @ jacfwd(ell)(zb) + 0.5 * ((d @ hessian(ell)(zb)) * d).sum(-1)
    H = -(p * (a + d @ A.T)).sum(-1) + 0.5 * ((p @ Gc) * p).sum(-1) - ell2
    return jet.dt, H


def test_hjb_residual_of_the_linearised_quadcopter_vanishes_at_the_nodes(quad):
    pb, phi = quad
    g = torch.Generator().manual_seed(1)
    for k in (0, 37, 100):
        x = phi.path[k] + 0.3 * torch.randn(5, 12, generator=g, dtype=F64)
        dt, H = _linearised_hamiltonian(pb, phi, k, x)
        assert float((H - dt).abs().max()) < 1e-9 * float(dt.abs().max())


def test_taylor_gradient_hessian_and_time_derivative(quad):
    _, phi = quad
    g = torch.Generator().manual_seed(2)
    x = phi.path[40][None] + 0.2 * torch.randn(1, 12, generator=g, dtype=F64)
    v = torch.randn(1, 12, generator=g, dtype=F64)
    t = 0.4137
    jet = phi.jet(x, t, "hessian")
    # Φ is quadratic in x: the second-order Taylor expansion is exact
    for eps in (1.0, 0.1):
        quad = 0.5 * eps**2 * (v @ jet.hessian[0] * v).sum()
        exp = jet.value + eps * (jet.grad * v).sum(-1) + quad
        assert torch.allclose(phi(x + eps * v, t), exp, rtol=1e-12, atol=1e-9)
    errs = [float((phi(x, t + e) - jet.value - e * jet.dt).abs()) for e in (1e-3, 5e-4)]
    assert 3.5 < errs[0] / errs[1] < 4.5  # first-order Taylor remainder: O(ε²)
    assert phi.jet(x, t, "laplacian").laplacian.item() == pytest.approx(
        float(jet.hessian[0].trace()), rel=1e-14
    )


def test_refinement_reaches_a_fixed_point_whose_value_is_its_cost(quad):
    """Iterated from hover, the closed loop converges and Φ(x₀, 0) is its cost."""
    pb, phi = quad
    x0 = pb.start[None]
    costs, values = [], []
    for _ in range(3):
        phi = ILQRValue(pb, pb.start, nominal=phi, steps=100)
        costs.append(float(rollout(pb, phi, x0, nt=100).cost[0]))
        values.append(float(phi(x0, 0.0)))
    assert costs[2] <= costs[1] <= costs[0]
    assert abs(values[2] / values[1] - 1) < 1e-7  # converged (quadratically)
    assert abs(values[2] / costs[2] - 1) < 1e-6  # Φ(x₀, 0) is the closed loop's cost
    P, s, zb = phi.gradient_table([0.0, 0.3])
    assert torch.allclose(zb[0], pb.start) and torch.allclose(P, P.mT)
    assert torch.allclose(phi.jet(x0, 0.0).grad[0], s[0])


class _NotAffine(_Linear):
    def dynamics(self, x, u, t):
        return super().dynamics(x, u, t) + torch.cat([u[:, :1] ** 2, 0 * x[:, 1:]], 1)


class _LinearCost(_Linear):
    def running_cost(self, x, u, t):
        return super().running_cost(x, u, t) + u[:, 0]


def test_bad_input(linear, quad):
    pb, _ = linear
    q, phi = quad
    x0 = [0.0, 0.0, 0.0]
    with pytest.raises(TypeError, match="ControlProblem"):
        ILQRValue(object(), x0)
    with pytest.raises(ValueError, match="steps"):
        ILQRValue(pb, x0, steps=0)
    with pytest.raises(ValueError, match="damping"):
        ILQRValue(pb, x0, damping=-1.0)
    with pytest.raises(ValueError, match="start"):
        ILQRValue(pb, [0.0, float("nan"), 0.0])
    with pytest.raises(ValueError, match="start"):
        ILQRValue(pb, [0.0, 0.0])
    with pytest.raises(ValueError, match="dimension 3"):
        ILQRValue(pb, x0, nominal=phi)
    with pytest.raises(ValueError, match="nominal must be None"):
        ILQRValue(pb, x0, nominal=3.0)
    with pytest.raises(ValueError, match="2 finite numbers"):
        ILQRValue(pb, x0, nominal=lambda t: [1.0, 2.0, 3.0], steps=5)
    with pytest.raises(ValueError, match="deterministic"):
        ILQRValue(QuadraticControlProblem(dim=2, diffusion=0.1), [0.0, 0.0])
    with pytest.raises(ValueError, match="affine"):
        ILQRValue(_NotAffine(), x0, nominal=lambda t: [1.0, 1.0], steps=5)
    with pytest.raises(ValueError, match="quadratic"):
        ILQRValue(_LinearCost(), x0, steps=5)
    with pytest.raises(ValueError, match="overflowed"):
        ILQRValue(Quadcopter(), Quadcopter().start, nominal=HoverLQRValue(Quadcopter()), steps=50)
    with pytest.raises(ValueError, match="shape"):
        phi.jet(torch.zeros(2, 3, dtype=F64), 0.0)
    with pytest.raises(ValueError, match="second"):
        phi.jet(q.start[None], 0.0, "grad")


def test_default_steps_follow_the_terminal_stiffness():
    # the paper's quadcopter (α₀ = 5000) needs more than 1000 RK4 steps near T: the default
    # picks a stable count instead of overflowing, and an explicit count is kept as given
    pb = Quadcopter()
    phi = ILQRValue(pb, pb.start)
    assert phi.steps > 1800
    assert bool(torch.isfinite(phi(pb.start[None], 0.0)).all())
    assert ILQRValue(pb, pb.start, nominal=phi, steps=2000).steps == 2000
    with pytest.raises(ValueError, match="overflowed"):
        ILQRValue(pb, pb.start, steps=1000)
