"""The quadcopter of NeuralOC (d = 12): thrust and three torques, closed-form feedback, shocks."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ._problem import ControlProblem, _check_positive
from ._solver import LossWeights

__all__ = ["Quadcopter", "ShockResult", "animate_flight", "plot_flight", "quadcopter_shock"]


def _vec3(v, name: str) -> Tensor:
    out = torch.as_tensor(v, dtype=torch.float64).reshape(-1)
    if out.numel() == 1:
        out = out.expand(3).clone()
    if out.numel() != 3 or not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name} must be a finite number or a 3-vector (x, y, z), got {v!r}")
    return out


class Quadcopter(ControlProblem):
    r"""A quadcopter flying from (−1.5, −1.5, −1.5) to (2, 2, 2) in T = 1 (d = 12, m = 4).

    State z = (x, y, z, ψ, θ, φ, vₓ, v_y, v_z, v_ψ, v_θ, v_φ) (position, yaw/pitch/roll
    angles and their rates), control (u, τ_ψ, τ_θ, τ_φ) (thrust and three torques):

    .. math::
        \dot{(x, y, z)} = (v_x, v_y, v_z),\quad \dot{(\psi, \theta, \phi)} = (v_\psi, v_\theta,
        v_\phi),\quad \dot v_x = \tfrac{u}{m} f_7,\ \dot v_y = \tfrac{u}{m} f_8,\
        \dot v_z = \tfrac{u}{m} f_9 - g,\quad \dot{(v_\psi, v_\theta, v_\phi)} = \tau,

    f₇ = sin ψ sin φ + cos ψ sin θ cos φ, f₈ = −cos ψ sin φ + sin ψ sin θ cos φ,
    f₉ = cos θ cos φ; L = 2 + u² + |τ|², G = (α₀/2)|z_T − y|² (α₀ = 5000, y the target
    at rest). With w = (f₇, f₈, f₉)·p_v/m the Hamiltonian and the feedback are closed forms:

    .. math::
        H(z, p) = -p_{pos}\cdot v - p_{ang}\cdot\omega + g\,p_{v_z} + \tfrac14 w^2
        + \tfrac14|p_\tau|^2 - 2,\qquad u^* = -\tfrac12 w,\quad \tau^* = -\tfrac12 p_\tau,

    (u*, τ*) the unique minimiser of p·f + L (tested against a numerical minimisation).
    ρ₀: the start plus N(0, s₀²) on the position (s₀ = 0.1, the paper's ``var0``), all else
    0. Loss weights: the paper's HJB penalty 0.1 and no terminal-value penalties; 26 RK4
    steps for training (50 for evaluation, ``eval_steps``).

    Args:
        mass: m (1). gravity: g (9.81). terminal_weight: α₀ (5000). horizon: T (1).
        start, target: positions (3-vectors or numbers). initial_std: s₀.

    Raises:
        ValueError: non-positive mass, gravity, weight, horizon or spread; a start or target
            that is not a finite 3-vector.

    Reference: Onken, Nurbekyan, Li, Wu Fung, Osher, Ruthotto, "A neural network approach
    for high-dimensional optimal control applied to multi-agent path finding", IEEE TCST
    (2022), arXiv 2104.03270, section "Quadcopter".

    Example:
        >>> import torch
        >>> pb = Quadcopter()
        >>> z = torch.zeros(1, 12, dtype=torch.float64)
        >>> u = torch.tensor([[9.81, 0.0, 0.0, 0.0]], dtype=torch.float64)   # hover thrust
        >>> pb.dynamics(z, u, 0.0).abs().max().item() < 1e-12
        True
        >>> pb.running_cost(z, u, 0.0)
        tensor([98.2361], dtype=torch.float64)
    """

    name = "quadcopter"
    steps = 26
    eval_steps = 50

    def __init__(
        self,
        *,
        mass: float = 1.0,
        gravity: float = 9.81,
        terminal_weight: float = 5000.0,
        horizon: float = 1.0,
        start=-1.5,
        target=2.0,
        initial_std: float = 0.1,
    ):
        super().__init__(12, 4, horizon, None)
        self.mass = _check_positive("mass", mass, "the quadcopter's mass m")
        self.gravity = _check_positive("gravity", gravity, "the acceleration g")
        self.alpha0 = _check_positive("terminal_weight", terminal_weight, "α₀ on G")
        self.std0 = _check_positive("initial_std", initial_std, "the spread s₀ of ρ₀")
        self.start = torch.cat([_vec3(start, "start"), torch.zeros(9, dtype=torch.float64)])
        self.target = torch.cat([_vec3(target, "target"), torch.zeros(9, dtype=torch.float64)])
        self.weights = LossWeights(hjb=0.1, terminal_value=0.0, terminal_gradient=0.0)

    @staticmethod
    def thrust_direction(angles: Tensor) -> Tensor:
        """(f₇, f₈, f₉) of the angles (ψ, θ, φ): ``(n, 3) -> (n, 3)``."""
        s, c = angles.sin(), angles.cos()
        spsi, sth, sphi = s.unbind(-1)
        cpsi, cth, cphi = c.unbind(-1)
        f7 = spsi * sphi + cpsi * sth * cphi
        f8 = -cpsi * sphi + spsi * sth * cphi
        return torch.stack([f7, f8, cth * cphi], -1)

    def dynamics(self, x, u, t):
        F = self.thrust_direction(x[:, 3:6])
        acc = (u[:, :1] / self.mass) * F
        acc = acc - torch.tensor([0.0, 0.0, self.gravity], dtype=x.dtype, device=x.device)
        return torch.cat([x[:, 6:12], acc, u[:, 1:4]], dim=1)

    def running_cost(self, x, u, t):
        return 2.0 + (u * u).sum(-1)

    def terminal_cost(self, x, log_rho=None):
        r = x - self.target.to(x)
        return 0.5 * self.alpha0 * (r * r).sum(-1)

    def terminal_gradient(self, x):
        return self.alpha0 * (x - self.target.to(x))

    def _w(self, x, p):
        return (self.thrust_direction(x[:, 3:6]) * p[:, 6:9]).sum(-1) / self.mass

    def feedback(self, x, p, t, iterations: int = 0):
        return torch.cat([-0.5 * self._w(x, p)[:, None], -0.5 * p[:, 9:12]], dim=1)

    # numpy forms of feedback/dynamics, for OnlineFeedback (float64 arrays, no autograd)
    @staticmethod
    def _thrust_direction_numpy(angles: np.ndarray) -> np.ndarray:
        s, c = np.sin(angles), np.cos(angles)
        f7 = s[:, 0] * s[:, 2] + c[:, 0] * s[:, 1] * c[:, 2]
        f8 = -c[:, 0] * s[:, 2] + s[:, 0] * s[:, 1] * c[:, 2]
        return np.stack([f7, f8, c[:, 1] * c[:, 2]], -1)

    def online_feedback(self, x: np.ndarray, p: np.ndarray, t: float) -> np.ndarray:
        """:meth:`feedback` on numpy arrays ``(n, 12), (n, 12) -> (n, 4)``."""
        w = (self._thrust_direction_numpy(x[:, 3:6]) * p[:, 6:9]).sum(-1) / self.mass
        return np.concatenate([-0.5 * w[:, None], -0.5 * p[:, 9:12]], axis=1)

    def online_dynamics(self, x: np.ndarray, u: np.ndarray, t: float) -> np.ndarray:
        """:meth:`dynamics` on numpy arrays ``(n, 12), (n, 4) -> (n, 12)``."""
        acc = (u[:, :1] / self.mass) * self._thrust_direction_numpy(x[:, 3:6])
        acc[:, 2] -= self.gravity
        return np.concatenate([x[:, 6:12], acc, u[:, 1:4]], axis=1)

    def hamiltonian(self, x, p, t):
        w = self._w(x, p)
        pt = p[:, 9:12]
        return (
            -(p[:, :6] * x[:, 6:12]).sum(-1)
            + self.gravity * p[:, 8]
            + 0.25 * w * w
            + 0.25 * (pt * pt).sum(-1)
            - 2.0
        )

    def sample_initial(self, n, *, generator=None, dtype=None, device=None):
        dt = dtype or torch.float64
        z = self.start.to(dt).expand(n, -1).clone()
        z[:, :3] += self.std0 * torch.randn(n, 3, generator=generator, dtype=dt)
        return z.to(device=device)

    def spec(self):
        return {
            "name": self.name,
            "mass": self.mass,
            "gravity": self.gravity,
            "terminal_weight": self.alpha0,
            "horizon": self.horizon,
            "start": self.start[:3].tolist(),
            "target": self.target[:3].tolist(),
            "initial_std": self.std0,
        }


class ShockResult(NamedTuple):
    """Outcome of :func:`quadcopter_shock` (all ``(n,)`` tensors, per start).

    ``error``/``cost``: terminal position error |z_T − y|_pos and cost ∫L + G without the
    shock; ``shocked_error``/``shocked_cost``: the same with the kick (the cost from the
    kick on, compare with Φ at the kicked state); ``paths``, ``shocked_paths``:
    ``(nt + 1, n, 12)``.
    """

    error: Tensor
    cost: Tensor
    shocked_error: Tensor
    shocked_cost: Tensor
    paths: Tensor
    shocked_paths: Tensor


DEFAULT_KICK = (0.3, -0.3, 0.3, 0.0, 0.0, 0.0, 1.0, -1.0, 1.0, 0.0, 0.0, 0.0)


def quadcopter_shock(
    problem: Quadcopter, value, x: Tensor | None = None, *, kick=DEFAULT_KICK,
    time: float = 0.1, nt: int | None = None
) -> ShockResult:  # fmt: skip
    r"""Fly the learned feedback with and without a state kick at ``time`` (NeuralOC's shocks).

    The kick z(t_k) ← z(t_k) + δ is applied after step k = round(time/h) of an RK4
    closed-loop rollout (:func:`odeflow.control.rollout`); the feedback u*(z, ∇Φ(z, t))
    then steers from the kicked state without any re-solve.

    Args:
        problem: a :class:`Quadcopter`. value: its value function.
        x: ``(n, 12)`` starts (default: the nominal start, n = 1).
        kick: δ, ``(12,)`` or ``(n, 12)`` (default: 0.3 in position, 1 in velocity).
        time: the kick's time, strictly inside (0, T) and at least one step from both ends.
        nt: RK4 steps (default ``problem.eval_steps``).

    Returns:
        :class:`ShockResult`.

    Raises:
        TypeError: ``problem`` is not a :class:`Quadcopter`.
        ValueError: ``time`` not strictly inside the horizon (at least one step from each
            end), a kick of the wrong shape or non-finite, bad starts (as ``rollout``).

    Reference: Onken et al., arXiv 2104.03270 (shock experiments at t = 0.1).

    Example:
        >>> from odeflow.control import ValueNetwork
        >>> pb = Quadcopter()
        >>> out = quadcopter_shock(pb, ValueNetwork(12, width=8).double(), nt=10)
        >>> out.paths.shape, out.shocked_paths.shape
        (torch.Size([11, 1, 12]), torch.Size([11, 1, 12]))
    """
    from ._simulate import rollout

    if not isinstance(problem, Quadcopter):
        raise TypeError(f"quadcopter_shock needs a Quadcopter, got {type(problem).__name__}")
    nt = problem.eval_steps if nt is None else nt
    if isinstance(nt, bool) or not isinstance(nt, int) or nt < 2:
        raise ValueError(f"nt must be an integer >= 2 (RK4 steps), got {nt!r}")
    h = problem.horizon / nt
    if not (isinstance(time, int | float) and math.isfinite(time)):
        raise ValueError(f"time must be a finite number, got {time!r}")
    k = round(time / h)
    if not 0 < k < nt:
        raise ValueError(
            f"the shock time {time} must lie at least one step (h = {h:.4g}) inside (0, "
            f"T = {problem.horizon}); pass a later/earlier time or more steps nt"
        )
    ref = next(iter(value.parameters()), torch.zeros((), dtype=torch.float64))
    if x is None:
        x = problem.start.to(ref)[None]
    base = rollout(problem, value, x, nt=nt)
    kicked = rollout(problem, value, x, nt=nt, shock=(k, kick))
    tgt = problem.target[:3].to(base.paths)

    def err(paths):
        return (paths[-1, :, :3] - tgt).norm(dim=-1)

    return ShockResult(
        err(base.paths), base.cost, err(kicked.paths), kicked.cost, base.paths, kicked.paths
    )


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'odeflow[viz]'") from None
    return plt


def plot_flight(problem: Quadcopter, paths: Tensor, path, *, shocked: Tensor | None = None):
    """Write a PNG of quadcopter flights in 3-D: ``paths`` ``(nt + 1, n, 12)`` (e.g.
    ``rollout(...).paths``), the start and target marked, optional ``shocked`` paths dashed.

    Needs matplotlib (the ``viz`` extra).

    Raises:
        ImportError: no matplotlib. ValueError: paths not of shape ``(nt + 1, n, 12)``.

    Example:
        >>> import tempfile, pathlib, torch
        >>> from odeflow.control import ValueNetwork, rollout
        >>> pb = Quadcopter()
        >>> paths = rollout(pb, ValueNetwork(12, width=4).double(), pb.start[None], nt=4).paths
        >>> with tempfile.TemporaryDirectory() as d:
        ...     plot_flight(pb, paths, pathlib.Path(d) / "q.png").is_file()
        True
    """
    from pathlib import Path

    plt = _pyplot()
    _check_paths(paths)
    fig = plt.figure(figsize=(5.5, 5))
    ax = fig.add_subplot(projection="3d")
    P = paths[..., :3].detach().cpu().numpy()
    for k in range(P.shape[1]):
        ax.plot(P[:, k, 0], P[:, k, 1], P[:, k, 2], color="tab:blue", lw=1.2,
                label="feedback" if k == 0 else None)  # fmt: skip
    if shocked is not None:
        _check_paths(shocked)
        S = shocked[..., :3].detach().cpu().numpy()
        for k in range(S.shape[1]):
            ax.plot(S[:, k, 0], S[:, k, 1], S[:, k, 2], "--", color="tab:red", lw=1.2,
                    label="after a kick" if k == 0 else None)  # fmt: skip
    s, y = problem.start[:3].numpy(), problem.target[:3].numpy()
    ax.scatter(*s, color="k", s=30, label="start")
    ax.scatter(*y, color="tab:green", marker="*", s=120, label="target")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel("z")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("quadcopter: closed-loop flights")
    out = Path(path)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out


def animate_flight(problem: Quadcopter, paths: Tensor, path, *, fps: int = 15, arm: float = 0.3):
    """Write an animated GIF (matplotlib's PillowWriter, no external binary) of one flight
    ``paths`` ``(nt + 1, 12)`` or ``(nt + 1, 1, 12)``: the body frame (two rotor arms of
    length ``arm`` rotated by the yaw/pitch/roll angles) moving along its track.

    Raises:
        ImportError: no matplotlib. ValueError: a path of the wrong shape.

    Example:
        >>> import tempfile, pathlib, torch
        >>> pb = Quadcopter()
        >>> paths = pb.start[None].expand(3, 12)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     animate_flight(pb, paths, pathlib.Path(d) / "q.gif").is_file()
        True
    """
    from pathlib import Path

    from matplotlib.animation import FuncAnimation, PillowWriter

    plt = _pyplot()
    p = paths[:, 0] if paths.ndim == 3 else paths
    if p.ndim != 2 or p.shape[-1] != 12:
        raise ValueError(f"paths must have shape (nt + 1, 12), got {tuple(paths.shape)}")
    P = p.detach().cpu().double()
    R = _rotation(P[:, 3:6])  # (nt + 1, 3, 3) body → world
    arms = arm * torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=P.dtype)
    tips = P[:, None, :3] + torch.einsum("kij,aj->kai", R, arms)
    X, T = P[:, :3].numpy(), tips.numpy()
    fig = plt.figure(figsize=(5, 5))
    ax = fig.add_subplot(projection="3d")
    lo, hi = X.min(0) - 2 * arm, X.max(0) + 2 * arm
    ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), zlim=(lo[2], hi[2]), xlabel="x",
           ylabel="y", zlabel="z")  # fmt: skip
    ax.scatter(*problem.target[:3].numpy(), color="tab:green", marker="*", s=120)
    (track,) = ax.plot([], [], [], color="tab:blue", lw=1)
    (a1,) = ax.plot([], [], [], color="k", lw=2)
    (a2,) = ax.plot([], [], [], color="tab:red", lw=2)

    def draw(k):
        track.set_data_3d(X[: k + 1, 0], X[: k + 1, 1], X[: k + 1, 2])
        a1.set_data_3d(T[k, :2, 0], T[k, :2, 1], T[k, :2, 2])
        a2.set_data_3d(T[k, 2:, 0], T[k, 2:, 1], T[k, 2:, 2])
        ax.set_title(f"quadcopter, step {k}/{len(X) - 1}")
        return track, a1, a2

    anim = FuncAnimation(fig, draw, frames=len(X), blit=False)
    out = Path(path)
    anim.save(out, writer=PillowWriter(fps=fps))
    plt.close(fig)
    return out


def _rotation(ang: Tensor) -> Tensor:
    """Body-to-world rotation R = R_z(ψ) R_y(θ) R_x(φ), whose third column is (f₇, f₈, f₉)."""
    s, c = ang.sin(), ang.cos()
    sp, st, sf = s.unbind(-1)
    cp, ct, cf = c.unbind(-1)
    rows = [
        [cp * ct, cp * st * sf - sp * cf, sp * sf + cp * st * cf],
        [sp * ct, sp * st * sf + cp * cf, -cp * sf + sp * st * cf],
        [-st, ct * sf, ct * cf],
    ]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def _check_paths(paths) -> None:
    if not isinstance(paths, Tensor) or paths.ndim != 3 or paths.shape[-1] != 12:
        raise ValueError(
            f"paths must be a (nt + 1, n, 12) tensor (rollout(...).paths), got "
            f"{tuple(getattr(paths, 'shape', ()))}"
        )
