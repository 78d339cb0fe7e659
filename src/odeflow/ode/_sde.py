"""Stochastic differential equations: ``sdeint`` with an exact discrete adjoint."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from . import _sde_checks as checks
from ._brownian import BrownianPath
from ._sde_schemes import (
    NOISE_TYPES,
    SDE_TYPES,
    STEPS,
    Problem,
    default_params,
    hidden_leaves,
)
from ._solution import SolveStatus

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
            check at ``t0`` included).
        steps: steps taken.
        status: :class:`~odeflow.ode.SolveStatus` (``NONFINITE`` if ``ys`` has inf/NaN).
    """

    ts: Tensor
    ys: Tensor
    bm: BrownianPath
    nfe: int
    steps: int
    status: Any


@dataclass
class _Run:
    """Everything one solve needs: the problem, the scheme, the grid and the noise."""

    prob: Problem
    step: Callable
    grid: list[float]  # step times (host, float64)
    tgrid: Tensor  # the same on the device, in the state's dtype
    outs: list[int]  # grid index of each output time
    bm: BrownianPath
    every: int = 1  # the adjoint stores the state before every `every`-th step

    def one(self, n: int, y: Tensor) -> Tensor:
        """Step ``n``: ``y_n → y_{n+1}`` with the increment ``W(t_{n+1}) − W(t_n)``."""
        g = self.grid
        dw = self.bm(g[n], g[n + 1])
        return self.step(self.prob, self.tgrid[n], self.tgrid[n + 1], g[n + 1] - g[n], y, dw)

    def forward(self, y0: Tensor, store: bool) -> tuple[list[Tensor], list[Tensor]]:
        """The outputs, and (``store``) the states ``y_0, y_k, y_2k, …`` (``k = every``)."""
        want = set(self.outs)
        y, saved, outs = y0, [], [y0]
        for n in range(len(self.grid) - 1):
            if store and n % self.every == 0:
                saved.append(y)
            y = self.one(n, y)
            if n + 1 in want:
                outs.append(y)
        return outs, saved

    def backward(self, saved, gout: Tensor, params: list[Tensor]):
        """The discrete adjoint: ``a_n = (∂Φ_n/∂y_n)^T a_{n+1}`` (plus the output gradients),
        ``∂θ = Σ_n (∂Φ_n/∂θ)^T a_{n+1}``, one step's graph rebuilt at a time with the
        increments regenerated from the Brownian path; the states between two stored ones
        are recomputed (without a graph) segment by segment."""
        at = {n: k for k, n in enumerate(self.outs)}
        steps, k = len(self.grid) - 1, self.every
        a = torch.zeros_like(saved[0])
        gp: list[Tensor | None] = [None] * len(params)
        for j in reversed(range(len(saved))):
            s, e = j * k, min(j * k + k, steps)
            seg = [saved[j]]
            for n in range(s, e - 1):
                seg.append(self.one(n, seg[-1]))
            for n in range(e - 1, s - 1, -1):
                if n + 1 in at:
                    a = a + gout[at[n + 1]]
                with torch.enable_grad():
                    y = seg.pop().detach().requires_grad_(True)
                    vjp = torch.autograd.grad(self.one(n, y), [y, *params], a, allow_unused=True)
                a = vjp[0] if vjp[0] is not None else torch.zeros_like(a)
                for i, v in enumerate(vjp[1:]):
                    if v is not None:
                        gp[i] = v if gp[i] is None else gp[i] + v
        if 0 in at:
            a = a + gout[at[0]]
        return a, gp


class _Adjoint(torch.autograd.Function):
    """Forward without a graph storing the step states; backward by :meth:`_Run.backward`."""

    @staticmethod
    def forward(ctx, run: _Run, y0: Tensor, *params: Tensor) -> Tensor:  # type: ignore[override]
        outs, states = run.forward(y0.detach(), store=True)
        ctx.run, ctx.params = run, params  # the caller's tensors: f and g read these
        ctx.save_for_backward(*states)
        return torch.stack(outs)

    @staticmethod
    def backward(ctx, gout: Tensor):  # type: ignore[override]
        if torch.is_grad_enabled():
            raise RuntimeError(
                "sdeint's discrete adjoint gives first derivatives only; for higher-order "
                "derivatives (create_graph=True) use gradient='backprop'"
            )
        a, gp = ctx.run.backward(ctx.saved_tensors, gout, list(ctx.params))
        return (None, a, *gp)


def _setup(
    sde, y0, ts, *, bm, method, dt, noise_type, sde_type, gradient, params, checkpoint_every
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
    prob = Problem(f, g, noise_type, sde_type)
    # one evaluation at t0 checks the shapes (and, with a graph, for hidden tensors)
    leak_check = gradient == "adjoint" and params is None and torch.is_grad_enabled()
    y = y0.detach()
    with torch.set_grad_enabled(leak_check):
        fy, gy = prob.f(tgrid[0], y), prob.g(tgrid[0], y)
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
    return _Run(prob, STEPS[method], grid, tgrid, outs, bm, every), ts, plist, gradient


def _solve(sde, y0, ts, **options):
    run, ts, plist, gradient = _setup(sde, y0, ts, **options)
    needs = torch.is_grad_enabled() and (y0.requires_grad or len(plist) > 0)
    if gradient == "backprop":
        ys = torch.stack(run.forward(y0, store=False)[0])
    elif not needs:
        with torch.no_grad():
            ys = torch.stack(run.forward(y0, store=False)[0])
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

    Returns:
        The trajectory ``(n, *y0.shape)`` at ``ts``; ``ys[0]`` equals ``y0``.

    Raises:
        ValueError: ``f`` or ``g`` returning a shape that does not fit the noise type (the
            message gives the expected shape); a Brownian path on another device, of another
            dtype or shape, or not covering ``ts``; a non-positive ``dt``; a method for the
            other SDE type (``"euler"`` on a Stratonovich, ``"heun"`` on an Itô SDE) or
            ``"milstein"`` with general noise; ``ts`` not 1-D, not strictly increasing,
            non-finite or requiring grad; non-finite ``y0``; unknown names; a
            ``checkpoint_every`` that is not a positive int; hidden tensors
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
) -> SDESolution:
    r"""Like :func:`sdeint` but return an :class:`SDESolution` (trajectory, Brownian path,
    evaluations, steps, status).

    The status check costs one host sync.

    Args:
        sde, y0, ts, bm, method, dt, noise_type, sde_type, gradient, params,
        checkpoint_every: as in :func:`sdeint`.

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
        >>> sol.steps, sol.nfe, sol.status.value, sol.bm.shape  # 10 × (f, g) + the check
        (10, 22, 'success', (4, 2))
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
    )
    fin = bool(torch.isfinite(ys.detach()).all())
    return SDESolution(
        ts=ts,
        ys=ys,
        bm=run.bm,
        nfe=run.prob.nfe_f + run.prob.nfe_g,
        steps=len(run.grid) - 1,
        status=SolveStatus.SUCCESS if fin else SolveStatus.NONFINITE,
    )
