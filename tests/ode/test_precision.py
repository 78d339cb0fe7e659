"""Mixed precision: dtype stability, 16-bit storage, fp16 dynamic adjoint scaling, GradScaler."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import odeflow
from odeflow import AdjointScaler

D64 = torch.float64


class MLP(nn.Module):
    def __init__(self, d=16, w=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d, w), nn.Tanh(), nn.Linear(w, w), nn.Tanh(), nn.Linear(w, d)
        )

    def forward(self, t, y):
        return self.net(y)


class Stress(nn.Module):
    """y' = -(p0 t^2 + p1 t + p2) y with p = (8, -10, 2^-16) (rampde's stress test)."""

    def __init__(self, dtype):
        super().__init__()
        self.p = nn.Parameter(torch.tensor([8.0, -10.0, 2.0**-16], dtype=dtype))

    def forward(self, t, y):
        k = self.p[0] * t * t + self.p[1] * t + self.p[2]
        return torch.mm(y, (-k).reshape(1, 1).to(y.dtype))  # mm: runs in fp16 under autocast


def _mlp_grads(precision, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    f = MLP().to(dtype)
    y0 = torch.randn(32, 16, dtype=dtype, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=dtype)
    ys = odeflow.odeint(f, y0, t, precision=precision, steps_per_interval=8, **kw)
    (ys[-1] ** 2).mean().backward()
    return ys, y0.grad, [p.grad for p in f.parameters()]


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16", "fp16"])
@pytest.mark.parametrize("gradient", ["adjoint", "backprop"])
def test_dtype_stability_fp32_in_fp32_out(precision, gradient):
    ys, gy, gp = _mlp_grads(precision, gradient=gradient)
    assert ys.dtype == torch.float32
    assert gy.dtype == torch.float32 and all(g.dtype == torch.float32 for g in gp)


def test_fp64_stays_fp64_and_output_dtype_option():
    ys, gy, gp = _mlp_grads("fp64", dtype=D64)
    assert ys.dtype == D64 and gy.dtype == D64 and all(g.dtype == D64 for g in gp)
    f = MLP()
    ys16 = odeflow.odeint(
        f,
        torch.randn(4, 16),
        torch.tensor([0.0, 1.0]),
        precision="bf16",
        output_dtype=torch.bfloat16,
    )
    assert ys16.dtype == torch.bfloat16


@pytest.mark.parametrize("precision, dt", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_stored_states_are_16_bit(precision, dt):
    f = MLP()
    ys = odeflow.odeint(
        f, torch.randn(4, 16), torch.tensor([0.0, 1.0]), precision=precision, steps_per_interval=3
    )
    store = ys.grad_fn.store
    assert len(store) == 3 and all(s[0].dtype == dt for s in store)  # one per step
    ys32 = odeflow.odeint(f, torch.randn(4, 16), torch.tensor([0.0, 1.0]), steps_per_interval=3)
    assert all(s[0].dtype == torch.float32 for s in ys32.grad_fn.store)


@pytest.mark.parametrize("precision, u", [("bf16", 2.0**-8), ("fp16", 2.0**-11)])
def test_mixed_precision_gradients_close_to_fp32(precision, u):
    _, gy32, gp32 = _mlp_grads("fp32")
    _, gy, gp = _mlp_grads(precision)
    # O(u_L) error of the low-precision stages (a few unit roundoffs, not more)
    assert _rel(gy, gy32) < 8 * u
    for a, b in zip(gp, gp32):
        assert _rel(a, b) < 8 * u


def test_ambient_autocast_is_ignored():
    f = MLP()
    y0 = torch.randn(4, 16)
    t = torch.tensor([0.0, 1.0])
    ref = odeflow.odeint(f, y0, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = odeflow.odeint(f, y0, t)
    assert torch.equal(ref, got)


def _stress(dtype, precision, scaler=None, device="cpu", gradient="adjoint"):
    f = Stress(dtype).to(device)
    y0 = torch.full((1, 1), 364.0, dtype=dtype, device=device, requires_grad=True)
    sol = odeflow.solve(
        f,
        y0,
        torch.tensor([0.0, 2.65], dtype=dtype, device=device),
        steps_per_interval=399,
        precision=precision,
        scaler=scaler,
        gradient=gradient,
    )
    sol.ys[-1].sum().backward()
    return y0.grad, f.p.grad, sol


def test_stress_fp16_gradient_within_1e_2_of_fp64():
    gy64, gp64, _ = _stress(D64, "fp64")
    gy, gp, sol = _stress(torch.float32, "fp16")
    assert _rel(gy, gy64) < 1e-2 and _rel(gp, gp64) < 1e-2
    # the adjoint spans > 7 orders of magnitude; the per-step scales follow it
    s = sol.scale_history
    assert s is not None and s.shape == (399,)
    assert (s.max() / s.min()).item() > 1e6
    assert torch.all(torch.log2(s) == torch.round(torch.log2(s)))  # powers of two
    assert sol.stats.syncs <= 4 + 1  # a constant number of host syncs, not one per step


def test_stress_unscaled_fp16_is_worse():
    _gy64, gp64, _ = _stress(D64, "fp64")
    _gy, gp, _ = _stress(torch.float32, "fp16", scaler=AdjointScaler(dynamic=False))
    _gys, gps, _ = _stress(torch.float32, "fp16")
    assert _rel(gp, gp64) > 10 * _rel(gps, gp64)


@pytest.mark.parametrize("recompute", ["step", "stage"])
def test_overflow_is_recovered_by_halving_and_recomputing(recompute):
    gy64, gp64, _ = _stress(D64, "fp64")
    sc = AdjointScaler(headroom=22, max_headroom=22)  # seed S*a ~ 2^22 overflows fp16
    grad = odeflow.DiscreteAdjoint(recompute=recompute)
    gy, gp, sol = _stress(torch.float32, "fp16", scaler=sc, gradient=grad)
    assert sol.stats.retries >= 1 and sc.headroom < 22 and sc.total_overflows >= 1
    assert torch.isfinite(gy).all() and torch.isfinite(gp).all()
    assert _rel(gy, gy64) < 1e-2 and _rel(gp, gp64) < 1e-2
    assert sol.stats.syncs <= sc.checks + 1 + 2 * sol.stats.retries


@pytest.mark.parametrize("recompute", ["step", "stage"])
def test_overflow_retry_replays_the_same_dropout_masks(recompute):
    """A step recomputed after an fp16 overflow sees the forward pass's dropout masks: the
    gradient with a retry equals the one without."""
    from .test_adjoint import DropoutField

    torch.manual_seed(0)
    f = DropoutField(3, 16)
    y0 = torch.randn(64, 3)
    grads, retries = [], []
    for headroom in (8, 22):  # a seed S*a ~ 2^22 overflows fp16: halved and recomputed
        torch.manual_seed(1)
        sc = AdjointScaler(headroom=headroom, max_headroom=22)
        sol = odeflow.solve(f, y0, torch.tensor([0.0, 1.0]), precision="fp16", scaler=sc,
                            steps_per_interval=8,
                            gradient=odeflow.DiscreteAdjoint(recompute=recompute))  # fmt: skip
        grads.append(torch.autograd.grad((sol.ys[-1] * 1e3).square().sum(), f.f.l1.weight)[0])
        retries.append(sol.stats.retries)
    assert retries[0] == 0 and retries[1] >= 1
    assert torch.equal(grads[0], grads[1])


def test_nan_loss_leaves_the_persistent_scaler_alone():
    """A NaN incoming gradient is not an fp16 overflow: it propagates (as with backprop) and
    the scaler's state is unchanged, so the next clean call is as with a fresh scaler."""
    sc = AdjointScaler()
    _, gy_ref, _ = _mlp_grads("fp16", scaler=AdjointScaler())
    h0, over0 = sc.headroom, sc.total_overflows
    torch.manual_seed(0)
    f = MLP(d=3, w=8)
    y0 = torch.randn(6, 3, requires_grad=True)
    ys = odeflow.odeint(f, y0, torch.tensor([0.0, 1.0]), precision="fp16", scaler=sc)
    (g,) = torch.autograd.grad(ys[-1].sum() * float("nan"), y0)
    assert torch.isnan(g).all()
    assert (sc.headroom, sc.total_overflows) == (h0, over0)
    _, gy, _ = _mlp_grads("fp16", scaler=sc)
    assert torch.equal(gy, gy_ref)


def test_scaler_growth_rule_persists_across_calls():
    sc = AdjointScaler(headroom=10, growth_interval=3)
    for _k in range(7):
        _, gy, _ = _mlp_grads("fp16", scaler=sc)
        assert torch.isfinite(gy).all()
    # 7 clean backward passes with growth every 3: 10 -> 11 -> 12
    assert sc.headroom == 12 and sc.clean_passes == 1


def test_gradscaler_interop():
    _, _gy32, gp32 = _mlp_grads("fp32")
    torch.manual_seed(0)
    f = MLP()
    opt = torch.optim.SGD(f.parameters(), lr=0.0)
    gs = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    y0 = torch.randn(32, 16, requires_grad=True)
    ys = odeflow.odeint(
        f,
        y0,
        torch.tensor([0.0, 1.0]),
        precision="fp16",
        steps_per_interval=8,
        scaler=AdjointScaler(dynamic=False),
    )
    gs.scale((ys[-1] ** 2).mean()).backward()
    gs.unscale_(opt)
    for a, b in zip([p.grad for p in f.parameters()], gp32):
        assert _rel(a, b) < 8 * 2.0**-11
    gs.step(opt)
    gs.update()
    assert gs.get_scale() == 2.0**10  # no overflow: scale kept

    # an overflowing scale: non-finite gradients reach GradScaler, which skips and backs off
    gs = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    opt.zero_grad()
    ys = odeflow.odeint(
        f,
        y0.detach(),
        torch.tensor([0.0, 1.0]),
        precision="fp16",
        steps_per_interval=8,
        scaler=AdjointScaler(dynamic=False),
    )
    gs.scale((ys[-1] ** 2).mean()).backward()
    gs.step(opt)
    gs.update()
    assert gs.get_scale() < 2.0**40


def test_bf16_stress_runs_without_scaling():
    gy64, gp64, _ = _stress(D64, "fp64")
    gy, gp, sol = _stress(torch.float32, "bf16")
    assert sol.scale_history is None
    assert _rel(gy, gy64) < 1e-2 and _rel(gp, gp64) < 1e-2


def test_fp16_time_gradients_close_to_fp32():
    torch.manual_seed(7)
    lin = nn.Linear(4, 4)

    def f(t, y):
        return torch.tanh(lin(y)) * torch.cos(t)

    out = []
    for prec in ("fp32", "fp16"):
        t = torch.tensor([0.0, 0.5, 1.0], requires_grad=True)
        ys = odeflow.odeint(f, torch.ones(3, 4), t, precision=prec, params=list(lin.parameters()),
                            steps_per_interval=5)  # fmt: skip
        (ys**2).sum().backward()
        out.append(t.grad)
    assert _rel(out[1], out[0]) < 8 * 2.0**-11


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_stress_on_gpu(cuda, precision):
    gy64, gp64, _ = _stress(D64, "fp64")
    gy, gp, sol = _stress(torch.float32, precision, device=cuda)
    assert _rel(gy.cpu(), gy64) < 1e-2 and _rel(gp.cpu(), gp64) < 1e-2
    if precision == "fp16":
        assert sol.stats.syncs <= 4 + 1 + 2 * sol.stats.retries


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16", "fp16"])
def test_mixed_precision_on_gpu_close_to_cpu_fp64(cuda, precision):
    torch.manual_seed(0)
    f64 = MLP().to(D64)
    y0 = torch.randn(32, 16, dtype=D64)
    t = torch.tensor([0.0, 1.0], dtype=D64)
    ys = odeflow.odeint(f64, y0, t, precision="fp64", steps_per_interval=8)
    (ys[-1] ** 2).mean().backward()
    ref = [p.grad.clone() for p in f64.parameters()]
    f = MLP().to(cuda)
    f.load_state_dict({k: v.float() for k, v in f64.state_dict().items()})
    ys = odeflow.odeint(f, y0.float().to(cuda), t.float().to(cuda), precision=precision,
                        steps_per_interval=8)  # fmt: skip
    assert ys.dtype == torch.float32
    (ys[-1] ** 2).mean().backward()
    u = {"fp32": 2.0**-20, "tf32": 2.0**-11, "bf16": 2.0**-8, "fp16": 2.0**-11}[precision]
    for a, b in zip([p.grad.cpu() for p in f.parameters()], ref):
        assert _rel(a, b) < 8 * u + 1e-5


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_stage_recompute_matches_step_in_mixed_precision(precision):
    """Same policy semantics: same fp16 scales, same gradients up to fp32 summation order.

    This also checks that per-stage weight gradients meet in fp32 in ``"step"`` mode: with
    autocast's weight-cast cache, the stages of a rebuilt step would share one 16-bit weight
    copy and autograd would sum their gradients in 16 bit (a 1e-3 relative difference here).
    """
    out = {}
    for rc in ("step", "stage", "fp64"):
        torch.manual_seed(0)
        dt = D64 if rc == "fp64" else torch.float32
        f = MLP().to(dt)
        y0 = torch.randn(32, 16).to(dt).requires_grad_()
        t = torch.tensor([0.0, 0.6, 1.0], dtype=dt, requires_grad=True)
        grad = odeflow.DiscreteAdjoint(recompute="step" if rc == "fp64" else rc)
        prec = "fp64" if rc == "fp64" else precision
        sol = odeflow.solve(f, y0, t, precision=prec, steps_per_interval=4, gradient=grad)
        (sol.ys[1:] ** 2).mean().backward()
        gp = torch.cat([p.grad.flatten() for p in f.parameters()])
        out[rc] = (y0.grad, t.grad, gp, sol.scale_history)
    (gy_a, gt_a, gp_a, s_a), (gy_b, gt_b, gp_b, s_b) = out["step"], out["stage"]
    if precision == "fp16":
        assert s_a is not None and torch.equal(s_a, s_b)
    else:
        assert s_a is None and s_b is None
    # equal up to fp32 summation order (seeds may round differently before the 16-bit cast)
    assert _rel(gy_b, gy_a) < 1e-6 and _rel(gt_b, gt_a) < 1e-6
    assert _rel(gp_b, gp_a) < 1e-4
    u = {"bf16": 2.0**-8, "fp16": 2.0**-11}[precision]
    assert _rel(gp_a, out["fp64"][2]) < 2 * u and _rel(gp_b, out["fp64"][2]) < 2 * u


def test_stage_recompute_stress_fp16_within_1e_2_of_fp64():
    gy64, gp64, _ = _stress(D64, "fp64")
    grad = odeflow.DiscreteAdjoint(recompute="stage")
    gy, gp, sol = _stress(torch.float32, "fp16", gradient=grad)
    _, _, sol_step = _stress(torch.float32, "fp16")
    assert _rel(gy, gy64) < 1e-2 and _rel(gp, gp64) < 1e-2
    assert torch.equal(sol.scale_history, sol_step.scale_history)
    assert sol.stats.syncs <= 4 + 1


@pytest.mark.parametrize("limit", [dict(min_headroom=6), dict(max_retries=0)])
def test_unrecoverable_overflow_raises_and_leaves_the_scaler_as_it_was(limit):
    """The backward through w = 2^11·I overflows fp16 unless the headroom is about 5 or less:
    with min_headroom 6, or no retries allowed, the fp16 adjoint cannot recover. Either way
    the call raises FloatingPointError naming the fix and the scaler is left as it was."""

    class Big(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.eye(8) / 2**12)
            self.w = torch.nn.Parameter(torch.eye(8) * 2**11)

        def forward(self, t, y):
            return torch.mm(torch.mm(y, self.a), self.w)

    sc = odeflow.AdjointScaler(headroom=8, growth_interval=16, **limit)
    sc.clean_passes = 15
    before = (sc.headroom, sc.clean_passes, sc.total_overflows)
    y0 = torch.ones(4, 8, requires_grad=True)
    ys = odeflow.odeint(
        Big(), y0, torch.tensor([0.0, 1.0]), precision="fp16", scaler=sc, steps_per_interval=4
    )
    with pytest.raises(FloatingPointError, match="precision='bf16'"):
        ys[-1].sum().backward()
    assert (sc.headroom, sc.clean_passes, sc.total_overflows) == before


def test_scaler_state_round_trips_through_a_checkpoint(tmp_path):
    """A scaler that learned a lower exponent (an overflow) and some clean passes is saved
    and restored with torch.save/torch.load(weights_only=True): the restored one continues
    exactly as the original (same gradients, same state after the next solve)."""
    sc = AdjointScaler(headroom=22, max_headroom=22)  # the first solve overflows and halves
    _stress(torch.float32, "fp16", scaler=sc)
    assert sc.headroom < 22 and sc.total_overflows >= 1
    torch.save(sc.state_dict(), tmp_path / "scaler.pt")
    restored = AdjointScaler()
    restored.load_state_dict(torch.load(tmp_path / "scaler.pt", weights_only=True))
    assert restored.state_dict() == sc.state_dict()
    ga, pa, _ = _stress(torch.float32, "fp16", scaler=sc)
    gb, pb, _ = _stress(torch.float32, "fp16", scaler=restored)
    assert torch.equal(ga, gb) and torch.equal(pa, pb)
    assert restored.state_dict() == sc.state_dict()


def test_scaler_load_state_dict_refuses_bad_states():
    good = AdjointScaler().state_dict()
    with pytest.raises(ValueError, match="expected the keys"):
        AdjointScaler().load_state_dict({"headroom": 8})
    with pytest.raises(ValueError, match="min_headroom <= headroom <= max_headroom"):
        AdjointScaler().load_state_dict({**good, "headroom": 99})
    with pytest.raises(ValueError, match="clean_passes"):
        AdjointScaler().load_state_dict({**good, "clean_passes": 16})
    s = AdjointScaler(headroom=5)
    with pytest.raises(ValueError):
        s.load_state_dict({**good, "checks": 0})
    assert s.headroom == 5  # a refused state changes nothing


def test_reduced_precision_on_a_float64_state_warns():
    """Autocast does not cast float64: bf16 on a float64 state would silently run in float64."""
    y0 = torch.ones(3, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.warns(UserWarning, match="autocast leaves float64 operations alone") as w:
        ys = odeflow.odeint(lambda t, y: -y, y0, t, precision="bf16")
    assert ys.dtype == torch.float64
    assert {r.filename for r in w if "float64" in str(r.message)} == {__file__}  # caller's line
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # (a CPU without native bf16 says so with a PerformanceWarning, tested below)
        warnings.filterwarnings("ignore", category=odeflow.PerformanceWarning)
        odeflow.odeint(lambda t, y: -y, y0.float(), t, precision="bf16")  # float32: no warning
        odeflow.odeint(lambda t, y: -y, y0, t, precision="fp64")


@pytest.mark.parametrize("recompute", ["step", "stage"])
def test_fp16_adjoint_with_an_empty_leaf(recompute):
    """A zero-size leaf (an empty batch) has no maximum for the adjoint scale: it counts as 0,
    and the other leaf's gradient is the one it gets when solved alone."""
    torch.manual_seed(5)
    lin = nn.Linear(3, 3)
    grad = odeflow.DiscreteAdjoint(recompute=recompute)
    t = torch.tensor([0.0, 0.5, 1.0])
    full = torch.randn(4, 3)

    def f(t, y):
        return lin(y[0]), lin(y[1])

    y0 = (torch.zeros(0, 3, requires_grad=True), full.clone().requires_grad_())
    ps = list(lin.parameters())
    ys = odeflow.odeint(f, y0, t, precision="fp16", gradient=grad, params=ps)
    assert ys[0].shape == (3, 0, 3)
    gs = torch.autograd.grad(ys[1].square().sum(), [*y0, *lin.parameters()])
    y1 = full.clone().requires_grad_()
    ref = odeflow.odeint(lambda t, y: lin(y), y1, t, precision="fp16", gradient=grad, params=ps)
    refs = torch.autograd.grad(ref.square().sum(), [y1, *lin.parameters()])
    assert gs[0].shape == (0, 3)
    assert all(torch.equal(a, b) for a, b in zip(gs[1:], refs))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_emulated_16_bit_products_on_cpu_warn_once_at_the_callers_line(monkeypatch, precision):
    """A CPU that emulates 16-bit matrix products makes bf16/fp16 slower than fp32, not
    faster: the first such solve in a process says so, naming the user's line, and the
    result is the same as without the warning."""
    import warnings

    from odeflow.ode import _precision

    monkeypatch.setattr(_precision, "_warned", set())
    monkeypatch.setattr(_precision, "_cpu_flags", lambda: frozenset({"avx2", "fma"}))
    y0, t = torch.ones(3), torch.tensor([0.0, 1.0])
    with pytest.warns(odeflow.PerformanceWarning, match=r"AMX-.* emulated.*precision='fp32'") as w:
        ys = odeflow.odeint(lambda t, y: -y, y0, t, precision=precision)
    assert [r.filename for r in w if r.category is odeflow.PerformanceWarning] == [__file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = odeflow.odeint(lambda t, y: -y, y0, t, precision=precision)  # once per process
    assert torch.equal(ys, again)
    # through a model's method, the warning still names the caller's line
    monkeypatch.setattr(_precision, "_warned", set())
    flow = odeflow.flows.OTFlow(2, width=4, precision=precision)
    with pytest.warns(odeflow.PerformanceWarning) as w:
        flow.log_prob(torch.zeros(2, 2))
    assert [r.filename for r in w if r.category is odeflow.PerformanceWarning] == [__file__]


@pytest.mark.parametrize(
    "flags", [{"avx2", "avx512_bf16", "avx512_fp16"}, {"amx_bf16", "amx_fp16"}, None]
)
def test_native_or_unknown_16_bit_products_on_cpu_do_not_warn(monkeypatch, flags):
    """A CPU with the hardware (or one whose flags are not known: not Linux on x86) is
    trusted; only a known lack warns."""
    import warnings

    from odeflow.ode import _precision

    monkeypatch.setattr(_precision, "_warned", set())
    monkeypatch.setattr(
        _precision, "_cpu_flags", lambda: None if flags is None else frozenset(flags)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for precision in ("bf16", "fp16"):
            odeflow.odeint(lambda t, y: -y, torch.ones(3), torch.tensor([0.0, 1.0]),
                           precision=precision)  # fmt: skip


def test_cpu_flags_of_this_machine():
    """On Linux x86 the flags come from /proc/cpuinfo (they include sse2, in every x86-64);
    elsewhere they are not known."""
    import platform

    from odeflow.ode._precision import _cpu_flags, _cpu_native

    flags = _cpu_flags()
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        assert "sse2" in flags
        assert _cpu_native(torch.bfloat16) == bool({"avx512_bf16", "amx_bf16"} & flags)
    else:
        assert flags is None and _cpu_native(torch.bfloat16) is None
