"""Regularizers of the PDE-motivated networks: smoothness and total variation of the weights
in time, and the kinetic energy of the hidden trajectory."""

from __future__ import annotations

import torch
from torch import nn

from ._layers import VectorFieldLayer

__all__ = ["kinetic_energy", "weight_smoothness", "weight_total_variation"]


def _differences(module: nn.Module, n_points: int | None):
    """Yield ``(Δθ, Δt)`` between consecutive weight samples of every layer in ``module``."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(module).__name__}.")
    if n_points is not None and (
        isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2
    ):
        raise ValueError(f"n_points must be None or an int >= 2, got {n_points!r}.")
    for layer in module.modules():
        if not isinstance(layer, VectorFieldLayer):
            continue
        if n_points is None:
            s = layer.basis.sample_points()
        else:
            s = torch.linspace(0.0, 1.0, n_points, dtype=torch.float64)
        if s.numel() < 2:
            continue
        for name in layer._weight_names:
            coeff = getattr(layer, name)
            phi = layer.basis(s).to(coeff)
            theta = torch.tensordot(phi, coeff, dims=1)  # (m, *shape)
            dt = (s[1:] - s[:-1]).to(coeff) * layer.horizon
            yield theta[1:] - theta[:-1], dt


def weight_smoothness(module: nn.Module, n_points: int | None = None) -> torch.Tensor:
    r"""Smoothness of the weights in time, ``Σ_k ‖θ(t_{k+1}) − θ(t_k)‖² / (t_{k+1} − t_k)``
    (a discrete ``∫ ‖θ'(t)‖² dt``), summed over every layer in ``module``.

    The samples ``t_k`` are the basis' natural points (piece midpoints, nodes, or ``2n+1``
    points for polynomials), or ``n_points`` equispaced points on [0, T].

    Args:
        module: a layer, block or network (every :class:`VectorFieldLayer` inside counts).
        n_points: optional number of equispaced samples (``>= 2``).

    Returns:
        A scalar tensor (0 for weights constant in time).

    Raises:
        TypeError: ``module`` is not an ``nn.Module``; ValueError: bad ``n_points``.

    Reference: Haber & Ruthotto, "Stable architectures for deep neural networks"
    (arXiv:1705.03341), the smoothness-in-time regularizer.

    Example:
        >>> from odeflow.nn import StandardLayer
        >>> float(weight_smoothness(StandardLayer(3, basis="linear", basis_size=4)).detach())
        0.0
    """
    total = None
    for d, dt in _differences(module, n_points):
        term = (d.reshape(d.shape[0], -1).pow(2).sum(1) / dt).sum()
        total = term if total is None else total + term
    return torch.zeros(()) if total is None else total


def weight_total_variation(
    module: nn.Module, n_points: int | None = None, eps: float = 0.0
) -> torch.Tensor:
    r"""Total variation of the weights in time, ``Σ_k Σ_i √((θ_i(t_{k+1}) − θ_i(t_k))² + ε)``,
    summed over every layer in ``module`` (``ε > 0`` smooths it at 0).

    Args:
        module: a layer, block or network.
        n_points: optional number of equispaced samples; ``eps``: the smoothing ``ε ≥ 0``.

    Returns:
        A scalar tensor.

    Raises:
        TypeError / ValueError: as :func:`weight_smoothness`, or ``eps < 0``.

    Reference: Ruthotto & Haber, "Deep neural networks motivated by partial differential
    equations" (arXiv:1804.04272).

    Example:
        >>> from odeflow.nn import StandardLayer
        >>> layer = StandardLayer(2, basis="constant", basis_size=2)
        >>> with torch.no_grad():
        ...     layer.bias[1] += 1.0
        >>> float(weight_total_variation(layer).detach())
        2.0
    """
    if not eps >= 0:
        raise ValueError(f"weight_total_variation: eps must be >= 0, got {eps!r}.")
    total = None
    for d, _ in _differences(module, n_points):
        term = torch.sqrt(d * d + eps).sum() if eps > 0 else d.abs().sum()
        total = term if total is None else total + term
    return torch.zeros(()) if total is None else total


def kinetic_energy(trajectory: torch.Tensor, h: float) -> torch.Tensor:
    r"""Kinetic energy of a hidden trajectory, ``½ Σ_k ‖y_{k+1} − y_k‖² / h`` averaged over the
    batch (≈ ``½ ∫ ‖y'(t)‖² dt``): penalizing it keeps the trajectories straight.

    Args:
        trajectory: ``(n_steps + 1, batch, …)``, e.g. ``block.trajectory(x)``.
        h: the step size (``block.h``).

    Returns:
        A scalar tensor.

    Raises:
        ValueError: fewer than two states, ``h <= 0``, or a non-finite trajectory.

    Reference: Finlay et al., "How to train your neural ODE" (arXiv:2002.02798); Onken et al.,
    "OT-Flow" (arXiv:2006.00104).

    Example:
        >>> ys = torch.stack([torch.zeros(1, 2), torch.ones(1, 2)])
        >>> float(kinetic_energy(ys, 0.5))
        2.0
    """
    if not isinstance(trajectory, torch.Tensor) or trajectory.ndim < 2 or trajectory.shape[0] < 2:
        raise ValueError("kinetic_energy: trajectory must be a tensor (n_steps + 1, batch, …).")
    if not h > 0:
        raise ValueError(f"kinetic_energy: h must be positive, got {h!r}.")
    if not bool(torch.isfinite(trajectory).all()):
        raise ValueError("kinetic_energy: the trajectory contains NaN or Inf.")
    d = (trajectory[1:] - trajectory[:-1]).reshape(trajectory.shape[0] - 1, trajectory.shape[1], -1)
    return 0.5 * d.pow(2).sum(dim=(0, 2)).mean() / h
