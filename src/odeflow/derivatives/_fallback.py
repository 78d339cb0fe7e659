"""torch.func fallback for any ``nn.Module``: the oracle and the path for arbitrary networks."""

from __future__ import annotations

import torch
from torch import func as tf


def _per_sample(net):
    def f(xi: torch.Tensor) -> torch.Tensor:
        return net(xi.unsqueeze(0)).reshape(-1)

    return f


def func_derivatives(net, x, want, V, exclude_last):
    """Value, gradient, Hessian/HVP, Laplacian through vmapped torch.func transforms.

    Returns (value (n, m), gradient (n, m, d or k), second (n, m, ...) or None, lap (n, m) or None).
    """
    n, d = x.shape
    dp = d - exclude_last
    f = _per_sample(net)
    value = net(x).reshape(n, -1)
    grad = tf.vmap(tf.jacrev(f))(x)  # (n, m, d)
    gradient = grad if V is None or want == "hvp" else grad @ V
    second = lap = None
    if want == "hessian":
        H = tf.vmap(tf.jacfwd(tf.jacrev(f)))(x)  # (n, m, d, d)
        if V is None:
            second = H[..., :dp, :dp]
        else:
            second = V.transpose(0, 1) @ H @ V
        lap = second.diagonal(dim1=-2, dim2=-1).sum(-1)
    elif want in ("laplacian", "hvp"):
        if want == "hvp":
            S = torch.zeros(d, V.shape[1], dtype=x.dtype, device=x.device)
            S[:dp] = V[:dp]
        elif V is None:
            S = torch.eye(d, dp, dtype=x.dtype, device=x.device)
        else:
            S = V
        g = tf.jacrev(f)

        def hvps(xi):  # (c, m, d): H·s for every column s of S
            return tf.vmap(lambda s: tf.jvp(g, (xi,), (s,))[1])(S.transpose(0, 1))

        R = tf.vmap(hvps)(x)  # (n, c, m, d)
        if want == "hvp":
            second = R[..., :dp].permute(0, 2, 3, 1)  # (n, m, dp, k)
        else:
            lap = torch.einsum("ncmd,dc->nm", R, S)
    return value, gradient, second, lap


def hutchinson(
    net: torch.nn.Module,
    x: torch.Tensor,
    num_probes: int = 1,
    *,
    exclude_last: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Hutchinson estimate of the Laplacian, for comparison with the exact one.

    Δf(x) ≈ (1/P) Σ_p v_pᵀ ∇²f(x) v_p with Rademacher probes v_p (zero on the excluded
    trailing coordinates); unbiased, with variance 2‖H‖_F² − 2Σ H_ii² per probe. Each probe
    costs one forward-over-reverse Hessian–vector product (vmapped torch.func).

    Args:
        net: any module mapping (n, d) to (n,), (n, 1) or (n, m).
        x: (n, d) points.
        num_probes: number of probes P ≥ 1.
        exclude_last: trailing coordinates left out of the trace.
        generator: random generator for the probes.

    Returns:
        (n,) for scalar outputs, else (n, m).

    Raises:
        ValueError: on a non-2-D or non-floating x, num_probes < 1 or a bad exclude_last.

    Reference: Hutchinson (1990); Grathwohl et al., FFJORD, arXiv:1810.01367.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 1))
        >>> hutchinson(net, torch.randn(4, 3), 2).abs().max().item() < 1e-6
        True
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.is_floating_point():
        raise ValueError("hutchinson: x must be a floating (n, d) tensor.")
    n, d = x.shape
    if not 0 <= exclude_last < d:
        raise ValueError(f"hutchinson: exclude_last must be in [0, {d - 1}], got {exclude_last}.")
    if num_probes < 1:
        raise ValueError(f"hutchinson: num_probes must be >= 1, got {num_probes}.")
    dp = d - exclude_last
    probes = torch.randint(0, 2, (num_probes, n, d), generator=generator, device="cpu")
    probes = (2.0 * probes - 1.0).to(dtype=x.dtype, device=x.device)
    probes[..., dp:] = 0.0
    f = _per_sample(net)
    g = tf.jacrev(f)

    def quad(xi, vi):  # (m,)
        return (tf.jvp(g, (xi,), (vi,))[1] * vi).sum(-1)

    est = tf.vmap(tf.vmap(quad), in_dims=(None, 0))(x, probes).mean(0)  # (n, m)
    return est[:, 0] if est.shape[1] == 1 else est
