"""sdeint's discrete adjoint: = backprop through the scheme, Taylor tests, stored memory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from odeflow import BrownianPath, sdeint
from odeflow.testing import taylor_test

F64 = torch.float64
D, M, BATCH = 3, 2, 4


class NeuralSDE(nn.Module):
    """Drift and diffusion of the noise type; a diagonal g_i depends on y_i only (Milstein)."""

    def __init__(self, noise_type: str):
        super().__init__()
        self.noise_type = noise_type
        self.drift = nn.Sequential(nn.Linear(D + 1, 8), nn.Tanh(), nn.Linear(8, D)).double()
        self.a = nn.Parameter(torch.linspace(0.2, 0.4, D, dtype=F64))
        self.b = nn.Parameter(torch.linspace(-0.3, 0.3, D, dtype=F64))
        self.mix = nn.Parameter(0.3 * torch.randn(D, M, dtype=F64))

    def f(self, t, y):
        return self.drift(torch.cat([y, t.expand(*y.shape[:-1], 1)], -1))

    def g(self, t, y):
        diag = self.a * torch.sin(y + self.b) + 0.1 * t
        if self.noise_type == "diagonal":
            return diag
        if self.noise_type == "scalar":
            return (diag * torch.tanh(y.sum(-1, keepdim=True)))[..., None]
        return torch.tanh(y[..., None] * self.mix) + 0.1 * diag[..., None]


CASES = [
    (method, noise, sde_type)
    for method, sde_types in [
        ("euler", ["ito"]),
        ("milstein", ["ito", "stratonovich"]),
        ("heun", ["stratonovich"]),
    ]
    for noise in ["diagonal", "scalar", "general"]
    for sde_type in sde_types
    if not (method == "milstein" and noise == "general")
]


def _setup(noise, seed=0):
    torch.manual_seed(seed)
    sde = NeuralSDE(noise)
    m = {"diagonal": D, "scalar": 1, "general": M}[noise]
    ts = torch.tensor([0.0, 0.3, 0.55, 1.0], dtype=F64)
    bm = BrownianPath(0.0, 1.0, (BATCH, m), seed=seed + 1, dtype=F64, dt=0.1)
    y0 = 0.5 * torch.randn(BATCH, D, dtype=F64)
    w = torch.randn(len(ts), BATCH, D, dtype=F64)
    return sde, ts, bm, y0, w


@pytest.mark.parametrize(("method", "noise", "sde_type"), CASES)
def test_adjoint_equals_backprop(method, noise, sde_type):
    sde, ts, bm, y0, w = _setup(noise)
    grads = []
    for gradient in ["adjoint", "backprop"]:
        y = y0.clone().requires_grad_(True)
        ys = sdeint(sde, y, ts, bm=bm, dt=0.1, method=method, sde_type=sde_type,
                    gradient=gradient)  # fmt: skip
        (ys * w).sum().backward()
        grads.append([y.grad, *(p.grad for p in sde.parameters())])
        sde.zero_grad()
    for a, b in zip(*grads):
        assert (a is None) == (b is None)  # (the mixing matrix of general noise only)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads[0]) >= 6


@pytest.mark.parametrize(("method", "noise"), [("euler", "general"), ("milstein", "diagonal")])
def test_taylor_in_y0_and_parameters(method, noise):
    sde, ts, bm, y0, w = _setup(noise, seed=3)
    sde_type = "ito"

    def loss(y):
        return (sdeint(sde, y, ts, bm=bm, dt=0.1, method=method, sde_type=sde_type) * w).sum()

    y = y0.clone().requires_grad_(True)
    loss(y).backward()
    v = torch.randn_like(y0)
    assert taylor_test(loss, y0, v, grad=y.grad, second=False, h0=0.5, n=10).passed()
    # in the drift's first weight, through functional_call-free rebinding of the parameter
    p = sde.drift[0].weight
    gp = p.grad.clone()
    base = p.detach().clone()

    def loss_p(q):
        with torch.no_grad():
            p.copy_(q)
        out = loss(y0).detach()
        with torch.no_grad():
            p.copy_(base)
        return out

    assert taylor_test(loss_p, base, torch.randn_like(base), grad=gp, second=False,
                       h0=0.5, n=10).passed()  # fmt: skip


def test_stores_only_step_states():
    """The forward pass saves the step states for backward, no graph and no noise: the
    saved bytes are steps·|y|, against a graph per step for backprop."""
    sde, ts, bm, y0, _ = _setup("diagonal")
    y0.requires_grad_(True)
    saved: dict[int, int] = {}

    def pack(x):
        try:  # each storage once
            saved[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        except RuntimeError:  # (a tensor without a storage of its own)
            saved[id(x)] = x.numel() * x.element_size()
        return x

    params = list(sde.parameters())  # (no check for hidden tensors: its graph is counted)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        ys = sdeint(sde, y0, ts, bm=bm, dt=0.05, method="milstein", params=params)
    state = y0.numel() * y0.element_size()
    assert sum(saved.values()) == 20 * state  # the states before each of the 20 steps
    ys.sum().backward()
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        sdeint(sde, y0, ts, bm=bm, dt=0.05, method="milstein", gradient="backprop")
    assert sum(saved.values()) > 10 * 21 * state


@pytest.mark.parametrize("every", [2, 3, 7, 50])
def test_checkpointed_adjoint_equals_backprop_and_stores_fewer_states(every):
    """checkpoint_every=k stores ceil(N/k) states and recomputes segments (outputs inside
    segments included): the same gradient as backprop."""
    sde, ts, bm, y0, w = _setup("scalar", seed=2)
    params = list(sde.parameters())
    grads, saved = [], []

    def pack(x):
        saved.append(x.numel() * x.element_size())
        return x

    for gradient in ["adjoint", "backprop"]:
        y = y0.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            ys = sdeint(sde, y, ts, bm=bm, dt=0.05, method="milstein", gradient=gradient,
                        params=params, checkpoint_every=every)  # fmt: skip
        if gradient == "adjoint":
            steps = 20  # dt = 0.05; the output times 0.3 and 0.55 are on the grid
            assert sum(saved) == -(-steps // every) * y0.numel() * y0.element_size()
        used = [p for n, p in sde.named_parameters() if n != "mix"]  # (general noise only)
        grads.append(torch.autograd.grad((ys * w).sum(), [y, *used]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dt", [None, 0.07])
def test_default_brownian_path_is_regenerated(dt):
    """With no bm given, the path sdeint creates (seeded from torch's generator) drives the
    backward pass too: the adjoint equals backprop on the path of the same seed."""
    sde, ts, _, y0, w = _setup("general", seed=5)
    grads = []
    for gradient in ["adjoint", "backprop"]:
        torch.manual_seed(11)
        y = y0.clone().requires_grad_(True)
        ys = sdeint(sde, y, ts, dt=dt, gradient=gradient)
        grads.append(torch.autograd.grad((ys * w).sum(), [y, *sde.parameters()]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_closure_params_and_hidden_tensors():
    scale = torch.tensor(0.4, dtype=F64, requires_grad=True)
    f = lambda t, y: -scale * y  # noqa: E731
    g = lambda t, y: 0.2 * torch.cos(y)  # noqa: E731
    y0 = torch.ones(2, 2, dtype=F64)
    bm = BrownianPath(0.0, 1.0, (2, 2), seed=0, dtype=F64)
    with pytest.raises(ValueError, match="params="):
        sdeint((f, g), y0, [0.0, 1.0], bm=bm, dt=0.1)
    ys = sdeint((f, g), y0, [0.0, 1.0], bm=bm, dt=0.1, params=[scale, scale])
    (ga,) = torch.autograd.grad(ys.sum(), scale)
    ys = sdeint((f, g), y0, [0.0, 1.0], bm=bm, dt=0.1, gradient="backprop")
    (gb,) = torch.autograd.grad(ys.sum(), scale)
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=0)


def test_no_graph_without_gradients_and_second_order_refused():
    sde, ts, bm, y0, _ = _setup("diagonal")
    with torch.no_grad():
        assert not sdeint(sde, y0, ts, bm=bm, dt=0.1).requires_grad
    y = y0.clone().requires_grad_(True)
    ys = sdeint(sde, y, ts, bm=bm, dt=0.1)
    with pytest.raises(RuntimeError, match="gradient='backprop'"):
        torch.autograd.grad(ys.sum(), y, create_graph=True)
    # backprop gives second derivatives
    ys = sdeint(sde, y, ts, bm=bm, dt=0.1, gradient="backprop")
    (g1,) = torch.autograd.grad(ys.sum(), y, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), y)
    assert torch.isfinite(g2).all()


@pytest.mark.gpu
def test_cuda_adjoint_equals_backprop(cuda):
    sde, ts, _, y0, w = _setup("diagonal", seed=4)
    sde = sde.to(cuda)
    bm = BrownianPath(0.0, 1.0, (BATCH, D), seed=1, dtype=F64, device=cuda, dt=0.1)
    assert torch.equal(bm(0.3, 0.7), BrownianPath(0.0, 1.0, (BATCH, D), seed=1, dtype=F64,
                                                   device=cuda, dt=0.1)(0.3, 0.7))  # fmt: skip
    grads = []
    for gradient in ["adjoint", "backprop"]:
        y = y0.to(cuda).requires_grad_(True)
        ys = sdeint(sde, y, ts.to(cuda), bm=bm, dt=0.1, method="milstein", gradient=gradient)
        assert ys.device.type == "cuda"
        grads.append(torch.autograd.grad((ys * w.to(cuda)).sum(), [y, *sde.drift.parameters()]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
