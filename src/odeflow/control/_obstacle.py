"""The 2-D anisotropic stochastic obstacle problem of the neural SOC paper, with its grid
reference."""

from __future__ import annotations

import math

import torch

from ._hjb_grid import GridHJBSolution, solve_hjb_grid
from ._problem import QuadraticControlProblem
from ._solver import LossWeights

__all__ = ["StochasticObstacle"]


class StochasticObstacle(QuadraticControlProblem):
    r"""The 2-D stochastic obstacle problem with anisotropic noise (Li, Verma, Ruthotto).

    .. math::
        dz = u\,dt + \sigma\,dW,\quad \sigma = \begin{pmatrix}0.2 & -0.4\\ -0.4 & 0.2
        \end{pmatrix},\quad \sigma\sigma^\top = \begin{pmatrix}0.2 & -0.16\\ -0.16 & 0.2
        \end{pmatrix},

        L = \tfrac12|u|^2 + Q(z),\quad Q(z) = 50\,\mathcal{N}(z; 0, 0.4I)
        = \frac{50}{2\pi\cdot 0.4}e^{-|z|^2/0.8},\quad
        G(z) = 50\,|z - (1.5, 1.5)|^2,\quad T = 1,\quad z_0 \sim \mathcal{N}((-1.5, -1.5), I),

    so H = ½|p|², u* = −∇Φ and the HJB is
    −∂ₜΦ − ½tr(σσᵀ∇²Φ) + ½|∇Φ|² = Q, Φ(·, T) = G. The agent crosses from the lower left to
    the upper right around the bump at the origin, pushed along the anti-diagonal by the
    noise. The costs are those of the paper's code (EmoryMLIP/NeuralSOC, ``TrajectoryProblem2``
    and its FEniCS reference ``2D_HJB_Fenics.py``, whose HJB has the ½ in front of the trace;
    the network's penalty there used ¼, odeflow's :func:`hjb_residual` uses ½).
    :meth:`reference` solves the HJB on a grid (:func:`solve_hjb_grid`, first order,
    Richardson-extrapolated over two grids).

    Args:
        target: the terminal point y (default (1.5, 1.5)). weight: the terminal weight, G =
            weight·|z − y|² (50). obstacle: the bump's mass (50). spread: its variance (0.4).

    Reference: Li, Verma, Ruthotto, "A neural network approach for stochastic optimal
    control", arXiv 2209.13104, section on the 2-D obstacle problem.

    Example:
        >>> pb = StochasticObstacle()
        >>> pb.noise_matrix()
        tensor([[ 0.2000, -0.1600],
                [-0.1600,  0.2000]], dtype=torch.float64)
    """

    name = "soc-obstacle"
    steps = 32

    def __init__(
        self,
        dim: int = 2,
        *,
        target=(1.5, 1.5),
        weight: float = 50.0,
        obstacle: float = 50.0,
        spread: float = 0.4,
    ):
        if dim != 2:
            raise ValueError(f"soc-obstacle is a 2-D problem, got dim={dim}")
        sigma = torch.tensor([[0.2, -0.4], [-0.4, 0.2]], dtype=torch.float64)
        super().__init__(2, None, 1.0, 1.0, sigma)
        self.target = torch.as_tensor(target, dtype=torch.float64).reshape(2)
        self.weight = float(weight)
        self.mass = float(obstacle)
        self.spread = float(spread)
        if not all(math.isfinite(v) and v > 0 for v in (self.weight, self.mass, self.spread)):
            raise ValueError("weight, obstacle and spread must be positive, finite numbers")
        self.mean0 = torch.tensor([-1.5, -1.5], dtype=torch.float64)
        # objective, BSDE consistency and terminal value; the HJB term (a Hessian per step)
        # did not help in short runs and costs most of the time
        self.weights = LossWeights(objective=1.0, hjb=0.0, terminal_value=1.0, bsde=1.0)

    def obstacle(self, x, t):
        r2 = (x * x).sum(-1)
        return self.mass / (2 * math.pi * self.spread) * torch.exp(-0.5 * r2 / self.spread)

    def terminal_cost(self, x, log_rho=None):
        r = x - self.target.to(x)
        return self.weight * (r * r).sum(-1)

    def terminal_gradient(self, x):
        return 2 * self.weight * (x - self.target.to(x))

    def sample_initial(self, n, *, generator=None, dtype=None, device=None):
        z = torch.randn(n, 2, generator=generator, dtype=torch.float64) + self.mean0
        return z.to(dtype=dtype or torch.float64, device=device)

    def baseline(self):
        """The value of the problem without the obstacle, a :class:`LQRValue` (Riccati: P(t) =
        2w/(1 + 2w(T − t)) I), the stiff part of Φ; use with :class:`ResidualValue`."""
        from ._reference import LQRValue

        return LQRValue(2, gain=1.0, Qf=2.0 * self.weight, noise=self.noise_matrix(),
                        target=self.target, horizon=self.horizon)  # fmt: skip

    def reference(
        self, n: int = 161, bounds=(-4.0, 4.0), *, extrapolate: bool = True
    ) -> GridHJBSolution:
        """Φ(·, 0) on a grid by :func:`solve_hjb_grid`; with ``extrapolate`` also on the grid
        of 2n − 1 points, combined as 2Φ_{h/2} − Φ_h (Richardson, the scheme is first
        order) on the coarse grid's points. Callable at ``(m, 2)`` points."""
        t0 = torch.tensor(0.0, dtype=torch.float64)

        def solve(m):
            return solve_hjb_grid(
                self.terminal_cost,
                noise=self.noise_matrix(),
                source=lambda x: self.obstacle(x, t0),
                horizon=self.horizon,
                bounds=bounds,
                n=m,
            )

        coarse = solve(n)
        if not extrapolate:
            return coarse
        fine = solve(2 * n - 1)
        values = 2 * fine.values[:, ::2, ::2] - coarse.values
        return GridHJBSolution(coarse.axis, coarse.times, values, coarse.steps + fine.steps)

    def spec(self):
        return {"name": self.name, "dim": 2}
