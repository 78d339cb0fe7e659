"""The fast paths of the swarm's costs against the plain formulas: LQRValue's jet (one
product with P(t) per distinct time, cached coefficients) and AgentProblem's interaction
cost (only the pairs inside the cut-off are differentiated)."""

import torch
from torch.func import grad, vmap

from odeflow.control import LQRValue, Swap12, Swarm50

F64 = torch.float64


def _lqr():
    g = torch.Generator().manual_seed(0)
    A = 0.3 * torch.randn(5, 5, generator=g, dtype=F64)
    Q = torch.eye(5, dtype=F64) + 0.1 * torch.ones(5, 5, dtype=F64)
    y = torch.randn(5, generator=g, dtype=F64)
    return LQRValue(5, A=A.numpy(), Q=Q.numpy(), Qf=4.0, noise=0.2, target=y, horizon=1.0)


def test_lqr_value_jet_matches_its_coefficients_at_one_and_many_times():
    """Φ = ½xᵀP(t)x + q(t)ᵀx + c(t) and its derivatives from ``coefficients`` (∂ₜΦ by
    central differences), for one time and per-sample times, again from the cache, and in
    float32."""
    V = _lqr()
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(1), dtype=F64)
    for t in (0.3, 0.3, 0.7):  # the second call reads the cache
        P, q, c = (torch.as_tensor(v) for v in V.coefficients(t))
        jet = V.jet(x, t, second="hessian")
        torch.testing.assert_close(jet.value, 0.5 * ((x @ P) * x).sum(-1) + x @ q + c)
        torch.testing.assert_close(jet.grad, x @ P.T + q)
        torch.testing.assert_close(jet.hessian, 0.5 * (P + P.T).expand(7, 5, 5))
        lap = V.jet(x, t, second="laplacian").laplacian
        torch.testing.assert_close(lap, P.trace().expand(7))
        e = 1e-5
        fd = (V.jet(x, t + e).value - V.jet(x, t - e).value) / (2 * e)
        torch.testing.assert_close(jet.dt, fd, rtol=1e-6, atol=1e-6)
    ts = torch.tensor([0.3, 0.7, 0.3, 0.1, 0.7, 0.9, 0.1], dtype=F64)
    many = V.jet(x, ts, second="hessian")
    for k in range(7):
        one = V.jet(x[k : k + 1], float(ts[k]), second="hessian")
        for a, b in zip(many, one, strict=True):
            if a is not None:
                torch.testing.assert_close(a[k : k + 1], b)
    j32 = V.jet(x.float(), 0.3)
    torch.testing.assert_close(j32.grad, V.jet(x, 0.3).grad.float())


def _all_pairs(pb, z):
    """W by the dense formula over every pair (the torch.func path)."""
    return vmap(lambda q: pb.interaction_cost(q[None])[0])(z)


def test_interaction_cost_near_pairs_equal_all_pairs():
    """Values to round-off and gradients exactly equal to the all-pairs formula, on the
    swarm near its start (close pairs at ρ₀'s spread), on swap-12, and with no pair near."""
    g = torch.Generator().manual_seed(2)
    sw, s12 = Swarm50(), Swap12()
    cases = [
        (sw, sw.start + 0.1 * torch.randn(6, 150, generator=g, dtype=F64)),  # ρ₀
        (sw, 0.2 * sw.start + 0.1 * torch.randn(4, 150, generator=g, dtype=F64)),
        (s12, 0.1 * s12.start + 0.3 * torch.randn(5, 24, generator=g, dtype=F64)),
        (sw, sw.start[None].clone()),  # no pair within the cut-off: zeros
    ]
    for pb, z in cases:
        z = z.to(F64)
        w = pb.interaction_cost(z)
        torch.testing.assert_close(w, _all_pairs(pb, z), rtol=1e-13, atol=1e-13)
        zz = z.clone().requires_grad_(True)
        (gz,) = torch.autograd.grad(pb.interaction_cost(zz).sum(), zz)
        g_all = vmap(grad(lambda q, pb=pb: pb.interaction_cost(q[None])[0]))(z)
        torch.testing.assert_close(gz, g_all, rtol=1e-13, atol=1e-13)
    assert float(sw.interaction_cost(sw.start[None])[0]) == 0.0
    assert float(_all_pairs(sw, cases[1][1].to(F64)).min()) > 0  # the cases do test pairs
