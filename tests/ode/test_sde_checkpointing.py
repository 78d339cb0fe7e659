"""sdeint(checkpoints=...): the ODE engine's record policies for the SDE adjoint. Every option
gives backprop's gradient (float64, 1e-10), binomial checkpointing holds at most K + 1 states
whatever the number of steps (its own count, and the C allocator's bytes), recomputes the
optimal number of steps with the increments regenerated, and bad options get clear errors."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import math

import pytest
import torch

from odeflow import BrownianPath, sdeint, sdesolve
from odeflow.ode import MemoryBudget
from odeflow.ode._gradient._revolve import optimal_cost

from .test_sde_adjoint import NeuralSDE, _setup

F64 = torch.float64

# (11 steps) all states, revolve with 1, 3 and more checkpoints than steps, every graph,
# and budgets that choose every graph, all states + the last graphs, and revolve
CHECKPOINTS = ["steps", 1, 3, 50, "all", MemoryBudget("1GiB"), "budget-kept", "budget-revolve"]
STATE = 4 * 3 * 8  # bytes of one (BATCH, D) float64 state


def _budget(option):
    if option == "budget-kept":  # every state and a few graphs (a step graph: > 1 KB)
        return MemoryBudget(11 * STATE + 4000)
    if option == "budget-revolve":  # three states, less than a step graph: K = 1
        return MemoryBudget(3 * STATE + 1)
    return option


@pytest.mark.parametrize("checkpoints", CHECKPOINTS, ids=str)
@pytest.mark.parametrize(
    ("method", "noise", "sde_type"),
    [
        ("euler", "general", "ito"),
        ("milstein", "diagonal", "ito"),
        ("heun", "scalar", "stratonovich"),
    ],
)
def test_every_option_equals_backprop(checkpoints, method, noise, sde_type):
    sde, ts, bm, y0, w = _setup(noise, seed=7)
    grads, sol = [], None
    for ck in ("backprop", _budget(checkpoints)):
        y = y0.clone().requires_grad_(True)
        kw = {"gradient": "backprop"} if ck == "backprop" else {"checkpoints": ck}
        sol = sdesolve(sde, y, ts, bm=bm, dt=0.1, method=method, sde_type=sde_type, **kw)
        used = [p for n, p in sde.named_parameters() if noise == "general" or n != "mix"]
        grads.append(torch.autograd.grad((sol.ys * w).sum(), [y, *used]))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    stats, n = sol.stats, sol.steps
    assert n == 11  # dt = 0.1 and the output time 0.55
    if checkpoints in (1, 3):
        assert stats.stored_states <= checkpoints + 1 and stats.kept_graphs == 0
        assert stats.recomputed_steps == optimal_cost(n, checkpoints) - (n - 1)
    if checkpoints == "all" or isinstance(checkpoints, MemoryBudget):  # nothing rebuilt
        assert (stats.kept_graphs, stats.nfe, stats.recomputed_steps) == (n, 0, 0)
    if checkpoints == "budget-kept":
        assert 1 <= stats.kept_graphs < n and stats.recomputed_steps == 0
    if checkpoints == "budget-revolve":  # K = 1 for the first n - 1 steps, the last graph kept
        assert stats.kept_graphs == 1 and stats.stored_states <= 1 + 1 + 1
        assert stats.recomputed_steps == optimal_cost(n - 1, 1) - (n - 2)


def _sde_2x2():
    a = torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)
    f = lambda t, y: torch.tanh(y) * a - 0.5 * y  # noqa: E731
    g = lambda t, y: 0.3 * torch.sin(y + a)  # noqa: E731
    return (f, g), a


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_fixed_k_stores_at_most_k_plus_one_states(n):
    """K = 8 checkpoints: at most 9 states held (checkpoints and the working state) for 10,
    100 and 1000 steps; t(n, 8) - (n - 1) steps recomputed; the gradient is bitwise that of
    storing every state (the same steps, the same regenerated increments)."""
    sde, a = _sde_2x2()
    y0 = torch.tensor([[0.4, -0.1], [1.0, 0.2]], dtype=F64, requires_grad=True)
    bm = BrownianPath(0.0, 1.0, (2, 2), seed=3, dtype=F64, dt=1 / n)
    out = {}
    for ck in ("steps", 8):
        sol = sdesolve(sde, y0, [0.0, 0.5, 1.0], bm=bm, dt=1 / n, params=[a], checkpoints=ck)
        out[ck] = torch.autograd.grad((sol.ys[1:] ** 2).sum(), [y0, a]), sol.stats
    (g_all, st_all), (g_k, st_k) = out["steps"], out[8]
    assert st_all.stored_states == n and st_all.recomputed_steps == 0
    assert st_k.stored_states <= 8 + 1 and st_k.kept_graphs == 0
    assert st_k.recomputed_steps == max(0, optimal_cost(n, 8) - (n - 1))
    for x, y in zip(g_k, g_all, strict=True):
        assert torch.equal(x, y)


@functools.cache
def _mallinfo2():
    """glibc's mallinfo2 (with its result structure), or None elsewhere."""
    name = ctypes.util.find_library("c")
    lib = ctypes.CDLL(name) if name else None
    if lib is None or not hasattr(lib, "mallinfo2"):
        return None

    class Info(ctypes.Structure):
        _fields_ = [
            (k, ctypes.c_size_t)
            for k in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                      "uordblks", "fordblks", "keepcost")
        ]  # fmt: skip

    lib.mallinfo2.restype = Info
    return lib.mallinfo2


def _allocated() -> int | None:
    """Bytes the C allocator has handed out (glibc's mallinfo2), or None elsewhere."""
    fn = _mallinfo2()
    if fn is None:
        return None
    info = fn()
    return info.uordblks + info.hblkhd


def _peak_growth(n: int, checkpoints, k_ref: int = 8) -> float:
    """Peak growth of the C allocator's bytes in use over a forward+backward pass, in states,
    sampled at every drift evaluation (forward, recompute and rebuild)."""
    state = 64 * 64 * 8  # 32 KiB: the time grid's 16 bytes per step are small beside it
    y0 = torch.randn(64, 64, dtype=F64, generator=torch.Generator().manual_seed(0))
    y0.requires_grad_(True)
    peak = [0]

    def f(t, y):
        peak[0] = max(peak[0], _allocated())
        return -0.5 * y + 0.1 * torch.tanh(y)

    bm = BrownianPath(0.0, 1.0, y0.shape, seed=1, dtype=F64, dt=1 / n)
    gc.collect()
    peak[0] = base = _allocated()
    ys = sdeint((f, lambda t, y: 0.2 * torch.cos(y)), y0, [0.0, 1.0], bm=bm, dt=1 / n,
                checkpoints=checkpoints)  # fmt: skip
    torch.autograd.grad(ys[-1].sum(), y0)
    del ys
    return (peak[0] - base) / state


def _check_flat(n_small: int, n_large: int, k: int, saturated: bool) -> None:
    if _allocated() is None:
        pytest.skip("needs glibc's mallinfo2 to read the C allocator's bytes")
    assert _peak_growth(n_small, "steps") >= n_small - 5  # (the instrument sees the states)
    small, large = _peak_growth(n_small, k), _peak_growth(n_large, k)
    # K + 1 states, the Brownian tree's branch (log2(n) + 2 values), the output and its
    # gradient (4 states) and one step's temporaries (about 10)
    assert large <= (k + 1) + (math.log2(n_large) + 2) + 4 + 12, large
    # from n_small to n_large: the branch's extra levels (and, unless n_small already uses
    # all K checkpoints, the slots it left free)
    more = math.log2(n_large / n_small) + 2 + (0 if saturated else k + 1)
    assert large <= small + more, (small, large)


def test_peak_memory_does_not_grow_with_steps():
    """The C allocator's bytes in use over a forward+backward pass with K = 6 and 96 steps:
    the K + 1 states, the Brownian branch and one step's temporaries, against one state per
    step when every state is stored."""
    _check_flat(16, 96, 6, saturated=False)


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_steps_long():
    """With K = 4 the growth is the same for 100 and 1000 steps, up to the Brownian
    branch's 3.3 extra levels."""
    _check_flat(100, 1000, 4, saturated=True)


def test_brownian_sweeps_draw_each_node_once():
    """Queries along a dt grid of 64 steps, forward then backward, draw each of the 63
    internal nodes of the tree once per sweep (the midpoints are kept on the branch)."""
    bm = BrownianPath(0.0, 1.0, (3,), seed=0, dt=1 / 64)
    start = bm.draws
    for k in range(64):
        bm(k / 64, (k + 1) / 64)
    assert bm.draws - start == 63
    start = bm.draws
    for k in reversed(range(64)):
        bm(k / 64, (k + 1) / 64)
    assert bm.draws - start <= 63


# --------------------------------------------------------------------------- bad input
def test_bad_checkpoints_are_refused():
    sde, ts, bm, y0, _ = _setup("diagonal")
    y = y0.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="for sdeint; valid: 'steps'"):
        sdeint(sde, y, ts, bm=bm, dt=0.1, checkpoints="lots")
    with pytest.raises(ValueError, match="at least 1"):
        sdeint(sde, y, ts, bm=bm, dt=0.1, checkpoints=0)
    with pytest.raises(ValueError, match="give one"):
        sdeint(sde, y, ts, bm=bm, dt=0.1, checkpoints=4, checkpoint_every=3)
    with pytest.raises(ValueError, match=r"below one step state \(96 bytes\)"):
        sdeint(sde, y, ts, bm=bm, dt=0.1, checkpoints=MemoryBudget(95))


def test_kept_graphs_are_freed_by_the_backward_pass():
    """'all' keeps the step graphs until the backward pass consumes them: a second backward
    through the same output is refused by autograd, as for backprop."""
    sde = NeuralSDE("diagonal")
    _, ts, bm, y0, _ = _setup("diagonal")
    y = y0.clone().requires_grad_(True)
    ys = sdeint(sde, y, ts, bm=bm, dt=0.1, checkpoints="all")
    loss = ys.sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="freed by an earlier backward"):
        loss.backward()
