"""The discrete adjoint under ``torch.func`` transforms that differentiate."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor

from .._compat import NORM_LAYERS
from .._field import _bind_target
from .._precision import AdjointScaler
from .._problem import _integrate, _Problem
from .._rk import _coeffs, _grid, _rk_step, _times
from .._walk import _refuse_transformed_closure

__all__ = ["_FuncTransform"]


class _FuncTransform:
    """The discrete adjoint's path under a transform: ``func`` is evaluated with its
    parameters rebound by name (``functional_call``) to the tensors the transform hands in."""

    def __init__(self, pb: _Problem):
        self.pb = pb
        self.bind_module = None
        self.param_names: list[str] = []

    def solve(
        self, t: Tensor, leaves: list[Tensor], plist: list[Tensor], scaler: AdjointScaler | None
    ) -> list[Tensor]:
        pb = self.pb
        if scaler is not None and scaler.dynamic:
            raise ValueError(
                "precision='fp16' with the discrete adjoint under a torch.func transform (grad, "
                "vjp, jacrev, ...) is not supported: fp16's dynamic adjoint scaling retries "
                "steps after a host check, which a transform cannot batch. Use "
                "precision='bf16' or 'fp32', or gradient='backprop'"
            )
        self.bind_module, self.param_names = _bind_target(
            pb.func, plist, "the discrete adjoint under a torch.func transform",
            "use gradient='backprop'",
        )  # fmt: skip
        # a tensor the transform differentiates for that func reads but that is not among its
        # parameters would get a zero gradient without a word: evaluate func once with the
        # parameters detached and see whether its output still depends on what is
        # transformed (leaving no trace: the solve's random draws and the buffers, e.g.
        # running statistics; a transform's buffers may be batched: no equality test)
        cuda = [pb.fld.device] if pb.fld.device.type == "cuda" else []
        with (
            pb.fld.aside(changed_only=False),
            torch.enable_grad(),
            self.rebound([p.detach() for p in plist]),
            torch.random.fork_rng(devices=cuda),
        ):
            ks = pb.fld(t[0].detach(), [y.detach().to(pb.hdt) for y in leaves])
        if any(k.requires_grad for k in ks):
            _refuse_transformed_closure()
        outs = _FuncAdjoint.apply(self, t, *leaves, *plist)
        return list(outs[: pb.n_leaf])

    def rebound(self, params: Sequence[Tensor], scratch: Sequence[str] = ()):
        """Evaluate ``func`` with its parameters bound to ``params`` and the buffers named in
        ``scratch`` (see :meth:`scratch_names`) bound to fresh copies: a replay then updates
        those, inside the transformed function (a transform refuses in-place updates of
        tensors from outside it), and leaves the buffers as the forward pass left them."""
        bound = dict(zip(self.param_names, params))
        if scratch:
            buffers = dict(self.bind_module.named_buffers())
            bound.update((n, buffers[n].clone()) for n in scratch)
        if not bound:
            return contextlib.nullcontext()
        return self.pb.fld.rebound(self.bind_module, bound)

    def scratch_names(self) -> list[str]:
        """Names of the buffers that a replay of the forward pass updates: those it updated,
        and a training norm layer's (a transform may hide the version bump of its batch
        counter)."""
        if self.bind_module is None:
            return []
        mods = self.bind_module.modules()
        norms = [m for m in mods if isinstance(m, NORM_LAYERS) and m.training]
        ids = {id(b) for b in [*self.pb.fld.mutated, *(b for m in norms for b in m.buffers())]}
        return [n for n, b in self.bind_module.named_buffers() if id(b) in ids]

    def forward(self, t: Tensor, tensors, record: bool, scratch: Sequence[str] = ()):
        """The outputs of :class:`_FuncAdjoint`: the trajectory, then each leaf's stored step
        states (stacked), ``func`` evaluated with its parameters bound to
        ``tensors[n_leaf:]`` (and scratch buffers: a replay, see :meth:`rebound`)."""
        pb = self.pb
        nl = pb.n_leaf
        store: list[list[Tensor]] = []
        with self.rebound(tensors[nl:], scratch):
            outs = _integrate(pb, t, list(tensors[:nl]), store, record)
        stored = [torch.stack([x[leaf] for x in store]) for leaf in range(nl)]
        return (*pb.outputs(outs), *stored)

    def backward(self, t: Tensor, stored, params, gouts, gstored, need_t: bool):
        """The adjoint recursion by ``torch.func.vjp`` of each step (see
        :class:`_FuncAdjoint`); ``gstored``: cotangents of the stored states (an outer
        transform differentiating this backward pass, which reads them), added to the
        adjoint of each step's input state."""
        pb = self.pb
        hdt, steps = pb.hdt, pb.steps
        pos, acc = {0: 0}, 0  # state index of each output time
        for k, m in enumerate(pb.ms):
            acc += m
            pos[acc] = k + 1

        def inject(a: list[Tensor], state: int) -> list[Tensor]:
            k = pos.get(state)
            if k is not None:
                a = [al if g is None else al + g[k].to(hdt) for al, g in zip(a, gouts)]
            if state < len(steps):
                a = [al if g is None else al + g[state].to(hdt) for al, g in zip(a, gstored)]
            return a

        grid = None if need_t else _grid(pb, t)
        scratch = self.scratch_names()
        shapes = [x.shape[1:] for x in stored]
        a = inject([torch.zeros(s, dtype=hdt, device=x.device) for s, x in zip(shapes, stored)],
                   len(steps))  # fmt: skip
        gp: list[Tensor | None] = [None] * len(params)
        gt: list[Tensor | None] = [None] * t.shape[0]
        nfe0 = pb.fld.nfe
        for s in range(len(steps) - 1, -1, -1):
            i, j = steps[s]

            def step(ys, ps, ta, tb, s=s, i=i, j=j):
                co = grid[s] if grid is not None else _coeffs(pb.tab, *_times(ta, tb, j, pb.ms[i]))
                with self.rebound(ps, scratch):
                    return _rk_step(pb.fld, pb.tab, co, ys, pb.pol)

            pb.fld.replay_rng(s)
            ys = [x[s].to(hdt) for x in stored]
            _, vjp = torch.func.vjp(step, ys, list(params), t[i], t[i + 1])
            dy, dp, dta, dtb = vjp(a)
            a = inject(list(dy), s)
            gp = [g if prev is None else prev + g for prev, g in zip(gp, dp)]
            if need_t:
                for k, g in ((i, dta), (i + 1, dtb)):
                    gt[k] = g if gt[k] is None else gt[k] + g
        pb.stats.nfe += pb.fld.nfe - nfe0
        g_t = None
        if need_t:
            g_t = torch.stack([torch.zeros_like(t[0]) if g is None else g for g in gt])
        return a, gp, g_t


class _FuncAdjoint(torch.autograd.Function):
    """The discrete adjoint under ``torch.func`` transforms that differentiate (``grad``,
    ``vjp``, ``jacrev``, ``hessian``, and ``vmap`` of these, e.g. per-sample gradients).

    The same recursion and stages as the eager adjoint (bitwise its gradients in the tests),
    written for transforms:

    * a transform hands ``forward`` and ``backward`` its inputs unwrapped, so ``func`` is
      evaluated with its parameters rebound by name to those inputs (never the module's own,
      which the transform wraps);
    * the stored step states are extra outputs, differentiable, so that an outer transform
      sees how the backward pass (which reads them) depends on ``y0`` and θ: their
      cotangents join the adjoint;
    * each step's VJP is taken by ``torch.func.vjp`` and summed out of place, so that an
      outer transform can batch (``generate_vmap_rule``) or differentiate the backward pass;
      forward mode (``jvp``) solves again, pushing tangents.

    Not on this path: fp16's dynamic scaling (refused), ``recompute="stage"``, CUDA graphs
    and checkpointing (the step VJP runs eagerly on stored steps: the same gradients)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(run: _FuncTransform, t: Tensor, *tensors: Tensor):  # type: ignore[override]
        return run.forward(t, tensors, record=True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        run, t, *tensors = inputs
        stored = output[run.pb.n_leaf :]
        ctx.run, ctx.plan, ctx.n_in = run, run.pb, len(tensors)
        ctx.save_for_backward(t, *tensors, *stored)
        ctx.save_for_forward(t, *tensors)

    @staticmethod
    def jvp(ctx, _run, t_dot: Tensor | None, *dots: Tensor | None):  # type: ignore[override]
        """Forward mode (``jacfwd``, ``jvp``, ``hessian``): the solve again, pushing tangents
        through the same steps (and the forward pass's random draws)."""
        run: _FuncTransform = ctx.run
        t, *tensors = ctx.saved_tensors
        scratch = run.scratch_names()

        def solve(t, *tensors):
            return run.forward(t, tensors, record=False, scratch=scratch)

        dots = [torch.zeros_like(x) if d is None else d for d, x in zip(dots, tensors)]
        t_dot = torch.zeros_like(t) if t_dot is None else t_dot
        with run.pb.fld.replaying():
            run.pb.fld.replay_rng(0)
            _, out = torch.func.jvp(solve, (t, *tensors), (t_dot, *dots))
        return out

    @staticmethod
    def backward(ctx, *gouts: Tensor | None):  # type: ignore[override]
        run: _FuncTransform = ctx.run
        nl = run.pb.n_leaf
        t, *rest = ctx.saved_tensors
        tensors, stored = rest[: ctx.n_in], rest[ctx.n_in :]
        with run.pb.fld.replaying():  # (random draws; the buffers: see rebound's scratch)
            gy, gp, gt = run.backward(
                t, stored, tensors[nl:], gouts[:nl], gouts[nl:], ctx.needs_input_grad[1]
            )
        gy = [g.to(x.dtype) for g, x in zip(gy, tensors[:nl])]
        gp = [torch.zeros_like(p) if g is None else g.to(p.dtype) for g, p in zip(gp, tensors[nl:])]
        return None, gt, *gy, *gp
