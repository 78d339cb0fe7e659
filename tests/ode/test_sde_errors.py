"""sdeint: each bad input gets a clear error naming the problem and the fix."""

from __future__ import annotations

import pytest
import torch

from odeflow import BrownianPath, sdeint

F64 = torch.float64
Y0 = torch.ones(4, 3, dtype=F64)
TS = torch.tensor([0.0, 1.0], dtype=F64)
DRIFT = lambda t, y: -y  # noqa: E731
DIAG = lambda t, y: 0.1 * y  # noqa: E731


def _bm(shape=(4, 3), **kw):
    args = {"seed": 0, "dtype": F64, **kw}
    return BrownianPath(args.pop("t0", 0.0), args.pop("t1", 1.0), shape, **args)


@pytest.mark.parametrize(
    ("g", "noise_type", "match"),
    [
        (lambda t, y: 0.1 * y[..., :2], "diagonal", r"noise_type='diagonal' needs y.shape"),
        (DIAG, "scalar", r"noise_type='scalar' needs \(\*y.shape, 1\)"),
        (lambda t, y: y[..., None].expand(4, 3, 2), "scalar", "'scalar' needs"),
        (DIAG, "general", r"noise_type='general' needs \(\*y.shape, m\)"),
        (lambda t, y: torch.ones(4, 2, 2, dtype=F64), "general", r"shape \(4, 2, 2\)"),
    ],
)
def test_diffusion_shape_mismatch(g, noise_type, match):
    with pytest.raises(ValueError, match=match):
        sdeint((DRIFT, g), Y0, TS, noise_type=noise_type)


def test_drift_shape_and_dtype_mismatch():
    with pytest.raises(ValueError, match=r"drift f\(t, y\) returned shape \(4, 1\)"):
        sdeint((lambda t, y: y[..., :1], DIAG), Y0, TS)
    with pytest.raises(TypeError, match=r"diffusion g returned torch.float32"):
        sdeint((DRIFT, lambda t, y: y.float()), Y0, TS)
    with pytest.raises(TypeError, match="drift f returned a tuple"):
        sdeint((lambda t, y: (y,), DIAG), Y0, TS)


def test_brownian_path_mismatches():
    with pytest.raises(ValueError, match=r"has dtype torch.float32 but y0 has torch.float64"):
        sdeint((DRIFT, DIAG), Y0, TS, bm=_bm(dtype=torch.float32))
    with pytest.raises(ValueError, match=r"covers \[0.0, 0.5\] but ts spans \[0.0, 1.0\]"):
        sdeint((DRIFT, DIAG), Y0, TS, bm=_bm(t1=0.5))
    with pytest.raises(ValueError, match=r"covers \[0.2, 1.0\]"):
        sdeint((DRIFT, DIAG), Y0, TS, bm=_bm(t0=0.2))
    with pytest.raises(ValueError, match=r"has shape \(4, 1\); this SDE's noise needs \(4, 3\)"):
        sdeint((DRIFT, DIAG), Y0, TS, bm=_bm((4, 1)))
    with pytest.raises(TypeError, match=r"bm must be an odeflow.ode.BrownianPath"):
        sdeint((DRIFT, DIAG), Y0, TS, bm=lambda s, t: 0)
    # a larger interval is fine
    assert sdeint((DRIFT, DIAG), Y0, TS, bm=_bm(t0=-1.0, t1=2.0)).shape == (2, 4, 3)


def test_brownian_path_on_another_device():
    meta = BrownianPath.__new__(BrownianPath)
    meta.__dict__.update(vars(_bm()))
    meta.device = torch.device("meta")
    with pytest.raises(ValueError, match="Brownian path is on meta but y0 is on cpu"):
        sdeint((DRIFT, DIAG), Y0, TS, bm=meta)


@pytest.mark.parametrize("dt", [0.0, -0.1, float("nan"), float("inf")])
def test_non_positive_step(dt):
    with pytest.raises(ValueError, match=r"dt must be positive|dt must be a positive finite"):
        sdeint((DRIFT, DIAG), Y0, TS, dt=dt)


def test_scheme_for_the_other_sde_type():
    with pytest.raises(ValueError, match=r"'euler' solves ito SDEs.*use 'heun' or 'milstein'"):
        sdeint((DRIFT, DIAG), Y0, TS, method="euler", sde_type="stratonovich")
    with pytest.raises(ValueError, match=r"'heun' solves stratonovich SDEs.*'euler' or"):
        sdeint((DRIFT, DIAG), Y0, TS, method="heun", sde_type="ito")
    with pytest.raises(ValueError, match="'milstein' needs diagonal or scalar noise"):
        sdeint((DRIFT, lambda t, y: y[..., None]), Y0, TS, method="milstein", noise_type="general")

    class StratSDE:
        sde_type = "stratonovich"
        f, g = staticmethod(DRIFT), staticmethod(DIAG)

    with pytest.raises(ValueError, match="'euler' solves ito"):
        sdeint(StratSDE(), Y0, TS, method="euler")
    with pytest.raises(ValueError, match="sde_type='ito' contradicts the sde's sde_type"):
        sdeint(StratSDE(), Y0, TS, sde_type="ito")


@pytest.mark.parametrize(
    ("ts", "match"),
    [
        ([0.0, 0.5, 0.5, 1.0], "strictly increasing"),
        ([1.0, 0.0], "strictly increasing"),
        ([0.0, float("nan")], "inf or NaN"),
        ([0.0], "at least two"),
        ([[0.0, 1.0]], "1-D"),
    ],
)
def test_bad_ts(ts, match):
    with pytest.raises(ValueError, match=match):
        sdeint((DRIFT, DIAG), Y0, torch.tensor(ts, dtype=F64))


def test_ts_requiring_grad():
    with pytest.raises(ValueError, match=r"ts.detach"):
        sdeint((DRIFT, DIAG), Y0, TS.clone().requires_grad_(True))


def test_bad_y0():
    bad = Y0.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="y0 contains inf or NaN"):
        sdeint((DRIFT, DIAG), bad, TS)
    with pytest.raises(ValueError, match="y0 contains inf or NaN"):
        sdeint((DRIFT, DIAG), torch.full((2,), float("inf")), TS.float())
    with pytest.raises(TypeError, match="floating"):
        sdeint((DRIFT, DIAG), torch.ones(3, dtype=torch.int64), TS)
    with pytest.raises(ValueError, match="at least one dimension"):
        sdeint((DRIFT, DIAG), torch.tensor(1.0, dtype=F64), TS)


def test_bad_names_and_sde():
    with pytest.raises(ValueError, match="unknown method 'rk4'"):
        sdeint((DRIFT, DIAG), Y0, TS, method="rk4")
    with pytest.raises(ValueError, match="unknown noise_type 'additive'"):
        sdeint((DRIFT, DIAG), Y0, TS, noise_type="additive")
    with pytest.raises(ValueError, match="unknown gradient"):
        sdeint((DRIFT, DIAG), Y0, TS, gradient="continuous")
    with pytest.raises(TypeError, match=r"methods f\(t, y\) \(drift\) and g\(t, y\)"):
        sdeint(DRIFT, Y0, TS)
    with pytest.raises(TypeError, match="pair"):
        sdeint((DRIFT,), Y0, TS)
    with pytest.raises(ValueError, match="checkpoint_every must be a positive int"):
        sdeint((DRIFT, DIAG), Y0, TS, checkpoint_every=0)
    with pytest.raises(TypeError, match="params must be a sequence of tensors"):
        sdeint((DRIFT, DIAG), Y0, TS, params=[1.0])


def test_torch_func_transforms_refused():
    def final(y):
        return sdeint((DRIFT, DIAG), y[None], TS)[-1, 0]

    with pytest.raises(ValueError, match=r"torch\.func transforms"):
        torch.func.vmap(final)(Y0)
