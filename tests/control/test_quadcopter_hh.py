"""Quadcopter and Hodgkin–Huxley presets: dynamics by hand, the closed-form feedback against a
numerical minimisation, ∇H against torch.func, the HH stiffness bound, a tiny training run."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch.func import grad

from odeflow.control import (
    HodgkinHuxley,
    Quadcopter,
    ValueNetwork,
    fit,
    make_problem,
    quadcopter_shock,
    rollout,
    solve_characteristics,
)

T0 = torch.tensor(0.0, dtype=torch.float64)


@pytest.fixture(scope="module")
def hh():
    return HodgkinHuxley(horizon=6.0)  # the first pathological spike; cheap reference


def _pre_hamiltonian(pb, x, p, u):
    """p·f(x, u) + L(x, u) per point (the quantity u* minimises)."""
    return (p * pb.dynamics(x, u, T0)).sum(-1) + pb.running_cost(x, u, T0)


def _random_xp(pb, n, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(n, pb.dim, generator=g, dtype=torch.float64)
    p = 3.0 * torch.randn(n, pb.dim, generator=g, dtype=torch.float64)
    return x, p


def test_quadcopter_dynamics_by_hand():
    pb = Quadcopter(mass=0.5, gravity=9.81)
    psi, th, ph = 0.3, -0.2, 0.5
    x = torch.tensor([[1, 2, 3, psi, th, ph, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]], dtype=torch.float64)
    u = torch.tensor([[12.0, -1.0, 2.0, 3.0]], dtype=torch.float64)
    f7 = math.sin(psi) * math.sin(ph) + math.cos(psi) * math.sin(th) * math.cos(ph)
    f8 = -math.cos(psi) * math.sin(ph) + math.sin(psi) * math.sin(th) * math.cos(ph)
    f9 = math.cos(th) * math.cos(ph)
    a = 12.0 / 0.5
    want = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, a * f7, a * f8, a * f9 - 9.81, -1.0, 2.0, 3.0]
    torch.testing.assert_close(pb.dynamics(x, u, T0)[0], torch.tensor(want, dtype=torch.float64))
    assert float(pb.running_cost(x, u, T0)[0]) == pytest.approx(2 + 144 + 1 + 4 + 9)
    r = x[0] - pb.target
    assert float(pb.terminal_cost(x)[0]) == pytest.approx(2500 * float(r @ r))


@pytest.mark.parametrize("name", ["quadcopter", "hodgkin-huxley"])
def test_feedback_minimises_pre_hamiltonian(name, hh):
    pb = Quadcopter() if name == "quadcopter" else hh
    x, p = _random_xp(pb, 5, seed=1)
    if name == "hodgkin-huxley":
        x = x.abs() * torch.tensor([20.0, 0.3, 0.3, 0.3], dtype=torch.float64)  # gates in [0, 1]
    u_star = pb.feedback(x, p, T0)
    for i in range(x.shape[0]):
        xi, pi = x[i : i + 1], p[i : i + 1]

        def obj(u, xi=xi, pi=pi):  # value and autograd gradient in u
            ut = torch.tensor(u, dtype=torch.float64, requires_grad=True)
            val = _pre_hamiltonian(pb, xi, pi, ut[None])[0]
            (g,) = torch.autograd.grad(val, ut)
            return float(val.detach()), g.numpy()

        res = minimize(obj, np.zeros(pb.control_dim), jac=True, method="BFGS",
                       options={"gtol": 1e-10})  # fmt: skip
        np.testing.assert_allclose(u_star[i].numpy(), res.x, atol=1e-5)
    # H = sup_u −(p·f + L) is attained at u*, and no random u does better
    H = pb.hamiltonian(x, p, T0)
    torch.testing.assert_close(H, -_pre_hamiltonian(pb, x, p, u_star))
    for k in range(20):
        u = u_star + torch.randn(u_star.shape, generator=torch.Generator().manual_seed(k),
                                 dtype=torch.float64)  # fmt: skip
        assert bool((-_pre_hamiltonian(pb, x, p, u) < H).all())


@pytest.mark.parametrize("name", ["quadcopter", "hodgkin-huxley"])
def test_hamiltonian_gradients_against_torch_func(name, hh):
    """∇ₚH = −f(x, u*) and ∇ₓH = −∂ₓ(p·f + L)|_{u*} (envelope theorem), by torch.func."""
    pb = Quadcopter() if name == "quadcopter" else hh
    x, p = _random_xp(pb, 4, seed=2)
    if name == "hodgkin-huxley":
        x = x.abs() * torch.tensor([20.0, 0.3, 0.3, 0.3], dtype=torch.float64)
    t = torch.tensor(1.5, dtype=torch.float64)
    for i in range(x.shape[0]):
        xi, pi = x[i], p[i]
        u = pb.feedback(xi[None], pi[None], t)[0]
        gp = grad(lambda q, xi=xi: pb.hamiltonian(xi[None], q[None], t)[0])(pi)
        gx = grad(lambda y, pi=pi: pb.hamiltonian(y[None], pi[None], t)[0])(xi)
        torch.testing.assert_close(gp, -pb.dynamics(xi[None], u[None], t)[0])

        def pre(y, u=u, pi=pi):
            return (pi * pb.dynamics(y[None], u[None], t)[0]).sum() + pb.running_cost(
                y[None], u[None], t
            )[0]

        torch.testing.assert_close(gx, -grad(pre)(xi))


def test_hodgkin_huxley_dynamics_by_hand(hh):
    V, m, n, h = 10.0, 0.2, 0.4, 0.5  # V = 10 is the removable singularity of αₙ
    x = torch.tensor([[V, m, n, h]], dtype=torch.float64)
    u = torch.tensor([[3.0]], dtype=torch.float64)
    am = 0.1 * (25 - V) / (math.exp((25 - V) / 10) - 1)
    an = 0.1  # limit of 0.01(10 − V)/(e^{(10−V)/10} − 1) at V = 10
    bm, bn = 4 * math.exp(-V / 18), 0.125 * math.exp(-V / 80)
    ah, bh = 0.07 * math.exp(-V / 20), 1 / (math.exp(3 - 0.1 * V) + 1)
    I_ion = 380 * m**3 * h * (V - 115) + 36 * n**4 * (V + 12) + 0.3 * (V - 10.613)
    want = [3.0 - I_ion, am * (1 - m) - bm * m, an * (1 - n) - bn * n, ah * (1 - h) - bh * h]
    torch.testing.assert_close(hh.dynamics(x, u, T0)[0], torch.tensor(want, dtype=torch.float64))
    # L = ½u² + 100|z − z*(t)|²
    t = torch.tensor(2.0, dtype=torch.float64)
    r = x[0] - hh.reference(t)
    assert float(hh.running_cost(x, u, t)[0]) == pytest.approx(4.5 + 100 * float(r @ r))


def test_hodgkin_huxley_reference_is_the_healthy_neuron(hh):
    """z* at the nodes is the RK4 solution with g_Na = 120; between nodes the Hermite value
    agrees with a half RK4 step to O(h⁵)."""
    k = 200  # t = 4 ms, on the upstroke of the healthy spike
    h = hh.horizon / hh.reference_steps
    z = hh.reference(torch.tensor(k * h, dtype=torch.float64))
    torch.testing.assert_close(z, hh._ref_z[k])

    def f(y):
        return hh.uncontrolled(y, hh.g_na_healthy)

    y, s = hh._ref_z[k][None], h / 2
    k1 = f(y)
    k2 = f(y + s / 2 * k1)
    k3 = f(y + s / 2 * k2)
    half = y + s / 6 * (k1 + 2 * k2 + 2 * k3 + f(y + s * k3))
    mid = hh.reference(torch.tensor((k + 0.5) * h, dtype=torch.float64))
    assert float((mid - half[0]).abs().max()) < 1e-4 * float(hh._ref_z[:, 0].abs().max())
    assert float(hh._ref_z[:, 0].max()) > 50  # the healthy spike is in the window


def test_hodgkin_huxley_stiffness_bound_is_sharp(hh):
    """Below stable_steps RK4 blows up on the free pathological neuron; at the bound it is
    accurate; the control solvers refuse an unstable count and name the fix."""
    from odeflow.ode import odeint

    N = hh.stable_steps("rk4")
    assert N == math.ceil(hh.horizon * hh.stiffness() / 2.785293563405282)
    assert hh.stable_steps("euler") > N
    ref = hh._free_paths(hh.reference_steps)[0][-1]
    with torch.no_grad():
        for n, finite in ((int(0.7 * N), False), (N, True)):
            t = torch.linspace(0, hh.horizon, n + 1, dtype=torch.float64)
            z = odeint(lambda s, y: hh.uncontrolled(y), hh.start[None], t,
                       method="rk4", gradient="backprop")[-1, 0]  # fmt: skip
            ok = bool(torch.isfinite(z).all()) and float((z - ref).abs().max()) < 0.1
            assert ok == finite
    phi = ValueNetwork(4, width=4).double()
    for call in (lambda: solve_characteristics(hh, phi, hh.start[None], nt=N - 1),
                 lambda: rollout(hh, phi, hh.start[None], nt=N // 2)):  # fmt: skip
        with pytest.raises(ValueError, match=f"nt >= {N}"):
            call()


def test_tiny_training_lowers_quadcopter_cost():
    torch.manual_seed(0)
    pb = make_problem("quadcopter")
    phi = ValueNetwork(12, width=8).double()
    x0 = pb.start[None]
    before = float(rollout(pb, phi, x0, nt=6).cost[0])
    fit(pb, phi, optimizer="lbfgs", iterations=4, batch=16, nt=6, verbose=False)
    after = float(rollout(pb, phi, x0, nt=6).cost[0])
    assert after < 0.8 * before


def test_shock_experiment_and_bad_input():
    pb = Quadcopter()
    phi = ValueNetwork(12, width=4).double()
    out = quadcopter_shock(pb, phi, nt=10, time=0.3)
    assert torch.equal(out.paths[:3], out.shocked_paths[:3])  # same path before the kick
    kick = torch.tensor([0.3, -0.3, 0.3, 0, 0, 0, 1.0, -1.0, 1.0, 0, 0, 0], dtype=torch.float64)
    torch.testing.assert_close(out.shocked_paths[3, 0] - out.paths[3, 0], kick)
    with pytest.raises(ValueError, match="one step"):
        quadcopter_shock(pb, phi, nt=10, time=0.01)  # before the first step
    with pytest.raises(ValueError, match=r"shape \(n, 12\)"):
        rollout(pb, phi, torch.zeros(2, 3, dtype=torch.float64))
    bad = pb.start[None].clone()
    bad[0, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        rollout(pb, phi, bad)
    with pytest.raises(ValueError, match="3-vector"):
        Quadcopter(target=(1.0, 2.0))
    with pytest.raises(ValueError, match="4 finite numbers"):
        HodgkinHuxley(horizon=1.0, start=(0.0, 0.0))
    with pytest.raises(TypeError, match="Quadcopter"):
        quadcopter_shock(HodgkinHuxley(horizon=1.0), phi)


def test_animation_frame_rotation_carries_the_thrust_direction():
    """The body frame drawn in the GIF is a rotation whose third axis is (f₇, f₈, f₉)."""
    from odeflow.control._quadcopter import _rotation

    ang = torch.randn(6, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    R = _rotation(ang)
    eye = torch.eye(3, dtype=torch.float64).expand(6, 3, 3)
    torch.testing.assert_close(R.mT @ R, eye)
    torch.testing.assert_close(R[..., 2], Quadcopter.thrust_direction(ang))


def test_quadcopter_checkpoint_round_trip(tmp_path):
    from odeflow.control import load_checkpoint, save_checkpoint

    pb = Quadcopter(target=(1.0, 2.0, 3.0))
    phi = ValueNetwork(12, width=4).double()
    save_checkpoint(pb, phi, tmp_path / "q.pt")
    pb2, phi2 = load_checkpoint(tmp_path / "q.pt")
    assert isinstance(pb2, Quadcopter) and pb2.spec() == pb.spec()
    x = pb.sample_initial(3)
    torch.testing.assert_close(phi2(x, 0.2), phi(x, 0.2))
