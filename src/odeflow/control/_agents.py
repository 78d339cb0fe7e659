r"""Multi-agent path finding: agents with ż = u that reach targets without colliding with each
other or with obstacles (Onken et al., IEEE TCST 2022, arXiv 2104.03270).

All agents form one state z = (x₁, …, x_A) ∈ R^{A·k} (k = 2 or 3 coordinates per agent);
the costs are batched over samples, agents, pairs and obstacles (no Python loop per agent).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ._problem import QuadraticControlProblem, _check_positive
from ._solver import LossWeights

__all__ = [
    "AgentProblem",
    "Corridor",
    "SafetyReport",
    "Swap2",
    "Swap12",
    "Swarm50",
    "agent_metrics",
    "agent_rollout",
]


def smoothstep(u: Tensor) -> Tensor:
    """The quintic smooth step 6u⁵ − 15u⁴ + 10u³ of u clamped to [0, 1] (C² at 0 and 1)."""
    u = u.clamp(0.0, 1.0)
    return u * u * u * (10.0 + u * (6.0 * u - 15.0))


class SafetyReport(NamedTuple):
    """Safety of closed-loop paths, at the true (uninflated) radius and obstacles.

    ``collisions (n,)``: agent pairs that come closer than 2r at some time step;
    ``violations (n,)``: agents whose centre enters an obstacle at some time step;
    ``min_distance (n,)``: the smallest distance between two agents along each path
    (+inf with one agent); ``terminal_error (n,)``: |z_T − y| / spread of the targets, where
    the spread is the root-mean-square distance of the targets from their centroid.
    """

    collisions: Tensor
    violations: Tensor
    min_distance: Tensor
    terminal_error: Tensor


class AgentProblem(QuadraticControlProblem):
    r"""A multi-agent path-finding problem with the NeuralOC costs, made smooth.

    A agents in R^k, state z = (x₁, …, x_A) ∈ R^d (d = A·k), dynamics ż = u,

    .. math::
        L = \tfrac12|u|^2 + \alpha_1 Q(z) + \alpha_2 W(z),\qquad
        G = \tfrac{\alpha_0}{2}|z_T - y|^2,\qquad
        H = \tfrac12|p|^2 - \alpha_1 Q - \alpha_2 W,\quad u^* = -p,

    with obstacle cost :math:`Q(z) = \sum_i\sum_o q_o(x_i)\,S_o(x_i)`, where for a disc
    (ball) :math:`q_o` is the paper's Gaussian bump, the normal density
    :math:`(2\pi s_o^2)^{-k/2}e^{-|x - c_o|^2/2s_o^2}`, and for a box
    :math:`q_o = 1 + e^{-\frac12|(x - c_o)/s_o|^2}` (the paper adds a large constant to
    Gaussians), and interaction
    :math:`W(z) = \sum_{i<j} e^{-|x_i - x_j|^2/2r^2}\,S_W(|x_i - x_j|)`. The paper restricts
    both with hard masks; here the masks are smooth (C², quintic smooth steps, so that IPOPT
    and the HJB see a differentiable problem): :math:`S_o` is 1 inside the obstacle
    (a disc/ball of radius R or a box) and 0 outside the obstacle inflated by ``inflate``,
    :math:`S_W` is 1 for |x_i − x_j| ≤ 2r and 0 beyond 2r·``interaction_margin``. The
    inflation is the paper's training safety margin; it is part of the costs everywhere
    (training, evaluation, the IPOPT peer), while :meth:`safety` counts collisions
    (|x_i − x_j| < 2r) and obstacle violations (a centre inside the true obstacle) at the
    uninflated sizes. ρ₀ = N(start, spread²·I); the loss weights are the paper's β.

    Subclasses set the geometry (:class:`Corridor`, :class:`Swap2`, :class:`Swap12`,
    :class:`Swarm50`); this class can be used directly for a custom scene.

    Args:
        start, target: ``(A, k)`` positions (y is the target). radius: r.
        alpha: (α₀, α₁, α₂), the weights of G, Q and W.
        discs: ``(centres (K, k), radii (K,), stds (K,))`` or None.
        boxes: ``(lo (B, k), hi (B, k), centres (B, k), stds (B, k))`` or None (±inf bounds
            allowed).
        inflate: obstacle inflation (default r). interaction_margin: > 1 (paper: 1.1).
        spread: std of ρ₀ around the start. horizon: T. steps: RK4 steps of training.
        weights: :class:`LossWeights` (the paper's β₁, β₂, β₃).

    Raises:
        ValueError: shapes that do not match, non-positive sizes or weights.

    Reference: Onken, Nurbekyan, Li, Wu Fung, Osher, Ruthotto, "A neural network approach
    for high-dimensional optimal control applied to multi-agent path finding", IEEE TCST
    (2022), arXiv 2104.03270.

    Example:
        >>> import torch
        >>> pb = AgentProblem([[0.0, 0.0], [3.0, 0.0]], [[3.0, 0.0], [0.0, 0.0]], radius=0.5)
        >>> pb.dim, pb.n_agents
        (4, 2)
        >>> z = torch.tensor([[0.0, 0.0, 0.5, 0.0]], dtype=torch.float64)
        >>> float(pb.interaction_cost(z)[0]) == math.exp(-0.5)   # |x₁ − x₂| = r: e^{−1/2}
        True
    """

    name = "agents"
    steps = 20

    def __init__(self, start, target, *, radius: float = 0.5, alpha=(100.0, 0.0, 300.0),
                 discs=None, boxes=None, inflate: float | None = None,
                 interaction_margin: float = 1.1, spread: float = 1.0, horizon: float = 1.0,
                 weights: LossWeights | None = None):  # fmt: skip
        start = torch.as_tensor(start, dtype=torch.float64)
        target = torch.as_tensor(target, dtype=torch.float64)
        if start.ndim != 2 or start.shape != target.shape or start.shape[1] not in (2, 3):
            raise ValueError(
                "start and target must both have shape (agents, k) with k = 2 or 3, got "
                f"{tuple(start.shape)} and {tuple(target.shape)}"
            )
        if not (bool(torch.isfinite(start).all()) and bool(torch.isfinite(target).all())):
            raise ValueError("start and target must be finite")
        self.n_agents, self.agent_dim = start.shape
        super().__init__(start.numel(), None, 1.0, horizon, None)
        self.start, self.target = start.reshape(-1), target.reshape(-1)
        self.radius = _check_positive("radius", radius, "the agents' radius r")
        a = tuple(float(v) for v in alpha)
        if len(a) != 3 or a[0] <= 0 or min(a) < 0 or not all(map(math.isfinite, a)):
            raise ValueError(f"alpha must be (α₀ > 0, α₁ ≥ 0, α₂ ≥ 0), got {alpha!r}")
        self.alpha = a
        self.inflate = self.radius if inflate is None else float(inflate)
        if not (math.isfinite(self.inflate) and self.inflate > 0):
            raise ValueError(f"inflate must be a positive number, got {inflate!r}")
        self.interaction_margin = float(interaction_margin)
        if not (math.isfinite(self.interaction_margin) and self.interaction_margin > 1):
            raise ValueError(f"interaction_margin must be > 1, got {interaction_margin!r}")
        self.spread = _check_positive("spread", spread, "the std of ρ₀ around the start")
        self.discs = self._check_discs(discs)
        self.boxes = self._check_boxes(boxes)
        self.weights = weights if weights is not None else LossWeights()
        self._pairs = torch.triu_indices(self.n_agents, self.n_agents, 1)
        y = target - target.mean(0)
        self.target_spread = float((y * y).sum(1).mean().sqrt()) or 1.0

    def _check_discs(self, discs):
        if discs is None:
            return None
        c, R, s = (torch.as_tensor(v, dtype=torch.float64) for v in discs)
        K = (len(c),)
        if c.ndim != 2 or c.shape[1] != self.agent_dim or R.shape != K or s.shape != K:
            k = self.agent_dim
            raise ValueError(f"discs must be (centres (K, {k}), radii (K,), stds (K,))")
        if not (bool((R > 0).all()) and bool((s > 0).all())):
            raise ValueError("disc radii and stds must be positive")
        return c, R, s

    def _check_boxes(self, boxes):
        if boxes is None:
            return None
        lo, hi, c, s = (torch.as_tensor(v, dtype=torch.float64) for v in boxes)
        k = self.agent_dim
        if lo.ndim != 2 or lo.shape[1] != k or any(v.shape != lo.shape for v in (hi, c, s)):
            raise ValueError(
                f"boxes must be (lo (B, {k}), hi (B, {k}), centres (B, {k}), stds (B, {k}))"
            )
        if not (bool((hi > lo).all()) and bool((s > 0).all()) and bool(c.isfinite().all())):
            raise ValueError("boxes need hi > lo, finite centres and positive stds")
        return lo, hi, c, s

    # ------------------------------------------------------------------ costs
    def _agents(self, z: Tensor) -> Tensor:
        return z.reshape(z.shape[0], self.n_agents, self.agent_dim)

    def obstacle_cost(self, z: Tensor, *, inflate: float | None = None) -> Tensor:
        """Q(z) ``(n, d) -> (n,)`` (unweighted; ``inflate`` overrides the margin)."""
        m = self.inflate if inflate is None else inflate
        x = self._agents(z)
        out = z.new_zeros(z.shape[0])
        k = self.agent_dim
        if self.discs is not None:
            c, R, s = (v.to(z) for v in self.discs)
            r2 = ((x[:, :, None, :] - c) ** 2).sum(-1)  # (n, A, K)
            h = (2 * math.pi * s * s) ** (-k / 2)
            Ro2 = (R + m) ** 2
            ind = smoothstep((Ro2 - r2) / (Ro2 - R * R))
            out = out + (h * torch.exp(-0.5 * r2 / (s * s)) * ind).sum((1, 2))
        if self.boxes is not None:
            lo, hi, c, s = (v.to(z) for v in self.boxes)
            xb = x[:, :, None, :]  # (n, A, 1, k) against (B, k)
            ind = (smoothstep((hi + m - xb) / m) * smoothstep((xb - lo + m) / m)).prod(-1)
            g = torch.exp(-0.5 * (((xb - c) / s) ** 2).sum(-1))
            out = out + ((1.0 + g) * ind).sum((1, 2))
        return out

    def pair_distances(self, z: Tensor) -> Tensor:
        """|x_i − x_j| for the pairs i < j, ``(n, d) -> (n, A(A−1)/2)``."""
        x = self._agents(z)
        i, j = self._pairs.to(z.device)
        return (x[:, i] - x[:, j]).norm(dim=-1)

    def interaction_cost(self, z: Tensor) -> Tensor:
        """W(z) ``(n, d) -> (n,)`` (unweighted).

        Only the pairs closer than the cut-off 2r·``interaction_margin`` contribute (S_W = 0
        beyond it, with a zero derivative): a first pass without autograd over all
        A(A − 1)/2 pairs finds them, and the terms and their derivatives are evaluated on
        those alone, so that a differentiated call costs in the number of near pairs, not
        in A² (50 agents: 1225 pairs, mostly far apart). Inside :mod:`torch.func`
        transforms (no data-dependent shapes there) every pair is evaluated."""
        n = z.shape[0]
        if self.n_agents < 2:
            return z.new_zeros(n)
        x = self._agents(z)
        r2 = (2 * self.radius) ** 2
        ro2 = r2 * self.interaction_margin**2
        i, j = self._pairs.to(z.device)
        if torch._C._functorch.is_functorch_wrapped_tensor(z):  # vmap/grad: all pairs
            d2 = ((x[:, i] - x[:, j]) ** 2).sum(-1)
            ind = smoothstep((ro2 - d2) / (ro2 - r2))
            return (torch.exp(-0.5 * d2 / self.radius**2) * ind).sum(-1)
        with torch.no_grad():  # the near pairs, with slack for round-off (far terms are 0)
            s, p = (((x[:, i] - x[:, j]) ** 2).sum(-1) < 1.001 * ro2).nonzero(as_tuple=True)
        d2 = ((x[s, i[p]] - x[s, j[p]]) ** 2).sum(-1)
        ind = smoothstep((ro2 - d2) / (ro2 - r2))
        return z.new_zeros(n).index_add(0, s, torch.exp(-0.5 * d2 / self.radius**2) * ind)

    def obstacle(self, x: Tensor, t) -> Tensor:
        """α₁Q + α₂W (the state cost of the problem protocol), ``(n,)``."""
        out = self.alpha[2] * self.interaction_cost(x)
        if self.discs is not None or self.boxes is not None:
            out = out + self.alpha[1] * self.obstacle_cost(x)
        return out

    def terminal_cost(self, x: Tensor, log_rho: Tensor | None = None) -> Tensor:
        r = x - self.target.to(x)
        return 0.5 * self.alpha[0] * (r * r).sum(-1)

    def terminal_gradient(self, x: Tensor) -> Tensor:
        return self.alpha[0] * (x - self.target.to(x))

    def sample_initial(self, n, *, generator=None, dtype=None, device=None):
        z = torch.randn(n, self.dim, generator=generator, dtype=dtype or torch.float64)
        return (self.start.to(z) + self.spread * z).to(device=device)

    # ------------------------------------------------------------------ checks and safety
    def check_start(self, x: Tensor) -> Tensor:
        """Validate initial states ``(n, d)``: shape, finite values, no agents overlapping
        (closer than 2r) at t = 0. Returns x.

        Raises:
            ValueError: naming the sample and the agents that overlap, or the bad shape.
        """
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"starts must have shape (n, {self.dim}) ({self.n_agents} agents × "
                f"{self.agent_dim} coordinates), got {tuple(getattr(x, 'shape', ()))}"
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError("the starts contain NaN or inf; pass finite positions")
        if self.n_agents > 1:
            d = self.pair_distances(x)
            bad = (d < 2 * self.radius).nonzero()
            if len(bad):
                s, p = (int(v) for v in bad[0])
                i, j = (int(v) for v in self._pairs[:, p])
                raise ValueError(
                    f"agents {i} and {j} overlap at t = 0 in start {s} (distance "
                    f"{float(d[s, p]):.3g} < 2r = {2 * self.radius:g}); {len(bad)} overlapping "
                    "pair(s) in all: move the agents apart"
                )
        return x

    def safe_starts(self, n: int, scale: float, *, generator=None, dtype=torch.float64) -> Tensor:
        """``n`` perturbed starts start + scale·N(0, I) with no overlapping agents at t = 0
        (overlapping draws are redrawn), ``(n, d)``."""
        out, need = [], n
        for _ in range(1000):
            z = self.start.to(dtype) + scale * torch.randn(
                2 * need, self.dim, generator=generator, dtype=dtype
            )
            ok = (self.pair_distances(z) >= 2 * self.radius).all(-1) if self.n_agents > 1 else None
            z = z if ok is None else z[ok]
            out.append(z[:need])
            need -= len(out[-1])
            if need <= 0:
                return torch.cat(out)
        raise ValueError(f"scale {scale} makes overlapping agents at t = 0 too likely")

    def inside_obstacles(self, z: Tensor) -> Tensor:
        """Which agents' centres are inside a true (uninflated) obstacle,
        ``(..., d) -> (..., A)``."""
        x = z.reshape(*z.shape[:-1], self.n_agents, self.agent_dim)
        out = torch.zeros(x.shape[:-1], dtype=torch.bool, device=z.device)
        if self.discs is not None:
            c, R, _ = (v.to(z) for v in self.discs)
            out |= ((x[..., None, :] - c).norm(dim=-1) < R).any(-1)
        if self.boxes is not None:
            lo, hi = (v.to(z) for v in self.boxes[:2])
            xb = x[..., None, :]
            out |= ((xb > lo) & (xb < hi)).all(-1).any(-1)
        return out

    def safety(self, paths: Tensor) -> SafetyReport:
        """Collisions, obstacle violations, smallest distance and terminal error of
        closed-loop paths ``(nt + 1, n, d)`` (checked at the time steps)."""
        T1, n, _ = paths.shape
        flat = paths.reshape(T1 * n, self.dim)
        if self.n_agents > 1:
            dist = self.pair_distances(flat).reshape(T1, n, -1)
            collisions = (dist < 2 * self.radius).any(0).sum(-1)
            min_distance = dist.amin((0, 2))
        else:
            collisions = torch.zeros(n, dtype=torch.long)
            min_distance = torch.full((n,), math.inf, dtype=paths.dtype)
        violations = self.inside_obstacles(paths).any(0).sum(-1)
        err = (paths[-1] - self.target.to(paths)).norm(dim=-1) / (
            self.target_spread * math.sqrt(self.n_agents)
        )
        return SafetyReport(collisions, violations, min_distance, err)

    def spec(self) -> dict:
        return {"name": self.name, "dim": self.dim}


def _fixed_dim(cls, dim):
    if dim is not None and dim != cls.fixed_dim:
        raise ValueError(f"{cls.name} has dimension {cls.fixed_dim}; got dim={dim!r}")


class Corridor(AgentProblem):
    r"""Two agents cross through a corridor between obstacles (NeuralOC's "soft corridor").

    Agents at (−2, −2) and (2, −2) go to (2, 2) and (−2, 2) (d = 4), r = 0.5, through the gap
    between two walls of Gaussian bumps (centres (±1.5, 0), (±2.5, 0), variance 0.2, true
    radius 0.5, inflated by r), α = (100, 10⁴, 300), β = (0.02, 0.02, 0.02), T = 1, 20 RK4
    steps, ρ₀ = N(start, I); see :class:`AgentProblem`.

    Reference: Onken et al., arXiv 2104.03270 (corridor experiment, shocks at t = 0.1).

    Example:
        >>> pb = Corridor()
        >>> pb.dim, pb.n_agents, pb.alpha
        (4, 2, (100.0, 10000.0, 300.0))
    """

    name = "corridor"
    fixed_dim = 4
    steps = 20
    #: the paper's "minor" shock (a state kick at t = 0.1)
    shock = (-0.2, -0.7, 0.0, -0.6)

    def __init__(self, dim: int | None = None, *, spread: float = 1.0):
        _fixed_dim(type(self), dim)
        c = [[-2.5, 0.0], [-1.5, 0.0], [1.5, 0.0], [2.5, 0.0]]
        super().__init__(
            [[-2.0, -2.0], [2.0, -2.0]],
            [[2.0, 2.0], [-2.0, 2.0]],
            radius=0.5,
            alpha=(100.0, 1e4, 300.0),
            discs=(c, [0.5] * 4, [math.sqrt(0.2)] * 4),
            spread=spread,
            weights=LossWeights(hjb=0.02, terminal_value=0.02, terminal_gradient=0.02),
        )


class Swap2(AgentProblem):
    r"""Two agents swap places through a gap between two large obstacles.

    Agents at (∓10, 0) go to (±10, 0) (d = 4), r = 1, between discs of radius 2 centred at
    (0, 4) and (0, −3.5) (Gaussian bumps of variance 1 inside, inflated by r),
    α = (300, 10⁶, 10⁵), β = (1, 1, 3), T = 1, 20 steps, ρ₀ = N(start, I).

    Reference: Onken et al., arXiv 2104.03270 (two-agent swap).

    Example:
        >>> Swap2().target.tolist()
        [10.0, 0.0, -10.0, 0.0]
    """

    name = "swap2"
    fixed_dim = 4
    steps = 20

    def __init__(self, dim: int | None = None, *, spread: float = 1.0):
        _fixed_dim(type(self), dim)
        super().__init__(
            [[-10.0, 0.0], [10.0, 0.0]],
            [[10.0, 0.0], [-10.0, 0.0]],
            radius=1.0,
            alpha=(300.0, 1e6, 1e5),
            discs=([[0.0, 4.0], [0.0, -3.5]], [2.0, 2.0], [1.0, 1.0]),
            spread=spread,
            weights=LossWeights(hjb=1.0, terminal_value=1.0, terminal_gradient=3.0),
        )


_SWAP12_START = [[0, 0], [2, 2], [-10, 0], [10, 0], [-5, -5], [5, 5], [-6, -1], [-4, 2],
                 [-5, 5], [5, -5], [-2, -2], [2, -2]]  # fmt: skip


class Swap12(AgentProblem):
    r"""Twelve agents in six pairs swap places (d = 24), no obstacles.

    Pairs (0, 0)↔(2, 2), (−10, 0)↔(10, 0), (−5, −5)↔(5, 5), (−6, −1)↔(−4, 2),
    (−5, 5)↔(5, −5), (−2, −2)↔(2, −2); r = 0.5, α = (300, 0, 10⁵), β = (5, 2, 5), T = 1,
    20 steps, ρ₀ = N(start, I).

    Reference: Onken et al., arXiv 2104.03270 (12-agent swap).

    Example:
        >>> Swap12().n_agents
        12
    """

    name = "swap12"
    fixed_dim = 24
    steps = 20

    def __init__(self, dim: int | None = None, *, spread: float = 1.0):
        _fixed_dim(type(self), dim)
        s = torch.tensor(_SWAP12_START, dtype=torch.float64)
        t = s.reshape(6, 2, 2).flip(1).reshape(12, 2)
        super().__init__(
            s,
            t,
            radius=0.5,
            alpha=(300.0, 0.0, 1e5),
            spread=spread,
            weights=LossWeights(hjb=5.0, terminal_value=2.0, terminal_gradient=5.0),
        )


# the paper's 25 target points of the first half of the swarm; the second half is shifted
_SWARM_TARGET = [[-2, 2, 6], [-1, 2, 6], [0, 2, 6], [1, 2, 6], [2, 2, 6], [3, 2, 6], [4, 2, 6],
                 [-2.5, 3, 7], [-1.5, 3, 7], [-0.5, 3, 7], [0.5, 3, 7], [1.5, 3, 7], [2.5, 3, 7],
                 [3.5, 3, 7], [-2, 4, 8], [-1, 4, 8], [0, 4, 8], [1, 4, 8], [2, 4, 8], [3, 4, 8],
                 [4, 4, 8], [-2, 3, 5], [-1, 3, 5], [1, 3, 5], [2, 3, 5]]  # fmt: skip


class Swarm50(AgentProblem):
    r"""A swarm of 50 agents in 3-D flies over and around two box obstacles (d = 150).

    Targets: the paper's 25 points and their copies shifted by (0, −0.5, −3); starts: the
    targets mirrored, (x, −y, 10 − z). Boxes [−2, 2]×[−0.5, 0.5]×(−∞, 7] and
    [2, 4]×[−1, 1]×(−∞, 4] (a wall between the start and the target), inflated by 2r;
    r = 0.1, interaction margin 1.6 (the paper trains with radius 3.2r),
    α = (1800, 10⁵, 25 000), β = (2, 1, 3), T = 1, 26 steps, ρ₀ = N(start, 0.1²I).
    The box cost is (1 + Gaussian)·(smooth box indicator), with α₁ = 10⁵ instead of the
    paper's 10⁷·(999 + Gaussians), which is too stiff for a smooth ramp of width 2r.

    Reference: Onken et al., arXiv 2104.03270 (swarm trajectory planning, after Hönig et
    al., IEEE T-RO 2018).

    Example:
        >>> pb = Swarm50()
        >>> pb.dim, pb.agent_dim
        (150, 3)
    """

    name = "swarm50"
    fixed_dim = 150
    steps = 26

    def __init__(self, dim: int | None = None, *, spread: float = 0.1):
        _fixed_dim(type(self), dim)
        t = torch.tensor(_SWARM_TARGET, dtype=torch.float64)
        t = torch.cat([t, t + torch.tensor([0.0, -0.5, -3.0], dtype=torch.float64)])
        s = t * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)
        s = s + torch.tensor([0.0, 0.0, 10.0], dtype=torch.float64)
        inf = math.inf
        boxes = (
            [[-2.0, -0.5, -inf], [2.0, -1.0, -inf]],
            [[2.0, 0.5, 7.0], [4.0, 1.0, 4.0]],
            [[0.0, 0.0, 2.0], [2.5, 0.0, 2.0]],
            [[3.0, math.sqrt(3.0), 3.0], [3.0, math.sqrt(3.0), math.sqrt(3.0)]],
        )
        super().__init__(
            s,
            t,
            radius=0.1,
            alpha=(1800.0, 1e5, 25000.0),
            boxes=boxes,
            inflate=0.2,
            interaction_margin=1.6,
            spread=spread,
            weights=LossWeights(hjb=2.0, terminal_value=1.0, terminal_gradient=3.0),
        )


def agent_rollout(problem: AgentProblem, value, x: Tensor, *, dt: float = 0.02,
                  shock: tuple[float, Tensor] | None = None):  # fmt: skip
    r"""Fly the agents under the learned feedback u* = −∇Φ(z, t) and check their safety.

    RK4 steps of size h = T/⌈T/dt⌉ (:func:`odeflow.control.rollout`) from validated starts,
    then :meth:`AgentProblem.safety` of the paths. ``shock=(t, kick)`` adds ``kick`` (``(d,)``
    or ``(n, d)``) to the state at time t (rounded to a step; 0 < t < T); the cost is then the
    cost-to-go of the kicked state.

    Args:
        problem: an :class:`AgentProblem`. value: a value function of the same dimension.
        x: ``(n, d)`` starts (finite, no two agents closer than 2r).
        dt: the largest step. shock: optional ``(time, kick)``.

    Returns:
        ``(Rollout, SafetyReport)``.

    Raises:
        ValueError: starts of the wrong shape, non-finite or with overlapping agents (names
            them); dt ≤ 0 or a horizon shorter than one step; a shock time outside (0, T).

    Reference: Onken et al., arXiv 2104.03270.

    Example:
        >>> import torch
        >>> from odeflow.control import LQRValue
        >>> pb = Swap2()
        >>> phi = LQRValue(4, Qf=300.0, target=pb.target, horizon=1.0)  # ignores obstacles
        >>> out, safe = agent_rollout(pb, phi, pb.start[None], dt=0.05)
        >>> out.paths.shape, int(safe.collisions[0])   # straight lines collide head-on
        (torch.Size([21, 1, 4]), 1)
    """
    from ._simulate import rollout

    if not isinstance(problem, AgentProblem):
        raise TypeError(f"problem must be an AgentProblem, got {type(problem).__name__}")
    problem.check_start(x)
    if not (isinstance(dt, int | float) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number (the step), got {dt!r}")
    T = problem.horizon
    if dt > T:
        raise ValueError(
            f"the horizon T = {T:g} is shorter than one step dt = {dt:g}; choose dt <= T"
        )
    nt = math.ceil(T / dt - 1e-9)
    sh = None
    if shock is not None:
        ts, kick = shock
        if not (isinstance(ts, int | float) and 0 < ts < T):
            raise ValueError(f"the shock time must be in (0, {T:g}), got {ts!r}")
        sh = (min(max(round(ts / T * nt), 1), nt - 1), kick)
    out = rollout(problem, value, x, nt=nt, shock=sh)
    return out, problem.safety(out.paths)


def agent_metrics(problem: AgentProblem, value, *, rollouts: int = 1000, scale: float = 0.25,
                  dt: float = 0.02, seed: int = 5) -> dict:  # fmt: skip
    """Closed-loop figures of a value function on an agent problem (plain floats/ints): the
    cost, collisions, violations and terminal error from the nominal start, and the number of
    ``rollouts`` from starts perturbed by ``scale``·spread·N(0, I) (overlaps redrawn) that
    collide or enter an obstacle, with the smallest distance and largest terminal error."""
    ref = next(iter(value.parameters()), torch.zeros((), dtype=torch.float64))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out, nom = agent_rollout(problem, value, problem.start[None].to(ref), dt=dt)
        xs = problem.safe_starts(rollouts, scale * problem.spread, generator=gen).to(ref)
        _, safe = agent_rollout(problem, value, xs, dt=dt)
    return {
        "nominal_cost": float(out.cost[0]),
        "nominal_collisions": int(nom.collisions[0]),
        "nominal_violations": int(nom.violations[0]),
        "nominal_terminal_error": float(nom.terminal_error[0]),
        "rollouts": rollouts,
        "perturbation": scale * problem.spread,
        "rollouts_with_collisions": int((safe.collisions > 0).sum()),
        "rollouts_with_violations": int((safe.violations > 0).sum()),
        "min_distance": float(safe.min_distance.min()),
        "max_terminal_error": float(safe.terminal_error.max()),
    }
