"""DO vs OD on an nn model: the discrete adjoint is the exact gradient of the discrete loss
(Taylor test), the continuous adjoint's gradient approaches it at the scheme's order."""

import pytest
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

import odeflow
from odeflow.nn import Classifier, Connector, ExplicitBlock, StandardLayer, build_network
from odeflow.testing import observed_order, taylor_test

from ._helpers import F64


def _model(n_steps, method, gradient):
    """Connector → ExplicitBlock (weights linear in time, Legendre degree 1) → Classifier."""
    torch.manual_seed(0)
    layer = StandardLayer(4, basis="legendre", basis_size=1)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    block = ExplicitBlock(layer, n_steps, method=method, gradient=gradient)
    net = torch.nn.Sequential(Connector(3, 4, image=False, norm=False, activation="tanh"), block)
    return torch.nn.Sequential(*net, Classifier(4, 3)).double()


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 3, dtype=F64, generator=g), torch.randint(0, 3, (6,), generator=g)


def _loss(net):
    x, c = _data()
    return torch.nn.functional.cross_entropy(net(x), c)


def _grad(net):
    return torch.cat([g.flatten() for g in torch.autograd.grad(_loss(net), net.parameters())])


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_do_gradient_is_the_discrete_losss_gradient(method):
    net = _model(6, method, odeflow.DiscreteAdjoint())
    theta = parameters_to_vector(net.parameters()).detach()

    def loss_at(v):
        with torch.no_grad():
            vector_to_parameters(v, net.parameters())
        return _loss(net)

    def grad_at(v):
        with torch.no_grad():
            vector_to_parameters(v, net.parameters())
        return _grad(net)

    v = torch.randn(theta.shape, dtype=F64, generator=torch.Generator().manual_seed(2))
    r = taylor_test(loss_at, theta, v, grad=grad_at, second=False, n=10, h0=0.1)
    assert abs(r.order1 - 2) <= 0.2, r
    assert r.passed(), r


@pytest.mark.parametrize("checkpoints", [False, True])
@pytest.mark.parametrize("method, order, ns", [("euler", 1, [8, 16, 32]), ("rk4", 4, [8, 16, 32])])
def test_od_gradient_approaches_do_at_the_schemes_order(method, order, ns, checkpoints):
    errs = []
    for n in ns:
        do = _grad(_model(n, method, "adjoint"))
        od = _grad(_model(n, method, odeflow.BacksolveAdjoint(checkpoints=checkpoints)))
        errs.append(float((od - do).norm() / do.norm()))
    assert abs(observed_order(errs, [1.0 / n for n in ns]) - order) <= 0.3, errs


def test_gradient_policy_switch_and_errors():
    block = ExplicitBlock(StandardLayer(2), 3)
    assert isinstance(block.gradient, odeflow.DiscreteAdjoint)
    block.gradient = "backprop"
    assert isinstance(block.gradient, odeflow.Backprop)
    with pytest.raises(ValueError, match="unknown gradient"):
        block.gradient = "continuous"
    with pytest.raises(TypeError, match="gradient policy"):
        ExplicitBlock(StandardLayer(2), 3, gradient=1.0)
    net = build_network(
        "parabolic", 4, 2, image=False, widths=(4,), n_steps=2, gradient=odeflow.BacksolveAdjoint()
    )
    assert isinstance(net[1].gradient, odeflow.BacksolveAdjoint)
    assert isinstance(build_network("plain", 4, 2, image=False)[1].gradient, odeflow.Backprop)
    with pytest.raises(ValueError, match="no gradient= option"):
        build_network("hamiltonian", 4, 2, image=False, gradient="adjoint")
