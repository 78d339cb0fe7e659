"""The fused online feedback equals the regular path (ValueNetwork.jet + problem.feedback)."""

import numpy as np
import pytest
import torch

from odeflow.control import (
    Corridor,
    LQRValue,
    OnlineFeedback,
    Quadcopter,
    QuadraticControlProblem,
    ResidualValue,
    Swap2,
    ValueNetwork,
    rollout,
)
from odeflow.derivatives import Linear, LogCosh, Sequential, Single, Sum, Tanh


def _random_net(dim, width=8, depth=2, seed=0):
    """A float64 value network with all weights random (w ≠ 0, so the ResNet counts)."""
    torch.manual_seed(seed)
    phi = ValueNetwork(dim, width=width, depth=depth).double()
    with torch.no_grad():
        for p in phi.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    return phi


def _regular(pb, phi, x, t):
    tt = torch.tensor(t, dtype=torch.float64)
    return pb.feedback(x, phi.jet(x, tt).grad, tt).detach()


def _problems():
    d = 4
    B = torch.tensor([[1.0, 0.0], [0.5, 1.0], [0.0, -2.0], [0.3, 0.1]], dtype=torch.float64)
    R = torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=torch.float64)
    return [
        Corridor(),
        QuadraticControlProblem(d, control_weight=2.5),
        QuadraticControlProblem(d, control_matrix=B, control_weight=R),
    ]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("depth", [2, 4])
@pytest.mark.parametrize("case", range(3))
def test_feedback_equals_regular_path_float64(backend, depth, case):
    pb = _problems()[case]
    phi = _random_net(pb.dim, depth=depth, seed=case)
    online = OnlineFeedback(pb, phi, backend=backend)
    x = torch.randn(7, pb.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for t in (0.0, 0.37, 1.0):
        ref = _regular(pb, phi, x, t)
        u = online.feedback(x.numpy() if backend == "numpy" else x, t)
        u = torch.as_tensor(u)
        assert u.shape == (7, pb.control_dim) and u.dtype == torch.float64
        assert float((u - ref).abs().max()) <= 1e-12 * max(1.0, float(ref.abs().max()))


def test_feedback_with_lqr_baseline_equals_regular_path():
    pb = Swap2()
    base = LQRValue(4, Qf=pb.alpha[0], target=pb.target, horizon=pb.horizon)
    phi = ResidualValue(base, _random_net(4, seed=3))
    x = pb.start[None] + 0.3 * torch.randn(5, 4, dtype=torch.float64)
    for backend in ("numpy", "torch"):
        online = OnlineFeedback(pb, phi, backend=backend)
        for t in (0.0, 0.5, 0.98):
            ref = _regular(pb, phi, x, t)  # the baseline's gain is stiff: |u| ~ 10³ near T
            u = torch.as_tensor(online.feedback(x.numpy() if backend == "numpy" else x, t))
            assert float((u - ref).abs().max()) <= 1e-12 * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_online_rollout_equals_regular_rollout(backend):
    pb = Corridor()
    phi = _random_net(4, seed=5)
    x = pb.start[None] + torch.tensor([[0.0, 0.1, -0.1, 0.2], [0.3, 0.0, 0.0, -0.2]]).double()
    ref = rollout(pb, phi, x, nt=10).paths
    online = OnlineFeedback(pb, phi, backend=backend)
    xin = x.numpy() if backend == "numpy" else x
    paths = torch.as_tensor(online.rollout(xin, 10, paths=True))
    assert paths.shape == (11, 2, 4)
    assert float((paths - ref).abs().max()) <= 1e-12 * float(ref.abs().max())
    final = torch.as_tensor(online.rollout(xin, 10))
    assert torch.equal(final, paths[-1])


def test_online_does_not_modify_inputs_or_follow_later_weight_changes():
    pb = Corridor()
    phi = _random_net(4, seed=2)
    online = OnlineFeedback(pb, phi)
    x = np.array([[-2.0, -2.0, 2.0, -2.0]])
    x_copy = x.copy()
    u = online.feedback(x, 0.2)
    assert np.array_equal(x, x_copy)
    with torch.no_grad():  # the weights are read once: retraining needs a new object
        for p in phi.parameters():
            p.add_(1.0)
    assert np.array_equal(online.feedback(x, 0.2), u)


def test_online_errors():
    pb = Corridor()
    phi = _random_net(4)
    with pytest.raises(TypeError, match="QuadraticControlProblem"):
        OnlineFeedback(object(), phi)
    other = Sum(Sequential(Single(5, 4, act=Tanh()), Linear(4, 1)), Single(5, 1, act=LogCosh()))
    with pytest.raises(TypeError, match=r"value\.jet"):
        OnlineFeedback(pb, ValueNetwork(4, net=other))
    with pytest.raises(TypeError, match="LQRValue"):
        OnlineFeedback(pb, ResidualValue(_random_net(4, seed=1), phi))
    with pytest.raises(ValueError, match="dim=6"):
        OnlineFeedback(pb, _random_net(6))
    with pytest.raises(ValueError, match="backend"):
        OnlineFeedback(pb, phi, backend="jax")
    online = OnlineFeedback(pb, phi)
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        online.feedback(np.zeros((2, 3)), 0.0)
    # a tensor is taken by the numpy backend (and an array by the torch one): same numbers
    x = np.random.default_rng(0).normal(size=(2, 4))
    assert np.array_equal(online.feedback(torch.from_numpy(x), 0.3), online.feedback(x, 0.3))
    on_torch = OnlineFeedback(pb, phi, backend="torch")
    assert torch.equal(on_torch.feedback(x, 0.3), on_torch.feedback(torch.from_numpy(x), 0.3))
    with pytest.raises(ValueError, match="non-finite entries"):
        online.feedback(np.full((1, 4), np.nan), 0.0)
    with pytest.raises(ValueError, match="non-finite entries"):
        on_torch.rollout(torch.full((1, 4), float("inf"), dtype=torch.float64), 4)
    with pytest.raises(ValueError, match="finite"):
        online.feedback(np.zeros((1, 4)), float("nan"))
    with pytest.raises(ValueError, match="nt must be"):
        online.rollout(np.zeros((1, 4)), 0)


# ---------------------------------------------------------------- nonlinear feedback, drift
def _quad_net(seed=0, scale=0.2):
    """A float64 quadcopter value network (d = 12, time features) with random weights."""
    torch.manual_seed(seed)
    phi = ValueNetwork(12, width=8, depth=3, time_degree=2).double()
    with torch.no_grad():
        for p in phi.parameters():
            p.copy_(scale * torch.randn_like(p))
    return phi


def _quad_states(n=6):
    pb = Quadcopter()
    x = pb.sample_initial(n, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(3)
    return pb, x + 0.5 * torch.randn(n, 12, dtype=torch.float64, generator=g)  # angles ≠ 0


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_quadcopter_feedback_equals_regular_path(backend):
    pb, x = _quad_states()
    phi = _quad_net()
    online = OnlineFeedback(pb, phi, backend=backend)
    for t in (0.0, 0.37, 1.0):
        ref = _regular(pb, phi, x, t)
        u = online.feedback(x.numpy() if backend == "numpy" else x, t)
        assert isinstance(u, np.ndarray if backend == "numpy" else torch.Tensor)
        u = torch.as_tensor(u)
        assert u.shape == (6, 4) and u.dtype == torch.float64
        assert float((u - ref).abs().max()) <= 1e-12 * max(1.0, float(ref.abs().max()))


def test_quadcopter_feedback_with_lqr_baseline():
    pb, x = _quad_states(3)
    base = LQRValue(12, Qf=1.0, target=pb.target, horizon=pb.horizon)
    phi = ResidualValue(base, _quad_net(seed=1))
    for backend in ("numpy", "torch"):
        online = OnlineFeedback(pb, phi, backend=backend)
        ref = _regular(pb, phi, x, 0.4)
        u = torch.as_tensor(online.feedback(x.numpy() if backend == "numpy" else x, 0.4))
        assert float((u - ref).abs().max()) <= 1e-12 * max(1.0, float(ref.abs().max()))


def test_quadcopter_numpy_closed_forms_equal_torch():
    pb, x = _quad_states()
    g = torch.Generator().manual_seed(4)
    p = torch.randn(6, 12, dtype=torch.float64, generator=g)
    u = torch.randn(6, 4, dtype=torch.float64, generator=g)
    xn, pn, un = x.numpy().copy(), p.numpy().copy(), u.numpy().copy()
    np.testing.assert_allclose(pb.online_feedback(xn, pn, 0.2), pb.feedback(x, p, 0.2),
                               rtol=0, atol=1e-15)  # fmt: skip
    np.testing.assert_allclose(pb.online_dynamics(xn, un, 0.2), pb.dynamics(x, u, 0.2),
                               rtol=0, atol=1e-14)  # fmt: skip
    assert np.array_equal(xn, x.numpy()) and np.array_equal(un, u.numpy())  # not modified


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_quadcopter_online_rollout_equals_regular_rollout(backend):
    pb, x = _quad_states(3)
    phi = _quad_net(seed=5)
    nt = pb.steps
    ref = rollout(pb, phi, x, nt=nt).paths  # the training path's closed loop (the benchmark's)
    online = OnlineFeedback(pb, phi, backend=backend)
    xin = x.numpy() if backend == "numpy" else x
    paths = torch.as_tensor(online.rollout(xin, nt, paths=True))
    assert paths.shape == (nt + 1, 3, 12)
    assert float((paths - ref).abs().max()) <= 1e-10 * float(ref.abs().max())
    assert torch.equal(torch.as_tensor(online.rollout(xin, nt)), paths[-1])


def test_quadcopter_online_errors():
    pb = Quadcopter()
    phi = _quad_net()
    no_numpy = Quadcopter()
    no_numpy.online_dynamics = None  # a problem without the numpy closed forms
    with pytest.raises(TypeError, match="online_feedback"):
        OnlineFeedback(no_numpy, phi)
    x = pb.start[None]
    on_torch = OnlineFeedback(no_numpy, phi, backend="torch")  # the torch methods suffice
    ref = OnlineFeedback(pb, phi, backend="torch").feedback(x, 0.1)
    assert torch.equal(on_torch.feedback(x, 0.1), ref)
    noisy = Quadcopter()
    noisy.diffusion = 0.1
    with pytest.raises(TypeError, match="deterministic"):
        OnlineFeedback(noisy, phi, backend="torch")
    with pytest.raises(ValueError, match="dim=4"):
        OnlineFeedback(pb, _random_net(4))
    online = OnlineFeedback(pb, phi)
    with pytest.raises(ValueError, match=r"shape \(n, 12\)"):
        online.feedback(np.zeros((1, 4)), 0.0)
    with pytest.raises(ValueError, match="non-finite entries"):
        online.rollout(np.full((1, 12), np.inf), 26)
    with pytest.raises(ValueError, match="nt must be"):
        online.rollout(np.zeros((1, 12)), 0)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_feedback_with_time_quadratic_equals_regular_path(backend):
    """ValueNetwork(time_degree=K) adds S(t)x to ∇ₓΦ: folded into the quadratic fast path."""
    pb = QuadraticControlProblem(3, control_weight=1.5)
    torch.manual_seed(7)
    phi = ValueNetwork(3, width=6, time_degree=2).double()
    with torch.no_grad():
        for p in phi.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    online = OnlineFeedback(pb, phi, backend=backend)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    for t in (0.0, 0.6, 1.0):
        ref = _regular(pb, phi, x, t)
        u = torch.as_tensor(online.feedback(x.numpy() if backend == "numpy" else x, t))
        assert float((u - ref).abs().max()) <= 1e-12 * max(1.0, float(ref.abs().max()))
