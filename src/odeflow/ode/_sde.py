"""Stochastic differential equations: ``sdeint`` with an exact discrete adjoint."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from . import _sde_checks as checks
from ._brownian import BrownianPath
from ._gradient._checkpoint import MemoryBudget
from ._sde_adjoint import _Adjoint, _Record
from ._sde_schemes import (
    NOISE_TYPES,
    SDE_TYPES,
    STEPS,
    Problem,
    default_params,
    hidden_leaves,
)
from ._solution import AdjointStats, SolveStatus

__all__ = ["SDE", "SDESolution", "sdeint", "sdesolve"]


class SDE(Protocol):
    r"""What :func:`sdeint` integrates: ``dY = f(t, Y) dt + g(t, Y) dW``.

    Any object with these two methods (an ``nn.Module`` or not) is an SDE; a pair
    ``(f, g)`` of callables is accepted as well. ``t`` is a 0-d tensor and ``y`` a tensor of
    the state's shape ``(*batch, d)``. Optional attributes ``noise_type`` (``"diagonal"``,
    ``"scalar"``, ``"general"``) and ``sde_type`` (``"ito"``, ``"stratonovich"``) give the
    defaults of :func:`sdeint`'s arguments of the same name (torchsde's convention).

    Example:
        >>> import torch
        >>> class GBM:
        ...     noise_type, sde_type = "diagonal", "ito"
        ...     def f(self, t, y):
        ...         return 0.5 * y
        ...     def g(self, t, y):
        ...         return 0.2 * y
        >>> GBM().g(torch.tensor(0.0), torch.ones(2))
        tensor([0.2000, 0.2000])
    """

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        """The drift, the shape of ``y``."""
        ...

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        """The diffusion: ``y.shape`` (diagonal), ``(*y.shape, 1)`` (scalar) or
        ``(*y.shape, m)`` (general noise)."""
        ...


@dataclass
class SDESolution:
    """Result of :func:`sdesolve`.

    Attributes:
        ts: the output times ``(n,)``.
        ys: the trajectory ``(n, *y0.shape)``.
        bm: the :class:`BrownianPath` that drove the solve (given or created).
        nfe: evaluations of the drift plus the diffusion in the forward pass (the shape
            check at ``t0`` is the first step's evaluation, not an extra one).
        steps: steps taken.
        status: :class:`~odeflow.ode.SolveStatus` (``NONFINITE`` if ``ys`` has inf/NaN).
        stats: :class:`~odeflow.ode.AdjointStats` of the discrete adjoint (``nfe`` of the
            backward pass, ``stored_states``, ``recomputed_steps``, ``kept_graphs``), filled
            when ``backward`` runs through ``ys``.
    """

    ts: Tensor
    ys: Tensor
    bm: BrownianPath
    nfe: int
    steps: int
    status: Any
    stats: AdjointStats = field(default_factory=AdjointStats)


@dataclass
class _Run:
    """Everything one solve needs: the problem, the scheme, the grid and the noise."""

    prob: Problem
    step: Callable
    grid: list[float]  # step times (host, float64)
    tgrid: Tensor  # the same on the device, in the state's dtype
    t0: Tensor  # tgrid[0], the time the shape check evaluated f and g at
    outs: list[int]  # grid index of each output time
    bm: BrownianPath
    every: int = 1  # checkpoint_every: the state before every `every`-th step is stored
    checkpoints: Any = "steps"  # the adjoint's record (see _sde_adjoint._Record)
    start: Tensor | None = None  # the y0 the shape check evaluated f and g at
    stats: AdjointStats = field(default_factory=AdjointStats)

    def one(self, n: int, y: Tensor) -> Tensor:
        """Step ``n``: ``y_n → y_{n+1}`` with the increment ``W(t_{n+1}) − W(t_n)``."""
        g = self.grid
        dw = self.bm(g[n], g[n + 1])
        t = self.t0 if n == 0 else self.tgrid[n]
        return self.step(self.prob, t, self.tgrid[n + 1], g[n + 1] - g[n], y, dw)

    def forward(self, y0: Tensor, rec: _Record | None = None) -> list[Tensor]:
        """The states at the output times; ``rec`` (the adjoint) records what its backward
        pass needs. The first step reuses the shape check's ``f(t0, y0)``, ``g(t0, y0)``."""
        want = set(self.outs)
        y, outs = y0, [y0]
        for n in range(len(self.grid) - 1):
            y = self.one(n, y) if rec is None else rec.step(n, y)
            if n == 0:
                self.prob.first = None
            if n + 1 in want:
                outs.append(y)
        return outs


def _setup(
    sde,
    y0,
    ts,
    *,
    bm,
    method,
    dt,
    noise_type,
    sde_type,
    gradient,
    params,
    checkpoint_every,
    checkpoints,
):
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    if active is not None and active():
        raise ValueError(
            "sdeint does not run under torch.func transforms (vmap, grad, jacrev, ...): the "
            "Brownian path would give every vmapped sample the same noise; batch the state "
            "instead (y0 of shape (batch, d)) and use torch.autograd"
        )
    f, g = checks.split_sde(sde)
    noise_type = checks.choice(
        noise_type, getattr(sde, "noise_type", None), NOISE_TYPES, "noise_type", "diagonal"
    )
    sde_type = checks.choice(sde_type, getattr(sde, "sde_type", None), SDE_TYPES, "sde_type", "ito")
    method = checks.check_method(method, sde_type, noise_type)
    if gradient not in ("adjoint", "backprop"):
        raise ValueError(f"unknown gradient {gradient!r}; valid: 'adjoint', 'backprop'")
    checks.check_y0(y0)
    ts, host = checks.check_ts(ts, y0)
    dt = checks.check_dt(dt)
    every = checks.check_every(checkpoint_every)
    checkpoints = checks.check_checkpoints(checkpoints, every)
    if params is None:
        plist = default_params(sde, f, g)
    else:
        if isinstance(params, Tensor) or not all(isinstance(q, Tensor) for q in params):
            raise TypeError("params must be a sequence of tensors, e.g. list(module.parameters())")
        seen: set[int] = set()  # a tensor listed twice gets its gradient once
        plist = [q for q in params if q.requires_grad and not (id(q) in seen or seen.add(id(q)))]
    grid, outs = checks.step_grid(host, dt, torch.finfo(ts.dtype).eps)
    tdt = y0.dtype if y0.dtype in (torch.float32, torch.float64) else torch.float32
    tgrid = torch.tensor(grid, dtype=tdt, device=y0.device)
    t0 = tgrid[0]
    prob = Problem(f, g, noise_type, sde_type)
    # one evaluation at t0 checks the shapes (and, with a graph, for hidden tensors); the
    # first step reuses it (backprop: with its graph)
    leak_check = gradient == "adjoint" and params is None and torch.is_grad_enabled()
    y = y0 if gradient == "backprop" else y0.detach()
    with torch.set_grad_enabled(leak_check or (gradient == "backprop" and torch.is_grad_enabled())):
        fy, gy = prob.f(t0, y), prob.g(t0, y)
    m = prob.check(y, fy, gy)
    if leak_check and hidden_leaves([fy, gy], plist):
        raise ValueError(
            "f or g depends on tensors that require grad but are not visible to the discrete "
            "adjoint (closed-over tensors, or tensor attributes of a module); pass them as "
            "params=[...], make them nn.Parameters of the sde module, or use "
            "gradient='backprop'"
        )
    shape = prob.brownian_shape(y, m)
    if bm is None:
        align = dt if dt is not None else checks.uniform(host)
        bm = BrownianPath(grid[0], grid[-1], shape, dtype=y0.dtype, device=y0.device, dt=align)
    else:
        checks.check_bm(bm, y0, shape, grid)
    if gradient == "adjoint":
        fy, gy = fy.detach(), gy.detach()
    prob.first = [t0, y, fy, gy]
    run = _Run(prob, STEPS[method], grid, tgrid, t0, outs, bm, every, checkpoints, start=y)
    return run, ts, plist, gradient


def _solve(sde, y0, ts, **options):
    run, ts, plist, gradient = _setup(sde, y0, ts, **options)
    needs = torch.is_grad_enabled() and (y0.requires_grad or len(plist) > 0)
    if gradient == "backprop":
        ys = torch.stack(run.forward(run.start))
    elif not needs:
        with torch.no_grad():
            ys = torch.stack(run.forward(run.start))
    else:
        ys = _Adjoint.apply(run, y0, *plist)
    return run, ts, ys


def sdeint(
    sde: SDE | tuple[Callable, Callable],
    y0: Tensor,
    ts: Tensor | Sequence[float],
    *,
    bm: BrownianPath | None = None,
    method: str | None = None,
    dt: float | None = None,
    noise_type: str | None = None,
    sde_type: str | None = None,
    gradient: str = "adjoint",
    params: Sequence[Tensor] | None = None,
    checkpoint_every: int = 1,
    checkpoints: str | int | MemoryBudget = "steps",
) -> Tensor:
    r"""Solve the SDE ``dY = f(t, Y) dt + g(t, Y) dW`` on a fixed grid, differentiably.

    Steps ``t_{n+1} = t_n + h`` (``h = dt``, every time of ``ts`` hit exactly) with the
    increments ``ΔW_n = W(t_{n+1}) − W(t_n)`` of the Brownian path ``bm``:

    * ``"euler"`` (Euler–Maruyama, Itô): ``y + f h + g ΔW``; strong order 0.5.
    * ``"milstein"`` (diagonal or scalar noise, Itô or Stratonovich):
      ``y + f h + g ΔW + ½ (∂g/∂y) g (ΔW² − h)`` (Itô; ``ΔW²`` for Stratonovich), the
      factor ``(∂g/∂y) g`` by one forward-mode JVP; strong order 1 (for diagonal noise
      ``g_i`` must depend on ``y`` through ``y_i`` only).
    * ``"heun"`` (stochastic Heun, Stratonovich): ``ỹ = y + f h + g ΔW``,
      ``y + ½ (f(t, y) + f(t + h, ỹ)) h + ½ (g(t, y) + g(t + h, ỹ)) ΔW``; strong order 1 for
      commuting (diagonal, scalar) noise, 0.5 in general.

    ``g ΔW`` is ``g ⊙ ΔW`` (``noise_type="diagonal"``, ``ΔW`` of ``y``'s shape),
    ``g[..., 0] ΔW`` (``"scalar"``, ``ΔW`` of shape ``(*batch, 1)``) or ``g ΔW`` as a
    matrix–vector product (``"general"``, ``g`` of shape ``(*y.shape, m)``, ``ΔW`` of
    shape ``(*batch, m)``).

    Gradients. ``gradient="adjoint"`` (default) is the exact discrete adjoint of the scheme:
    the forward pass keeps no graph and stores only the step states; the backward pass walks
    the steps in reverse, regenerates each increment from the Brownian path (nothing of the
    noise is stored), rebuilds one step's graph ``y_{n+1} = Φ_n(y_n, θ; ΔW_n)`` and applies
    its vector–Jacobian product, ``a_n = (∂Φ_n/∂y_n)^T a_{n+1}`` (plus the gradient of the
    output at ``t_n``), ``∂L/∂θ = Σ_n (∂Φ_n/∂θ)^T a_{n+1}``. It equals backpropagation
    through the same steps (``gradient="backprop"``) to round-off, at the memory of the
    step states plus one step's graph instead of every step's graph. First derivatives only
    (for ``create_graph=True`` use ``"backprop"``); ``ts`` is not differentiated.

    What the adjoint keeps (``checkpoints``, the options of the ODE engine's
    :class:`~odeflow.ode.DiscreteAdjoint`, for ``N`` steps of a state of ``b_s`` bytes and a
    step graph of ``b_g`` bytes): ``"steps"`` (default) stores the ``N`` step states, ``N
    b_s`` bytes, and rebuilds each step once: the fastest adjoint, and the right choice while
    ``N b_s`` is small next to what else is in memory (``N b_s < b_g``: less than one step's
    graph, e.g. a few hundred steps of a width-256 neural SDE). An integer ``K`` is binomial
    checkpointing (revolve): at most ``K`` stored states and the working state *whatever*
    ``N``, memory flat in the number of steps, at ``t(N, K) − (N − 1)`` recomputed steps
    without a graph, ``t(N, K) = r N − β(K + 1, r − 1)``, ``β(s, r) = C(s + r, s)``, ``r`` the
    repetition number, ``β(K, r − 1) < N ≤ β(K, r)``; pick it for long solves or large
    states (``K ≈ √(2N)`` recomputes each step at most once, ``K`` fixed keeps memory flat at
    ``r`` recomputations). ``"all"`` keeps every step's graph (backprop's time and memory).
    A memory budget (:class:`~odeflow.ode.MemoryBudget`, or a string such as ``"64MiB"``)
    picks the most that fits, from every graph down to ``K`` checkpoints, measuring the first
    step's graph. Wherever a step is run again its increment is regenerated from the
    Brownian path, so every option gives the same gradient (to round-off).

    Args:
        sde: an :class:`SDE` (methods ``f(t, y)``, ``g(t, y)``; optional attributes
            ``noise_type``, ``sde_type``), or a pair ``(f, g)``.
        y0: the initial state ``(*batch, d)``, floating, finite.
        ts: ``(n,)`` output times, ``n ≥ 2``, strictly increasing, on ``y0``'s device.
        bm: a :class:`BrownianPath` of shape ``y.shape`` (diagonal) or ``(*batch, m)``
            (scalar: ``m = 1``; general), ``y0``'s dtype and device, covering ``ts``.
            Default: a new one seeded from torch's global generator, with the step grid as
            its nodes (returned by :func:`sdesolve`).
        method: ``"euler"``, ``"milstein"`` or ``"heun"``; default ``"euler"`` for Itô,
            ``"heun"`` for Stratonovich SDEs.
        dt: the step size; default: the steps are the intervals of ``ts``.
        noise_type: ``"diagonal"`` (default), ``"scalar"`` or ``"general"``; default the
            sde's attribute.
        sde_type: ``"ito"`` (default) or ``"stratonovich"``; default the sde's attribute.
        gradient: ``"adjoint"`` or ``"backprop"``.
        params: the tensors the gradient is taken for; default the parameters (requiring
            grad) of the sde, ``f`` or ``g`` where they are ``nn.Module``\ s or their methods.
            A callable that closes over other tensors requiring grad must list them
            (otherwise a ``ValueError`` says so).
        checkpoint_every: the adjoint stores the state before every ``k``-th step only and
            recomputes the others (without a graph, increments regenerated) one segment at a
            time in the backward pass: ``N/k + k`` stored states instead of ``N``, at one more
            evaluation of each step; ``k ≈ √N`` minimizes the memory. Default 1: every state.
            (``checkpoints=K`` stores fewer for the same recomputation.)
        checkpoints: what the adjoint keeps: ``"steps"``, an integer ``K >= 1``, ``"all"``
            or a memory budget (see above).

    Returns:
        The trajectory ``(n, *y0.shape)`` at ``ts``; ``ys[0]`` equals ``y0``.

    Raises:
        ValueError: ``f`` or ``g`` returning a shape that does not fit the noise type (the
            message gives the expected shape); a Brownian path on another device, of another
            dtype or shape, or not covering ``ts``; a non-positive ``dt``; a method for the
            other SDE type (``"euler"`` on a Stratonovich, ``"heun"`` on an Itô SDE) or
            ``"milstein"`` with general noise; ``ts`` not 1-D, not strictly increasing,
            non-finite or requiring grad; non-finite ``y0``; unknown names; a
            ``checkpoint_every`` that is not a positive int, an unknown ``checkpoints`` (a
            count below 1 included), both given; a memory budget below one step state
            (at the first step); hidden tensors
            requiring grad (see ``params``); a call under a ``torch.func`` transform.
        TypeError: a non-tensor or integer ``y0``; an ``sde`` without ``f``/``g``; ``f`` or
            ``g`` returning a non-tensor or another dtype; ``bm`` not a
            :class:`BrownianPath`.

    Reference:
        Kloeden, Platen, *Numerical Solution of Stochastic Differential Equations*, Springer
        (1992); Li, Wong, Chen, Duvenaud, *Scalable gradients for stochastic differential
        equations*, arXiv:2001.01328; Kidger et al., *Efficient and accurate gradients for
        neural SDEs*, arXiv:2105.13493.

    Example:
        >>> import torch
        >>> from odeflow import BrownianPath, sdeint
        >>> ts = torch.linspace(0, 1, 5, dtype=torch.float64)
        >>> bm = BrownianPath(0.0, 1.0, (3,), seed=0, dtype=torch.float64, dt=0.25)
        >>> y0 = torch.ones(3, dtype=torch.float64, requires_grad=True)
        >>> ys = sdeint((lambda t, y: 0.5 * y, lambda t, y: 0.3 * y), y0, ts, bm=bm, dt=0.125)
        >>> ys.shape
        torch.Size([5, 3])
        >>> ys[-1].sum().backward()  # Euler–Maruyama on a linear SDE: y_N = y0 Π(1 + …)
        >>> bool(torch.allclose(y0.grad, ys[-1].detach() / y0.detach(), rtol=1e-12))
        True

        Additive noise (``f = 0``, ``g = 1``) reproduces the path: ``y(1) − y(0) = W(1)``.

        >>> ys = sdeint((lambda t, y: 0 * y, lambda t, y: torch.ones_like(y)), y0, ts, bm=bm)
        >>> bool(torch.allclose(ys[-1] - ys[0], bm(0.0, 1.0), rtol=0, atol=1e-14))
        True

        Binomial checkpointing: 100 steps, at most 5 + 1 states held, the gradient of
        storing every state.

        >>> from odeflow import sdesolve
        >>> sde = (lambda t, y: -y, lambda t, y: 0.3 * torch.sin(y))
        >>> bm = BrownianPath(0.0, 1.0, (3,), seed=1, dtype=torch.float64, dt=0.01)
        >>> grads = []
        >>> for ck in ("steps", 5):
        ...     sol = sdesolve(sde, y0, [0.0, 1.0], bm=bm, dt=0.01, checkpoints=ck)
        ...     grads.append(torch.autograd.grad(sol.ys[-1].sum(), y0)[0])
        >>> sol.stats.stored_states, bool(torch.allclose(grads[0], grads[1], rtol=1e-12, atol=0))
        (6, True)
    """
    return _solve(
        sde,
        y0,
        ts,
        bm=bm,
        method=method,
        dt=dt,
        noise_type=noise_type,
        sde_type=sde_type,
        gradient=gradient,
        params=params,
        checkpoint_every=checkpoint_every,
        checkpoints=checkpoints,
    )[2]


def sdesolve(
    sde: SDE | tuple[Callable, Callable],
    y0: Tensor,
    ts: Tensor | Sequence[float],
    *,
    bm: BrownianPath | None = None,
    method: str | None = None,
    dt: float | None = None,
    noise_type: str | None = None,
    sde_type: str | None = None,
    gradient: str = "adjoint",
    params: Sequence[Tensor] | None = None,
    checkpoint_every: int = 1,
    checkpoints: str | int | MemoryBudget = "steps",
) -> SDESolution:
    r"""Like :func:`sdeint` but return an :class:`SDESolution` (trajectory, Brownian path,
    evaluations, steps, status).

    The status check costs one host sync.

    It takes exactly the arguments of :func:`sdeint` (``sde``, ``y0``, ``ts``, ``bm``,
    ``method``, ``dt``, ``noise_type``, ``sde_type``, ``gradient``, ``params``,
    ``checkpoint_every``, ``checkpoints``).

    Returns:
        An :class:`SDESolution`; its ``bm`` is the path that drove the solve (the one
        created when ``bm`` is not given), e.g. to compare with an exact solution.

    Raises:
        The errors of :func:`sdeint`.

    Reference:
        Kloeden, Platen, *Numerical Solution of Stochastic Differential Equations* (1992).

    Example:
        >>> import torch
        >>> from odeflow import sdesolve
        >>> sol = sdesolve((lambda t, y: -y, lambda t, y: 0.1 * torch.ones_like(y)),
        ...                torch.zeros(4, 2), torch.tensor([0.0, 1.0]), dt=0.1)
        >>> sol.steps, sol.nfe, sol.status.value, sol.bm.shape  # 10 × (f, g)
        (10, 20, 'success', (4, 2))
    """
    run, ts, ys = _solve(
        sde,
        y0,
        ts,
        bm=bm,
        method=method,
        dt=dt,
        noise_type=noise_type,
        sde_type=sde_type,
        gradient=gradient,
        params=params,
        checkpoint_every=checkpoint_every,
        checkpoints=checkpoints,
    )
    fin = bool(torch.isfinite(ys.detach()).all())
    return SDESolution(
        ts=ts,
        ys=ys,
        bm=run.bm,
        nfe=run.prob.nfe_f + run.prob.nfe_g,
        steps=len(run.grid) - 1,
        status=SolveStatus.SUCCESS if fin else SolveStatus.NONFINITE,
        stats=run.stats,
    )
