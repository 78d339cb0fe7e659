"""Kept step graphs differentiated in one autograd call (``DiscreteAdjoint(checkpoints=
"all")``, budgets that keep graphs): the gradients equal the stored-steps adjoint's
(float64, 1e-12 relative) for every input that needs one — the initial state or not, a
tuple state with one leaf differentiated, output times inside the kept steps, time
gradients — the kept graphs are the policy's, and the backward pass takes one autograd call
for all of them."""

from __future__ import annotations

import pytest
import torch

import odeflow
from odeflow.ode import DiscreteAdjoint, MemoryBudget

from .test_adjoint import MLPField
from .test_checkpointing import TupleField

D64 = torch.float64
T = [0.0, 0.3, 0.7, 1.2]  # three output times after t0: seeds inside the kept steps
SPI = 3  # 9 steps


def _solve_grads(func, y0, checkpoints, wrt_y0=True, wrt_t=True):
    """Gradients of a loss on every output time for the inputs that need one; the stats."""
    leaves = list(y0) if isinstance(y0, tuple) else [y0]
    t = torch.tensor(T, dtype=D64, requires_grad=wrt_t)
    sol = odeflow.solve(func, y0, t, method="rk4", steps_per_interval=SPI,
                        gradient=DiscreteAdjoint(checkpoints=checkpoints))  # fmt: skip
    out = list(sol.ys) if isinstance(sol.ys, tuple) else [sol.ys]
    w = [torch.linspace(-1, 1, o.numel(), dtype=D64).reshape(o.shape) for o in out]
    loss = sum((wi * o).sum() + (o[-1] ** 2).sum() for wi, o in zip(w, out))
    wrt = [*(y for y in leaves if y.requires_grad and wrt_y0), *([t] if wrt_t else [])]
    gs = torch.autograd.grad(loss, [*wrt, *func.parameters()])
    return gs, sol.stats


def _rel(a, b) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def _budgets(state_bytes: int, graph_bytes: int, n: int = 3 * SPI):
    """Every graph (unlimited), every state and some of the last graphs (about 2.5 step
    graphs' room; ``graph_bytes``: roughly one step graph's saved tensors), and K = 1
    revolve checkpoint with the last graph (a budget below a step graph)."""
    return {"all": "all", "unlimited": MemoryBudget(2**50),
            "kept": MemoryBudget(n * state_bytes + 5 * graph_bytes // 2),
            "revolve": MemoryBudget(2 * state_bytes + 1)}  # fmt: skip


def _check_policy(name: str, st, n: int = 3 * SPI) -> None:
    """The kept graphs and stored states are the policy's: all graphs; the states of the
    first steps and the graphs of the others; one checkpoint (+ the working state) and the
    last graph."""
    if name in ("all", "unlimited"):
        assert (st.kept_graphs, st.recomputed_steps, st.nfe) == (n, 0, 0)
    elif name == "kept":
        # (stored_states: the most records held at once, states and graphs together)
        assert 1 <= st.kept_graphs < n and st.stored_states == n
        assert st.recomputed_steps == 0 and st.nfe == 4 * (n - st.kept_graphs)
    else:
        assert st.kept_graphs == 1 and st.stored_states <= 1 + 1 + 1
        assert st.recomputed_steps > 0


@pytest.mark.parametrize("wrt_y0", [True, False], ids=["y0", "params-only"])
def test_kept_chain_equals_stored_steps(wrt_y0):
    torch.manual_seed(0)
    f = MLPField().to(D64)
    y0 = torch.randn(5, 3, dtype=D64, requires_grad=wrt_y0)
    ref, _ = _solve_grads(f, y0, "steps")
    for name, ck in _budgets(5 * 3 * 8, 2800).items():  # (a step graph: some 2.8 kB)
        gs, st = _solve_grads(f, y0, ck)
        assert len(gs) == len(ref)
        for a, b in zip(gs, ref, strict=True):
            assert _rel(a, b) < 1e-12, name
        _check_policy(name, st)


def test_tuple_state_one_leaf_differentiated():
    """Only the first leaf of the initial state needs a gradient: the first kept step
    differentiates for it alone; its gradient and the others equal the stored steps'."""
    torch.manual_seed(1)
    f = TupleField().to(D64)
    y0 = (torch.randn(4, 3, dtype=D64, requires_grad=True), torch.randn(4, dtype=D64))
    ref, _ = _solve_grads(f, y0, "steps")
    for name, ck in _budgets(4 * 4 * 8, 3800).items():
        gs, st = _solve_grads(f, y0, ck)
        for a, b in zip(gs, ref, strict=True):
            assert _rel(a, b) < 1e-12, name
        _check_policy(name, st)


def test_kept_steps_take_one_autograd_call(monkeypatch):
    """'all': the backward pass differentiates all kept graphs in one autograd call; a
    budget keeping 2 graphs: one call for them, one per rebuilt step."""
    torch.manual_seed(2)
    f = MLPField().to(D64)
    y0 = torch.randn(5, 3, dtype=D64, requires_grad=True)
    calls = []
    grad = torch.autograd.grad

    def counting(*args, **kwargs):
        calls.append(1)
        return grad(*args, **kwargs)

    for name in ("all", "kept"):
        t = torch.tensor(T, dtype=D64)
        ck = _budgets(120, 2800)[name]
        sol = odeflow.solve(
            f, y0, t, steps_per_interval=SPI, gradient=DiscreteAdjoint(checkpoints=ck)
        )
        loss = (sol.ys**2).sum()
        monkeypatch.setattr(torch.autograd, "grad", counting)
        calls.clear()
        loss.backward()
        monkeypatch.setattr(torch.autograd, "grad", grad)
        kept = sol.stats.kept_graphs
        assert kept == 9 if name == "all" else 1 <= kept < 9
        assert len(calls) == 1 + (9 - kept), name  # the kept steps, then each rebuilt one
