"""The fused online feedback equals the regular path (ValueNetwork.jet + problem.feedback)."""

import numpy as np
import pytest
import torch

from odeflow.control import (
    Corridor,
    LQRValue,
    OnlineFeedback,
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
