r"""Binomial checkpointing (revolve): reversing ``n`` steps with ``K`` stored states.

The backward pass needs every step's input state in reverse order. With ``K`` checkpoint
slots (the initial state occupies one) the fewest forward steps that serve all of them is
Griewank's

.. math::
    t(n, K) = r\,n - β(K + 1, r - 1), \qquad β(s, r) = \binom{s + r}{s},

where the repetition number ``r`` is the integer with ``β(K, r - 1) < n ≤ β(K, r)``: no step
is evaluated more than ``r + 1`` times (``t`` counts the advances of the first sweep to step
``n - 1`` too, which the solve's forward pass makes anyway; the backward pass recomputes
``t(n, K) - (n - 1)`` steps). The schedule is the recursion behind that bound: to reverse
``l`` steps from a checkpoint with ``s`` slots, advance ``j`` steps, store a checkpoint,
reverse the last ``l - j`` steps with ``s - 1`` slots, then the first ``j`` with ``s``; ``j``
minimises ``j + t(l - j, s - 1) + t(j, s)`` (a convex function of ``j``, so found by
bisection). With one slot the steps are reversed by advancing from the checkpoint each time.

Reference: Griewank, Walther, *Algorithm 799: revolve*, ACM TOMS 26 (2000),
doi:10.1145/347837.347846; Griewank, *Achieving logarithmic growth of temporal and spatial
complexity in reverse automatic differentiation*, Optim. Methods Softw. 1 (1992).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

__all__ = ["_Revolve", "_first_sweep", "optimal_cost", "repetitions"]


def repetitions(n: int, k: int) -> int:
    """The repetition number ``r``: ``β(k, r - 1) < n ≤ β(k, r)`` (0 for ``n = 1``)."""
    r = 0
    while math.comb(k + r, k) < n:
        r += 1
    return r


@functools.lru_cache(maxsize=4096)
def optimal_cost(n: int, k: int) -> int:
    """``t(n, k)``: the fewest forward steps (advances) that reverse ``n`` steps with ``k``
    checkpoint slots, the first sweep to step ``n - 1`` included."""
    if n < 1 or k < 1:
        raise ValueError(f"need n >= 1 steps and k >= 1 checkpoints, got n={n}, k={k}")
    if n == 1:
        return 0
    r = repetitions(n, k)
    return r * n - math.comb(k + r, k + 1)  # β(k + 1, r - 1) = C(k + r, k + 1)


@functools.lru_cache(maxsize=4096)
def _split(n: int, k: int) -> int:
    """The optimal first advance ``j`` for ``n >= 2`` steps and ``k >= 2`` slots."""

    def cost(j: int) -> int:
        return j + optimal_cost(n - j, k - 1) + optimal_cost(j, k)

    lo, hi = 1, n - 1
    while lo < hi:  # the first j where the convex cost stops decreasing
        mid = (lo + hi) // 2
        if cost(mid + 1) >= cost(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _first_sweep(n: int, k: int) -> list[int]:
    """Positions stored by the first sweep (the forward pass): ``0`` and the chain of
    first advances of the schedule."""
    pos, c, left, free = [0], 0, n, k
    while left > 1 and free >= 2:
        j = _split(left, free)
        c, left, free = c + j, left - j, free - 1
        pos.append(c)
    return pos


class _Revolve:
    """Serves step states ``s = n-1, …, 0`` (each as often as asked, in non-increasing order)
    from at most ``k`` checkpoints and one working state, by the binomial schedule.

    ``advance(state, s)`` maps step ``s``'s input state to step ``s + 1``'s; ``keep(state)``
    is what a checkpoint placed by the backward pass stores (e.g. a narrower copy; the
    recomputation goes on from ``state`` itself). The forward pass
    calls :meth:`push` with every step's input state in order; the backward pass calls
    :meth:`state`. ``advances`` counts the backward pass's recomputed steps, ``peak`` the
    most states held at once (checkpoints plus the working state)."""

    def __init__(
        self,
        n: int,
        k: int,
        advance: Callable[[Any, int], Any],
        keep: Callable[[Any], Any] = lambda y: y,
    ):
        self.n, self.k, self.advance, self.keep = n, k, advance, keep
        self.sweep = set(_first_sweep(n, k))
        self.ckpts: dict[int, Any] = {}  # position -> state, in increasing position
        self.cur: tuple[int, Any] | None = None  # the working state
        self.advances = 0
        self.peak = 0

    def push(self, s: int, y: Any) -> None:
        """The forward pass's input state of step ``s``."""
        if s in self.sweep:
            self.ckpts[s] = y
        self.cur = (s, y)
        self._note()

    def state(self, s: int) -> Any:
        """Step ``s``'s input state (``s`` not above the previous request)."""
        if self.cur is not None and self.cur[0] == s:
            return self.cur[1]
        self.cur = None
        for p in [p for p in self.ckpts if p > s]:
            del self.ckpts[p]
        c = max(self.ckpts)
        y = self.ckpts[c]
        left, free = s + 1 - c, self.k - len(self.ckpts) + 1
        while left > 1:
            j = _split(left, free) if free >= 2 else left - 1
            for q in range(c, c + j):
                y = self.advance(y, q)
            self.advances += j
            c, left = c + j, left - j
            if free >= 2:
                self.ckpts[c] = self.keep(y)
                free -= 1
        self.cur = (s, y)
        self._note()
        return y

    def _note(self) -> None:
        held = len(self.ckpts) + (self.cur is not None and self.cur[0] not in self.ckpts)
        self.peak = max(self.peak, held)
