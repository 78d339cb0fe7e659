"""A reproducible Brownian path: a virtual Brownian tree with counter-based seeds."""

from __future__ import annotations

import itertools
import math
import numbers
import struct
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["BrownianPath"]

_MASK = (1 << 64) - 1
_MAX_LEVELS = 40  # finest cell ≥ span·2⁻⁴⁰: times stay resolvable in float64


def _mix(x: int) -> int:
    """SplitMix64's finalizer: a bijective 64-bit mix (Steele, Lea, Flood, OOPSLA 2014)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _key(seed: int, *words: int) -> int:
    h = _mix(seed & _MASK)
    for w in words:
        h = _mix(h ^ (w & _MASK))
    return h


def _as_time(x: Any, what: str) -> float:
    if type(x) is float and math.isfinite(x):  # (the solver's case, first)
        return x
    if isinstance(x, Tensor):
        if x.numel() != 1 or not x.is_floating_point():
            raise TypeError(f"{what} must be a real number or a one-element floating tensor")
        x = x.detach().item()
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x):
        raise ValueError(f"{what} must be a finite real number, got {x!r}")
    return float(x)


class BrownianPath:
    r"""A seeded Brownian motion on ``[t0, t1]`` that can be queried at any times, in any order.

    A *virtual Brownian tree* (Lévy's construction): ``W(t0) = 0``, the tree's right end is
    ``W(t0 + S) = √S·Z``, and the midpoint of every dyadic cell ``[a, b]`` is drawn from the
    Brownian bridge

    .. math::
        W\big(\tfrac{a+b}{2}\big) = \tfrac12\big(W(a) + W(b)\big) + \tfrac12\sqrt{b-a}\;Z,

    where each ``Z ~ N(0, I)`` (of shape ``shape``) is generated from a seed computed from
    ``(seed, level, index)`` (counter-based: no state carries over from one draw to the next).
    A value therefore depends only on the seed and the time asked for, never on the order of
    the queries or on what was asked before, so a backward pass regenerates exactly the
    increments its forward pass used without storing them. Times ``t0 + k·dt`` are nodes of
    the tree (its span is ``S = 2^L·dt ≥ t1 − t0``); any other time is resolved by bisecting
    down to cells of width ``≤ tol`` and one last bridge draw inside that cell, keyed by the
    time itself. Values at nodes and at times in different finest cells have exactly the law
    of Brownian motion; two times inside one finest cell have the right marginals but
    independent bridge draws.

    Increments are differences of point values, ``W(s, t) = W(t) − W(s)``, so they add up
    over any grid (``W(a, c) = W(a, b) + W(b, c)`` to round-off). The path keeps the
    root-to-leaf branch of the last query (``O(log((t1 − t0)/tol))`` tensors of ``shape``, with
    the midpoints drawn on it), so queries in increasing or decreasing order, as a solver makes
    them, cost about one normal draw each when they fall on the ``dt`` grid (each node of the
    tree is drawn once per monotone sweep).

    Args:
        t0, t1: the interval, ``t0 < t1`` (finite).
        shape: the shape of ``W(t)``, e.g. ``(batch, m)``.
        seed: an integer; the same seed gives the same path on the same device and dtype
            (CPU and CUDA generators differ). Default: drawn from torch's global generator
            (so ``torch.manual_seed`` makes it reproducible).
        dtype: floating dtype of the values (default ``torch.float32``).
        device: device of the values (default CPU).
        dt: make the times ``t0 + k·dt`` exact nodes of the tree (cheapest to query; pass the
            solver's step). Default: ``t1 − t0``.
        tol: width of the finest cells (times off the ``dt`` grid are resolved to it).
            Default: ``dt / 1024`` if ``dt`` is given, else ``(t1 − t0)·2⁻²⁰``.

    Raises:
        ValueError: a non-finite or empty interval, a non-positive ``dt`` or ``tol``, a
            negative size in ``shape``; queries outside ``[t0, t1]``.
        TypeError: a non-integer ``seed``, a non-floating ``dtype``.

    Reference:
        Gaines, Lyons, *Variable step size control in the numerical solution of stochastic
        differential equations*, SIAM J. Appl. Math. 57 (1997); Li, Wong, Chen, Duvenaud,
        *Scalable gradients for stochastic differential equations*, arXiv:2001.01328 (the
        virtual Brownian tree); Kidger et al., *Efficient and accurate gradients for neural
        SDEs*, arXiv:2105.13493 (the Brownian interval).

    Example:
        >>> import torch
        >>> from odeflow.ode import BrownianPath
        >>> bm = BrownianPath(0.0, 1.0, (2,), seed=3, dtype=torch.float64)
        >>> w = bm(0.25, 0.75)  # the increment W(0.75) − W(0.25)
        >>> bool(torch.allclose(w, bm(0.25, 0.5) + bm(0.5, 0.75), rtol=0, atol=1e-14))
        True
        >>> torch.equal(w, BrownianPath(0.0, 1.0, (2,), seed=3, dtype=torch.float64)(0.25, 0.75))
        True
        >>> bm.increments([0.0, 0.5, 1.0]).shape
        torch.Size([2, 2])
    """

    def __init__(
        self,
        t0: float,
        t1: float,
        shape: Sequence[int] | int = (),
        *,
        seed: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        dt: float | None = None,
        tol: float | None = None,
    ) -> None:
        t0, t1 = _as_time(t0, "t0"), _as_time(t1, "t1")
        if not t1 > t0:
            raise ValueError(f"need t0 < t1, got t0={t0}, t1={t1}")
        shape = (shape,) if isinstance(shape, numbers.Integral) else tuple(shape)
        if not all(isinstance(s, numbers.Integral) and s >= 0 for s in shape):
            raise ValueError(f"shape must be a tuple of non-negative ints, got {shape!r}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        span = t1 - t0
        cell = span if dt is None else _positive(dt, "dt")
        tol = (cell / 1024 if dt is not None else span * 2.0**-20) if tol is None else tol
        tol = _positive(tol, "tol")
        levels = max(0, math.ceil(math.log2(span / cell) - 1e-9))
        extra = max(0, math.ceil(math.log2(cell / tol) - 1e-9))
        self.t0, self.t1, self.shape, self.seed = t0, t1, tuple(int(s) for s in shape), int(seed)
        self.dtype, self.device = dtype, torch.device("cpu" if device is None else device)
        self.levels = min(levels + extra, _MAX_LEVELS)  # depth of the finest cells
        self.span = cell * 2.0**levels  # the tree covers [t0, t0 + span] ⊇ [t0, t1]
        self._n = 2**self.levels  # finest cells
        self._gen = torch.Generator(device=self.device)
        self._draws = 0
        root = self._normal(0, 1) * math.sqrt(self.span)
        # the branch of the last query, per level: [level, index, W(left end), W(right end),
        # W(midpoint) once drawn] (the midpoint kept: walking the cells in order, as a solver
        # does, draws every node of the tree once)
        self._branch: list[list[Any]] = [
            [0, 0, torch.zeros(self.shape, dtype=dtype, device=self.device), root, None]
        ]
        self._recent: list[tuple[float, Tensor | None]] = [(math.nan, None), (math.nan, None)]

    def __repr__(self) -> str:
        return (
            f"BrownianPath(t0={self.t0}, t1={self.t1}, shape={self.shape}, seed={self.seed}, "
            f"dtype={self.dtype}, device={self.device!s}, levels={self.levels})"
        )

    @property
    def draws(self) -> int:
        """Normal draws made so far (a measure of the cost of the queries)."""
        return self._draws

    def _normal(self, *words: int) -> Tensor:
        self._gen.manual_seed(_key(self.seed, *words))
        self._draws += 1
        wide = self.dtype if self.dtype in (torch.float32, torch.float64) else torch.float32
        z = torch.randn(self.shape, generator=self._gen, dtype=wide, device=self.device)
        return z.to(self.dtype)

    def _locate(self, t: float) -> tuple[int, float]:
        """The finest-grid index of ``t`` and its offset in that cell (0 on a node)."""
        if not (self.t0 - 1e-12 * self.span <= t <= self.t1 + 1e-12 * self.span):
            raise ValueError(
                f"time {t} is outside the Brownian path's interval [{self.t0}, {self.t1}]; "
                "create the path over the whole time span of the solve"
            )
        x = min(max((t - self.t0) / self.span * self._n, 0.0), float(self._n))
        j = round(x)
        if abs(x - j) <= 64 * 2.0**-52 * max(1.0, x):  # on a node up to rounding of t
            return j, 0.0
        c = math.floor(x)
        return c, x - c

    def _point(self, t: float) -> Tensor:
        # the last two points asked for: a solver's consecutive increments share an end
        recent = self._recent
        if recent[0][0] == t:
            return recent[0][1]
        if recent[1][0] == t:
            return recent[1][1]
        w = self._point_uncached(t)
        self._recent = [(t, w), recent[0]]
        return w

    def _point_uncached(self, t: float) -> Tensor:
        j, u = self._locate(t)
        br = self._branch
        # climb to the deepest cell of the last branch that holds finest index j
        end = j + (u != 0.0)  # the finest cell [j, j + 1] must lie inside, or node j
        while len(br) > 1:
            lvl, k = br[-1][0], br[-1][1]
            w = self._n >> lvl
            if k * w <= j and end <= (k + 1) * w:
                break
            br.pop()
        while True:
            cell = br[-1]
            lvl, k, wl, wr, wm = cell
            w = self._n >> lvl
            if u == 0.0 and j == k * w:
                return wl
            if u == 0.0 and j == (k + 1) * w:
                return wr
            if lvl == self.levels:  # inside a finest cell: one last bridge draw keyed by t
                dx = self.span / self._n
                bits = struct.unpack("<q", struct.pack("<d", u))[0]
                z = self._normal(self.levels + 1, k, bits)
                return wl + u * (wr - wl) + math.sqrt(u * (1 - u) * dx) * z
            if wm is None:
                mid = self._normal(lvl + 1, 2 * k + 1)
                wm = 0.5 * (wl + wr) + (0.5 * math.sqrt(self.span / 2**lvl)) * mid
                cell[4] = wm
            left = j < (2 * k + 1) * (w // 2) or (j == (2 * k + 1) * (w // 2) and u == 0.0)
            br.append(
                [lvl + 1, 2 * k, wl, wm, None] if left else [lvl + 1, 2 * k + 1, wm, wr, None]
            )

    def __call__(self, ta: float | Tensor, tb: float | Tensor | None = None) -> Tensor:
        """``W(tb) − W(ta)``, or ``W(ta) − W(t0)`` if ``tb`` is omitted (shape ``shape``)."""
        a = _as_time(ta, "ta")
        if tb is None:
            return self._point(a).clone()
        b = _as_time(tb, "tb")
        return self._point(b) - self._point(a)

    def increments(self, ts: Sequence[float] | Tensor) -> Tensor:
        """Increments over a grid, ``(len(ts) − 1, *shape)``: ``W(ts[i+1]) − W(ts[i])``.

        ``ts`` is any sequence of times in ``[t0, t1]`` (a tensor is read to the host).
        """
        if isinstance(ts, Tensor):
            ts = ts.detach().to("cpu", torch.float64).reshape(-1).tolist()
        pts = [self._point(_as_time(t, "ts[i]")) for t in ts]
        if len(pts) < 2:
            raise ValueError(f"increments needs at least two times, got {len(pts)}")
        return torch.stack([b - a for a, b in itertools.pairwise(pts)])


def _positive(x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not (math.isfinite(x) and x > 0):
        raise ValueError(f"{what} must be a positive finite number, got {x!r}")
    return float(x)
