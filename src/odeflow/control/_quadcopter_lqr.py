"""The quadcopter's value linearised at hover: an exact Riccati baseline with its affine terms."""

from __future__ import annotations

import torch

from ._reference import LQRValue
from ._value import ValueFunction, ValueJet

__all__ = ["HoverLQRValue"]


class HoverLQRValue(ValueFunction):
    r"""The exact value of the quadcopter linearised at hover, a baseline for its network.

    With u = mg + δu and small angles, f₇ ≈ θ, f₈ ≈ −φ, f₉ ≈ 1, the quadcopter
    (:class:`~odeflow.control.Quadcopter`) becomes ż = Az + Bδu' (no affine drift: the hover
    thrust cancels gravity) with v̇ₓ = gθ, v̇_y = −gφ, v̇_z = δu/m, ω̇ = τ, and the running
    cost 2 + (mg + δu)² + |τ|² = (2 + m²g²) + 2mg δu + δu² + |τ|². Along these dynamics
    ∫ₜᵀ 2mg δu ds = 2m²g (v_z(T) − v_z(t)), so the linear term moves into the terminal cost,
    (α₀/2)|z_T − y|² + 2m²g v_z(T) = (α₀/2)|z_T − y'|² − α₀c²/2 with y' = y − c e_{v_z},
    c = 2m²g/α₀, and the value is

    .. math::
        \Phi(z, t) = \Phi_{LQ}(z, t) + (2 + m^2g^2)(T - t) - 2m^2 g\, v_z - \tfrac{\alpha_0}{2}c^2,

    Φ_LQ the Riccati value (:class:`LQRValue`) of ż = Az + Bδu, L = δu² + |τ|² (so
    G_c = BR⁻¹Bᵀ = diag(1/(2m²) on v_z, ½ on the angular rates)), G = (α₀/2)|z − y'|².
    Its gradient carries the terminal gain α₀ that grows over the horizon (what a log-cosh
    network cannot learn), and its feedback at rest on the target is about the hover thrust mg. On
    states with zero angles the quadcopter's own Hamiltonian equals the linearised one, so there the
    HJB residual of this Φ vanishes to round-off. Its closed loop is stiff near T: the v_z
    rate of the feedback reaches −α₀/(2m²) = −2500 at t = T, so RK4 needs steps h ≲ 1e-3
    there (from 0.1 off the target in each position, the closed loop costs 177.8 at nt = 50
    and 110.2 at nt ≥ 200, against Φ(x₀, 0) = 109.4).

    Args:
        problem: a :class:`~odeflow.control.Quadcopter` (mass, gravity, α₀, target, T).

    Raises:
        TypeError: ``problem`` is not a quadcopter.

    Reference: Onken et al., arXiv 2104.03270 (the quadcopter); Anderson & Moore,
    *Optimal Control: Linear Quadratic Methods* (1990), ch. 2 (Riccati).

    Example:
        >>> import torch
        >>> from odeflow.control import Quadcopter
        >>> pb = Quadcopter()
        >>> phi = HoverLQRValue(pb)
        >>> z = pb.target[None].clone()   # at rest on the target: about the hover thrust mg
        >>> pb.feedback(z, phi.jet(z, 0.5).grad, 0.5).round(decimals=2)
        tensor([[9.8200, -0.0000, -0.0000, -0.0000]], dtype=torch.float64)
    """

    def __init__(self, problem):
        super().__init__()
        from ._quadcopter import Quadcopter

        if not isinstance(problem, Quadcopter):
            raise TypeError(f"HoverLQRValue needs a Quadcopter, got {type(problem).__name__}")
        m, g, a0 = problem.mass, problem.gravity, problem.alpha0
        self.dim, self.horizon = 12, float(problem.horizon)
        A = torch.zeros(12, 12, dtype=torch.float64)
        A[:6, 6:] = torch.eye(6, dtype=torch.float64)
        A[6, 4], A[7, 5] = g, -g
        gain = torch.zeros(12, dtype=torch.float64)
        gain[8] = 1.0 / (2 * m * m)
        gain[9:] = 0.5
        self.shift = 2 * m * m * g / a0  # c
        target = problem.target.clone()
        target[8] -= self.shift
        self.lq = LQRValue(12, gain=torch.diag(gain).numpy(), A=A.numpy(), Qf=a0,
                           target=target.numpy(), horizon=self.horizon)  # fmt: skip
        self.running0 = 2.0 + (m * g) ** 2  # 2 + m²g²
        self.slope = 2 * m * m * g  # 2m²g
        self.offset = -0.5 * a0 * self.shift**2

    def jet(self, x, t, second=None) -> ValueJet:
        from ._value import _time_column

        j = self.lq.jet(x, t, second)
        tc = _time_column(t, x)[:, 0]
        value = j.value + self.running0 * (self.horizon - tc) - self.slope * x[:, 8] + self.offset
        grad = j.grad.clone()
        grad[:, 8] = grad[:, 8] - self.slope
        return ValueJet(value, grad, j.dt - self.running0, j.laplacian, j.hessian)
