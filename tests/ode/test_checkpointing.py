"""DiscreteAdjoint(checkpoints=...): every option gives backprop's gradients (float64,
1e-10 relative), binomial checkpointing stores O(K) states and recomputes the optimal number
of steps (Griewank's closed form and a brute-force dynamic programme), and bad options get
clear errors."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import odeflow
from odeflow.ode import DiscreteAdjoint, MemoryBudget
from odeflow.ode._gradient._revolve import _Revolve, optimal_cost

from .test_adjoint import MLPField

D64 = torch.float64


class TupleField(nn.Module):
    """A two-leaf state of different shapes, ``(x (n, 3), s (n,))``, with explicit time."""

    def __init__(self):
        super().__init__()
        self.f = MLPField(3, 8)
        self.a = nn.Parameter(torch.tensor(0.7))

    def forward(self, t, y):
        x, s = y
        dx = self.f(t, x) * torch.cos(self.a * t)
        return dx, -(x * dx).sum(1) * torch.tanh(s)


def _grads(func, y0, gradient, method="rk4", spi=5):
    """Losses on every output time, gradients for y0, t and the parameters; the stats."""
    leaves = list(y0) if isinstance(y0, tuple) else [y0]
    t = torch.tensor([0.0, 0.4, 1.1], dtype=D64, requires_grad=True)
    sol = odeflow.solve(func, y0, t, method=method, gradient=gradient, steps_per_interval=spi)
    out = list(sol.ys) if isinstance(sol.ys, tuple) else [sol.ys]
    w = [torch.linspace(-1, 1, o.numel(), dtype=D64).reshape(o.shape) for o in out]
    loss = sum((wi * o).sum() + (o[-1] ** 2).sum() for wi, o in zip(w, out))
    gs = torch.autograd.grad(loss, [*leaves, t, *func.parameters()])
    return gs, sol.stats


def _rel(a, b) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


# (10 steps) every kind: all states, revolve with 1, 3 and more checkpoints than steps, every
# graph, and budgets that choose every graph, all states + the last graphs, and revolve (one
# checkpoint: the budget holds no step graph besides) + the last graph
CHECKPOINTS = ["steps", 1, 3, 50, "all", MemoryBudget("1GiB"), "budget-kept", "budget-revolve"]


def _budget(option, state_bytes: int, graph_bytes: int):
    if option == "budget-kept":  # every state and two graphs, not all graphs
        return MemoryBudget(10 * state_bytes + 2 * graph_bytes)
    if option == "budget-revolve":  # four states, less than a step graph
        return MemoryBudget(4 * state_bytes + 1)
    return option


@pytest.mark.parametrize("checkpoints", CHECKPOINTS, ids=str)
@pytest.mark.parametrize("method", ["rk4", "midpoint", "ssprk3"])
def test_gradients_equal_backprop(checkpoints, method):
    torch.manual_seed(0)
    f = MLPField().to(D64)
    y0 = torch.randn(5, 3, dtype=D64, requires_grad=True)
    ref, _ = _grads(f, y0, "backprop", method)
    # one state: 5 × 3 float64 = 120 bytes; a step's graph is far larger (> 2 KB)
    ck = _budget(checkpoints, 120, 2500 * len(odeflow.ode.get_tableau(method).b))
    for recompute in ("step", "stage"):
        gs, stats = _grads(f, y0, DiscreteAdjoint(recompute=recompute, checkpoints=ck), method)
        for a, b in zip(gs, ref, strict=True):
            assert _rel(a, b) < 1e-10, (checkpoints, method, recompute)
        if checkpoints in ("all", "budget-kept") or isinstance(checkpoints, MemoryBudget):
            assert stats.kept_graphs >= (10 if checkpoints != "budget-kept" else 1)
            assert checkpoints != "budget-kept" or stats.kept_graphs < 10
        if checkpoints in (1, 3):
            assert stats.stored_states <= checkpoints + 1 and stats.kept_graphs == 0
            assert stats.recomputed_steps == optimal_cost(10, checkpoints) - 9
        if checkpoints == "budget-revolve":  # K = 1 for the first 9 steps, the last one kept
            assert stats.stored_states <= 1 + 1 + 1 and stats.kept_graphs == 1
            assert stats.recomputed_steps == optimal_cost(9, 1) - 8


@pytest.mark.parametrize("checkpoints", [2, "all", "budget-kept", "budget-revolve"], ids=str)
def test_tuple_state_gradients_equal_backprop(checkpoints):
    torch.manual_seed(1)
    f = TupleField().to(D64)
    y0 = (torch.randn(4, 3, dtype=D64, requires_grad=True),
          torch.randn(4, dtype=D64, requires_grad=True))  # fmt: skip
    ref, _ = _grads(f, y0, "backprop", spi=4)
    ck = _budget(checkpoints, 4 * 4 * 8, 8000)
    for recompute in ("step", "stage"):
        gs, _ = _grads(f, y0, DiscreteAdjoint(recompute=recompute, checkpoints=ck), spi=4)
        for a, b in zip(gs, ref, strict=True):
            assert _rel(a, b) < 1e-10, (checkpoints, recompute)


def test_kept_graphs_are_not_rebuilt():
    """'all' rebuilds nothing in the backward pass; a budget with room for the states and
    some graphs rebuilds only the other steps (one evaluation of f per stage each)."""
    torch.manual_seed(2)
    f = MLPField().to(D64)
    y0 = torch.randn(5, 3, dtype=D64, requires_grad=True)
    _, st = _grads(f, y0, DiscreteAdjoint(checkpoints="all"))
    assert (st.kept_graphs, st.nfe, st.recomputed_steps) == (10, 0, 0)
    _, st = _grads(f, y0, DiscreteAdjoint(checkpoints=MemoryBudget(10 * 120 + 9000)))
    assert 1 <= st.kept_graphs < 10 and st.nfe == 4 * (10 - st.kept_graphs)
    _, st = _grads(f, y0, DiscreteAdjoint())
    assert (st.kept_graphs, st.nfe, st.stored_states) == (0, 40, 10)


@functools.cache
def _dp(n: int, k: int) -> int:
    """Fewest advances reversing n steps with k slots, by brute force over the first
    checkpoint's position j: advance j, reverse the tail with k - 1, the head with k."""
    if n == 1:
        return 0
    if k == 1:
        return n * (n - 1) // 2
    return min(j + _dp(n - j, k - 1) + _dp(j, k) for j in range(1, n))


def test_revolve_closed_form_and_dynamic_programme():
    # hand values of t(n, K) = r n - β(K + 1, r - 1): t(10, 3) = 2·10 - C(5, 4) = 15,
    # t(21, 2) = 5·21 - C(7, 3) = 70, t(n, 1) = n (n - 1) / 2, t(n, K >= n - 1) = n - 1
    assert optimal_cost(10, 3) == 15 and optimal_cost(21, 2) == 70
    assert optimal_cost(7, 1) == 21 and optimal_cost(7, 6) == optimal_cost(7, 60) == 6
    for n in range(1, 36):
        for k in range(1, 7):
            assert optimal_cost(n, k) == _dp(n, k), (n, k)


@pytest.mark.parametrize("n", [1, 2, 13, 35, 200])
@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_revolve_schedule_is_optimal_and_serves_every_state(n, k):
    """The schedule serves states n-1..0 (each read twice, as the stage VJP does), stores
    at most k checkpoints plus the working state, and makes t(n, k) advances in all."""
    rv = _Revolve(n, k, lambda y, s: (y[0] + 1, y[1] + [s]))
    for s in range(n):
        rv.push(s, (s, []))
    for s in range(n - 1, -1, -1):
        assert rv.state(s)[0] == s and rv.state(s)[0] == s
        assert len(rv.ckpts) <= k
    assert (n - 1) + rv.advances == optimal_cost(n, k)
    assert rv.peak <= k + 1


def test_long_solve_stores_o_k_states():
    """2000 steps with K = 20 hold at most 21 states (20 checkpoints and the working state)
    and recompute t(2000, 20) - 1999 steps; the gradient is the all-states gradient."""
    torch.manual_seed(3)
    f = nn.Linear(4, 4).to(D64)
    y0 = torch.randn(2, 4, dtype=D64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=D64)
    out = {}
    for ck in ("steps", 20):
        sol = odeflow.solve(lambda t, y: torch.tanh(f(y)), y0, t, method="euler",
                            steps_per_interval=2000, params=list(f.parameters()),
                            gradient=DiscreteAdjoint(checkpoints=ck))  # fmt: skip
        gs = torch.autograd.grad((sol.ys[-1] ** 2).sum(), [y0, *f.parameters()])
        out[ck] = gs, sol.stats
    (g_all, st_all), (g_k, st_k) = out["steps"], out[20]
    assert st_all.stored_states == 2000 and st_k.stored_states <= 21
    assert st_k.recomputed_steps == optimal_cost(2000, 20) - 1999
    for a, b in zip(g_k, g_all, strict=True):
        assert torch.equal(a, b)  # the same steps recomputed bitwise


def test_bf16_revolve_is_close_to_stored_steps():
    """Under bf16 (16-bit checkpoints, recomputation in float32) binomial checkpointing
    gives the all-states gradient up to bf16 round-off."""
    torch.manual_seed(4)
    f = MLPField(3, 16)
    y0 = torch.randn(8, 3, requires_grad=True)
    t = torch.tensor([0.0, 1.0])
    gs = []
    for ck in ("steps", 3, "all"):
        ys = odeflow.odeint(f, y0, t, precision="bf16", steps_per_interval=12,
                            gradient=DiscreteAdjoint(checkpoints=ck))  # fmt: skip
        gs.append(torch.autograd.grad((ys[-1] ** 2).sum(), [y0, *f.parameters()]))
    for g in gs[1:]:
        for a, b in zip(g, gs[0], strict=True):
            assert _rel(a, b) < 2e-2


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("count", [0, -2])
def test_checkpoint_count_below_one_is_refused(count):
    with pytest.raises(ValueError, match="at least 1"):
        DiscreteAdjoint(checkpoints=count)


@pytest.mark.parametrize("bad", ["lots", 2.5, True, None, [3]])
def test_unknown_checkpoints_are_refused(bad):
    with pytest.raises(ValueError, match="valid: 'steps'"):
        DiscreteAdjoint(checkpoints=bad)


@pytest.mark.parametrize("bad", [0, -1, float("inf"), "0MB", "12 parsecs"])
def test_bad_memory_budget_is_refused(bad):
    with pytest.raises(ValueError, match="memory budget"):
        MemoryBudget(bad)


def test_memory_budget_below_one_state_is_refused():
    y0 = torch.ones(10, requires_grad=True)  # one state: 40 bytes
    t = torch.tensor([0.0, 1.0])
    for budget in (MemoryBudget(39), "39B"):
        with pytest.raises(ValueError, match=r"below one step state \(40 bytes\)"):
            odeflow.odeint(lambda t, y: -y, y0, t, steps_per_interval=3,
                           gradient=DiscreteAdjoint(checkpoints=budget))  # fmt: skip
    assert MemoryBudget("1.5 KiB").nbytes == 1536 and MemoryBudget("2GB").nbytes == 2 * 10**9


def test_cuda_graphs_need_stored_steps():
    with pytest.raises(ValueError, match="checkpoints='steps'"):
        DiscreteAdjoint(cuda_graphs=True, checkpoints=4)


def test_second_backward_through_kept_graphs_is_refused():
    f = MLPField().to(D64)
    y0 = torch.randn(5, 3, dtype=D64, requires_grad=True)
    ys = odeflow.odeint(f, y0, torch.tensor([0.0, 1.0], dtype=D64), steps_per_interval=3,
                        gradient=DiscreteAdjoint(checkpoints="all"))  # fmt: skip
    loss = (ys**2).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="freed by an earlier backward"):
        loss.backward()


@pytest.mark.parametrize("checkpoints", [3, "all"], ids=str)
def test_fp16_overflow_retries_with_checkpoints(checkpoints):
    """fp16's scaled loop redoes failed steps: from recomputed checkpoints, or through the
    kept graphs (retained until the backward pass ends); the gradient is the scaled
    all-states one up to fp16 round-off."""
    if not odeflow.ode.get_precision("fp16", torch.device("cpu")).compute:
        pytest.skip("no fp16 autocast on this CPU build")
    torch.manual_seed(5)
    f = MLPField(3, 16)
    y0 = torch.randn(8, 3, requires_grad=True)
    t = torch.tensor([0.0, 1.0])
    gs = []
    for ck in ("steps", checkpoints):
        sc = odeflow.AdjointScaler(headroom=22, max_headroom=22)  # S*a ~ 2^22 overflows
        sol = odeflow.solve(f, y0, t, precision="fp16", steps_per_interval=12, scaler=sc,
                            gradient=DiscreteAdjoint(checkpoints=ck))  # fmt: skip
        gs.append(torch.autograd.grad((sol.ys[-1] ** 2).sum(), [y0, *f.parameters()]))
        assert sol.stats.retries >= 1
    for a, b in zip(gs[1], gs[0], strict=True):
        assert _rel(a, b) < 5e-3
