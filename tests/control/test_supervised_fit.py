"""fit_value_to_data: regression of Φ on values and costates (float64): exact recovery when
the model contains the target, the LQR value and its feedback from data, the reported errors,
untouched inputs, and clear errors for bad data."""

import pytest
import torch

from odeflow.control import LQR, ValueNetwork, fit_value_to_data, rollout


def _quadratic_data(n=40, seed=1):
    """Φ*(x, t) = ½xᵀ(S₀ + tS₁)x: exactly the time_degree=1 term of a ValueNetwork."""
    g = torch.Generator().manual_seed(seed)
    S0 = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    S1 = torch.tensor([[-1.0, 0.2], [0.2, 0.5]], dtype=torch.float64)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64)
    S = S0 + t[:, None, None] * S1
    Sx = torch.einsum("nij,nj->ni", S, x)
    return x, t, 0.5 * (x * Sx).sum(1) + 1.0, Sx


def test_exact_recovery_when_the_model_contains_the_target():
    """The data come from a member of the model class (ResNet part 0, S(t) = S₀ + tS₁, a
    constant 1): least squares drives both relative errors below 1e-8."""
    x, t, V, G = _quadratic_data()
    torch.manual_seed(0)
    phi = ValueNetwork(2, width=4, time_degree=1).double()
    out = fit_value_to_data(phi, x, t, V, G, iterations=400, gtol=0.0)
    assert out.value_error < 1e-8 and out.gradient_error < 1e-8
    with torch.no_grad():  # the reported errors are the relative squared errors of the result
        jet = phi.jet(x, t)
    ev = float(((jet.value - V) ** 2).sum() / (V * V).sum())
    eg = float(((jet.grad - G) ** 2).sum() / (G * G).sum())
    assert out.value_error == pytest.approx(ev, rel=1e-6, abs=1e-14)
    assert out.gradient_error == pytest.approx(eg, rel=1e-6, abs=1e-14)
    assert out.loss == pytest.approx(ev + eg, rel=1e-6, abs=1e-14)


def test_lqr_value_and_feedback_from_data():
    """Fit to the Riccati value and its gradient at scattered (x, t): the learned feedback's
    closed-loop cost matches the exact value Φ*(x₀, 0) within 1 %."""
    pb = LQR(dim=2)
    exact = pb.exact_value()
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(200, 2, generator=g, dtype=torch.float64)
    t = torch.rand(200, generator=g, dtype=torch.float64) * pb.horizon
    jet = exact.jet(x, t)
    torch.manual_seed(0)
    phi = ValueNetwork(2, width=8, time_degree=2).double()
    out = fit_value_to_data(phi, x, t, jet.value, jet.grad, iterations=200)
    assert out.value_error < 1e-4 and out.gradient_error < 1e-4
    x0 = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    cost = float(rollout(pb, phi, x0, nt=20).cost[0])
    assert cost == pytest.approx(float(exact.jet(x0, 0.0).value[0]), rel=1e-2)


def test_value_only_and_inputs_untouched():
    x, t, V, G = _quadratic_data()
    copies = [a.clone() for a in (x, t, V, G)]
    torch.manual_seed(0)
    phi = ValueNetwork(2, width=4, time_degree=1).double()
    out = fit_value_to_data(phi, x, t, V, None, iterations=5)
    assert out.gradient_error == 0.0 and out.iterations <= 5
    out = fit_value_to_data(phi, x, 0.5, V, G, gradient_weight=0.0, iterations=2)  # scalar t
    assert out.gradient_error == 0.0
    w = torch.tensor([1.0, 0.0], dtype=torch.float64)  # only ∂Φ/∂x₁ counts
    out = fit_value_to_data(phi, x, t, V, G, coordinate_weights=w, iterations=3)
    with torch.no_grad():
        g0 = phi.jet(x, t).grad[:, 0]
    eg = float(((g0 - G[:, 0]) ** 2).sum() / (G[:, 0] ** 2).sum())
    assert out.gradient_error == pytest.approx(eg, rel=1e-10)
    assert torch.equal(w, torch.tensor([1.0, 0.0], dtype=torch.float64))
    for a, b in zip((x, t, V, G), copies, strict=True):
        assert torch.equal(a, b)


def test_bad_input_is_refused():
    x, t, V, G = _quadratic_data(n=6)
    phi = ValueNetwork(2, width=4).double()
    bad = [
        (dict(x=x[:, :1]), "x must be an"),
        (dict(t=t[:3]), "t must have shape"),
        (dict(V=V[:, None]), "V must have shape"),
        (dict(grad=G[:, :1]), "grad must have the shape"),
        (dict(V=V.clone().fill_(float("nan"))), "V has NaN"),
        (dict(V=torch.zeros_like(V)), "must not be all zero"),
        (dict(gradient_weight=-1.0), "gradient_weight"),
        (dict(iterations=0), "iterations"),
        (dict(gtol=-1.0), "gtol"),
        (dict(coordinate_weights=torch.ones(3)), "coordinate_weights"),
        (dict(coordinate_weights=torch.tensor([1.0, -1.0])), "coordinate_weights"),
    ]
    for change, msg in bad:
        args = dict(x=x, t=t, V=V, grad=G) | change
        kw = {
            k: args.pop(k)
            for k in ("gradient_weight", "iterations", "gtol", "coordinate_weights")
            if k in args
        }
        with pytest.raises(ValueError, match=msg):
            fit_value_to_data(phi, args["x"], args["t"], args["V"], args["grad"], **kw)
    frozen = ValueNetwork(2, width=4).double().requires_grad_(False)
    with pytest.raises(TypeError, match="no trainable parameters"):
        fit_value_to_data(frozen, x, t, V, G)
