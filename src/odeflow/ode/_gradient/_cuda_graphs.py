"""CUDA-graph capture of the discrete adjoint's per-step work (``cuda_graphs=True``): the
forward step and the backward step (rebuild + VJP) captured once, replayed for every step
(see :mod:`odeflow.ode._graphs` for the cache)."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .. import _graphs
from .._field import _bind_target, _owning_module, _rng_state
from .._problem import _Problem
from .._rk import _Coeffs, _coeffs, _grid, _rk_step

__all__ = ["_CapturedSteps"]


class _CapturedSteps:
    """One solve's captured steps: what the captures read (the parameters by address, bound
    by name into the module), their cache entry (looked up once per solve), and the replays.
    """

    def __init__(self, pb: _Problem, plist: list[Tensor], t: Tensor):
        self.pb = pb
        func = pb.func
        self.bind_module, self.param_names = _bind_target(func, plist)
        mod = _owning_module(func)
        # every tensor the captured kernels read by address
        extra = [*mod.parameters(), *mod.buffers()] if mod is not None else []
        seen: set[int] = set()
        self.watched = [x for x in plist + extra if not (id(x) in seen or seen.add(id(x)))]
        self.params = plist  # the tensors gradients are taken for
        # recorded kernels also depend on the state's structure (leaf order), t's dtype
        # (the static time buffers) and train/eval mode (dropout, batch norm)
        modes = tuple(m.training for m in mod.modules()) if mod is not None else ()
        self.graph_key = (pb.spec, t.dtype, modes)
        self.entry: _graphs.StepGraphs | None = None  # this solve's captures
        self.local_graphs: OrderedDict = OrderedDict()  # a non-weakref-able func's

    # ------------------------------------------------------------------ forward
    def forward_step(self, y: list[Tensor], co: _Coeffs) -> list[Tensor]:
        """``Φ(y)`` by the captured no-grad step (a copy: the replay's outputs are
        overwritten by the next replay)."""
        pb = self.pb

        def build(inputs):
            *ys, ts, hs = inputs

            def fn():
                with torch.no_grad():
                    return _rk_step(pb.fld, pb.tab, _coeffs(pb.tab, ts, hs), ys, pb.pol)

            return fn

        step = self._replayer(self._captures(y), "forward", build, [*y, co.tau, co.h])
        return [o.clone() for o in step(*y, co.tau, co.h)]

    def check_deterministic(self, before: Any) -> None:
        """A captured adjoint replays the forward and the backward step as separate graphs,
        each drawing fresh random numbers: the rebuild would not see the forward's draws."""
        if before != _rng_state(self.pb.fld.device):
            raise ValueError(
                "DiscreteAdjoint(cuda_graphs=True) needs a deterministic vector field, but "
                "func drew random numbers (e.g. dropout in training mode): the captured "
                "rebuild could not repeat the forward pass's draws. Use cuda_graphs=False "
                "(the eager adjoint replays them) or func.eval()"
            )

    def after_forward(self, store: Any, t: Tensor, live: list[Tensor], need_t: bool) -> None:
        """After the adjoint's forward pass: note the buffers the replays update, and capture
        the backward step now (time gradients run eagerly)."""
        pb = self.pb
        if self.entry is not None:  # replays update buffers without a version bump:
            entry = self.entry  # the buffers seen changing once (capture) are kept
            known = {id(b) for b in entry.mutated}
            entry.mutated += [b for b in pb.fld.mutated if id(b) not in known]
            pb.fld.mutated = entry.mutated
        if not need_t:
            co = _grid(pb, t)[0]
            seed = [torch.zeros(x.shape, dtype=pb.hdt, device=x.device) for x in store[0]]
            self.backward_step(store[0], seed, co.tau, co.h, live, True)

    # ------------------------------------------------------------------ backward
    def backward_step(
        self,
        x: list[Tensor],
        seed: list[Tensor],
        tau: Tensor,
        h: Tensor,
        live: list[Tensor],
        capture: bool,
    ) -> Callable | None:
        """The captured rebuild + VJP of one step: ``(stored state leaves, seed leaves, τ, h)
        -> (state adjoint leaves, parameter gradients)``.

        Captured by the forward pass (``capture=True``): a capture inside the autograd
        engine's backward would make the engine's stream synchronisation touch the capturing
        stream. The backward pass only looks it up (``None`` if it was evicted meanwhile:
        eager fallback).

        The parameters are differentiated through fresh aliases (``p.detach()``, same
        storage, bound into the module by name): the engine then never routes a gradient
        into a parameter's own ``AccumulateGrad`` node, which was created on the default
        stream by earlier eager work and kept alive by the caller's graph; waiting on that
        stream from inside the capture is illegal (``cudaErrorStreamCaptureImplicit``)."""
        pb, nl = self.pb, len(x)

        def build(inputs):
            xs, sd, (ts, hs) = inputs[:nl], inputs[nl : 2 * nl], inputs[2 * nl :]

            def fn():
                with torch.enable_grad():
                    yin = [v.detach().to(pb.hdt).requires_grad_() for v in xs]
                    alias = [p.detach().requires_grad_() for p in live]
                    names = dict(zip(self.param_names, alias))
                    bind = pb.fld.rebound(self.bind_module, names) if alias else None
                    with bind or contextlib.nullcontext():
                        co = _coeffs(pb.tab, ts, hs)
                        yout = _rk_step(pb.fld, pb.tab, co, yin, pb.pol)
                    g = torch.autograd.grad(yout, yin + alias, grad_outputs=sd, allow_unused=True)
                gy = [torch.zeros_like(v) if gv is None else gv for gv, v in zip(g[:nl], yin)]
                return gy + list(g[nl:])

            return fn

        values = [*x, *seed, tau, h]
        return self._replayer(self._captures(seed), "backward", build, values, capture)

    # ------------------------------------------------------------------ plumbing
    def _captures(self, y: list[Tensor]) -> _graphs.StepGraphs:
        """The captures of this solve (every step has the same key: looked up once)."""
        if self.entry is None:
            pb = self.pb
            key = (
                pb.tab,
                pb.pol,
                pb.hdt,
                self.graph_key,
                tuple((tuple(x.shape), x.dtype, x.device) for x in y),
                tuple(p.data_ptr() for p in self.params),  # what the backward differentiates
            )
            self.entry = _graphs.lookup(pb.fld.func, key, self.watched, self.local_graphs)
        return self.entry

    def _replayer(
        self, entry: _graphs.StepGraphs, kind: str, build, values, capture: bool = True
    ) -> Callable | None:
        """``values -> outputs`` of the capture ``kind`` of ``entry`` (captured now if
        missing and ``capture``, else ``None``); ``build(static_inputs)`` makes the eager
        function over the static inputs."""
        pb = self.pb
        cap = getattr(entry, kind)
        if cap is None:
            if not capture:
                return None
            inputs = _graphs.static_like(values)
            with pb.fld.aside():  # (the warm-up and capture evaluations are not the solve's)
                cap = entry.capture(kind, build(inputs), inputs)

        def replay(*vals: Tensor) -> list:
            out = cap(vals, build(cap.inputs))
            if cap.graph is not None:  # (the eager fallback counts its own calls)
                pb.fld.nfe += pb.tab.stages
            return out

        return replay
