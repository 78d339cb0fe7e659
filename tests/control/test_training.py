"""Training against the references: LQR (Riccati), PNAS OT (d-invariance), Gaussian OT."""

import pytest
import torch

from odeflow.control import (
    LQR,
    GaussianOT,
    LossWeights,
    PnasOT,
    ValueFunction,
    ValueJet,
    ValueNetwork,
    evaluate,
    fit,
    solve_characteristics,
)


def _lqr_gap(dim, iterations, width, seed=0, weights=None):
    torch.manual_seed(seed)
    pb = LQR(dim=dim)
    phi = ValueNetwork(dim, width=width).double()
    fit(pb, phi, optimizer="lbfgs", iterations=iterations, batch=64, resample_every=20, nt=4,
        verbose=False, seed=seed, weights=weights)  # fmt: skip
    x = pb.sample_initial(1000, generator=torch.Generator().manual_seed(5))
    closed_loop = evaluate(pb, phi, x=x, nt=16)["objective"]
    riccati = float(pb.exact_value()(x, 0.0).mean())
    return closed_loop / riccati - 1


def test_lqr_2d_closed_loop_cost_near_riccati():
    """A cheap run: the learned feedback's cost is above the optimum (it must be) and
    within 3 % of it (this budget reaches about 1 %)."""
    gap = _lqr_gap(2, 60, 8)
    assert 0 < gap < 0.03


@pytest.mark.slow
def test_lqr_10d_closed_loop_cost_within_one_percent():
    gap = _lqr_gap(10, 300, 16)
    assert 0 < gap < 0.01


class _Embedded(ValueFunction):
    """Φ_d(x, t) = Φ_2(x₁, x₂, t): a 2-D value function seen in d dimensions."""

    def __init__(self, inner, dim):
        super().__init__()
        self.inner, self.dim = inner, dim

    def jet(self, x, t, second=None):
        j = self.inner.jet(x[:, :2], t, second)
        pad = x.new_zeros(x.shape[0], self.dim - 2)
        hess = None
        if j.hessian is not None:
            hess = x.new_zeros(x.shape[0], self.dim, self.dim)
            hess[:, :2, :2] = j.hessian
        return ValueJet(j.value, torch.cat([j.grad, pad], 1), j.dt, j.laplacian, hess)


def test_pnas_ot_objective_is_exactly_d_invariant_for_embedded_policies():
    """The problem separates: a 2-D policy embedded in d = 10 has the same objective (the
    extra coordinates keep N(0, 0.3) and add nothing to cost, KL or log-determinant)."""
    torch.manual_seed(0)
    phi = ValueNetwork(2, width=8).double()
    fit(PnasOT(dim=2), phi, optimizer="lbfgs", iterations=10, batch=64, verbose=False)
    x10 = PnasOT(dim=10).sample_initial(512, generator=torch.Generator().manual_seed(1))
    e2 = evaluate(PnasOT(dim=2), phi, x=x10[:, :2].contiguous(), nt=4)
    e10 = evaluate(PnasOT(dim=10), _Embedded(phi, 10), x=x10, nt=4)
    for k in ("objective", "running", "terminal", "hjb"):
        assert abs(e2[k] - e10[k]) <= 1e-10 * max(1.0, abs(e2[k])), k


def test_pnas_ot_trained_objective_similar_in_d2_and_d10():
    """Small budget: trained objectives for d = 2 and 10 within 15 % (slow test: 2 %)."""
    objs = []
    for d in (2, 10):
        torch.manual_seed(0)
        phi = ValueNetwork(d, width=16).double()
        fit(PnasOT(dim=d), phi, optimizer="lbfgs", iterations=30, batch=128, verbose=False)
        objs.append(evaluate(PnasOT(dim=d), phi, samples=1000, seed=3)["objective"])
    assert abs(objs[1] / objs[0] - 1) < 0.15, objs


@pytest.mark.slow
def test_pnas_ot_objective_d_invariant_full():
    """d = 2 and 10 after 300 L-BFGS steps on 256 samples: objectives within 2 %."""
    objs = []
    for dim in (2, 10):
        torch.manual_seed(0)
        phi = ValueNetwork(dim, width=16).double()
        fit(PnasOT(dim=dim), phi, optimizer="lbfgs", iterations=300, batch=256, verbose=False)
        objs.append(evaluate(PnasOT(dim=dim), phi, samples=4000, seed=3)["objective"])
    assert abs(objs[1] / objs[0] - 1) < 0.02, objs


def _gaussian_ot(iterations, dim, batch=256, n=20000):
    torch.manual_seed(0)
    pb = GaussianOT(dim=dim)
    phi = ValueNetwork(dim, width=16).double()
    fit(pb, phi, optimizer="lbfgs", iterations=iterations, batch=batch, verbose=False,
        weights=LossWeights(hjb=1.0, terminal_value=1.0))  # fmt: skip
    x = pb.sample_initial(n, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        z = solve_characteristics(pb, phi, x, nt=8).z
    ref = pb.reference()
    cost = evaluate(pb, phi, x=x, nt=8)["objective"]
    mean_err = float((z.mean(0) - torch.as_tensor(ref.mean)).abs().max()) / max(
        1.0, float(abs(ref.mean).max())
    )
    cov_err = float((torch.cov(z.T) - ref.std**2 * torch.eye(dim)).abs().max()) / ref.std**2
    return mean_err, cov_err, cost / ref.cost - 1


def test_gaussian_ot_close_to_closed_form_small_budget():
    mean_err, cov_err, cost_err = _gaussian_ot(30, 2, batch=128, n=4000)
    # this budget reaches about 1 %, 2.5 % and 5 %
    assert mean_err < 0.03 and cov_err < 0.07 and 0 < cost_err < 0.1, (mean_err, cov_err, cost_err)


@pytest.mark.slow
def test_gaussian_ot_within_one_percent():
    mean_err, cov_err, cost_err = _gaussian_ot(400, 2)
    assert mean_err < 0.01 and cov_err < 0.01 and abs(cost_err) < 0.01, (
        mean_err,
        cov_err,
        cost_err,
    )
