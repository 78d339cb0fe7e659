"""forward_laplacian(..., unsupported="torch.func"): ops without a rule go through torch.func,
exactly (float64, against the trace of torch.func's dense Hessian)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import odeflow
import odeflow.derivatives as D

from .test_forward_laplacian import _swap

TOL = 1e-10
FB = "torch.func"
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop")  # the oracle


def _close(a, b, tol=TOL):
    scale = max(1.0, float(b.detach().abs().max()))
    err = float((a - b).detach().abs().max())
    assert err <= tol * scale, (err, scale)


class Swish17(nn.Module):
    """A user's activation with a Python loop over the features: torch.fx cannot trace it, so
    it is a leaf module (a call_module node without a rule)."""

    def forward(self, x):
        cols = []
        for i in range(x.shape[-1]):
            xi = x[..., i]
            cols.append(xi * torch.sigmoid(1.7 * xi) + torch.atan(xi))
        return torch.stack(cols, -1)


class Mixed(nn.Module):
    """Supported layers around (a) the leaf Swish17, (b) torch.special.erf / torch.cumsum /
    torch.sort in a functional forward and (c) ops of two x-dependent inputs without a rule:
    a bilinear form of two branches as ``torch.einsum`` and torch.atan2."""

    def __init__(self, d: int, w: int = 6):
        super().__init__()
        self.a, self.b = nn.Linear(d, w), nn.Linear(w, w)
        self.act = Swish17()
        self.W = nn.Parameter(torch.randn(w, w, w) / w)
        self.out = nn.Linear(w, 1)

    def forward(self, x):
        h = self.act(self.a(x))
        u = torch.special.erf(self.b(h))  # erf has a rule
        v = torch.cumsum(torch.tanh(h), dim=-1)  # cumsum has none
        s = torch.sort(u * v, dim=-1).values  # no rule, a (values, indices) output
        z = torch.einsum("ni,kij,nj->nk", u, self.W, v) + torch.atan2(s, 1.5 + v * v)
        return self.out(torch.tanh(z)) + 0.1 * (x[:, :1] * x[:, -1:])


def _dense(net, x):
    out = D.compute(net, x, want="hessian", mode="func")
    return out.gradient, out.hessian


def _net(d=4):
    torch.manual_seed(0)
    return Mixed(d).double(), torch.randn(3, d, dtype=torch.float64)


def test_laplacian_gradient_and_weighted_trace_through_fallback_ops():
    net, x = _net()
    grad, H = _dense(net, x)
    with pytest.warns(UserWarning, match=r"torch\.func.*cumsum") as rec:
        out = D.forward_laplacian(net, x, unsupported=FB)
    (msg,) = [str(w.message) for w in rec if "forward Laplacian" in str(w.message)]
    for op in ("module 'act'", "einsum", "torch.atan2", "torch.sort"):
        assert op in msg, msg
    assert "erf" not in msg  # ops with a rule keep it
    _close(out.value, net(x).squeeze(-1))
    _close(out.gradient, grad)
    lap = H.diagonal(dim1=-2, dim2=-1).sum(-1)
    _close(out.laplacian, lap)
    assert float(lap.detach().abs().min()) > 1e-3
    # the time input excluded, and tr(σσᵀH) with a batched σ and the gradient in the same pass
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "forward Laplacian")  # warned once per network
        out = D.forward_laplacian(net, x, exclude_last=1, unsupported=FB)
        _close(out.laplacian, H[:, :-1, :-1].diagonal(dim1=-2, dim2=-1).sum(-1))
        _close(out.gradient, grad)
        sigma = torch.randn(3, 4, 2, dtype=torch.float64)
        out = D.forward_laplacian(net, x, sigma=sigma, unsupported=FB)
        _close(out.laplacian, ((sigma @ sigma.mT) * H).sum((-2, -1)))
        _close(out.gradient, grad)
        # the entry point passes the option through (forward mode: the fallback, no error)
        for mode in ("auto", "forward"):
            res = odeflow.derivatives(net, x, want="laplacian", mode=mode, unsupported=FB)
            _close(res.laplacian, lap)
            _close(res.gradient, grad)


def test_default_raises_naming_the_op_and_bad_option():
    net, x = _net()
    with pytest.raises(D.UnsupportedOpError, match=r"cannot trace.*unsupported='torch\.func'"):
        D.forward_laplacian(net, x)  # Swish17's loop
    with pytest.raises(D.UnsupportedOpError, match=r"module '1' .*Bilinear.*'torch\.func'"):
        D.forward_laplacian(nn.Sequential(nn.Linear(4, 4), nn.Bilinear(4, 4, 1)).double(), x)
    net.act = nn.Tanh()  # now the first op without a rule is torch.cumsum
    with pytest.raises(D.UnsupportedOpError, match="cumsum"):
        D.forward_laplacian(net, x)
    with pytest.raises(ValueError, match=r"unsupported must be 'error'.*'torch\.func'"):
        D.forward_laplacian(net, x, unsupported="func")
    with pytest.raises(ValueError, match="unsupported"):
        odeflow.derivatives(net, x, want="laplacian", unsupported=None)
    # auto without the option still runs the whole network through torch.func
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "forward Laplacian")
        res = odeflow.derivatives(net, x, want="laplacian")
    _close(res.laplacian, D.compute(net, x, want="laplacian", mode="func").laplacian)


def test_in_place_method_is_refused():
    class InPlace(nn.Module):
        def forward(self, x):
            h = torch.tanh(x)
            h.cumsum_(-1)
            return h.sum(-1)

    with pytest.raises(D.UnsupportedOpError, match=r"in-place.*cumsum_"):
        D.forward_laplacian(InPlace(), torch.randn(2, 3), unsupported=FB)


def test_laplacian_weight_gradient_taylor_through_fallback_ops():
    from odeflow.testing import taylor_test

    net, x = _net(3)
    x = x[:2]
    names = [k for k, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    theta0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def loss(theta):
        parts = torch.split(theta, [s.numel() for s in shapes])
        params = {k: t.reshape(s) for k, t, s in zip(names, parts, shapes, strict=True)}
        with _swap(net, params), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = D.forward_laplacian(net, x, exclude_last=1, unsupported=FB)
        return (r.laplacian.pow(2) + r.gradient.pow(2).sum(-1)).sum()

    torch.manual_seed(1)
    v = torch.randn_like(theta0)
    theta = theta0.clone().requires_grad_(True)
    g = torch.autograd.grad(loss(theta), theta, create_graph=True)[0]
    hv = torch.autograd.grad(g @ v, theta)[0]
    res = taylor_test(loss, theta0, v, grad=g.detach(), hvp=hv, h0=0.1)
    assert res.passed(), (res.order0, res.order1, res.order2)
