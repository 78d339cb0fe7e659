"""The forward Laplacian of plain nn.Modules against torch.func's dense Hessians (float64)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import odeflow
import odeflow.derivatives as D

from . import _fl_nets as N

TOL = 1e-10


def _dense(net, x):
    """Value, gradient and Hessian of a scalar net by vmapped torch.func (jacfwd∘jacrev)."""
    out = D.compute(net, x, want="hessian", mode="func")
    return out.value, out.gradient, out.hessian


def _close(a, b, tol=TOL):
    scale = max(1.0, float(b.detach().abs().max()))
    err = float((a - b).detach().abs().max())
    assert err <= tol * scale, (err, scale)


NETS = {
    "gelu_mlp": (lambda: N.gelu_mlp(6, width=16, depth=4), 6, 0),
    "tanh_resnet": (lambda: N.TanhResNet(5), 5, 0),
    "transformer": (lambda: N.Transformer(tokens=8, width=16, depth=2), 128, 0),
    "siren": (lambda: N.Siren(4), 4, 0),
    "time_excluded": (lambda: N.TimeNet(4), 4, 1),
}


@pytest.mark.parametrize("name", list(NETS))
def test_laplacian_matches_trace_of_torch_func_hessian(name):
    make, d, excl = NETS[name]
    torch.manual_seed(0)
    net = make().double()
    x = torch.randn(3, d, dtype=torch.float64)
    value, grad, H = _dense(net, x)
    dp = d - excl
    lap = H[:, :dp, :dp].diagonal(dim1=-2, dim2=-1).sum(-1)
    out = D.forward_laplacian(net, x, exclude_last=excl)
    _close(out.value, value)
    _close(out.gradient, grad)  # over all d inputs, the excluded time included
    _close(out.laplacian, lap)
    assert float(lap.detach().abs().max()) > 1e-3  # the property is not vacuous
    # the entry point dispatches plain modules to the forward Laplacian
    out2 = odeflow.derivatives(net, x, want="laplacian", exclude_last=excl)
    _close(out2.laplacian, lap)
    _close(out2.gradient, grad)


def test_weighted_trace_and_gradient_in_one_pass():
    torch.manual_seed(1)
    d, k, n = 5, 3, 4
    net = N.TanhResNet(d).double()
    x = torch.randn(n, d, dtype=torch.float64)
    sigma = torch.randn(n, d, k, dtype=torch.float64)  # batched, A = σσᵀ PSD of rank k
    _, grad, H = _dense(net, x)
    A = sigma @ sigma.mT
    ref = (A * H).sum((-2, -1))  # tr(A H)
    out = D.forward_laplacian(net, x, sigma=sigma)
    _close(out.laplacian, ref)
    _close(out.gradient, grad)
    # shared σ (d, k) through compute's directions: tr(σᵀHσ) and σᵀ∇f
    s = sigma[0]
    out = odeflow.derivatives(net, x, want="laplacian", directions=s)
    _close(out.laplacian, torch.einsum("ai,nab,bi->n", s, H, s))
    _close(out.gradient, grad @ s)
    assert D.forward_laplacian(net, x, sigma=s, gradient=False).gradient is None


def test_vector_output_and_mha_sdpa_conv():
    torch.manual_seed(2)

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
            self.lin = nn.Linear(8, 8)
            self.conv = nn.Conv1d(4, 3, 3, padding=1)
            self.sdpa = True  # False: attention written out (torch's CPU kernel has no 2nd AD)

        def forward(self, x):
            h = x.view(x.shape[0], 4, 8)
            a, _ = self.mha(h, h, h)
            q = self.lin(h).unflatten(-1, (2, 4)).transpose(1, 2)
            if self.sdpa:
                s = F.scaled_dot_product_attention(q, q, q, is_causal=True)
            else:
                mask = torch.ones(4, 4, dtype=torch.bool).tril()
                a_ = (q @ q.transpose(-2, -1) / 2.0).masked_fill(~mask, float("-inf"))
                s = torch.softmax(a_, -1) @ q
            c = self.conv(torch.tanh(h)).flatten(1)
            y = a.mean(1) + s.transpose(1, 2).reshape(x.shape[0], 4, 8).sum(1)
            return torch.cat([y[:, :2], F.log_softmax(c, dim=-1)[..., 3:5]], dim=-1)

    net = Attn().double().eval()
    x = torch.randn(3, 32, dtype=torch.float64)

    net.sdpa = False
    ref = D.compute(net, x, want="laplacian", mode="func")
    net.sdpa = True
    out = D.forward_laplacian(net, x)
    _close(out.value, ref.value)
    _close(out.gradient, ref.gradient)
    _close(out.laplacian, ref.laplacian)
    assert out.laplacian.shape == (3, 4)


def test_odeflow_blocks_inside_a_plain_module():
    torch.manual_seed(3)
    net = nn.Sequential(
        D.Single(3, 6, act=D.LogCosh()), nn.LayerNorm(6), D.ResNet(6, depth=2), nn.Linear(6, 1)
    ).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    ref = D.compute(net, x, want="laplacian", mode="func")
    _close(D.forward_laplacian(net, x).laplacian, ref.laplacian)


def test_hutchinson_is_the_quadratic_form_of_its_probes():
    torch.manual_seed(4)
    d, n, P = 6, 3, 5
    net = N.gelu_mlp(d, width=8, depth=3).double()
    x = torch.randn(n, d, dtype=torch.float64)
    _, _, H = _dense(net, x)
    out = D.forward_laplacian(
        net, x, num_probes=P, exclude_last=1, generator=torch.Generator().manual_seed(7)
    )
    xi = torch.randint(0, 2, (n, P, d), generator=torch.Generator().manual_seed(7))
    xi = (2.0 * xi - 1.0).double()
    xi[..., -1] = 0.0
    ref = torch.einsum("npa,nab,npb->n", xi, H, xi) / P
    _close(out.laplacian, ref)


@pytest.mark.parametrize("name", ["time_excluded", "transformer"])
def test_laplacian_weight_gradient_taylor(name):
    """Training on a Laplacian loss is exact: its weight gradient (and, by double backward, its
    Hessian–vector product) pass the Taylor test."""
    from odeflow.testing import taylor_test

    torch.manual_seed(5)
    if name == "transformer":
        net, d, excl = N.Transformer(tokens=4, width=8, depth=2).double(), 32, 0
    else:
        net, d, excl = N.TimeNet(3).double(), 3, 1
    x = torch.randn(2, d, dtype=torch.float64)
    names = [k for k, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    theta0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def loss(theta):
        parts = torch.split(theta, [s.numel() for s in shapes])
        params = {k: t.reshape(s) for k, t, s in zip(names, parts, shapes, strict=True)}
        with _swap(net, params):
            r = D.forward_laplacian(net, x, exclude_last=excl)
        return (r.laplacian.pow(2) + r.gradient.pow(2).sum(-1)).sum()

    v = torch.randn_like(theta0)
    theta = theta0.clone().requires_grad_(True)
    g = torch.autograd.grad(loss(theta), theta, create_graph=True)[0]
    hv = torch.autograd.grad(g @ v, theta)[0]
    res = taylor_test(loss, theta0, v, grad=g.detach(), hvp=hv, h0=0.1)
    assert res.passed(), (res.order0, res.order1, res.order2)


class _swap:
    """Temporarily replace the parameters of a module by tensors (for a functional loss)."""

    def __init__(self, net, params):
        self.net, self.params = net, params

    def __enter__(self):
        self.saved = {}
        for k, t in self.params.items():
            mod_name, _, attr = k.rpartition(".")
            mod = self.net.get_submodule(mod_name)
            self.saved[k] = mod._parameters[attr]
            mod._parameters[attr] = t
        return self

    def __exit__(self, *exc):
        for k, p in self.saved.items():
            mod_name, _, attr = k.rpartition(".")
            self.net.get_submodule(mod_name)._parameters[attr] = p


def test_unsupported_op_raises_naming_it_and_auto_falls_back():
    class Cum(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 4)

        def forward(self, x):
            return torch.cumsum(torch.tanh(self.lin(x)), dim=-1)[:, -1:]

    net = Cum().double()
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(D.UnsupportedOpError, match="cumsum"):
        D.forward_laplacian(net, x)
    with pytest.raises(TypeError, match="cumsum"):
        odeflow.derivatives(net, x, want="laplacian", mode="forward")
    ref = D.compute(net, x, want="laplacian", mode="func")
    _close(odeflow.derivatives(net, x, want="laplacian").laplacian, ref.laplacian)

    class Batchmix(nn.Module):
        def forward(self, x):
            return x - x.mean(0)

    with pytest.raises(D.UnsupportedOpError, match="batch"):
        D.forward_laplacian(Batchmix(), x)
    with pytest.raises(D.UnsupportedOpError, match=r"module .*GRU"):
        D.forward_laplacian(nn.Sequential(nn.Linear(3, 3), nn.GRU(3, 3)), x.float())


def test_bad_arguments():
    net = nn.Linear(3, 1)
    with pytest.raises(ValueError, match="sigma"):
        D.forward_laplacian(net, torch.randn(2, 3), sigma=torch.randn(4, 2))
    with pytest.raises(ValueError, match="exclude_last"):
        D.forward_laplacian(net, torch.randn(2, 3), exclude_last=3)
    with pytest.raises(ValueError, match="num_probes"):
        D.forward_laplacian(net, torch.randn(2, 3), num_probes=0)
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        D.forward_laplacian(net, torch.randn(3))


def test_bf16_accumulates_the_laplacian_in_float32():
    torch.manual_seed(6)
    net = N.gelu_mlp(8, width=32, depth=3)
    x = torch.randn(16, 8)
    ref = D.compute(copy.deepcopy(net).double(), x.double(), want="laplacian", mode="func")
    ref = ref.laplacian
    out = D.forward_laplacian(copy.deepcopy(net).bfloat16(), x.to(torch.bfloat16))
    assert out.laplacian.dtype == torch.float32
    rel = (out.laplacian.double() - ref).norm() / ref.norm()
    assert rel < 5e-2, rel
    out32 = D.forward_laplacian(net, x)
    assert (out32.laplacian.double() - ref).norm() / ref.norm() < 1e-5


@pytest.mark.slow  # dynamo traces the interpreter: ~10 s on a loaded 2-core machine
def test_compiled_matches_eager():
    torch.manual_seed(7)
    net = N.gelu_mlp(4, width=8, depth=3)
    x = torch.randn(5, 4)
    eager = D.forward_laplacian(net, x, exclude_last=1).laplacian
    f = torch.compile(
        lambda z: D.forward_laplacian(net, z, exclude_last=1).laplacian,
        backend="eager",
        fullgraph=False,
    )
    torch.testing.assert_close(f(x), eager, rtol=1e-5, atol=1e-6)


def test_pinn_poisson_example_learns():
    """examples/pinn_poisson.py (small): the exact-Laplacian loss drives the error down."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "pinn_poisson.py"
    spec = importlib.util.spec_from_file_location("pinn_poisson", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    net0 = torch.nn.Linear(10, 1)
    x = torch.rand(200, 10)
    with torch.no_grad():
        base = float((net0(x).squeeze(-1) - mod.exact(x)).norm() / mod.exact(x).norm())
    err = mod.main(["--dim", "10", "--width", "16", "--steps", "100", "--batch", "32"])
    assert err < 0.3 < base, (err, base)


def test_tensor_constants_do_not_touch_the_module():
    class Const(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("scale", torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))

        def forward(self, x):
            c = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)  # a traced constant
            return torch.tanh(x * c + self.scale).sum(-1)

    net = Const()
    before = set(vars(net)) | set(dict(net.named_buffers()))
    x = torch.randn(3, 3, dtype=torch.float64)
    ref = D.compute(net, x, want="laplacian", mode="func").laplacian
    _close(D.forward_laplacian(net, x).laplacian, ref)
    assert set(vars(net)) | set(dict(net.named_buffers())) == before
    net.scale.mul_(2.0)  # buffers are read at every call
    ref = D.compute(net, x, want="laplacian", mode="func").laplacian
    _close(D.forward_laplacian(net, x).laplacian, ref)


def test_every_activation_module():
    torch.manual_seed(8)
    x = torch.randn(4, 3, dtype=torch.float64)
    acts = [
        nn.GELU(approximate="tanh"),
        nn.SiLU(),
        nn.Softplus(beta=2.0),
        nn.Sigmoid(),
        nn.ELU(),
        nn.LeakyReLU(0.1),
        nn.ReLU(),  # almost everywhere (ReLU″ = 0, as autograd)
        D.LogCosh(),
    ]
    for act in acts:
        net = nn.Sequential(nn.Linear(3, 6), act, nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 1))
        net = net.double()
        ref = D.compute(net, x, want="laplacian", mode="func")
        out = D.forward_laplacian(net, x)
        _close(out.laplacian, ref.laplacian)
        _close(out.gradient, ref.gradient)
