"""torch.distributions-style sampling: rsample, sample_and_log_prob, rsample_and_log_prob."""

from __future__ import annotations

import pytest
import torch

from odeflow.flows import OTFlow
from odeflow.testing import observed_order


def _flow(gradient="backprop", seed=0):
    torch.manual_seed(seed)
    # the paper's initialisation: an untrained flow that moves N(0, I) far (the RK4 orders
    # below need non-trivial dynamics; the default starts near the identity)
    return OTFlow(2, width=16, nt=4, gradient=gradient, init="paper").double()


def _g():
    return torch.Generator().manual_seed(1)


def test_sample_log_prob_matches_log_prob_of_the_samples():
    """The density integrated along the sampling path (t = 1 → 0) equals log_prob of the
    returned x (t = 0 → 1) up to the RK4 error: the gap shrinks at order >= 4 (measured 5.0:
    the h⁵ local errors of the backward and forward solves cancel), and the sampling-path
    density itself converges at order 4."""
    f = _flow()
    nts = [4, 8, 16, 32]
    gaps, lps = [], {}
    for nt in [*nts, 128]:
        x, lp = f.sample_and_log_prob(200, generator=_g(), nt=nt)
        lps[nt] = lp
        if nt in nts:
            with torch.no_grad():
                gaps.append(float((lp - f.log_prob(x, nt=nt)).abs().max()))
    assert gaps[-1] < 1e-6
    assert observed_order(gaps, [1 / n for n in nts]) >= 3.8, gaps
    errs = [float((lps[nt] - lps[128]).abs().max()) for nt in nts]
    assert abs(observed_order(errs, [1 / n for n in nts]) - 4) <= 0.3, errs


def test_sample_rsample_and_shapes():
    f = _flow()
    x, lp = f.sample_and_log_prob((3, 5), generator=_g())
    assert x.shape == (3, 5, 2) and lp.shape == (3, 5) and f.event_shape == torch.Size([2])
    assert not x.requires_grad and not lp.requires_grad
    # the same draws: sample, rsample and sample_and_log_prob give the same points
    assert torch.equal(f.sample((3, 5), generator=_g()), x)
    xr = f.rsample((3, 5), generator=_g())
    assert xr.requires_grad and torch.allclose(xr.detach(), x, rtol=0, atol=1e-15)
    assert f.sample(7).shape == (7, 2) and f.sample().shape == (2,)
    assert f.sample(torch.Size([0])).shape == (0, 2)
    for bad in (-1, (2, -3), 2.5, "10", True):
        with pytest.raises(ValueError, match="sample_shape"):
            f.sample(bad)
    with pytest.raises(ValueError, match="nt"):
        f.sample(4, nt=0)


@pytest.mark.parametrize("with_log_prob", [False, True])
def test_rsample_gradients_adjoint_equal_backprop(with_log_prob):
    """Reparameterised samples (and their log-densities) are differentiable in θ; the
    discrete adjoint gives backprop's gradient to round-off in float64."""
    grads = {}
    for gradient in ("backprop", "adjoint"):
        f = _flow(gradient)
        if with_log_prob:
            x, lp = f.rsample_and_log_prob(64, generator=_g())
            loss = (x**2).sum() + lp.mean()  # a variational-style objective
        else:
            loss = (f.rsample(64, generator=_g()) ** 2).sum()
        params = [p for p in f.parameters() if p.requires_grad]
        grads[gradient] = torch.autograd.grad(loss, params, allow_unused=True)
    used = 0
    for a, b in zip(grads["backprop"], grads["adjoint"]):
        assert (a is None) == (b is None)
        if a is not None:
            used += 1
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert used >= 5


def test_rsample_and_log_prob_taylor_in_parameters():
    """Taylor test of θ ↦ E[log q(x_θ)] + E‖x_θ‖² along a random direction: the first-order
    remainder shrinks at order 2."""
    from odeflow.testing import taylor_test

    f = _flow()
    params = [p for p in f.parameters() if p.requires_grad]
    theta0 = torch.cat([p.detach().reshape(-1) for p in params])

    def objective(theta):
        i = 0
        with torch.no_grad():
            for p in params:
                p.copy_(theta[i : i + p.numel()].view_as(p))
                i += p.numel()
        x, lp = f.rsample_and_log_prob(32, generator=_g())
        return (x**2).sum(-1).mean() + lp.mean()

    def value_and_grad(theta):
        loss = objective(theta)
        g = torch.autograd.grad(loss, params, allow_unused=True)
        flat = torch.cat([(torch.zeros_like(p) if gi is None else gi).reshape(-1)
                          for gi, p in zip(g, params)])  # fmt: skip
        return loss.detach(), flat

    v = torch.randn(theta0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    _, gradient = value_and_grad(theta0)
    res = taylor_test(lambda th: objective(th).detach(), theta0, v, grad=gradient, h0=0.1,
                      second=False)  # fmt: skip
    assert res.passed(), res


def test_reverse_kl_fit_through_rsample_and_log_prob_reaches_the_target():
    """Variational fit (the flow as q) to a correlated Gaussian by minimising
    E_q[log q − log p] with rsample_and_log_prob: the KL (Monte Carlo, exact log-densities of
    q) falls from ~100 to below 0.1 and the sample mean matches the target's
    (examples/otflow_variational.py, shortened)."""
    mu = torch.tensor([1.0, -0.5], dtype=torch.float64)
    chol = torch.tensor([[1.0, 0.0], [0.6, 0.5]], dtype=torch.float64)
    target = torch.distributions.MultivariateNormal(mu, scale_tril=chol)
    torch.manual_seed(0)
    flow = OTFlow(2, width=16, nt=4, init="paper").double()  # starts far from the target
    opt = torch.optim.Adam(flow.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(1)
    first = None
    for _ in range(150):
        opt.zero_grad()
        x, log_q = flow.rsample_and_log_prob(128, generator=g)
        loss = (log_q - target.log_prob(x)).mean()
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    with torch.no_grad():
        x, log_q = flow.sample_and_log_prob(4000, generator=g, nt=16)
        kl = float((log_q - target.log_prob(x)).mean())
    assert first > 10 and kl < 0.1, (first, kl)
    assert torch.allclose(x.mean(0), mu, atol=0.1)
