"""OT-Flow model: exact Φ derivatives, ODE consistency, round trips, I/O and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call, grad, hessian, jacrev, vmap

from odeflow import DiscreteAdjoint
from odeflow.flows import OTFlow, TrainingDiverged, fit, get_preset, load_checkpoint
from odeflow.flows._otflow import _Dynamics

_TORCH = tuple(int(v) for v in torch.__version__.split(".")[:2])


def _phi_scalar(net):
    return lambda s: net(s[None]).reshape(())


@pytest.mark.parametrize("d,m,depth", [(2, 8, 2), (5, 16, 3)])
def test_potential_gradient_laplacian_match_torch_func(d, m, depth):
    torch.manual_seed(0)
    flow = OTFlow(d, width=m, depth=depth).double()
    with torch.no_grad():  # move away from the (symmetric) initialisation
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    s = torch.randn(7, d + 1, dtype=torch.float64)
    f = _phi_scalar(flow.potential)
    g_ref = vmap(jacrev(f))(s)
    H = vmap(hessian(f))(s)
    lap_ref = torch.diagonal(H[:, :d, :d], dim1=1, dim2=2).sum(1)  # time coordinate excluded
    dyn = _Dynamics(flow.potential, d, 1.0, full=True)
    from odeflow.derivatives import compute

    out = compute(flow.potential, s, want="laplacian", exclude_last=1)
    assert torch.allclose(out.gradient, g_ref, rtol=1e-10, atol=1e-10)
    assert torch.allclose(out.laplacian, lap_ref, rtol=1e-10, atol=1e-10)
    # the full trace would differ by ∂²Φ/∂t², which is not zero here
    assert not torch.allclose(lap_ref, torch.diagonal(H, dim1=1, dim2=2).sum(1))
    # the ODE right-hand side: ż = −∇xΦ, ℓ̇ = −ΔxΦ, L̇ = ½‖∇xΦ‖², Ṙ = |−∂tΦ + ½‖∇xΦ‖²|
    t = torch.tensor(0.3, dtype=torch.float64)
    y = torch.cat([s[:, :d], torch.zeros(7, 3, dtype=torch.float64)], 1)
    st = torch.cat([s[:, :d], t.expand(7, 1)], 1)
    g = vmap(jacrev(f))(st)
    Ht = vmap(hessian(f))(st)
    rhs = dyn(t, y)
    sq = (g[:, :d] ** 2).sum(1)
    assert torch.allclose(rhs[:, :d], -g[:, :d], atol=1e-12)
    assert torch.allclose(rhs[:, d], -torch.diagonal(Ht[:, :d, :d], dim1=1, dim2=2).sum(1))
    assert torch.allclose(rhs[:, d + 1], 0.5 * sq)
    assert torch.allclose(rhs[:, d + 2], (-g[:, d] + 0.5 * sq).abs())


def test_parameter_count_matches_paper_formula():
    # r(d+1) + (d+2) + m + (d+2)m + (M−1)(m² + m); MINIBOONE: 78,053 (checkpoint confirmed)
    p = get_preset("miniboone")
    flow = OTFlow(p.dim, width=p.width, depth=p.depth)
    assert sum(q.numel() for q in flow.parameters()) == 78_053


def test_log_prob_is_change_of_variables_of_transform():
    """ℓ(1) integrates the exact trace: log p(x) = log N(T(x)) + log|det ∇T(x)| up to O(h⁴)."""
    torch.manual_seed(1)
    flow = OTFlow(3, width=8, nt_eval=32).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(4, 3, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    z = flow.transform(xr)  # samples are independent: row k of every ∇T(x_i) in one pass
    J = torch.stack(
        [torch.autograd.grad(z[:, k].sum(), xr, retain_graph=True)[0] for k in range(3)], 1
    )
    z = z.detach()
    ref = -0.5 * (z**2).sum(1) - 1.5 * math.log(2 * math.pi) + torch.linalg.slogdet(J)[1]
    lp = flow.log_prob(x)
    assert torch.allclose(lp, ref, atol=1e-6)
    # and the loss's NLL term is the mean of −log_prob at the same step count
    out = flow.loss(x, nt=32)
    assert torch.allclose(out.nll, -lp.mean(), atol=1e-12)


def test_inverse_round_trip_and_trajectory():
    torch.manual_seed(2)
    flow = OTFlow(2, width=16, nt_eval=16).double()
    x = torch.randn(50, 2, dtype=torch.float64)
    z = flow.transform(x)
    assert float((flow.inverse(z) - x).abs().max().detach()) < 1e-4
    traj = flow.transform(x, return_trajectory=True)
    assert traj.shape == (17, 50, 2)
    assert torch.equal(traj[0], x) and torch.allclose(traj[-1], z)
    back = flow.inverse(z, return_trajectory=True)
    assert torch.allclose(back[-1], flow.inverse(z))
    # batch shapes follow torch.distributions: (..., d) -> (...)
    assert flow.log_prob(x.reshape(5, 10, 2)).shape == (5, 10)


def test_sample_shape_and_generator():
    flow = OTFlow(2, width=8, nt_eval=4)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = flow.sample((3, 4), generator=g1), flow.sample(12, generator=g2)
    assert a.shape == (3, 4, 2) and b.shape == (12, 2)
    assert torch.allclose(a.reshape(12, 2), b)


def test_short_fit_lowers_validation_nll(tmp_path):
    torch.manual_seed(0)
    mu = torch.tensor([1.0, -2.0], dtype=torch.float64)
    L = torch.tensor([[1.5, 0.0], [0.8, 0.5]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    data = mu + torch.randn(4000, 2, generator=g, dtype=torch.float64) @ L.T
    val = mu + torch.randn(1000, 2, generator=g, dtype=torch.float64) @ L.T
    flow = OTFlow(2, width=8, alpha=(1.0, 10.0, 1.0), nt=4, nt_eval=8).double()
    from odeflow.flows import evaluate_nll

    before = evaluate_nll(flow, val)
    seen = []
    res = fit(
        flow,
        data,
        val_data=val,
        iters=40,
        batch=256,
        lr=0.05,
        val_every=10,
        verbose=False,
        callback=lambda it, info: seen.append(it) and False,
    )
    assert seen == list(range(1, 41)) and res.iterations == 40
    assert res.best_val_nll < before - 0.3
    assert abs(evaluate_nll(flow, val) - res.best_val_nll) < 1e-9  # best weights restored
    # checkpoint round trip (config + weights), and refusal of another dimension
    path = tmp_path / "flow.pt"
    flow.save(path, preset="none")
    back = load_checkpoint(path, dim=2)
    assert back.config() == flow.config() and back.checkpoint_extra == {"preset": "none"}
    assert torch.allclose(back.log_prob(val[:20]), flow.log_prob(val[:20]))
    with pytest.raises(ValueError, match="dim=2, but dim=3 was expected"):
        load_checkpoint(path, dim=3)


def test_bad_input_errors(tmp_path):
    flow = OTFlow(2, width=4, nt=2)
    with pytest.raises(ValueError, match="NaN or inf"):
        flow.log_prob(torch.tensor([[0.0, float("inf")]]))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2\)"):
        flow.log_prob(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="NaN or inf"):
        fit(flow, torch.tensor([[0.0, float("nan")]] * 4), iters=1, verbose=False)
    with pytest.raises(ValueError, match="3 columns but the flow has dim=2"):
        fit(flow, torch.zeros(8, 3), iters=1, verbose=False)
    with pytest.raises(ValueError, match="empty"):
        fit(flow, torch.zeros(0, 2), iters=1, verbose=False)
    with pytest.raises(ValueError, match="valid presets are: 8gaussians"):
        fit(flow, torch.zeros(8, 2), preset="nope", verbose=False)
    with pytest.raises(ValueError, match="preset 'miniboone' is for dim=43"):
        fit(flow, torch.zeros(8, 2), preset="miniboone", verbose=False)
    with pytest.raises(ValueError, match="precision must be one of"):
        OTFlow(2, precision="fp8")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an odeflow OT-Flow checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


@pytest.mark.parametrize("nt", [0, -1, 2.5, True, "4"])
def test_step_counts_are_checked_and_named(nt):
    flow = OTFlow(2, width=4, nt=2)
    x = torch.randn(3, 2)
    calls = [lambda: flow.log_prob(x, nt=nt), lambda: flow.loss(x, nt=nt),
             lambda: flow.transform(x, nt=nt), lambda: flow.inverse(x, nt=nt),
             lambda: flow.sample(3, nt=nt), lambda: flow.sample_and_log_prob(3, nt=nt),
             lambda: flow(x, nt)]  # fmt: skip
    for call in calls:
        with pytest.raises(ValueError, match=r"nt must be an integer >= 1 \(the number of RK4"):
            call()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dim=2.7), "dim must be an integer >= 1"),
        (dict(dim=0), "dim must be an integer >= 1"),
        (dict(dim=2, width=8.5), "width must be an integer >= 1"),
        (dict(dim=2, depth=1), "depth must be an integer >= 2"),
        (dict(dim=2, rank=0), "rank must be an integer >= 1"),
        (dict(dim=2, nt=2.5), "nt must be an integer >= 1"),
        (dict(dim=2, nt_eval=True), "nt_eval must be an integer >= 1"),
    ],
)
def test_constructor_refuses_non_integer_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OTFlow(**kwargs)


def test_step_counts_accept_integer_types():
    import numpy as np

    flow = OTFlow(2, width=4, nt=2).double()
    x = torch.randn(3, 2, dtype=torch.float64)
    ref = flow.log_prob(x, nt=3)
    assert torch.equal(flow.log_prob(x, nt=np.int64(3)), ref)
    assert torch.equal(flow.log_prob(x, nt=torch.tensor(3)), ref)


def test_nonfinite_loss_stops_with_clear_message():
    flow = OTFlow(2, width=4, nt=2).double()
    huge = torch.full((16, 2), 1e200, dtype=torch.float64)
    with pytest.raises(TrainingDiverged, match="stopped at iteration 1: the loss is"):
        fit(flow, huge, iters=3, batch=8, verbose=False)


@pytest.mark.slow
def test_compiled_field_equals_eager():
    """OTFlow(compile=True): loss, weight gradients and log-density equal eager to round-off;
    the compile option is an execution choice, not part of the config."""
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = {}
    for comp in (False, True):
        torch.manual_seed(0)
        f = OTFlow(3, width=8, nt=3, compile=comp).double()
        loss = f.loss(x).total
        g = torch.autograd.grad(loss, list(f.potential.parameters()), allow_unused=True)
        out[comp] = (loss.detach(), g, f.log_prob(x).detach())
        assert "compile" not in f.config()
    (l0, g0, p0), (l1, g1, p1) = out[False], out[True]
    torch.testing.assert_close(l1, l0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p1, p0, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g0):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_right_hand_side_makes_no_host_sync():
    """A stage evaluation of OT-Flow's dynamics (and its backward) reads nothing back to the
    host: no per-stage synchronisation on a GPU, capturable as a CUDA graph."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from odeflow.flows._otflow import _Dynamics

    class Syncs(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket is torch.ops.aten._local_scalar_dense:  # .item(), bool(t)
                Syncs.n += 1
            return func(*args, **(kwargs or {}))

    flow = OTFlow(5, width=16)
    y = torch.randn(8, 5 + 3, requires_grad=True)
    with Syncs():
        out = _Dynamics(flow.potential, 5, flow.alpha[0], True)(torch.tensor(0.5), y)
        torch.autograd.grad(out.square().sum(), [y, *flow.parameters()], allow_unused=True)
    assert Syncs.n == 0
    # a whole training step: the input checks only, however many RK4 steps
    counts = []
    for nt, gradient in ((2, "backprop"), (6, "backprop"), (2, "adjoint"), (6, "adjoint")):
        Syncs.n = 0
        with Syncs():
            OTFlow(5, width=16, nt=nt, gradient=gradient).loss(torch.randn(8, 5)).total.backward()
        counts.append(Syncs.n)
    assert len(set(counts)) == 1 and counts[0] <= 2


#: the discrete adjoint whose captured-step path also runs off CUDA (eagerly, static buffers);
#: ``cuda_graphs=True`` of the flow turns its captures on
_STATIC = DiscreteAdjoint(_static_buffers=True)


@pytest.mark.slow
def test_compiled_field_inside_captured_adjoint():
    """compile=True with cuda_graphs=True: the compiled field, evaluated with the parameters
    rebound to aliases (the captured backward's functional_call), gives the eager gradients."""
    from odeflow.ode import _graphs

    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.manual_seed(0)
    eager = OTFlow(3, width=8, nt=3, gradient="adjoint").double()
    both = OTFlow(3, width=8, nt=3, gradient=_STATIC, compile=True, cuda_graphs=True).double()
    both.load_state_dict(eager.state_dict())
    (le, ge), (lb, gb) = _loss_grads(eager, x), _loss_grads(both, x)
    torch.testing.assert_close(lb, le, rtol=1e-12, atol=1e-12)
    for a, b in zip(gb, ge):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    _graphs.clear_cuda_graphs()


def test_copies_use_their_own_potential():
    """A deep copy (or pickle) of a used flow rebuilds its cached right-hand side around its own
    weights: changing the copy leaves the original's log-density as it was."""
    import copy

    torch.manual_seed(0)
    f = OTFlow(2, width=4, nt=2).double()
    x = torch.randn(6, 2, dtype=torch.float64)
    before = f.log_prob(x)
    g = copy.deepcopy(f)
    torch.testing.assert_close(g.log_prob(x), before, rtol=0, atol=0)
    with torch.no_grad():
        for p in g.potential.parameters():
            p.add_(0.1)
    assert not torch.allclose(g.log_prob(x), before)
    torch.testing.assert_close(f.log_prob(x), before, rtol=0, atol=0)


def test_compile_option_keeps_module_compile_method():
    f = OTFlow(2, width=4, nt=2, compile=True)
    assert f.compile_field and callable(f.compile)  # nn.Module.compile() is not shadowed


def _loss_grads(flow, x):
    """Loss and parameter gradients; the potential's constant c does not move the flow (only
    ∇Φ and ΔΦ do), so its gradient is None with every gradient mode."""
    flow.zero_grad(set_to_none=True)
    parts = flow.loss(x)
    named = list(flow.named_parameters())
    grads = list(torch.autograd.grad(parts.total, [p for _, p in named], allow_unused=True))
    if flow.compile_field and _TORCH < (2, 5):  # AOTAutograd then gives an unused input's
        c = [n for n, _ in named].index("potential.blocks.1.c")  # gradient as exact zeros
        assert grads[c] is None or torch.count_nonzero(grads[c]) == 0
        grads[c] = None
    assert [n for (n, _), g in zip(named, grads) if g is None] == ["potential.blocks.1.c"]
    return parts.total.detach(), [g for g in grads if g is not None]


def test_cuda_graphs_option():
    with pytest.raises(ValueError, match="gradient='adjoint'"):
        OTFlow(2, cuda_graphs=True)
    from odeflow.ode import _graphs

    # on CPU the static-buffer path of the captures runs eagerly: same numbers, bitwise
    torch.manual_seed(0)
    eager = OTFlow(3, width=8, nt=3, gradient="adjoint").double()
    graphed = OTFlow(3, width=8, nt=3, gradient=_STATIC, cuda_graphs=True).double()
    graphed.load_state_dict(eager.state_dict())
    x = torch.randn(16, 3, dtype=torch.float64)
    (le, ge), (lg, gg) = _loss_grads(eager, x), _loss_grads(graphed, x)
    assert torch.equal(le, lg) and all(torch.equal(a, b) for a, b in zip(ge, gg))
    # the flow's cuda_graphs=True turned the given adjoint's captures on: the steps went
    # through the capture cache
    assert graphed.gradient.cuda_graphs and len(_graphs._CACHE) == 1
    with torch.no_grad():
        assert torch.equal(eager.log_prob(x), graphed.log_prob(x))
    _graphs.clear_cuda_graphs()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graphs_training_step_equals_eager_adjoint(cuda, precision):
    torch.manual_seed(0)
    eager = OTFlow(6, width=32, nt=4, gradient="adjoint", precision=precision).to(cuda)
    graphed = OTFlow(6, width=32, nt=4, gradient="adjoint", precision=precision,
                     cuda_graphs=True).to(cuda)  # fmt: skip
    graphed.load_state_dict(eager.state_dict())
    opts = [torch.optim.Adam(f.parameters(), lr=1e-2) for f in (eager, graphed)]
    for _ in range(3):  # capture, then replays across Adam's in-place updates
        x = torch.randn(128, 6, device=cuda)
        (le, ge), (lg, gg) = _loss_grads(eager, x), _loss_grads(graphed, x)
        torch.testing.assert_close(lg, le, rtol=1e-5, atol=1e-6)
        for a, b in zip(ge, gg):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
        for f, g, opt in ((eager, ge, opts[0]), (graphed, gg, opts[1])):
            for p, gp in zip(f.parameters(), g):
                p.grad = gp
            opt.step()
    from odeflow.ode import clear_cuda_graphs

    clear_cuda_graphs()


@pytest.mark.parametrize("alpha", ["123", b"123", (float("nan"), 1, 1), (1, float("inf"), 1),
                                   (1, 2), (1, 2, 3, 4), (0, 1, 1), (1, -1, 1), {1, 2, 3}, 5,
                                   ("a", 1, 1), None])  # fmt: skip
def test_alpha_is_three_finite_non_negative_numbers(alpha):
    match = "alpha must be a sequence of three finite numbers"
    with pytest.raises(ValueError, match=match):
        OTFlow(2, width=4, alpha=alpha)
    flow = OTFlow(2, width=4, alpha=(1, 30, 1))
    with pytest.raises(ValueError, match=match):
        flow.alpha = alpha
    assert flow.alpha == (1.0, 30.0, 1.0)  # unchanged by the refused assignment


def test_alpha_accepts_sequences_and_arrays_and_drives_the_loss():
    import numpy as np

    assert OTFlow(2, width=4, alpha=np.array([1, 30, 1])).alpha == (1.0, 30.0, 1.0)
    assert OTFlow(2, width=4, alpha=torch.tensor([2.0, 0.0, 0.5])).config()["alpha"] == [
        2.0, 0.0, 0.5]  # fmt: skip
    flow = OTFlow(2, width=4, nt=2).double()
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    flow.alpha = [2, 3, 4]
    assert flow.alpha == (2.0, 3.0, 4.0) and flow.config()["alpha"] == [2.0, 3.0, 4.0]
    out = flow.loss(x)
    assert torch.allclose(out.total, 2 * out.transport + 3 * out.nll + 4 * out.hjb)
    import copy
    import pickle

    assert copy.deepcopy(flow).alpha == pickle.loads(pickle.dumps(flow)).alpha == (2.0, 3.0, 4.0)


def test_functional_call_and_torch_func_grad():
    """flow(x) is log_prob; torch.func.grad through functional_call (the discrete adjoint
    under a transform) gives the eager backward's parameter gradients, bitwise."""
    torch.manual_seed(0)
    f = OTFlow(2, width=8, nt=3).double()
    x = torch.randn(16, 2, dtype=torch.float64)
    assert torch.equal(f(x), f.log_prob(x))
    P = {n: p.detach() for n, p in f.named_parameters()}
    g = grad(lambda P: functional_call(f, P, (x,)).mean())(P)
    f.zero_grad()
    f.log_prob(x).mean().backward()
    for n, p in f.named_parameters():
        assert torch.equal(g[n], torch.zeros_like(g[n]) if p.grad is None else p.grad), n


def test_methods_refuse_complex_input():
    """A complex tensor is refused, as check_data refuses it (its imaginary part used to be
    dropped silently by the cast to the flow's dtype, returning the density of Re x)."""
    flow = OTFlow(2, width=4, nt=2).double()
    x = torch.ones(3, 2, dtype=torch.complex128)
    for method in (flow.log_prob, flow.transform, flow.inverse):
        with pytest.raises(ValueError, match=r"x is complex|z is complex"):
            method(x)


def test_load_of_a_damaged_checkpoint_is_a_value_error(tmp_path):
    """A checkpoint whose state_dict or dtype does not fit its config is refused with the
    documented ValueError naming the file (it raised RuntimeError / AttributeError), and a
    non-integer expected dim is refused (it was truncated by int())."""
    flow = OTFlow(3, width=4, nt=2).double()
    flow.save(tmp_path / "c.pt")
    ck = torch.load(tmp_path / "c.pt", weights_only=True)
    other = OTFlow(4, width=4, nt=2).double()
    first = next(iter(ck["state_dict"]))
    damaged = {
        "shapes.pt": {**ck, "state_dict": other.state_dict()},
        "missing.pt": {**ck, "state_dict": {k: v for k, v in ck["state_dict"].items()
                                            if k != first}},
        "dtype.pt": {**ck, "dtype": "nonsense"},
        "size.pt": {**ck, "dtype": "Size"},
        "int.pt": {**ck, "dtype": "int64"},
    }  # fmt: skip
    for name, payload in damaged.items():
        torch.save(payload, tmp_path / name)
        with pytest.raises(ValueError, match=rf"checkpoint .*{name} .*(damaged|invalid dtype)"):
            OTFlow.load(tmp_path / name)
    for bad in ("3", 3.5, 0):
        with pytest.raises(ValueError, match="dim must be an integer >= 1"):
            OTFlow.load(tmp_path / "c.pt", dim=bad)
    assert OTFlow.load(tmp_path / "c.pt", dim=3).config() == flow.config()
