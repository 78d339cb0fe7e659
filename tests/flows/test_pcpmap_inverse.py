"""PCP-Map's sampler inverts the trained map by Newton's method with a line search on the
convex merit G(x, y) − zᵀx. A step accepted because the residual shrank, though the merit
rose, once let rows leave for a flat, far region of G (residuals of 10–300 and posterior
samples at |θ| ≈ 10³ on two moons); every row must now converge."""

import torch

from odeflow.flows import PCPMap, sbi_task


def test_inverse_converges_for_every_sample_of_a_trained_map():
    task = sbi_task("two_moons")
    theta, y = task.simulate(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    torch.manual_seed(0)
    m = PCPMap(2, 2)
    m.fit(theta, y, iters=300, verbose=False)
    for k in range(5):
        ys = m._std_y(y[k : k + 1].to(m._ref)).expand(2000, -1)
        z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(k), dtype=m._ref.dtype)
        with torch.no_grad():
            x = m.inverse(z, ys)
            residual = (m.transform(x, ys) - z).abs().amax(-1)
        assert float(residual.max()) < 1e-3, (k, float(residual.max()))
        assert bool((x.abs() < 10).all())  # standardized θ: no stray samples
