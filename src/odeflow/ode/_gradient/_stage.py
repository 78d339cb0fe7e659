"""The discrete adjoint's step VJP rebuilding one stage's graph at a time
(``DiscreteAdjoint(recompute="stage")``; the mathematics is in its docstring).

Memory: the stages are kept in the dtype ``func`` returned (16-bit under autocast; exact,
the forward casts them up to ``H`` before use), the step state is cast to ``H`` per stage,
and the stage seed ``mu_q`` is cast to that dtype before the VJP (what autograd's cast
backward would do). Each stage's graph, input and seed are released before the next."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._compat import edge_outputs, get_gradient_edge
from .._rk import _axpy, _Coeffs, _lincomb, _stage_seed
from .._tableaus import ButcherTableau
from ._vjp import StepGrads, _VJPBase

__all__ = ["_StageVJP"]


class _Dataflow:
    """Which stages a step's adjoint needs, from the tableau's sparsity."""

    def __init__(self, tab: ButcherTableau):
        n = tab.stages
        # stage i influences the step (its adjoint mu_i is not structurally zero)
        alive = [False] * n
        for i in range(n - 1, -1, -1):
            alive[i] = tab.b[i] != 0.0 or any(
                tab.a[r][i] != 0.0 and alive[r] for r in range(i + 1, n)
            )
        # k_i is needed (no-grad recomputation) to form the input of a later evaluated stage
        feeds = [False] * n
        for i in range(n - 1, -1, -1):
            feeds[i] = any(tab.a[r][i] != 0.0 and (alive[r] or feeds[r]) for r in range(i + 1, n))
        self.feeds = feeds
        self.dead = [not x for x in alive]
        # nu_r is read by mu_q for q < r with a_rq != 0; last_use[r] is the smallest such q
        self.reads = [[q for q in range(r) if tab.a[r][q] != 0.0] for r in range(n)]
        self.last_use = [min(qs, default=r) for r, qs in enumerate(self.reads)]
        # k_q is last read when the input of its first evaluated consumer stage is formed
        self.first_reader = [
            min((r for r in range(q + 1, n) if tab.a[r][q] != 0.0 and alive[r]), default=-1)
            for q in range(n)
        ]


@dataclass
class _Acc:
    """One step's running sums over its stages (processed last to first)."""

    gy: list[Tensor]  # the state adjoint: the seed, then + Σ nu_q (own buffers once summed)
    gp: list[Tensor | None]
    own_gy: bool = False
    nus: dict[int, list[Tensor]] = field(default_factory=dict)
    d_tau: Tensor | None = None
    d_h: Tensor | None = None
    kdt: torch.dtype | None = None  # dtype f returned for the last rebuilt stage


class _StageVJP(_VJPBase):
    """Step VJP by stages: the stages recomputed without a graph, then ``k_q = f(t_q, Y_q)``
    rebuilt with a graph and differentiated one stage at a time, ``q = s..1``."""

    def __init__(self, *args):
        super().__init__(*args)
        self.flow = _Dataflow(self.pb.tab)

    def __call__(self, s: int, seed: list[Tensor]) -> StepGrads:
        i, j = self.steps[s]
        co = self.grid[s]
        ks = self._stages(s, co)
        acc = _Acc(gy=list(seed), gp=[None] * len(self.live))
        for q in range(self.pb.tab.stages - 1, -1, -1):
            if not self.flow.dead[q]:
                self._stage(s, q, co, seed, ks, acc)
                ks[q] = None
        gt: list[Tensor] = []
        if self.need_t:
            z = torch.zeros_like(self.td[0])
            d_tau = z if acc.d_tau is None else acc.d_tau
            d_h = z if acc.d_h is None else acc.d_h
            m = self.pb.ms[i]
            # tau = ta + j h, h = (tb - ta) / m
            d_hh = d_h if j == 0 else d_h + d_tau * j
            gt = [d_tau - d_hh / m, d_hh / m]
        return i, acc.gy, acc.gp, gt

    def _state(self, s: int) -> list[Tensor]:  # y in H (a fresh copy when the store is 16-bit)
        return [x.detach().to(self.pb.hdt) for x in self.store[s]]

    def _input(self, s: int, q: int, co: _Coeffs, ks) -> list[Tensor]:
        """``Y_q`` without a graph, one fresh buffer per leaf (the state itself for q = 0)."""
        if q == 0:
            return self._state(s)
        return _axpy(self.store[s], ks, co.ca[q], self.pb.hdt, fresh=True)

    def _stages(self, s: int, co: _Coeffs) -> list[list[Tensor] | None]:
        """The stages that feed a later evaluated stage, recomputed without a graph."""
        pb = self.pb
        ks: list[list[Tensor] | None] = [None] * pb.tab.stages
        with torch.no_grad(), pb.pol.context(pb.fld.device, cache=True):
            for q in range(pb.tab.stages):
                if self.flow.feeds[q]:
                    yq = self._input(s, q, co, ks)
                    pb.fld.replay_rng(s, q)
                    ks[q] = pb.fld.raw(co.ts[q], yq)
                    del yq
        return ks

    def _evaluate(self, s: int, q: int, tq: Tensor, yq: list[Tensor]):
        """``k_q = f(t_q, X)`` with a graph; ``X = Y_q + z``, ``z = -0.0`` (an exact identity,
        also for signed zeros) a 0-d leaf added in place: the VJP takes the gradient at X's
        graph edge, so X can be freed once f's graph holds what it needs (a 16-bit copy under
        autocast). A state that is the stored tensor itself (first stage, fp32 storage) stays
        a leaf: it costs no memory. Returns ``k``, X's leaves or edges, ``z`` and ``t_q``."""
        pb = self.pb
        with torch.enable_grad():
            if self.need_t:
                tq = tq.detach().requires_grad_()
            z = torch.full((), -0.0, dtype=pb.hdt, device=pb.fld.device, requires_grad=True)
            xs = [
                x.detach().requires_grad_()
                if q == 0 and x.data_ptr() == st.data_ptr()
                else x.detach().add_(z)
                for x, st in zip(yq, self.store[s])
            ]
            yq.clear()
            x_in = [x if x.is_leaf else get_gradient_edge(x) for x in xs]
            pb.fld.replay_rng(s, q)
            with pb.pol.context(pb.fld.device):
                k = pb.fld.raw(tq, xs)
        return k, x_in, z, tq

    def _stage(self, s: int, q: int, co: _Coeffs, seed, ks, acc: _Acc) -> None:
        """Stage ``q``'s VJP, accumulated into ``acc``."""
        pb, flow, tab, nl = self.pb, self.flow, self.pb.tab, self.pb.n_leaf
        # mu_q = h (b_q lam + sum_{r>q} a_rq nu_r), in H, cast to the dtype f returns (what
        # autograd's cast backward would do) before the graph is built, so that the nu_r
        # are released first
        mu = [_stage_seed(tab, q, co.h, lam, acc.nus, leaf, acc.kdt)
              for leaf, lam in enumerate(seed)]  # fmt: skip
        for r in [r for r in acc.nus if flow.last_use[r] >= q]:
            del acc.nus[r]
        yq = self._input(s, q, co, ks)
        incs = []
        if self.need_t:  # the increments sum_j a_qj k_j enter the time gradient
            incs = [_lincomb(tab.a[q][:q], ks, leaf, pb.hdt) for leaf in range(nl)]
        for r in range(q):
            if flow.first_reader[r] == q:
                ks[r] = None  # no later-processed stage reads k_r
        k, x_in, z, tq = self._evaluate(s, q, co.ts[q], yq)
        del yq
        known = [x for x in x_in if isinstance(x, Tensor)] + self.live + [z]
        self.check_once(k, known + ([tq] if self.need_t else []),
                        [x for x in x_in if not isinstance(x, Tensor)])  # fmt: skip
        # leaves of f's output that depend on no input (e.g. constants) carry no graph
        kg = [leaf for leaf, kl in enumerate(k) if kl.requires_grad]
        # (as edges, so that k can be freed before the VJP; torch < 2.5 takes tensors only)
        k_out = [get_gradient_edge(k[leaf]) if edge_outputs() else k[leaf] for leaf in kg]
        mm = [mu[leaf] if mu[leaf].dtype == k[leaf].dtype else mu[leaf].to(k[leaf].dtype)
              for leaf in kg]  # fmt: skip
        del mu
        acc.kdt = k[0].dtype
        lam_k = self._lam_k(q, seed, k) if self.need_t and tab.b[q] != 0.0 else None
        del k
        inputs = x_in + self.live + ([tq] if self.need_t else [])
        if kg:
            g = torch.autograd.grad(k_out, inputs, grad_outputs=mm, allow_unused=True)
        else:
            g = (None,) * len(inputs)
        del k_out, x_in, mm
        self._accumulate(s, q, g, incs, lam_k, acc)

    def _lam_k(self, q: int, seed, k) -> Tensor:
        """``b_q λ·k_q``, reduced in H."""
        lam_k = None
        for lam, kl in zip(seed, k):
            dd = (lam * kl.detach().to(self.pb.hdt)).sum() * self.pb.tab.b[q]
            lam_k = dd if lam_k is None else lam_k + dd
        return lam_k

    def _accumulate(self, s: int, q: int, g, incs, lam_k, acc: _Acc) -> None:
        """Add stage ``q``'s VJP ``g`` (state, parameters, time) into the step's sums."""
        pb, nl, dev = self.pb, self.pb.n_leaf, self.pb.fld.device
        nu = [
            torch.zeros(x.shape, dtype=pb.hdt, device=dev) if gx is None else gx
            for gx, x in zip(g[:nl], self.store[s])
        ]
        if acc.own_gy:
            for leaf in range(nl):
                acc.gy[leaf].add_(nu[leaf])
        else:  # the first sum allocates gy; the seed itself is never modified
            acc.gy = [a_ + n_ for a_, n_ in zip(acc.gy, nu)]
            acc.own_gy = True
        for w in range(len(self.live)):
            gw = g[nl + w]
            if gw is not None:
                acc.gp[w] = gw if acc.gp[w] is None else acc.gp[w] + gw
        if self.flow.reads[q]:
            acc.nus[q] = nu
        if not self.need_t:
            return
        td, tab = self.td, pb.tab
        gq = g[-1] if g[-1] is not None else torch.zeros_like(td[0])
        dh = gq * tab.c[q] if tab.c[q] != 0.0 else None
        # nu_q . (sum_j a_qj k_j) and b_q lam . k_q, reduced in H
        dots = [(n_ * inc).sum() for n_, inc in zip(nu, incs) if inc is not None]
        if lam_k is not None:
            dots.append(lam_k)
        for dd in dots:
            dd = dd.to(td.dtype)
            dh = dd if dh is None else dh + dd
        acc.d_tau = gq if acc.d_tau is None else acc.d_tau + gq
        if dh is not None:
            acc.d_h = dh if acc.d_h is None else acc.d_h + dh
