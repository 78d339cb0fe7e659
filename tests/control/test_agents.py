"""Multi-agent path finding: costs against hand computation, smoothness, safety counters,
bad input, a tiny training run and the CasADi transcription's costs."""

import math
import sys
from pathlib import Path

import pytest
import torch
from torch.func import grad, vmap

from odeflow.control import (
    PRESETS,
    AgentProblem,
    Corridor,
    LQRValue,
    Swap2,
    Swap12,
    Swarm50,
    ValueNetwork,
    agent_rollout,
    control_loss,
    fit,
    hjb_residual,
    make_problem,
)

F64 = torch.float64


def _quintic(u):
    u = min(max(u, 0.0), 1.0)
    return 10 * u**3 - 15 * u**4 + 6 * u**5


@pytest.mark.parametrize(
    ("cls", "dim", "agents", "k"),
    [(Corridor, 4, 2, 2), (Swap2, 4, 2, 2), (Swap12, 24, 12, 2), (Swarm50, 150, 50, 3)],
)
def test_presets_shapes_and_starts(cls, dim, agents, k):
    pb = make_problem(cls.name)
    assert type(pb) is cls and PRESETS[cls.name] is cls
    assert (pb.dim, pb.n_agents, pb.agent_dim) == (dim, agents, k)
    x = pb.sample_initial(7, generator=torch.Generator().manual_seed(0))
    assert x.shape == (7, dim)
    for f in (pb.obstacle(x, 0.0), pb.terminal_cost(x), pb.interaction_cost(x)):
        assert f.shape == (7,) and bool(torch.isfinite(f).all())
    start = pb.start[None]
    pb.check_start(start)  # nominal start: no overlaps
    assert not bool(pb.inside_obstacles(start).any())
    assert not bool(pb.inside_obstacles(pb.target[None]).any())
    torch.testing.assert_close(pb.terminal_cost(pb.target[None]), torch.zeros(1, dtype=F64))
    with pytest.raises(ValueError, match=f"dimension {dim}"):
        cls(dim=dim + 1)


def test_interaction_against_hand_computation():
    pb = AgentProblem([[0.0, 0.0], [5.0, 0.0]], [[5.0, 0.0], [0.0, 0.0]], radius=0.5,
                      interaction_margin=1.5)  # fmt: skip
    r = 0.5
    for dist in (0.3, 0.9, 1.0, 1.2, 1.4, 1.5, 2.0):
        z = torch.tensor([[0.0, 0.0, dist * 0.6, dist * 0.8]], dtype=F64)
        s = _quintic(((1.5 * 2 * r) ** 2 - dist**2) / ((1.5 * 2 * r) ** 2 - (2 * r) ** 2))
        want = math.exp(-(dist**2) / (2 * r * r)) * s
        assert float(pb.interaction_cost(z)[0]) == pytest.approx(want, rel=1e-12, abs=1e-300)
        assert float(pb.pair_distances(z)[0, 0]) == pytest.approx(dist)
    # three agents: the pair sum
    pb3 = AgentProblem([[0, 0], [3, 0], [6, 0]], [[6, 0], [3, 0], [0, 0]], radius=1.0)
    z = torch.tensor([[0.0, 0.0, 1.0, 0.0, 3.0, 0.0]], dtype=F64)
    want = math.exp(-0.5) + math.exp(-0.5 * 4) * 1.0  # |x1-x2| = 1, |x2-x3| = 2 = 2r
    assert float(pb3.interaction_cost(z)[0]) == pytest.approx(want, rel=1e-12)


def test_obstacles_against_hand_computation():
    pb = Corridor()
    h = 1 / (2 * math.pi * 0.2)
    # one agent on a bump centre, the other far away: Q = the normal density's peak
    z = torch.tensor([[-2.5, 0.0, 9.0, 9.0]], dtype=F64)
    assert float(pb.obstacle_cost(z)[0]) == pytest.approx(h, rel=1e-12)
    # in the inflation band of the bump at (1.5, 0): radius 0.75 from its centre
    z = torch.tensor([[1.5, 0.75, 9.0, 9.0]], dtype=F64)
    s = _quintic((1.0 - 0.75**2) / (1.0 - 0.25))
    want = h * math.exp(-0.5 * 0.75**2 / 0.2) * s
    assert float(pb.obstacle_cost(z)[0]) == pytest.approx(want, rel=1e-12)
    tot = pb.obstacle(z, 0.0)
    assert float(tot[0]) == pytest.approx(1e4 * want, rel=1e-12)  # α₁Q, W = 0 far apart
    # a box: 1 + Gaussian inside the true box, 0 beyond the inflated one
    sw = Swarm50()
    z = sw.target[None].clone()
    z[0, :3] = torch.tensor([0.0, 0.0, 2.0], dtype=F64)  # box 1's Gaussian centre
    q0 = float(sw.obstacle_cost(sw.target[None])[0])
    assert q0 == 0.0 and float(sw.obstacle_cost(z)[0]) == pytest.approx(2.0, rel=1e-12)
    # terminal cost
    pb2 = Swap2()
    z = pb2.target[None] + torch.tensor([[1.0, 2.0, 0.0, -1.0]], dtype=F64)
    assert float(pb2.terminal_cost(z)[0]) == pytest.approx(0.5 * 300 * 6)
    torch.testing.assert_close(pb2.terminal_gradient(z), 300 * (z - pb2.target))


def test_state_cost_gradient_matches_torch_func_and_is_smooth():
    """torch.func's gradient of α₁Q + α₂W against central differences, at points in the
    smoothing bands (discs, boxes, pairs); a Taylor test shows the O(h²) remainder."""
    gen = torch.Generator().manual_seed(0)
    for pb, pts in (
        (Corridor(), torch.tensor([[1.5, 0.8, -1.5, -0.6], [0.2, 0.1, 0.9, 0.5]], dtype=F64)),
        (Swap12(), Swap12().start[None] + 0.3 * torch.randn(2, 24, generator=gen, dtype=F64)),
    ):
        g = vmap(grad(lambda z, pb=pb: pb.obstacle(z[None], 0.0)[0]))(pts)
        eps = 1e-6
        for i in range(pts.shape[1]):
            e = torch.zeros_like(pts)
            e[:, i] = eps
            fd = (pb.obstacle(pts + e, 0.0) - pb.obstacle(pts - e, 0.0)) / (2 * eps)
            torch.testing.assert_close(g[:, i], fd, rtol=1e-6, atol=1e-4)
    sw = Swarm50()
    z = sw.target[None].clone()
    z[0, :3] = torch.tensor([2.1, 0.0, 7.1], dtype=F64)  # in the inflation band of box 1
    z[0, 3:6] = z[0, :3] + torch.tensor([0.25, 0.0, 0.0], dtype=F64)  # within 1.6·2r
    v = torch.randn(1, 150, generator=gen, dtype=F64)
    f0 = sw.obstacle(z, 0.0)
    g = vmap(grad(lambda q: sw.obstacle(q[None], 0.0)[0]))(z)
    errs = [
        float((sw.obstacle(z + h * v, 0.0) - f0 - h * (g * v).sum()).abs()) for h in (1e-2, 5e-3)
    ]
    assert errs[0] > 0 and 3.0 < errs[0] / errs[1] < 5.0  # second order


def test_hjb_residual_of_straight_lines_without_interaction():
    """With no agent close to another nor to an obstacle, the LQR value
    α₀|x − y|²/(2(1 + α₀(T − t))) solves the HJB: the residual vanishes there."""
    pb = Swap12()
    V = LQRValue(24, Qf=300.0, target=pb.target, horizon=1.0)
    x = pb.target[None] + 0.1 * torch.randn(3, 24, dtype=F64, generator=torch.Generator())
    r = hjb_residual(pb, V, x, 0.5)
    dt = V.jet(x, 0.5).dt  # the residual's terms are of this size
    assert float((r.abs() / dt.abs()).max()) < 1e-12
    x[0, :2] = x[0, 2:4] + 0.5  # two agents 0.7 apart: the interaction enters the residual
    r = hjb_residual(pb, V, x, 0.5)
    assert float(r[0]) == pytest.approx(-1e5 * float(pb.interaction_cost(x)[0]), rel=1e-9)


def test_safety_counters():
    pb = Swap2()  # r = 1, discs of radius 2 at (0, 4) and (0, −3.5)
    p = torch.zeros(4, 2, 4, dtype=F64)  # 4 times, 2 samples
    p[:, :, 2] = 10.0
    p[1, 0] = torch.tensor([0.0, 3.0, 1.5, 0.0])  # sample 0: in the upper disc, distance 3.35
    p[2, 0] = torch.tensor([0.0, 1.0, 1.5, 1.0])  # sample 0: agents 1.5 apart (< 2r = 2)
    p[2, 1] = torch.tensor([0.0, 1.0, 2.0, 1.0])  # sample 1: exactly 2r apart: no collision
    p[-1] = torch.tensor([10.0, 0.0, -10.0, 0.0])
    rep = pb.safety(p)
    assert rep.collisions.tolist() == [1, 0] and rep.violations.tolist() == [1, 0]
    assert rep.min_distance.tolist() == pytest.approx([1.5, 2.0])
    assert rep.terminal_error.tolist() == pytest.approx([0.0, 0.0])
    # the closed form without obstacles flies straight: a head-on collision
    V = LQRValue(4, Qf=300.0, target=pb.target, horizon=1.0)
    _, safe = agent_rollout(pb, V, pb.start[None], dt=0.05)
    assert int(safe.collisions[0]) == 1 and float(safe.min_distance[0]) < 0.1
    # z_T − y = (x₀ − y)/(1 + α₀T), |x₀ − y| = 20 per agent, target spread 10
    assert float(safe.terminal_error[0]) == pytest.approx(2 / 301, rel=1e-6)


def test_bad_input_is_named():
    pb = Corridor()
    V = LQRValue(4, Qf=100.0, target=pb.target, horizon=1.0)
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        agent_rollout(pb, V, torch.zeros(1, 6, dtype=F64))
    with pytest.raises(ValueError, match="NaN or inf"):
        agent_rollout(pb, V, torch.tensor([[0.0, math.nan, 2.0, 2.0]], dtype=F64))
    with pytest.raises(ValueError, match="agents 0 and 1 overlap at t = 0"):
        agent_rollout(pb, V, torch.tensor([[0.0, 0.0, 0.5, 0.0]], dtype=F64))
    with pytest.raises(ValueError, match="shorter than one step"):
        agent_rollout(pb, V, pb.start[None], dt=2.0)
    with pytest.raises(ValueError, match="shock time"):
        agent_rollout(pb, V, pb.start[None], shock=(1.5, torch.zeros(4)))
    with pytest.raises(ValueError, match="start and target"):
        AgentProblem([[0.0, 0.0]], [[1.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="alpha"):
        AgentProblem([[0.0, 0.0]], [[1.0, 1.0]], alpha=(0.0, 1.0, 1.0))
    x = pb.start[None].clone()
    pb.check_start(x)
    assert torch.equal(x, pb.start[None])  # inputs untouched


def test_shock_recovers_with_the_exact_value():
    """A kick mid-horizon: the exact (obstacle-free) feedback's cost-to-go equals the value
    of the kicked state and the agents still reach the target."""
    pb = Swap12()
    pb.alpha = (300.0, 0.0, 0.0)  # no interaction: the LQR value is exact
    V = LQRValue(24, Qf=300.0, target=pb.target, horizon=1.0)
    kick = 0.3 * torch.randn(24, dtype=F64, generator=torch.Generator().manual_seed(1))
    out, safe = agent_rollout(pb, V, pb.start[None], dt=0.02, shock=(0.5, kick))
    torch.testing.assert_close(out.cost, V(out.paths[25], 0.5), rtol=1e-8, atol=1e-8)
    assert float(safe.terminal_error[0]) < 0.01


def test_tiny_training_lowers_the_cost():
    pb = Corridor()
    torch.manual_seed(0)
    phi = ValueNetwork(4, width=8).double()
    x = pb.sample_initial(64, generator=torch.Generator().manual_seed(5))
    before = float(control_loss(pb, phi, x, nt=4).objective.detach())
    fit(pb, phi, iterations=10, batch=32, nt=4, lr=3e-2, verbose=False)
    after = float(control_loss(pb, phi, x, nt=4).objective.detach())
    assert after < 0.8 * before


def test_casadi_transcription_uses_the_same_costs():
    """The IPOPT peer's CasADi costs equal odeflow's at random states (all four problems)."""
    ca = pytest.importorskip("casadi")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        from _apps_agents import _state_cost
    finally:
        sys.path.pop(0)
    gen = torch.Generator().manual_seed(2)
    for pb in (Corridor(), Swap2(), Swap12(), Swarm50()):
        zs = ca.SX.sym("z", pb.dim)
        f = ca.Function("c", [zs], [_state_cost(ca, pb, zs)])
        lam = 0.3 + 0.4 * torch.rand(6, 1, generator=gen, dtype=F64)  # midway: close agents
        x = pb.start + lam * (pb.target - pb.start)
        x = x + 0.5 * torch.randn(6, pb.dim, generator=gen, dtype=F64)
        want = pb.obstacle(x, 0.0)
        got = torch.tensor([float(f(xi.numpy())) for xi in x], dtype=F64)
        assert bool((want > 0).any())
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-9)


def test_library_never_imports_casadi():
    src = Path(__file__).resolve().parents[2] / "src" / "odeflow"
    hits = [p for p in src.rglob("*.py") if "casadi" in p.read_text(encoding="utf-8")]
    assert hits == []


def test_benchmark_checkpoint_round_trip_keeps_the_lqr_baseline(tmp_path):
    """control_apps' --save/--load of a ResidualValue(LQRValue, net) recipe gives back the
    same value function (the baseline is rebuilt from the problem, the network read back)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        from _apps_agents import _load, _save, with_baseline
    finally:
        sys.path.pop(0)
    pb = Swap2()
    torch.manual_seed(0)
    phi = with_baseline(pb, ValueNetwork(4, width=4)).double()
    path = tmp_path / "swap2.pt"
    _save(pb, phi, path, 1.5)
    back, seconds = _load(pb, path)
    x = pb.safe_starts(3, 0.5, generator=torch.Generator().manual_seed(1))
    assert seconds == 1.5 and back.base is not phi.base
    torch.testing.assert_close(back.jet(x, 0.4).grad, phi.jet(x, 0.4).grad, rtol=0, atol=1e-12)
