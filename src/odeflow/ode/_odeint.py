"""The public entry points :func:`odeint` and :func:`solve`: input checks, the solve's
:class:`_Problem`, then the gradient policy's ``solve``."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import _tree
from ._adaptive_solve import choose_steps, raise_unfinished, run_status
from ._checks import _check_output_dtype, _check_params, _check_t, _check_y0, _steps_per_interval
from ._compat import flat as _flat
from ._compat import host as _host
from ._field import _Field, _owning_module
from ._gradient import GradientPolicy, _get_gradient
from ._methods import get_tableau
from ._precision import AdjointScaler, PrecisionPolicy, _outside_stacklevel, get_precision
from ._problem import _Problem
from ._solution import AdjointStats, Solution, SolveStatus
from ._tableaus import ButcherTableau

__all__ = ["odeint", "solve"]


def _prepare(
    func,
    y0,
    t,
    method,
    gradient,
    precision,
    steps_per_interval,
    step_size,
    params,
    scaler,
    output_dtype,
    rtol=None,
    atol=None,
    max_steps=None,
    options=None,
) -> tuple[_Problem, list[Tensor], Tensor, GradientPolicy, list[Tensor]]:
    """Validate the inputs; the solve's problem, state leaves, times, policy and the tensors
    the gradient is taken for."""
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}")
    leaves, spec = _tree.flatten(y0)
    dev = _check_y0(leaves)
    hdt = leaves[0].dtype if leaves[0].dtype in (torch.float32, torch.float64) else torch.float32
    for y in leaves[1:]:
        if y.dtype != leaves[0].dtype:
            raise TypeError(
                f"all y0 leaves must share one dtype; got {leaves[0].dtype} and {y.dtype}"
            )
    t, host = _check_t(t, dev, hdt)
    tab = get_tableau(method)
    grad = _get_gradient(gradient)
    pol = get_precision(precision, dev)
    if pol.compute is not None and hdt == torch.float64:
        warnings.warn(
            f"precision={precision!r} on a float64 state: autocast leaves float64 operations "
            f"alone, so the stages run in float64 ({pol.compute} only reaches float32 tensors). "
            "For mixed precision use a float32 state and func (y0.float(), func.float())",
            UserWarning,
            stacklevel=_outside_stacklevel(),  # the caller's line, also through OTFlow etc.
        )
    adaptive, per_sample, step_size = choose_steps(
        method, tab, rtol, atol, max_steps, options, steps_per_interval, step_size, leaves, spec,
        pol.compute is torch.float16,
    )  # fmt: skip
    if adaptive is None:
        ms = _steps_per_interval(host, steps_per_interval, step_size, torch.finfo(t.dtype).eps)
    else:
        ms = [1] * (len(host) - 1)  # (unused: the solver chooses the steps)
    plist = _check_params(func, params)
    if scaler is not None and not isinstance(scaler, AdjointScaler):
        raise TypeError(
            "scaler must be an odeflow.AdjointScaler (AdjointScaler(dynamic=False) "
            "to pair with torch.amp.GradScaler)"
        )
    _check_output_dtype(output_dtype)
    fld = _Field(func, spec, leaves, hdt)
    fld.stages = tab.stages
    pb = _Problem(
        fld=fld,
        tab=tab,
        pol=pol,
        ms=ms,
        hdt=hdt,
        out_dtypes=[output_dtype or y.dtype for y in leaves],
        n_leaf=len(leaves),
        stats=AdjointStats(),
        spec=spec,
        scaler=scaler,
        hidden_check=params is None and _owning_module(func) is not None,
        closure_risk=params is None and not isinstance(func, nn.Module),
        adaptive=adaptive,
        per_sample=per_sample,
    )
    return pb, leaves, t, grad, plist


def _run(*args) -> tuple[_Problem, Tensor, Any]:
    """The problem, the times and the trajectory (the structure of ``y0``)."""
    pb, leaves, t, grad, plist = _prepare(*args)
    outs = (grad.solve if pb.adaptive is None else grad.solve_steps)(pb, t, leaves, plist)
    return pb, t, _tree.unflatten(pb.spec, outs)


def odeint(
    func: Callable[[Tensor, Any], Any],
    y0: Tensor | Sequence[Tensor] | dict[str, Tensor],
    t: Tensor,
    *,
    method: str | ButcherTableau = "rk4",
    gradient: str | GradientPolicy = "adjoint",
    precision: str | PrecisionPolicy = "fp32",
    steps_per_interval: int = 1,
    step_size: float | None = None,
    params: Sequence[Tensor] | None = None,
    scaler: AdjointScaler | None = None,
    output_dtype: torch.dtype | None = None,
    rtol: float | Sequence | None = None,
    atol: float | Sequence | None = None,
    max_steps: int | None = None,
    options: dict | None = None,
) -> Any:
    r"""Solve ``dy/dt = func(t, y)`` on a fixed grid or with adaptive steps, differentiable by
    the discrete adjoint.

    Each step of size ``h`` is an explicit Runge–Kutta step
    ``y_{k+1} = y_k + h Σ_i b_i f(t_k + c_i h, y_k + h Σ_j a_ij k_j)``. With the default
    ``gradient="adjoint"`` the backward pass runs the adjoint recursion of exactly this
    scheme, ``λ_k = λ_{k+1} + (∂Φ_k/∂y_k)^T λ_{k+1}`` (Φ_k the step map) with parameter and
    time gradients ``Σ_k (∂Φ_k/∂θ)^T λ_{k+1}``, ``(∂Φ_k/∂t)^T λ_{k+1}``; in exact arithmetic
    it equals backpropagation through the same steps.

    Adaptive steps (``method="dopri5"``, ``"tsit5"``, ``"bosh3"``, ``"dopri8"`` or an
    :class:`~odeflow.EmbeddedTableau`, torchdiffeq's calling convention: see
    ``docs/ode-torchdiffeq.md``): each step's local error ``e = h Σ_i (b_i − b̂_i) k_i`` is
    measured by the RMS norm of ``e / (atol + rtol·max(|y_n|, |y_{n+1}|))`` over all elements
    of all leaves; a step with norm ``r ≤ 1`` is accepted and the next size comes from a
    :class:`~odeflow.PIController` (``h_{n+1} = h_n · 0.9 r_n^{-0.17} r_{n-1}^{0.04}`` for a
    5(4) pair, Hairer's DOPRI5 rule); the first step is Hairer's automatic choice. The times
    ``t`` never shorten a step: outputs inside a step come from the pair's dense output
    (``dopri5``, ``tsit5``: order 4), cubic Hermite (``bosh3``), or a partial step of the
    method (``dopri8``). Step sizes are constants for the gradient: ``gradient="adjoint"``
    is the exact adjoint of the accepted steps (backprop through the same steps, to
    round-off), ``"backprop"`` autograd through them, :class:`~odeflow.BacksolveAdjoint`
    the continuous adjoint. Times are host floats (float64); the loop syncs once per step.

    Mixed precision (``bf16``/``fp16``): stages run under ``torch.autocast`` on the state's
    device; the state update, adjoint and accumulators stay in the state dtype (fp32);
    step states are stored in 16 bit; fp16 adds sync-free dynamic adjoint scaling
    (:class:`AdjointScaler`).

    Args:
        func: the vector field ``func(t, y) -> dy/dt``, a callable or ``nn.Module``; ``t`` is a
            0-d tensor, ``y`` has the structure of ``y0``. ``torch.compile(module)`` works
            with every gradient mode: the discrete adjoint calls it with grad mode off
            (forward) and on (rebuild), i.e. two compiled graphs, and no recompilation per
            step or call.
        y0: initial state: a tensor ``(*shape)``, a tuple/list or a dict of tensors (any
            shapes, one floating dtype).
        t: ``(n,)`` output times, ``n >= 2``, strictly increasing or decreasing, finite;
            converted to the state's precision (differentiably; float32 for a 16-bit state)
            before steps and stage times are formed from it, so ``func`` receives ``t`` in
            the state's dtype, as with torchdiffeq.
        method: a fixed-step name (``euler, midpoint, heun, ralston, rk3, ssprk3, rk4,
            rk38``), an embedded pair for adaptive steps (``bosh3, dopri5, tsit5, dopri8``) or a
            :class:`ButcherTableau` / :class:`~odeflow.EmbeddedTableau`. ``rk4`` is the classical
            method; torchdiffeq's ``rk4`` is the 3/8 rule (``rk38`` here). An embedded pair
            with ``step_size`` or ``steps_per_interval`` takes fixed steps.
        gradient: ``"adjoint"`` (exact discrete adjoint, default), ``"backprop"``, or
            :class:`DiscreteAdjoint` / :class:`Backprop` / :class:`~odeflow.BacksolveAdjoint`
            (the continuous adjoint); ``DiscreteAdjoint(recompute="stage")``
            rebuilds one stage's graph at a time (less memory when a step's graph dominates,
            ``s − 1`` extra evaluations of ``func`` per step).
        precision: ``"fp32" | "tf32" | "bf16" | "fp16" | "fp64"`` or a :class:`PrecisionPolicy`.
            A 16-bit compute dtype needs a float32 state and ``func`` (autocast does not cast
            float64; on a float64 state a ``UserWarning`` says so). On a CPU that emulates
            16-bit matrix products, the first such solve warns with a
            :class:`~odeflow.PerformanceWarning`: there fp32 is the faster choice.
        steps_per_interval: RK steps between consecutive output times (intermediate states
            are not returned).
        step_size: alternatively, the largest step; each interval gets
            ``ceil(|Δt| / step_size)`` equal steps.
        params: tensors the gradient is taken for (each once, however often listed);
            default: the parameters of an ``nn.Module`` func that require grad. A plain
            callable that closes over tensors requiring grad, or a module holding such a
            tensor as a plain attribute (e.g. a conditioning input), must list them here
            (else a ``ValueError`` says so; for a module whose field reaches such a tensor
            some other way, e.g. a layer that is not a submodule, the backward pass raises
            it). Parameters no step depends on get ``None``.
        scaler: an :class:`AdjointScaler` persisting the fp16 adjoint scale across calls
            (default: a fresh one per call); ``AdjointScaler(dynamic=False)`` turns internal
            scaling off to pair with ``torch.amp.GradScaler``. Used only for fp16 + adjoint.
        output_dtype: dtype of the returned trajectory (default: ``y0``'s dtype).
        rtol, atol: relative and absolute tolerances of adaptive steps (default ``1e-7`` and
            ``1e-9``, torchdiffeq's): positive finite numbers, one per leaf (a tuple, or a dict
            for a dict state), or tensors broadcast against a leaf. Giving them with a
            fixed-step method is an error (the message lists the embedded pairs).
        max_steps: the most attempted (accepted + rejected) adaptive steps, ``>= 1``
            (default 10 000); beyond it ``odeint`` raises and :func:`solve` returns status
            ``MAX_STEPS_REACHED``.
        options: adaptive options: ``controller`` (a :class:`~odeflow.PIController`),
            ``first_step``, ``max_step``, ``per_sample_steps`` (``True``: each sample along
            dim 0 of every leaf takes its own steps, torchode-style, ``func`` then receives
            ``t`` of shape ``(batch,)``; differentiable by the exact adjoint of the masked
            steps, ``"adjoint"``, or by ``"backprop"``), and
            torchdiffeq's ``first_step, safety, ifactor, dfactor, max_num_steps, dtype`` and
            ``step_size`` (fixed steps).

    Returns:
        The trajectory ``(n, *y0.shape)`` (per leaf, same structure as ``y0``), ``ys[0]``
        equal to ``y0``, in ``output_dtype`` or ``y0``'s dtype.

    Raises:
        ValueError: ``rtol``/``atol`` non-positive or non-finite, ``max_steps < 1``, adaptive
            arguments with a method without an embedded error estimate, an unknown option, or
            ``t`` requiring grad in an adaptive solve (time gradients: fixed steps);
            ``t`` not 1-D, fewer than two points, not strictly monotone, non-finite,
            or on another device than ``y0``; ``y0`` non-finite; ``func`` output of the wrong
            shape, or ``func`` modifying its input ``y`` in place; tensors requiring grad
            that the adjoint cannot see (see ``params``); a grid of more than 10⁷ steps;
            unknown method/precision/gradient name (the message lists the valid ones).
        TypeError: integer/complex ``y0`` or ``t``; ``func`` returning a non-tensor, a
            different structure, a non-floating or a higher-precision dtype; a non-floating
            ``output_dtype``.
        FloatingPointError: fp16 adjoint overflow that scaling cannot recover.
        RuntimeError: (autograd's) ``y0`` or a parameter changed in place between the solve
            and its backward pass; an adaptive solve that reached ``max_steps`` or whose step
            fell to round-off (use :func:`solve` for the partial trajectory and its status).

    Higher-order gradients (``create_graph=True``) work with every gradient mode; through
    the discrete adjoint they replay the solve with a graph (see :class:`DiscreteAdjoint`).
    ``torch.func``: every transform works with either gradient mode, ``grad``, ``vjp``,
    ``jacrev``, ``jacfwd``, ``hessian`` and ``vmap`` of them (per-sample gradients). The
    discrete adjoint then differentiates for the parameters of an ``nn.Module`` ``func``
    handed to the transform by ``torch.func.functional_call``, with the same gradients as
    without a transform; it refuses, naming the fix, a tensor being differentiated that
    ``func`` reads but that is not among its parameters, and ``precision="fp16"`` (its
    dynamic scaling retries steps after a host check). Under a transform it rebuilds whole
    steps (``recompute="stage"`` and ``cuda_graphs`` do not apply).

    Example (per-sample parameter gradients through the adjoint):
        >>> import torch, odeflow
        >>> from torch.func import functional_call, grad, vmap
        >>> class Field(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lin = torch.nn.Linear(2, 2).double()
        ...     def forward(self, t, y):
        ...         return torch.tanh(self.lin(y))
        >>> class NeuralODE(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.field = Field()
        ...     def forward(self, y0):
        ...         t = torch.tensor([0.0, 1.0], dtype=torch.float64)
        ...         return odeflow.odeint(self.field, y0, t)[-1]
        >>> model = NeuralODE()
        >>> params = {n: p.detach() for n, p in model.named_parameters()}
        >>> loss = lambda p, y: functional_call(model, p, (y[None],)).square().sum()
        >>> per_sample = vmap(grad(loss), in_dims=(None, 0))(params, torch.ones(5, 2).double())
        >>> per_sample["field.lin.weight"].shape
        torch.Size([5, 2, 2])

    Reference:
        Celledoni, Owren, Ruthotto, Yang, *Mixed precision training of neural ODEs*,
        arXiv:2510.23498; Chen et al., *Neural ODEs*, arXiv:1806.07366.

    Example:
        >>> import torch, odeflow
        >>> y0 = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
        >>> t = torch.linspace(0, 1, 3, dtype=torch.float64)
        >>> ys = odeflow.odeint(lambda t, y: -y, y0, t, steps_per_interval=10)
        >>> round(ys[-1].item(), 6), ys.shape
        (0.367879, torch.Size([3, 1]))
        >>> ys[-1].sum().backward(); round(y0.grad.item(), 6)
        0.367879

        Adaptive steps, torchdiffeq's way (the gradient: the adjoint of the accepted steps):

        >>> y0 = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
        >>> ys = odeflow.odeint(lambda t, y: -y, y0, t, method="dopri5", rtol=1e-8, atol=1e-10)
        >>> round(ys[-1].item(), 8)
        0.36787944
        >>> ys[-1].sum().backward(); round(y0.grad.item(), 8)
        0.36787944
    """
    pb, _, ys = _run(
        func,
        y0,
        t,
        method,
        gradient,
        precision,
        steps_per_interval,
        step_size,
        params,
        scaler,
        output_dtype,
        rtol,
        atol,
        max_steps,
        options,
    )
    if pb.run is not None:
        raise_unfinished(pb)
    return ys


def solve(
    func: Callable[[Tensor, Any], Any],
    y0: Tensor | Sequence[Tensor] | dict[str, Tensor],
    t: Tensor,
    *,
    method: str | ButcherTableau = "rk4",
    gradient: str | GradientPolicy = "adjoint",
    precision: str | PrecisionPolicy = "fp32",
    steps_per_interval: int = 1,
    step_size: float | None = None,
    params: Sequence[Tensor] | None = None,
    scaler: AdjointScaler | None = None,
    output_dtype: torch.dtype | None = None,
    rtol: float | Sequence | None = None,
    atol: float | Sequence | None = None,
    max_steps: int | None = None,
    options: dict | None = None,
) -> Solution:
    r"""Like :func:`odeint` but return a :class:`Solution` (trajectory, NFE, steps, status).

    ``steps`` counts the RK steps (adaptive: the accepted ones, ``rejected`` the others) and
    ``status`` says how an adaptive solve ended (:class:`SolveStatus`).
    ``nfe`` counts every call of ``func`` in the forward pass, including the one extra call
    made when ``func`` is a plain callable (not an ``nn.Module``), ``params`` is not given and
    grad mode is on: it checks that ``func`` does not close over tensors requiring grad.
    The status check costs one host sync per call. ``Solution.stats`` (adjoint scales,
    retries, syncs, backward NFE) is filled when ``backward`` runs through ``ys``.

    Args:
        func, y0, t, method, gradient, precision, steps_per_interval, step_size, params,
        scaler, output_dtype, rtol, atol, max_steps, options: exactly as in :func:`odeint`.

    Returns:
        A :class:`Solution`.

    Raises:
        The errors of :func:`odeint`.

    Reference:
        Celledoni, Owren, Ruthotto, Yang, arXiv:2510.23498.

    Example:
        >>> import torch, odeflow
        >>> sol = odeflow.solve(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]),
        ...                     steps_per_interval=4)
        >>> sol.nfe, sol.steps, sol.status.value  # 4 steps x 4 stages + 1 closure check
        (17, 4, 'success')
        >>> sol = odeflow.solve(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]),
        ...                     method="dopri5", rtol=1e-6, atol=1e-6, max_steps=3)
        >>> sol.status.value, sol.steps, bool(sol.ys[-1].isnan().all())
        ('max_steps_reached', 3, True)
    """
    pb, tt, ys = _run(
        func,
        y0,
        t,
        method,
        gradient,
        precision,
        steps_per_interval,
        step_size,
        params,
        scaler,
        output_dtype,
        rtol,
        atol,
        max_steps,
        options,
    )
    leaves = _tree.flatten(ys)[0]
    # (under vmap: the status of the whole batch)
    fin = all(_flat(_host(torch.stack([torch.isfinite(x.detach()).all() for x in leaves]).all())))
    status = SolveStatus.SUCCESS if fin else SolveStatus.NONFINITE
    steps, rejected = sum(pb.ms), 0
    if pb.run is not None:  # adaptive: the solver's record
        code, steps, rejected = run_status(pb)
        status = SolveStatus(code) if code != "success" else status
    return Solution(
        ts=tt,
        ys=ys,
        nfe=pb.fld.nfe,
        steps=steps,
        status=status,
        stats=pb.stats,
        rejected=rejected,
    )
