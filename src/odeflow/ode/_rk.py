"""The explicit Runge–Kutta step and the grid of step coefficients."""

from __future__ import annotations

import bisect
import contextlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._field import _Field
from ._precision import PrecisionPolicy
from ._tableaus import ButcherTableau

__all__ = ["_Coeffs", "_Grid", "_axpy", "_coeffs", "_grid", "_rk_step", "_stage_seed", "_times"]


def _lincomb(
    coeffs: Sequence[float],
    ks: Sequence[list[Tensor] | None],
    leaf: int,
    dtype: torch.dtype | None = None,
) -> Tensor | None:
    """``Σ_j coeffs[j] k_j`` for one leaf, skipping zero coefficients (``None`` if all are zero).

    Stages kept in a narrower dtype than ``dtype`` are cast up first (exactly)."""
    acc = None
    for j, cj in enumerate(coeffs):
        if cj != 0.0:
            k = ks[j][leaf]
            term = (k if dtype is None or k.dtype == dtype else k.to(dtype)) * cj
            acc = term if acc is None else acc + term
    return acc


@dataclass
class _Coeffs:
    """What one RK step is formed from, as 0-d tensors in t's dtype: its start ``tau`` and
    size ``h``, the stage times ``ts[i] = τ + c_i h``, and the products ``h a_ij`` and
    ``h b_j`` of the nonzero tableau entries, ``ca[i] = [(j, h a_ij)]`` and
    ``cb = [(j, h b_j)]``. Stage inputs and the update are then one fused
    multiply-add per term: ``Y_i = y + Σ_j (h a_ij) k_j`` (``addcmul``), a third of the
    elementwise kernels of ``y + h (Σ_j a_ij k_j)``; kernel launches are what bound small
    fields on a GPU."""

    tau: Tensor
    h: Tensor
    ts: list[Tensor]
    ca: list[list[tuple[int, Tensor]]]
    cb: list[tuple[int, Tensor]]


def _assemble(tab: ButcherTableau, tau: Tensor, h: Tensor, value: Callable) -> _Coeffs:
    """:class:`_Coeffs` with ``value(kind, x)`` giving ``τ + x h`` (``kind`` "t", nonzero
    c_i in order), then ``h x`` for the nonzero a_ij (``"a"``, row by row) and b_j (``"b"``)."""
    ts = [tau if c == 0.0 else value("t", c) for c in tab.c]
    ca = [[(j, value("a", a)) for j, a in enumerate(row[:i]) if a != 0.0]
          for i, row in enumerate(tab.a)]  # fmt: skip
    cb = [(j, value("b", b)) for j, b in enumerate(tab.b) if b != 0.0]
    return _Coeffs(tau, h, ts, ca, cb)


def _coeffs(tab: ButcherTableau, tau: Tensor, h: Tensor) -> _Coeffs:
    """One step's :class:`_Coeffs` by scalar ops (captured steps, differentiable times);
    bitwise the values :func:`_grid` forms for every step at once (tested)."""
    return _assemble(tab, tau, h, lambda kind, x: tau + x * h if kind == "t" else h * x)


def _axpy(
    y: list[Tensor],
    ks: Sequence[list[Tensor] | None],
    terms: list[tuple[int, Tensor]],
    hdt: torch.dtype,
    fresh: bool = False,
) -> list[Tensor]:
    """``y + Σ (h a_j) k_j`` per leaf, one ``addcmul`` per term in order, stages widened to
    ``hdt`` first; ``y`` itself when there are no terms, unless ``fresh`` (then always one new
    buffer per leaf, filled in place: the same kernels, bitwise the same values)."""
    out = []
    for leaf, yl in enumerate(y):
        acc = yl.to(hdt, copy=True) if fresh else yl
        for j, c in terms:
            k = ks[j][leaf]
            k = k if k.dtype == hdt else k.to(hdt)
            # (out of place unless filling the fresh buffer: vmap has no rule for addcmul_)
            acc = acc.addcmul_(k, c) if fresh else torch.addcmul(acc, k, c)
        out.append(acc)
    return out


def _stage_seed(
    tab: ButcherTableau,
    q: int,
    h: Tensor,
    lam: Tensor,
    nus: dict[int, list[Tensor]],
    leaf: int,
    dtype: torch.dtype | None,
) -> Tensor:
    """Stage adjoint ``mu_q = h (b_q lam + Σ_{r>q} a_rq nu_r)`` of one leaf, summed in ``lam``'s
    dtype in one fresh buffer, then cast to ``dtype`` (if given)."""
    acc = lam * tab.b[q] if tab.b[q] != 0.0 else None
    for r in range(q + 1, tab.stages):
        if tab.a[r][q] != 0.0 and r in nus:
            if acc is None:
                acc = nus[r][leaf] * tab.a[r][q]
            else:
                acc.add_(nus[r][leaf], alpha=tab.a[r][q])
    if acc is None:  # no path from this stage to the step's output (f ignores its input)
        acc = torch.zeros_like(lam)
    acc.mul_(h)
    return acc if dtype is None or acc.dtype == dtype else acc.to(dtype)


def _rk_step(
    fld: _Field,
    tab: ButcherTableau,
    co: _Coeffs,
    y: list[Tensor],
    pol: PrecisionPolicy,
    enter: bool = True,
) -> list[Tensor]:
    """One explicit RK step; stages under the policy's autocast (entered here unless the caller
    holds it: ``enter=False``), the update in ``H``."""
    ks: list[list[Tensor]] = []
    hdt = fld.hdt
    with pol.context(fld.device) if enter else contextlib.nullcontext():
        for i in range(tab.stages):
            yi = _axpy(y, ks, co.ca[i], hdt)
            ks.append(fld(co.ts[i], yi))
    return _axpy(y, ks, co.cb, hdt)


def _times(ta: Tensor, tb: Tensor, j: int, m: int) -> tuple[Tensor, Tensor]:
    """Start and size of substep ``j`` of ``m`` on the interval ``[ta, tb]`` (scalar ops: the
    values :func:`_grid` forms for all steps at once)."""
    h = (tb - ta) / m
    return (ta if j == 0 else ta + j * h), h


def _grid(plan: Any, t: Tensor, chunk: int = 1024) -> _Grid:
    """Every step's :class:`_Coeffs` (a :class:`_Grid`: ``grid[s]``, ``len``, iteration),
    formed with a few vectorised ops per chunk of steps instead of a dozen scalar ops per
    step (the same IEEE operations elementwise as :func:`_times` and :func:`_coeffs`, so
    bitwise their values). Differentiable in ``t``. ``plan``: anything with the tableau
    ``tab``, the substeps per interval ``ms`` and a cache slot ``grid``, where the grid is
    kept when ``t`` needs no gradient, so that the backward pass reuses the forward's.
    ``chunk``: steps formed at a time."""
    if plan.grid is not None and not t.requires_grad:
        return plan.grid
    out = _Grid(plan.tab, plan.ms, t, chunk)
    if not t.requires_grad:
        plan.grid = out
    return out


class _Grid:
    """The steps' :class:`_Coeffs`, formed ``chunk`` steps at a time and only the chunk
    in use kept (a few values per step): memory does not grow with the number of steps, as
    it would with a :class:`_Coeffs` of 0-d tensors kept for every step (some 9 KB per step:
    gigabytes for a no-grad solve of 10⁶ steps). ``grid[s]`` forms step ``s``'s; walking the
    steps forwards or backwards forms each chunk once."""

    def __init__(self, tab: ButcherTableau, ms: list[int], t: Tensor, chunk: int = 1024):
        self.tab, self.ms, self.t, self.per_chunk = tab, ms, t, chunk
        self.offsets = [0, *itertools.accumulate(ms)]  # first step of each interval
        self.chunk: tuple[int, Tensor] | None = None  # (index, rows of its steps)

    def __len__(self) -> int:
        return self.offsets[-1]

    def __iter__(self):
        return (self[s] for s in range(len(self)))

    def __getitem__(self, s: int) -> _Coeffs:
        if not -len(self) <= s < len(self):
            raise IndexError(f"step {s} of a grid of {len(self)}")
        s %= len(self)
        n = self.per_chunk
        k = s // n
        if self.chunk is None or self.chunk[0] != k:
            self.chunk = (k, self._rows(k * n, min(len(self), (k + 1) * n)))
        v = iter(self.chunk[1][s - k * n].unbind(0))
        tau, h = next(v), next(v)
        return _assemble(self.tab, tau, h, lambda kind, x: next(v))

    def _rows(self, s0: int, s1: int) -> Tensor:
        """``(s1 - s0, columns)``: each step's values in :func:`_assemble`'s order."""
        t, off = self.t, self.offsets
        dt, dev = t.dtype, t.device
        i0 = bisect.bisect_right(off, s0) - 1
        i1 = bisect.bisect_left(off, s1) - 1  # the last interval with a step in the chunk
        counts = [min(off[i + 1], s1) - max(off[i], s0) for i in range(i0, i1 + 1)]
        js = [s - off[i] for i, n in zip(range(i0, i1 + 1), counts)
              for s in range(max(off[i], s0), max(off[i], s0) + n)]  # fmt: skip
        mt = torch.tensor(self.ms[i0 : i1 + 1], device=dev)
        reps = torch.tensor(counts, device=dev)
        tt = t[i0 : i1 + 2]
        n = s1 - s0
        hs = ((tt[1:] - tt[:-1]) / mt.to(dt)).repeat_interleave(reps, output_size=n)
        first = tt[:-1].repeat_interleave(reps, output_size=n)
        jt = torch.tensor(js, dtype=dt, device=dev)
        taus = torch.where(jt == 0, first, first + jt * hs)
        # the columns in _assemble's order, each the vectorised twin of _coeffs' scalar op
        cols = [taus, hs]

        def column(kind: str, x: float) -> None:
            cols.append(taus + x * hs if kind == "t" else hs * x)

        _assemble(self.tab, taus, hs, column)
        return torch.stack(cols, 1)
