"""Explicit Runge–Kutta methods as validated Butcher tableaus."""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TABLEAUS", "ButcherTableau"]

_TOL = 1e-12


def _reals(name: str, what: str, xs: Any) -> tuple[float, ...]:
    """``xs`` as a tuple of floats, else a ValueError naming the tableau and the entry."""
    if isinstance(xs, str | bytes) or not isinstance(xs, Sequence):
        raise ValueError(f"tableau {name!r}: {what} must be a sequence of numbers, got {xs!r}")
    out = []
    for x in xs:
        try:
            if isinstance(x, bool | str | bytes):
                raise TypeError
            out.append(float(x))
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"tableau {name!r}: {what} must hold real numbers, got {x!r}"
            ) from None
    return tuple(out)


def _row_sums_ok(a: tuple[tuple[float, ...], ...], c: tuple[float, ...]) -> bool:
    return all(abs(sum(row) - ci) <= _TOL for row, ci in zip(a, c))


_MAX_ORDER = 8  # 115 rooted trees of order 8; no explicit method of higher order is in use

# A rooted tree is the sorted tuple of its children's trees; the single node is ().
Tree = tuple


@functools.cache
def _trees(n: int) -> tuple[Tree, ...]:
    """All rooted trees with ``n`` nodes, in a fixed order (1, 1, 2, 4, 9, 20, 48, 115, ...)."""
    return () if n < 1 else tuple(sorted(_forests(n - 1)))


@functools.cache
def _forests(m: int) -> frozenset[Tree]:
    """All multisets of rooted trees with ``m`` nodes in total, as sorted tuples."""
    if m == 0:
        return frozenset({()})
    out = set()
    for k in range(1, m + 1):
        for t in _trees(k):
            for f in _forests(m - k):
                out.add(tuple(sorted((*f, t))))
    return frozenset(out)


def _density(t: Tree) -> int:
    """γ(t) = |t| · Π γ(children)."""
    return _size(t) * math.prod(_density(u) for u in t)


def _size(t: Tree) -> int:
    return 1 + sum(_size(u) for u in t)


def _label(t: Tree) -> str:
    """The stage vector of t in the notation of the order conditions: c for a leaf child
    (A·1 = c), A(·) for a subtree, products with ``*`` and powers ``^``."""
    parts: list[str] = []
    for u in sorted(set(t)):
        inner = _label(u)
        f = "c" if not u else "A" + (f"({inner})" if "*" in inner else inner)
        k = t.count(u)
        parts.append(f if k == 1 else (f"{f}^{k}" if not u else f"({f})^{k}"))
    return "*".join(parts)


def _order_residuals(
    a: tuple[tuple[float, ...], ...], b: tuple[float, ...], c: tuple[float, ...], order: int
) -> list[tuple[int, str, float]]:
    """Residuals Φ(t) − 1/γ(t) of every rooted-tree order condition up to ``order``.

    Φ(t) = Σ_i b_i Φ_i(t), Φ_i(•) = 1, Φ_i([t₁, …, t_k]) = Π_j (A Φ(t_j))_i (Butcher 1963).
    """
    s = len(b)
    memo: dict[Tree, list[float]] = {}

    def phi(t: Tree) -> list[float]:  # the stage vector Φ_i(t)
        if t not in memo:
            v = [1.0] * s
            for u in t:
                w = phi(u)
                v = [v[i] * sum(a[i][j] * w[j] for j in range(s)) for i in range(s)]
            memo[t] = v
        return memo[t]

    out = []
    for p in range(1, order + 1):
        for t in _trees(p):
            val = sum(bi * x for bi, x in zip(b, phi(t)))
            lab = _label(t)
            name = "sum b" if not t else ("b." + (f"({lab})" if "*" in lab else lab))
            g = _density(t)
            out.append((p, f"{name} = 1/{g}" if g > 1 else f"{name} = 1", val - 1.0 / g))
    return out


@dataclass(frozen=True)
class ButcherTableau:
    r"""An explicit Runge–Kutta method, validated on construction.

    One step of size ``h`` from ``(t, y)`` computes the stages and the update

    .. math::
        k_i = f\big(t + c_i h,\; y + h \textstyle\sum_{j<i} a_{ij} k_j\big),\qquad
        y_{+} = y + h \textstyle\sum_i b_i k_i .

    Validation: ``a`` is ``s×s`` strictly lower triangular (explicit), ``b`` and ``c``
    have length ``s``, each row of ``a`` sums to ``c_i`` and the order conditions
    (every rooted tree up to ``order``, Butcher 1963) hold to 1e-12.

    Args:
        name: a label.
        a: ``s`` rows of ``s`` coefficients (strictly lower triangular), or ragged rows
            ``(), (a21,), (a31, a32), ...`` which are padded with zeros.
        b: ``s`` weights.
        c: ``s`` nodes.
        order: the classical order ``p`` of the method, 1 ≤ p ≤ 8 (an explicit ``s``-stage
            method has order at most ``s``: a higher claim fails an order condition).

    Raises:
        ValueError: on wrong sizes, a non-explicit ``a``, inconsistent ``c`` or a failed
            order condition (the message names it).

    Reference:
        J. C. Butcher, *Numerical Methods for Ordinary Differential Equations*, 3rd ed.,
        Wiley 2016, §23 and §31.

    Example:
        >>> tab = ButcherTableau("heun", a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0), order=2)
        >>> tab.stages
        2
        >>> ButcherTableau("bad", a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0), order=3)
        Traceback (most recent call last):
        ...
        ValueError: tableau 'bad' fails the order-3 condition b.c^2 = 1/3 (residual 1.667e-01)
    """

    name: str
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int
    stages: int = field(init=False)

    def __post_init__(self) -> None:
        if (
            isinstance(self.order, bool)
            or not isinstance(self.order, numbers.Integral)
            or not 1 <= self.order <= _MAX_ORDER
        ):
            raise ValueError(
                f"tableau {self.name!r}: order must be an int from 1 to {_MAX_ORDER} (the order "
                f"conditions are checked exactly up to order {_MAX_ORDER}), got {self.order!r}"
            )
        b = _reals(self.name, "b", self.b)
        c = _reals(self.name, "c", self.c)
        if isinstance(self.a, str | bytes) or not isinstance(self.a, Sequence):
            raise ValueError(f"tableau {self.name!r}: a must be a sequence of rows of numbers")
        a_in = [_reals(self.name, f"row {i} of a", r) for i, r in enumerate(self.a)]
        s = len(b)
        if s == 0:
            raise ValueError(f"tableau {self.name!r}: b is empty; give at least one stage")
        if len(c) != s:
            raise ValueError(f"tableau {self.name!r}: len(c)={len(c)} but len(b)={s}")
        if len(self.a) != s:
            raise ValueError(f"tableau {self.name!r}: a has {len(self.a)} rows, expected {s}")
        if not all(math.isfinite(x) for x in (*b, *c, *(v for r in a_in for v in r))):
            raise ValueError(
                f"tableau {self.name!r}: every coefficient of a, b and c must be finite"
            )
        rows = []
        for i, row in enumerate(a_in):
            if len(row) > s:
                raise ValueError(
                    f"tableau {self.name!r}: row {i} of a has {len(row)} > {s} entries"
                )
            row = row + (0.0,) * (s - len(row))
            if any(row[j] != 0.0 for j in range(i, s)):
                raise ValueError(
                    f"tableau {self.name!r} is not explicit: a[{i}][j] must be 0 for j >= {i}; "
                    "only explicit Runge–Kutta methods are supported"
                )
            rows.append(row)
        a = tuple(rows)
        if not _row_sums_ok(a, c):
            raise ValueError(
                f"tableau {self.name!r}: rows of a must sum to c (consistency c_i = sum_j a_ij)"
            )
        for p, cond, res in _order_residuals(a, b, c, self.order):
            if abs(res) > _TOL:
                raise ValueError(
                    f"tableau {self.name!r} fails the order-{p} condition {cond} "
                    f"(residual {res:.3e})"
                )
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "c", c)
        object.__setattr__(self, "order", int(self.order))
        object.__setattr__(self, "stages", s)


TABLEAUS: dict[str, ButcherTableau] = {
    t.name: t
    for t in (
        ButcherTableau("euler", a=((),), b=(1.0,), c=(0.0,), order=1),
        ButcherTableau("midpoint", a=((), (0.5,)), b=(0.0, 1.0), c=(0.0, 0.5), order=2),
        ButcherTableau("heun", a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0), order=2),
        ButcherTableau("ralston", a=((), (2 / 3,)), b=(0.25, 0.75), c=(0.0, 2 / 3), order=2),
        ButcherTableau(
            "rk3", a=((), (0.5,), (-1.0, 2.0)), b=(1 / 6, 2 / 3, 1 / 6), c=(0.0, 0.5, 1.0), order=3
        ),
        ButcherTableau(
            "ssprk3",
            a=((), (1.0,), (0.25, 0.25)),
            b=(1 / 6, 1 / 6, 2 / 3),
            c=(0.0, 1.0, 0.5),
            order=3,
        ),
        ButcherTableau(
            "rk4",
            a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
            b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
            c=(0.0, 0.5, 0.5, 1.0),
            order=4,
        ),
        ButcherTableau(
            "rk38",
            a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
            b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
            c=(0.0, 1 / 3, 2 / 3, 1.0),
            order=4,
        ),
    )
}
"""The built-in methods. ``rk4`` is the *classical* Runge–Kutta method (Kutta 1901);
torchdiffeq's ``rk4`` is the 3/8 rule, available here as ``rk38``."""
