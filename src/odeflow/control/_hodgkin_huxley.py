"""Closed-loop deep brain stimulation: a pathological Hodgkin–Huxley neuron tracking a healthy
one (d = 4), with its stiffness and the RK4 step count it needs."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._problem import QuadraticControlProblem, _check_positive
from ._solver import LossWeights

__all__ = ["HodgkinHuxley", "plot_tracking"]

# the real stability intervals [−b, 0] of the explicit methods (h·λ ∈ [−b, 0] is stable)
_STABILITY = {"euler": 2.0, "rk4": 2.785293563405282}
_PATHS: dict[tuple, tuple[Tensor, Tensor]] = {}  # free-neuron paths per parameter set


def _vtrap(x: Tensor) -> Tensor:
    """x / (eˣ − 1), continuous at x = 0 (value 1, slope −½), safe for autograd."""
    small = x.abs() < 1e-6
    xs = torch.where(small, torch.ones_like(x), x)
    return torch.where(small, 1.0 - 0.5 * x, xs / torch.expm1(xs))


def _gates(V: Tensor):
    """Opening/closing rates (αₘ, βₘ, αₙ, βₙ, α_h, β_h) at V (mV, rest at 0), 1/ms."""
    am = _vtrap(2.5 - 0.1 * V)
    bm = 4.0 * torch.exp(-V / 18.0)
    an = 0.1 * _vtrap(1.0 - 0.1 * V)
    bn = 0.125 * torch.exp(-V / 80.0)
    ah = 0.07 * torch.exp(-V / 20.0)
    bh = 1.0 / (torch.exp(3.0 - 0.1 * V) + 1.0)
    return am, bm, an, bn, ah, bh


class HodgkinHuxley(QuadraticControlProblem):
    r"""Deep brain stimulation: steer a pathological Hodgkin–Huxley neuron along a healthy one.

    State z = (V, m, n, h) (membrane potential in mV, rest at 0, and the gating variables),
    control u (the stimulation current, μA/cm²), time in ms:

    .. math::
        C_m\dot V = u - g_{Na}m^3h(V - E_{Na}) - g_K n^4 (V - E_K) - g_L(V - E_L),\quad
        \dot y = \alpha_y(V)(1 - y) - \beta_y(V)\,y\ \ (y = m, n, h),

    with the pathological g_Na = 380 (healthy: 120), g_K = 36, g_L = 0.3,
    (E_Na, E_K, E_L) = (115, −12, 10.613), C_m = 1. Cost

    .. math::
        \int_0^T \tfrac12 u^2 + 100\,|z - z^*(t)|^2\,dt + \tfrac12|z_T - z^*(T)|^2,

    z* the healthy neuron (g_Na = 120) from the same start, computed here by
    :func:`odeflow.odeint` (RK4, ``reference_steps``) and read between its nodes by cubic
    Hermite interpolation (O(h⁴)). Control-affine with a quadratic cost
    (:class:`QuadraticControlProblem`, B = e₁/C_m): u* = −p_V/C_m, H = ½(p_V/C_m)² − p·a − q.

    **Stiffness.** At the top of a pathological spike the Jacobian of the drift has an
    eigenvalue near −116 /ms (:meth:`stiffness`), so an explicit method needs
    h·116 ≤ b (b = 2.785 for RK4, 2 for forward Euler): :meth:`stable_steps` gives the
    smallest safe count over T = 30 ms (1248 RK4 steps, 1737 Euler steps); the default
    ``steps`` is 1500 (the paper's count). :meth:`check_steps` raises below that bound, and
    the solvers of :mod:`odeflow.control` call it.

    ρ₀: the start (0, 0, 0, 0) plus N(0, s₀²) on V (s₀ = 10 mV, as the paper's training
    starts). Loss weights: the objective only (the HJB penalty along 1500 steps costs more
    than it helps at this budget).

    **Value.** :class:`TrackingLQRValue` linearises the neuron along z* (its closed loop from
    rest is 20 % above IPOPT's optimum at nt = 1500) and, given its own closed loop as the
    nominal path, along that (iterative LQR: two passes reach 0.04 %);
    :meth:`reference_velocity` gives it ż*.

    Args:
        sodium: g_Na of the controlled neuron (380). healthy_sodium: g_Na of the reference (120).
        potassium, leak: g_K, g_L. capacitance: C_m.
        tracking_weight: the weight of |z − z*|² (100). control_weight: r in (r/2)u² (1).
        terminal_weight: γ in (γ/2)|z_T − z*(T)|² (1). horizon: T in ms (30).
        start: z(0) (4 numbers). initial_std: s₀. reference_steps: RK4 steps of z*
            (default 50 per ms, h = 20 μs; at least :meth:`stable_steps`).

    Raises:
        ValueError: a non-positive parameter, a start that is not 4 finite numbers, or
            ``reference_steps`` below the stable count.

    Reference: Madondo et al., neural-network feedback control of a Hodgkin–Huxley neuron
    for closed-loop deep brain stimulation, ML4H 2023 (code: mmadondo/HH_control, whose
    settings these are); Hodgkin & Huxley, J. Physiol. 117 (1952).

    Example:
        >>> pb = HodgkinHuxley(horizon=6.0)      # the first 6 ms (the full 30 ms: 1248, 1737)
        >>> pb.stable_steps("rk4"), pb.stable_steps("euler")
        (58, 80)
        >>> pb.check_steps(40)
        Traceback (most recent call last):
        ...
        ValueError: nt = 40 RK4 steps are unstable for HodgkinHuxley: ...
    """

    name = "hodgkin-huxley"
    steps = 1500
    eval_steps = 1500

    def __init__(
        self,
        *,
        sodium: float = 380.0,
        healthy_sodium: float = 120.0,
        potassium: float = 36.0,
        leak: float = 0.3,
        capacitance: float = 1.0,
        tracking_weight: float = 100.0,
        control_weight: float = 1.0,
        terminal_weight: float = 1.0,
        horizon: float = 30.0,
        start=(0.0, 0.0, 0.0, 0.0),
        initial_std: float = 10.0,
        reference_steps: int | None = None,
    ):
        cm = _check_positive("capacitance", capacitance, "the membrane capacitance C_m")
        B = torch.zeros(4, 1, dtype=torch.float64)
        B[0, 0] = 1.0 / cm
        super().__init__(4, B, control_weight, horizon, None)
        self.cm = cm
        self.g_na = _check_positive("sodium", sodium, "g_Na, pathological 380")
        self.g_na_healthy = _check_positive("healthy_sodium", healthy_sodium, "g_Na, 120")
        self.g_k = _check_positive("potassium", potassium, "g_K")
        self.g_l = _check_positive("leak", leak, "g_L")
        self.e_na, self.e_k, self.e_l = 115.0, -12.0, 10.613
        self.q = _check_positive("tracking_weight", tracking_weight, "the weight on |z − z*|²")
        self.gamma = _check_positive("terminal_weight", terminal_weight, "γ on the final miss")
        self.std0 = _check_positive("initial_std", initial_std, "the spread of V at t = 0")
        z0 = torch.as_tensor(start, dtype=torch.float64).reshape(-1)
        if z0.numel() != 4 or not bool(torch.isfinite(z0).all()):
            raise ValueError(f"start must be 4 finite numbers (V, m, n, h), got {start!r}")
        self.start = z0
        self.weights = LossWeights(hjb=0.0, terminal_value=0.0, terminal_gradient=0.0)
        n_ref = math.ceil(50 * self.horizon) if reference_steps is None else reference_steps
        if isinstance(n_ref, bool) or not isinstance(n_ref, int) or n_ref < 1:
            raise ValueError(f"reference_steps must be an integer >= 1, got {reference_steps!r}")
        self.reference_steps = n_ref
        key = (self.g_na, self.g_na_healthy, self.g_k, self.g_l, self.cm, self.horizon,
               tuple(z0.tolist()), n_ref)  # fmt: skip
        if key not in _PATHS:  # both free neurons in one batched solve, kept per parameters
            _PATHS[key] = self._free_paths(n_ref)
        sick, self._ref_z = _PATHS[key]
        self._ref_f = self.uncontrolled(self._ref_z, self.g_na_healthy)
        self._rho = max(self._spectral_radius(sick, self.g_na),
                        self._spectral_radius(self._ref_z, self.g_na_healthy))  # fmt: skip
        self.check_steps(n_ref)

    # ------------------------------------------------------------------ dynamics
    def ionic_current(self, x: Tensor, sodium: float | Tensor | None = None) -> Tensor:
        """I_ion = g_Na m³h(V − E_Na) + g_K n⁴(V − E_K) + g_L(V − E_L), ``(n, 4) -> (n,)``."""
        V, m, n, h = x.unbind(-1)
        g = self.g_na if sodium is None else sodium
        return (
            g * m**3 * h * (V - self.e_na)
            + self.g_k * n**4 * (V - self.e_k)
            + self.g_l * (V - self.e_l)
        )

    def uncontrolled(self, x: Tensor, sodium: float | Tensor | None = None) -> Tensor:
        """The drift a(z) (u = 0) with g_Na = ``sodium`` (a number or ``(n,)``; default the
        pathological one), ``(n, 4) -> (n, 4)``."""
        V, m, n, h = x.unbind(-1)
        am, bm, an, bn, ah, bh = _gates(V)
        dV = -self.ionic_current(x, sodium) / self.cm
        return torch.stack(
            [dV, am * (1 - m) - bm * m, an * (1 - n) - bn * n, ah * (1 - h) - bh * h], -1
        )

    def drift(self, x, t):
        return self.uncontrolled(x)

    def state_cost(self, x, t):
        r = x - self.reference(t).to(x)
        return self.q * (r * r).sum(-1)

    def terminal_cost(self, x, log_rho=None):
        r = x - self._ref_z[-1].to(x)
        return 0.5 * self.gamma * (r * r).sum(-1)

    def sample_initial(self, n, *, generator=None, dtype=None, device=None):
        dt = dtype or torch.float64
        z = self.start.to(dt).expand(n, -1).clone()
        z[:, 0] += self.std0 * torch.randn(n, generator=generator, dtype=dt)
        return z.to(device=device)

    # ------------------------------------------------------------------ reference
    def _free_paths(self, nt: int) -> tuple[Tensor, Tensor]:
        """The free neurons (u = 0) with the pathological and the healthy g_Na from the start,
        one batched RK4 solve by :func:`odeflow.odeint`: two ``(nt + 1, 4)`` paths."""
        from odeflow.ode import odeint

        t = torch.linspace(0.0, self.horizon, nt + 1, dtype=torch.float64)
        g = torch.tensor([self.g_na, self.g_na_healthy], dtype=torch.float64)
        with torch.no_grad():
            z = odeint(lambda s, y: self.uncontrolled(y, g), self.start.expand(2, 4), t,
                       method="rk4", gradient="backprop")  # fmt: skip
        if not bool(torch.isfinite(z).all()):
            raise ValueError(
                f"the free neuron overflowed with {nt} RK4 steps; pass more reference_steps"
            )
        return z[:, 0], z[:, 1]

    def _spectral_radius(self, z: Tensor, sodium: float) -> float:
        from torch.func import jacrev, vmap

        J = vmap(jacrev(lambda y: self.uncontrolled(y[None], sodium)[0]))(z)
        return float(torch.linalg.eigvals(J).abs().max())

    def reference(self, t) -> Tensor:
        """z*(t), the healthy trajectory (cubic Hermite between RK4 nodes): a number or 0-d
        tensor gives ``(4,)``, an ``(n,)`` tensor ``(n, 4)``."""
        return self._reference(t, 0)

    def reference_velocity(self, t) -> Tensor:
        """ż*(t), the t-derivative of :meth:`reference`'s interpolant (same shapes)."""
        return self._reference(t, 1)

    def _reference(self, t, which: int) -> Tensor:
        from ._tracking_lqr import _hermite

        tt = torch.as_tensor(t, dtype=torch.float64).detach().cpu()
        s = tt.clamp(0.0, self.horizon).reshape(-1)
        out = _hermite(self._ref_z, self._ref_f, self.horizon / self.reference_steps, s)[which]
        return out[0] if tt.ndim == 0 else out

    # ------------------------------------------------------------------ stiffness
    def stiffness(self) -> float:
        """The largest |λ| (1/ms) of ∂a/∂z along the free pathological and the healthy
        trajectories (RK4, ``reference_steps``): the fastest time scale of the neuron."""
        return self._rho

    def stable_steps(self, method: str = "rk4") -> int:
        """The smallest step count N with (T/N)·:meth:`stiffness` inside the method's real
        stability interval (``"rk4"``: 2.785, ``"euler"``: 2)."""
        if method not in _STABILITY:
            raise ValueError(f"method must be one of {sorted(_STABILITY)}, got {method!r}")
        return math.ceil(self.horizon * self.stiffness() / _STABILITY[method])

    def check_steps(self, nt: int, method: str = "rk4") -> None:
        """Raise ValueError when ``nt`` steps of ``method`` over T are below
        :meth:`stable_steps` (the message gives the bound and the fix)."""
        need = self.stable_steps(method)
        if nt < need:
            rho = self.stiffness()
            raise ValueError(
                f"nt = {nt} {method.upper()} steps are unstable for HodgkinHuxley: the "
                f"linearised neuron has |λ| up to {rho:.0f}/ms, so h = T/nt must be at most "
                f"{_STABILITY[method] / rho:.4f} ms; pass nt >= {need} (default {self.steps})"
            )

    def spec(self):
        return {
            "name": self.name,
            "sodium": self.g_na,
            "healthy_sodium": self.g_na_healthy,
            "tracking_weight": self.q,
            "horizon": self.horizon,
        }


def plot_tracking(problem: HodgkinHuxley, paths: Tensor, path, *, free: Tensor | None = None,
                  label: str = "feedback"):  # fmt: skip
    """Write a PNG of the membrane potential V(t): the controlled ``paths`` ``(nt + 1, n, 4)``
    (e.g. ``rollout(...).paths``, first start drawn), the healthy target z*(t) and, if given,
    the uncontrolled pathological neuron ``free`` ``(nt + 1, n, 4)``.

    Raises:
        ImportError: no matplotlib (the ``viz`` extra). ValueError: paths of the wrong shape.

    Example:
        >>> import tempfile, pathlib, torch
        >>> pb = HodgkinHuxley(horizon=2.0)
        >>> paths = pb.reference(torch.linspace(0, 2, 11))[:, None]
        >>> with tempfile.TemporaryDirectory() as d:
        ...     plot_tracking(pb, paths, pathlib.Path(d) / "v.png").is_file()
        True
    """
    from pathlib import Path

    from ._quadcopter import _pyplot

    plt = _pyplot()
    for name, p in (("paths", paths), ("free", free)):
        if p is not None and (not isinstance(p, Tensor) or p.ndim != 3 or p.shape[-1] != 4):
            raise ValueError(f"{name} must be a (nt + 1, n, 4) tensor, got {tuple(p.shape)}")
    fine = torch.linspace(0.0, problem.horizon, 2001, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(fine.numpy(), problem.reference(fine)[:, 0].numpy(), color="k", lw=2.5, alpha=0.4,
            label=f"healthy target (g_Na = {problem.g_na_healthy:g})")  # fmt: skip
    if free is not None:
        tf = torch.linspace(0.0, problem.horizon, free.shape[0])
        ax.plot(tf.numpy(), free[:, 0, 0].detach().cpu().numpy(), color="tab:red", lw=1,
                label=f"uncontrolled (g_Na = {problem.g_na:g})")  # fmt: skip
    tp = torch.linspace(0.0, problem.horizon, paths.shape[0])
    ax.plot(tp.numpy(), paths[:, 0, 0].detach().cpu().numpy(), color="tab:blue", lw=1.2,
            label=label)  # fmt: skip
    ax.set_xlabel("t (ms)")
    ax.set_ylabel("V (mV)")
    ax.legend(fontsize=8)
    ax.set_title("Hodgkin–Huxley: tracking a healthy neuron")
    out = Path(path)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out
