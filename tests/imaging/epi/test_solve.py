"""estimate_field: accuracy on the phantom, symmetry, any PE axis, solvers, bad input."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("nilearn")

from odeflow.imaging.epi import estimate_field, make_phantom
from odeflow.optim import Status


def _rmse(res, ph) -> float:
    m = ph.mask
    return float(((res.displacement.float() - ph.displacement)[m] ** 2).mean().sqrt())


def _check_acceptance(res, ph, rmse_max=0.05, dist_max=0.15):
    # rmse_max lies between the OT start's error and the optimized one (max_iter=0 vs 10: 2 mm
    # brain 0.070 vs 0.039, 4 mm 0.062 vs 0.036), so a broken optimizer fails
    assert _rmse(res, ph) <= rmse_max
    assert float(res.jacobian_up.min()) > 0 and float(res.jacobian_down.min()) > 0
    assert res.params["relative_distance"] <= dist_max
    # the Jacobian matches the truth's 1 + ∂b (central differences) to 0.03; that of "no
    # distortion" (J = 1) is off by 0.03-0.05 and a sign error by twice that
    b = ph.displacement.movedim(ph.pe_axis, -1).double()
    db = torch.gradient(b, dim=-1)[0].movedim(-1, ph.pe_axis)
    jac_err = (res.jacobian_up.double() - 1 - db)[ph.mask].square().mean().sqrt()
    assert float(jac_err) <= 0.03


@pytest.fixture(scope="module")
def brain4mm():
    return make_phantom(voxel_size=4.0, peak_displacement=2.0, snr=30)


@pytest.fixture(scope="module")
def crop4mm():
    return make_phantom(voxel_size=4.0, shape=(20, 24, 20), peak_displacement=2.0, snr=30)


@pytest.fixture(scope="module")
def brain2mm():
    return make_phantom(voxel_size=2.0, snr=30, peak_displacement=4.0, seed=0)


def test_whole_brain_2mm_acceptance(brain2mm):
    ph = brain2mm
    assert float(ph.displacement[ph.mask].abs().max()) >= 4.0 - 1e-5
    res = estimate_field(
        ph.up, ph.down, pe_axis=ph.pe_axis, voxel_size=ph.voxel_size, verbose=False
    )
    _check_acceptance(res, ph)
    # also with the distance read as a norm ratio ‖T₊ − T₋‖/‖I₊ − I₋‖ (stricter; noise floor)
    assert res.params["relative_distance_norm"] <= 0.15
    # the optimizer improves on the OT start and the history is consistent
    h = res.history
    assert h[-1]["objective"] < h[0]["objective"]
    assert all(
        abs(e["objective"] - e["distance"] - e["smoothness"] - e["barrier"])
        <= 1e-6 * e["objective"]
        for e in h
    )
    assert res.status in (Status.CONVERGED, Status.MAX_ITERATIONS)
    assert set(res.timings) >= {"initial_guess", "optimize", "total"}
    # corrected images are closer to the truth than the inputs
    m = ph.mask
    err_in = float((ph.up - ph.truth)[m].abs().mean())
    err_out = float((res.corrected - ph.truth)[m].abs().mean())
    assert err_out < 0.5 * err_in


# reduced size: the whole brain at 4 mm (the field's steepness in mm limits the peak in voxels;
# along z, next to the sphenoid sinus, the field is steepest)
@pytest.mark.parametrize(
    "pe_axis, polarity, peak, rmse_max", [(0, 1, 2.0, 0.05), (2, -1, 1.0, 0.04)]
)  # OT start alone: 0.062 and 0.043
def test_other_axes_and_polarity_reduced(pe_axis, polarity, peak, rmse_max):
    ph = make_phantom(
        voxel_size=4.0, pe_axis=pe_axis, polarity=polarity, peak_displacement=peak, snr=30
    )
    res = estimate_field(ph.up, ph.down, pe_axis=pe_axis, voxel_size=ph.voxel_size, verbose=False)
    _check_acceptance(res, ph, rmse_max=rmse_max)


@pytest.mark.parametrize("kw", [{"solver": "lbfgs"}, {"levels": 2}])
def test_lbfgs_and_multilevel_reach_the_same_accuracy(kw, brain4mm):
    ph = brain4mm
    res = estimate_field(ph.up, ph.down, pe_axis=1, voxel_size=4.0, verbose=False, **kw)
    _check_acceptance(res, ph)


def test_lbfgs_reports_convergence_only_near_the_optimum(crop4mm):
    # L-BFGS creeps on this problem; a stalled step must not read as CONVERGED
    ph = crop4mm
    gn = estimate_field(ph.up, ph.down, pe_axis=1, voxel_size=4.0, verbose=False)
    lb = estimate_field(ph.up, ph.down, pe_axis=1, voxel_size=4.0, verbose=False, solver="lbfgs")
    f_gn, f_lb = gn.history[-1]["objective"], lb.history[-1]["objective"]
    assert gn.status is Status.CONVERGED
    assert lb.iterations <= 5 * 10  # its budget at the default max_iter
    assert lb.status is not Status.CONVERGED or f_lb <= 1.05 * f_gn, (lb.status, f_lb / f_gn)


@pytest.mark.slow
def test_lbfgs_with_a_larger_budget_converges_to_the_optimum(crop4mm):
    ph = crop4mm
    gn = estimate_field(ph.up, ph.down, pe_axis=1, voxel_size=4.0, verbose=False)
    lb = estimate_field(
        ph.up, ph.down, pe_axis=1, voxel_size=4.0, verbose=False, solver="lbfgs", max_iter=120
    )
    assert lb.status is Status.CONVERGED
    assert lb.history[-1]["objective"] <= 1.01 * gn.history[-1]["objective"]


def test_swapping_up_and_down_negates_the_field(crop4mm):
    ph = crop4mm
    up, dn = ph.up.double(), ph.down.double()
    a = estimate_field(up, dn, pe_axis=1, voxel_size=4.0, verbose=False)
    b = estimate_field(dn, up, pe_axis=1, voxel_size=4.0, verbose=False)
    torch.testing.assert_close(b.displacement, -a.displacement, rtol=0, atol=1e-8)
    torch.testing.assert_close(b.corrected, a.corrected, rtol=0, atol=1e-8)


def test_permuting_axes_permutes_the_field(crop4mm):
    ph = crop4mm
    up, dn = ph.up.double(), ph.down.double()
    ref = estimate_field(up, dn, pe_axis=1, voxel_size=(4.0, 4.0, 4.0), verbose=False)
    perm = (1, 2, 0)  # new axis k is old axis perm[k]; PE (old 1) becomes new axis 0
    res = estimate_field(
        up.permute(perm), dn.permute(perm), pe_axis=0, voxel_size=4.0, verbose=False
    )
    torch.testing.assert_close(res.displacement, ref.displacement.permute(perm), rtol=0, atol=1e-6)


def test_intensity_scale_invariance(crop4mm):
    ph = crop4mm
    up, dn = ph.up.double(), ph.down.double()
    a = estimate_field(up, dn, pe_axis=1, voxel_size=4.0, verbose=False)
    b = estimate_field(7.0 * up, 7.0 * dn, pe_axis=1, voxel_size=4.0, verbose=False)
    torch.testing.assert_close(b.displacement, a.displacement, rtol=0, atol=1e-8)
    torch.testing.assert_close(b.corrected, 7.0 * a.corrected)


def test_inputs_are_not_modified(crop4mm):
    ph = crop4mm
    up0, dn0 = ph.up.clone(), ph.down.clone()
    estimate_field(ph.up, ph.down, pe_axis=1, voxel_size=4.0, verbose=False, max_iter=2)
    assert torch.equal(ph.up, up0) and torch.equal(ph.down, dn0)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"down": torch.rand(8, 8, 9)}, "differ in shape"),
        ({"up": torch.rand(8, 8), "down": torch.rand(8, 8)}, "3-D"),
        ({"pe_axis": 5}, "pe_axis"),
        ({"voxel_size": (1.0, -1.0, 1.0)}, "voxel_size"),
        ({"alpha": -1.0}, "alpha"),
        ({"beta": 0.0}, "beta"),
        ({"solver": "newton"}, "solver"),
        ({"levels": 0}, "levels"),
        ({"max_iter": -1}, "max_iter"),
        ({"up": torch.full((8, 8, 8), float("nan"))}, "NaN"),
        ({"up": torch.zeros(8, 8, 8), "down": torch.zeros(8, 8, 8)}, "zero"),
    ],
)
def test_bad_input(kw, match):
    args = {"up": torch.rand(8, 8, 8), "down": torch.rand(8, 8, 8), "pe_axis": 1}
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        estimate_field(args.pop("up"), args.pop("down"), verbose=False, **args)


@pytest.mark.gpu
def test_cuda_matches_cpu(cuda, crop4mm):
    ph = crop4mm
    a = estimate_field(ph.up, ph.down, pe_axis=1, voxel_size=4.0, verbose=False)
    b = estimate_field(ph.up.to(cuda), ph.down.to(cuda), pe_axis=1, voxel_size=4.0, verbose=False)
    assert b.displacement.device.type == "cuda"
    torch.testing.assert_close(b.displacement.cpu(), a.displacement, rtol=0, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("pe_axis", [0, 2])
def test_whole_brain_other_axes(pe_axis):
    ph = make_phantom(
        voxel_size=2.0, pe_axis=pe_axis, peak_displacement=4.0 if pe_axis == 0 else 2.0
    )
    res = estimate_field(ph.up, ph.down, pe_axis=pe_axis, voxel_size=2.0, verbose=False)
    _check_acceptance(res, ph)


def test_numpy_inputs_dtype_and_silence(crop4mm, capsys):
    ph = crop4mm
    res = estimate_field(
        ph.up.numpy(), ph.down.numpy(), pe_axis=1, voxel_size=4.0, verbose=False, max_iter=2
    )
    assert res.displacement.dtype == torch.float32 and res.displacement.shape == ph.up.shape
    assert res.displacement_faces.shape == (20, 25, 20)
    res64 = estimate_field(
        ph.up.double(), ph.down.double(), pe_axis=1, voxel_size=4.0, verbose=False, max_iter=2
    )
    assert res64.displacement.dtype == torch.float64
    torch.testing.assert_close(res64.displacement.float(), res.displacement, rtol=0, atol=1e-3)
    assert res.relative_distance == res.params["relative_distance"] < 1
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
