"""The EPI model: mass conservation, stencil adjoints, gradient and Gauss–Newton operator."""

from __future__ import annotations

import math

import pytest
import torch

from odeflow.imaging.epi import EPIObjective, distort
from odeflow.imaging.epi._model import (
    barrier,
    face_average,
    face_average_T,
    face_diff,
    face_diff_T,
    laplacian,
    push_forward_lines,
)
from odeflow.testing import taylor_test

F64 = torch.float64


def _smooth_field(shape, amp, seed=0):
    g = torch.Generator().manual_seed(seed)
    a, b, n1 = shape
    x = torch.arange(n1, dtype=F64) / (n1 - 1)
    c = torch.rand(a, b, 1, generator=g, dtype=F64)
    return amp * (0.5 + c) * torch.sin(math.pi * x) ** 2 * torch.sin(2 * math.pi * x + c)


def _problem(seed=0, shape=(3, 4, 12), alpha=2.0, beta=1e-2):
    g = torch.Generator().manual_seed(seed)
    up = 1.0 + torch.rand(shape, generator=g, dtype=F64)
    dn = 1.0 + torch.rand(shape, generator=g, dtype=F64)
    obj = EPIObjective(up, dn, (1.5, 2.0, 2.5), alpha=alpha, beta=beta)
    u = 0.3 * (torch.rand(*shape[:2], shape[2] + 1, generator=g, dtype=F64) - 0.5)
    v = torch.randn(u.shape, generator=g, dtype=F64)
    return obj, u, v


def test_push_forward_conserves_mass_per_line():
    g = torch.Generator().manual_seed(1)
    rho = torch.rand(5, 6, 40, generator=g, dtype=F64)
    b = _smooth_field((5, 6, 41), 3.0)
    assert float(face_diff(b).abs().max()) < 1
    for sign in (1, -1):
        out = push_forward_lines(rho, torch.arange(41, dtype=F64) + sign * b)
        torch.testing.assert_close(out.sum(-1), rho.sum(-1), rtol=0, atol=1e-12)
        assert float(out.min()) >= -1e-14
        assert not torch.allclose(out, rho)


def test_distort_any_axis_conserves_mass_and_is_identity_for_zero_field():
    g = torch.Generator().manual_seed(2)
    rho = torch.rand(7, 8, 9, generator=g, dtype=F64)
    for ax in range(3):
        torch.testing.assert_close(distort(rho, torch.zeros_like(rho), pe_axis=ax), rho)
        shp = list(rho.shape)
        shp[ax] += 1
        b = _smooth_field((*[s for i, s in enumerate(shp) if i != ax], shp[ax]), 0.5).movedim(
            -1, ax
        )
        up = distort(rho, b, pe_axis=ax)
        torch.testing.assert_close(up.sum(ax), rho.sum(ax), rtol=0, atol=1e-12)


def test_distort_rejects_folding():
    rho = torch.rand(2, 2, 10, dtype=F64)
    b = torch.zeros(2, 2, 11, dtype=F64)
    b[..., 5] = 1.2
    with pytest.raises(ValueError, match="folds"):
        distort(rho, b, pe_axis=2)


def test_stencil_adjoints():
    g = torch.Generator().manual_seed(3)
    u = torch.randn(3, 4, 11, generator=g, dtype=F64)
    w = torch.randn(3, 4, 10, generator=g, dtype=F64)
    torch.testing.assert_close((face_average(u) * w).sum(), (u * face_average_T(w)).sum())
    torch.testing.assert_close((face_diff(u) * w).sum(), (u * face_diff_T(w)).sum())


def test_laplacian_symmetric_psd_and_matches_dense():
    g = torch.Generator().manual_seed(4)
    h = (1.0, 2.0, 0.5)
    shape = (3, 4, 5)
    n = 60
    eye = torch.eye(n, dtype=F64)
    L = torch.stack([laplacian(eye[k].reshape(shape), h).reshape(-1) for k in range(n)], 1)
    torch.testing.assert_close(L, L.T)
    assert float(torch.linalg.eigvalsh(L).min()) > 0  # zero padding: positive definite
    x = torch.randn(shape, generator=g, dtype=F64)
    # 1-D check of the stencil along the last axis at an interior point
    lx = laplacian(x, h)
    i, j, k = 1, 2, 2
    ref = sum(
        (2 * x[i, j, k] - x[(i + e[0], j + e[1], k + e[2])] - x[(i - e[0], j - e[1], k - e[2])])
        / hh**2
        for e, hh in (((1, 0, 0), h[0]), ((0, 1, 0), h[1]), ((0, 0, 1), h[2]))
    )
    torch.testing.assert_close(lx[i, j, k], ref)


def test_barrier_properties_and_derivatives():
    s = torch.linspace(-0.95, 0.95, 41, dtype=F64)
    phi = barrier(s)
    assert float(phi.min()) >= 0 and float(barrier(torch.zeros(1, dtype=F64))) == 0
    torch.testing.assert_close(phi, barrier(-s))
    assert math.isinf(float(barrier(torch.tensor([1.0], dtype=F64))))
    ad1 = torch.func.vmap(torch.func.grad(lambda z: barrier(z)))(s)
    ad2 = torch.func.vmap(torch.func.grad(torch.func.grad(lambda z: barrier(z))))(s)
    torch.testing.assert_close(barrier(s, 1), ad1)
    torch.testing.assert_close(barrier(s, 2), ad2)
    assert float(barrier(s, 2).min()) >= 0  # convex


def test_gradient_matches_autograd_and_taylor():
    obj, u, v = _problem()
    f, g, _, info = obj(u)
    ag = torch.func.grad(obj.value_tensor)(u)
    torch.testing.assert_close(g, ag, rtol=1e-10, atol=1e-10)
    assert abs(f - obj.value(u)) <= 1e-12 * abs(f)
    assert abs(f - (info["distance"] + info["smoothness"] + info["barrier"])) <= 1e-10 * abs(f)
    res = taylor_test(obj.value_tensor, u, v, grad=g, second=False, h0=1e-2)
    assert abs(res.order0 - 1) < 0.2 and abs(res.order1 - 2) < 0.2


def test_gauss_newton_operator_is_JtJ_plus_regularizer_hessians():
    obj, u, v = _problem(seed=5)
    _, _, H, _ = obj(u)
    # J_r by autograd; the regularizer Hessians by autograd of smoothness + barrier
    _, jv = torch.func.jvp(obj.residual, (u,), (v,))
    _, vjp = torch.func.vjp(obj.residual, u)
    jtjv = vjp(jv)[0]

    def reg(z):
        return obj.smoothness(z) + obj.beta * obj.vol * barrier(face_diff(z)).sum()

    _, hreg = torch.func.jvp(torch.func.grad(reg), (u,), (v,))
    torch.testing.assert_close(H(v), obj.vol * jtjv + hreg, rtol=1e-10, atol=1e-10)


def test_gauss_newton_operator_symmetric_psd_and_exact_diagonal():
    obj, u, _ = _problem(seed=6, shape=(2, 3, 6))
    _, _, H, _ = obj(u)
    Hd = H.to_dense()
    torch.testing.assert_close(Hd, Hd.T, rtol=1e-12, atol=1e-10)
    assert float(torch.linalg.eigvalsh(Hd).min()) >= -1e-10 * float(Hd.abs().max())
    torch.testing.assert_close(H.diagonal().reshape(-1), torch.diagonal(Hd), rtol=1e-12, atol=1e-10)


def test_gn_operator_approaches_the_hessian_as_the_residual_vanishes():
    # H = ∇²J − vol·Σ r_i ∇²r_i: near a consistent pair (small residual) it is the Hessian
    g = torch.Generator().manual_seed(7)
    rho = 1.0 + torch.rand(2, 3, 16, generator=g, dtype=F64)
    u = _smooth_field((2, 3, 17), 0.8, seed=7)
    x = torch.arange(17, dtype=F64)
    v = torch.randn(u.shape, generator=g, dtype=F64)
    errs = []
    for noise in (1e-1, 1e-2, 1e-3):
        up = push_forward_lines(rho, x + u) + noise * torch.randn(2, 3, 16, generator=g, dtype=F64)
        dn = push_forward_lines(rho, x - u)
        obj = EPIObjective(up, dn, (1.0, 1.0, 1.0), alpha=0.5, beta=1e-3)
        _, grad, H, _ = obj(u)
        _, hv = torch.func.jvp(torch.func.grad(obj.value_tensor), (u,), (v,))
        errs.append(float(torch.linalg.vector_norm(H(v) - hv) / torch.linalg.vector_norm(hv)))
        res = taylor_test(obj.value_tensor, u, v, grad=grad, second=False, h0=1e-2)
        assert abs(res.order1 - 2) < 0.2
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-2


def test_objective_symmetric_under_swap():
    obj, u, _ = _problem(seed=8)
    swapped = EPIObjective(obj.down, obj.up, obj.spacing, alpha=obj.alpha, beta=obj.beta)
    f1, g1, _, _ = obj(u)
    f2, g2, _, _ = swapped(-u)
    assert abs(f1 - f2) <= 1e-12 * abs(f1)
    torch.testing.assert_close(g1, -g2)


def test_value_is_infinite_outside_the_barrier_domain():
    obj, u, _ = _problem(seed=9)
    w = u.clone()
    w[..., 3] += 2.0
    assert math.isinf(obj.value(w))
