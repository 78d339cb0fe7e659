"""Fitting a neural vector field to an observed trajectory (the spiral demo's engine)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .._utils import progress
from ._odeint import odeint
from ._precision import PrecisionPolicy

__all__ = ["AutonomousField", "FitResult", "fit_trajectory", "spiral_data"]


def spiral_data(
    n: int = 1000, t_end: float = 25.0, *, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    r"""A 2-D cubic spiral: the trajectory of ``y' = (y∘y∘y) A`` from ``y(0) = (2, 0)``.

    ``A = [[-0.1, 2.0], [-2.0, -0.1]]`` (the toy problem of Chen et al., arXiv:1806.07366).
    The reference trajectory is computed with classical RK4 and 4 substeps per sample in
    float64, then cast to ``dtype``.

    Args:
        n: number of samples, ``n >= 2``.
        t_end: final time (> 0).
        dtype: dtype of the returned tensors.

    Returns:
        ``(t, ys)`` with shapes ``(n,)`` and ``(n, 2)``.

    Raises:
        ValueError: if ``n < 2`` or ``t_end <= 0``.

    Example:
        >>> t, ys = spiral_data(50, 5.0)
        >>> t.shape, ys.shape
        (torch.Size([50]), torch.Size([50, 2]))
    """
    if n < 2 or not t_end > 0:
        raise ValueError(f"need n >= 2 and t_end > 0, got n={n}, t_end={t_end}")
    a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)
    t = torch.linspace(0.0, t_end, n, dtype=torch.float64)
    with torch.no_grad():
        ys = odeint(lambda t, y: (y**3) @ a, torch.tensor([2.0, 0.0], dtype=torch.float64), t,
                    steps_per_interval=4)  # fmt: skip
    return t.to(dtype), ys.to(dtype)


@dataclass
class FitResult:
    """Result of :func:`fit_trajectory`: the loss after each iteration and the final error."""

    losses: list[float] = field(default_factory=list)
    final_mse: float = float("nan")


def fit_trajectory(
    func: nn.Module,
    t: Tensor,
    ys: Tensor,
    *,
    iters: int = 300,
    batch_time: int = 10,
    batch_size: int = 16,
    lr: float = 1e-2,
    method: str = "rk4",
    precision: str | PrecisionPolicy = "fp32",
    seed: int = 0,
    verbose: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> FitResult:
    r"""Fit ``func`` so that ``y' = func(t, y)`` reproduces an observed trajectory.

    Each iteration draws ``batch_size`` windows of ``batch_time`` consecutive samples,
    integrates from each window's first sample over the window (all windows batched in one
    solve on the relative time grid, valid for autonomous fields) and minimises the mean
    absolute error to the observations with Adam; gradients by the discrete adjoint.

    Args:
        func: the vector field, an ``nn.Module`` taking ``(t, y)`` with ``y: (batch, d)``.
        t: ``(n,)`` uniformly spaced sample times (every window is integrated on the grid of
            the first one, ``t[:batch_time] - t[0]``).
        ys: ``(n, d)`` observations.
        iters, batch_time, batch_size, lr: optimisation settings (``iters >= 1``,
            ``batch_size >= 1``).
        method, precision: passed to :func:`odeflow.odeint`.
        seed: seed of the window sampler.
        verbose: show a tqdm progress bar with the loss.
        callback: called as ``callback(iteration, loss)``.

    Returns:
        :class:`FitResult` with the per-iteration losses and the MSE of a full rollout
        from ``ys[0]``.

    Raises:
        ValueError: if shapes disagree, ``t`` is not uniformly spaced, ``batch_time`` is not
            in ``[2, n]``, or ``iters`` or ``batch_size`` is below 1.

    Reference:
        Chen, Rubanova, Bettencourt, Duvenaud, *Neural Ordinary Differential Equations*,
        arXiv:1806.07366.

    Example:
        >>> t, ys = spiral_data(100, 5.0)
        >>> f = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))
        >>> res = fit_trajectory(AutonomousField(f), t, ys, iters=3, verbose=False)
        >>> len(res.losses)
        3
    """
    if t.ndim != 1 or ys.ndim != 2 or ys.shape[0] != t.shape[0]:
        raise ValueError(f"need t: (n,) and ys: (n, d), got {tuple(t.shape)} and {tuple(ys.shape)}")
    n = t.shape[0]
    if not 2 <= batch_time <= n:
        raise ValueError(f"batch_time must be in [2, {n}], got {batch_time}")
    if iters < 1 or batch_size < 1:
        raise ValueError(f"need iters >= 1 and batch_size >= 1, got {iters} and {batch_size}")
    _check_uniform(t)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(func.parameters(), lr=lr)
    res = FitResult()
    tb = t[:batch_time] - t[0]
    with progress(iters, desc="fit", verbose=verbose) as bar:
        for it in range(iters):
            idx = torch.randint(0, n - batch_time + 1, (batch_size,), generator=gen)
            y0 = ys[idx]
            target = torch.stack([ys[idx + k] for k in range(batch_time)])  # (T, B, d)
            pred = odeint(func, y0, tb, method=method, precision=precision)
            loss = (pred - target).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            res.losses.append(loss.item())
            if verbose:
                bar.set_postfix(loss=f"{res.losses[-1]:.4f}")
            if callback is not None:
                callback(it, res.losses[-1])
            bar.update(1)
    with torch.no_grad():
        full = odeint(func, ys[0:1], t, method=method)[:, 0]
    res.final_mse = float(((full - ys) ** 2).mean())
    return res


def _check_uniform(t: Tensor) -> None:
    """Raise unless ``t`` is uniformly spaced up to round-off (windows share one grid)."""
    dt = t.detach().diff().double()
    if not torch.isfinite(dt).all():
        raise ValueError("t contains inf or NaN")
    h = dt.mean()
    # round-off of the samples themselves: a few ulps of the largest |t|, plus 0.1 % of h
    tol = 1e-3 * h.abs() + 8 * torch.finfo(t.dtype).eps * t.detach().abs().max().double()
    if h == 0 or (dt - h).abs().max() > tol:
        raise ValueError(
            "t must be uniformly spaced: every window is integrated on the grid "
            f"t[:batch_time] - t[0]; got spacings from {dt.min().item():.6g} to "
            f"{dt.max().item():.6g} (resample the observations onto a uniform grid)"
        )


class AutonomousField(nn.Module):
    """Wrap an autonomous network ``net(y)`` as a vector field ``f(t, y) = net(y)``.

    Example:
        >>> f = AutonomousField(nn.Linear(2, 2))
        >>> f(torch.tensor(0.0), torch.zeros(3, 2)).shape
        torch.Size([3, 2])
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.net(y)
