"""OT-Flow takes the ODE engine's policy objects for ``gradient=`` and ``precision=`` (the
strings are shorthands for them): same results, same config, a clear error otherwise."""

from __future__ import annotations

import pytest
import torch

import odeflow
from odeflow.flows import OTFlow, fit
from odeflow.ode import get_precision

F64 = torch.float64


def _pair(**policies):
    """A flow with the given policies and a twin with their shorthands, same weights."""
    torch.manual_seed(0)
    a = OTFlow(2, width=6, nt=3, **policies).double()
    b = OTFlow(2, width=6, nt=3).double()
    b.gradient = "adjoint" if "gradient" in policies else b.gradient
    b.load_state_dict(a.state_dict())
    return a, b


def test_gradient_policy_object_gives_the_shorthands_gradients():
    a, b = _pair(gradient=odeflow.DiscreteAdjoint())
    x = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    ga = torch.autograd.grad(a.loss(x).total, list(a.parameters()), allow_unused=True)
    gb = torch.autograd.grad(b.loss(x).total, list(b.parameters()), allow_unused=True)
    assert sum(u is not None for u in ga) > 0
    for u, v in zip(ga, gb):
        assert (u is None) == (v is None)
        if u is not None:
            torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)
    assert a.config()["gradient"] == "adjoint"
    assert OTFlow(2, width=4, gradient=odeflow.Backprop()).config()["gradient"] == "backprop"


def test_precision_policy_object_is_accepted_by_the_flow_and_fit():
    pol = get_precision("fp32", torch.device("cpu"))
    flow = OTFlow(2, width=4, nt=2, precision=pol).double()
    assert flow.config()["precision"] == "fp32"
    x = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    res = fit(flow, x, iters=2, batch=32, lr=1e-2, verbose=False, precision=pol)
    assert res.precision == "fp32" and res.iterations == 2
    half = get_precision("bf16", torch.device("cpu"))
    with pytest.raises(ValueError, match="needs a float32 flow"):
        fit(flow, x, iters=1, batch=32, verbose=False, precision=half)


def test_unsupported_policies_are_refused_by_name():
    with pytest.raises(ValueError, match="gradient must be 'backprop' or 'adjoint'"):
        OTFlow(2, width=4, gradient=odeflow.ode.BacksolveAdjoint())
    with pytest.raises(ValueError, match="precision must be one of"):
        OTFlow(2, width=4, precision=torch.float16)
