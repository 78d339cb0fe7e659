"""Shared test networks for odeflow.derivatives."""

from __future__ import annotations

import torch

import odeflow.derivatives as D

ACTS = {
    "logcosh": D.LogCosh,
    "tanh": D.Tanh,
    "softplus": D.Softplus,
    "sigmoid": D.Sigmoid,
    "silu": D.SiLU,
    "square": D.Square,
    "identity": D.Identity,
}


def otflow_phi(d: int, m: int = 8, r: int = 3, depth: int = 1, act=None, dtype=torch.float64):
    """OT-Flow's Φ on s = (x, t) ∈ R^{d+1}: wᵀN(s) + ½sᵀAᵀAs + bᵀs + c."""
    act = act or D.LogCosh()
    net = D.Sum(
        D.Sequential(
            D.Single(d + 1, m, act=act),
            D.ResNet(m, depth=depth, h=1.0, act=act),
            D.Linear(m, 1, bias=False),
        ),
        D.Quadratic(d + 1, rank=r),
    ).to(dtype)
    with torch.no_grad():  # non-trivial b, c (OT-Flow starts them at zero)
        net.blocks[1].b.normal_(0, 0.3)
        net.blocks[1].c.fill_(0.2)
    return net


def hessquik_net(d: int, m: int = 1, width: int = 16, depth: int = 4, dtype=torch.float64):
    """hessQuik's timing net: single(d→16, log cosh), resnet(16, depth, ½, tanh), single(16→m)."""
    return D.Sequential(
        D.Single(d, width, act=D.LogCosh()),
        D.ResNet(width, depth=depth, h=0.5, act=D.Tanh()),
        D.Single(width, m, act=D.Identity()),
    ).to(dtype)


def func_oracle(net, x, want, directions=None, exclude_last=0):
    return D.compute(
        net, x, want=want, mode="func", directions=directions, exclude_last=exclude_last
    )


class _Call(torch.nn.Module):
    """Wraps compute so torch.func.functional_call can swap the network's weights."""

    def __init__(self, net, **kw):
        super().__init__()
        self.net, self.kw = net, kw

    def forward(self, x):
        return D.compute(self.net, x, **self.kw)


def weight_loss(net, x, loss, **kw):
    """theta ↦ loss(compute(net with weights theta, x, **kw)), theta a flat float64 vector."""
    wrapper = _Call(net, **kw)
    params = {k: p.detach() for k, p in wrapper.named_parameters()}
    theta0 = torch.cat([p.reshape(-1) for p in params.values()])

    def f(theta):
        new, i = {}, 0
        for k, p in params.items():
            new[k] = theta[i : i + p.numel()].view_as(p)
            i += p.numel()
        return loss(torch.func.functional_call(wrapper, new, (x,)))

    return f, theta0


def derivative_loss(out):
    """½‖f‖² + ½‖∇f‖² + ½‖H or Δf‖² (means over the batch)."""
    total = 0.5 * (out.value**2).sum() + 0.5 * (out.gradient**2).sum()
    if out.hessian is not None:
        total = total + 0.5 * (out.hessian**2).sum()
    if out.laplacian is not None:
        total = total + 0.5 * (out.laplacian**2).sum()
    return total / out.value.shape[0]


def build(kind: str, d: int, m: int, dtype=torch.float64):
    """Test networks: every block, several activations, Sum in the middle, vector outputs."""
    if kind == "otflow":
        assert m == 1
        return (
            otflow_phi(d - 1 if d > 1 else 1, m=8, depth=2, dtype=dtype)
            if d > 1
            else D.Sum(
                D.Sequential(D.Single(1, 8, act=D.LogCosh()), D.Linear(8, 1)),
                D.Quadratic(1, rank=1),
            ).to(dtype)
        )
    if kind == "hessquik":
        return hessquik_net(d, m, width=8, depth=2, dtype=dtype)
    if kind == "icnn":
        return D.ICNN(d, width=6, out_features=m, depth=3).to(dtype)
    if kind == "zoo":
        return D.Sequential(
            D.Single(d, 6, act=D.SiLU()),
            D.Sum(D.ResNet(6, depth=2, h=0.3, act=D.Sigmoid()), D.Single(6, 6, act=D.Square())),
            D.Single(6, 5, act=D.Softplus()),
            D.Linear(5, m),
        ).to(dtype)
    raise ValueError(kind)
