"""Explicit Runge–Kutta methods as validated Butcher tableaus."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["TABLEAUS", "ButcherTableau", "get_tableau"]

_TOL = 1e-12


def _row_sums_ok(a: tuple[tuple[float, ...], ...], c: tuple[float, ...]) -> bool:
    return all(abs(sum(row) - ci) <= _TOL for row, ci in zip(a, c))


def _order_residuals(
    a: tuple[tuple[float, ...], ...], b: tuple[float, ...], c: tuple[float, ...], order: int
) -> list[tuple[int, str, float]]:
    """Residuals of the rooted-tree order conditions up to ``min(order, 4)``."""
    s = len(b)

    def av(v: list[float]) -> list[float]:  # (A v)_i
        return [sum(a[i][j] * v[j] for j in range(s)) for i in range(s)]

    def dot(u: list[float], v: list[float]) -> float:
        return sum(x * y for x, y in zip(u, v))

    bl, cl = list(b), list(c)
    c2 = [x * x for x in cl]
    c3 = [x**3 for x in cl]
    ac = av(cl)
    conds: list[tuple[int, str, float, float]] = [
        (1, "sum b = 1", sum(bl), 1.0),
        (2, "b.c = 1/2", dot(bl, cl), 1 / 2),
        (3, "b.c^2 = 1/3", dot(bl, c2), 1 / 3),
        (3, "b.Ac = 1/6", dot(bl, ac), 1 / 6),
        (4, "b.c^3 = 1/4", dot(bl, c3), 1 / 4),
        (4, "b.(c*Ac) = 1/8", dot(bl, [x * y for x, y in zip(cl, ac)]), 1 / 8),
        (4, "b.Ac^2 = 1/12", dot(bl, av(c2)), 1 / 12),
        (4, "b.AAc = 1/24", dot(bl, av(ac)), 1 / 24),
    ]
    return [(p, name, val - want) for p, name, val, want in conds if p <= order]


@dataclass(frozen=True)
class ButcherTableau:
    r"""An explicit Runge–Kutta method, validated on construction.

    One step of size ``h`` from ``(t, y)`` computes the stages and the update

    .. math::
        k_i = f\big(t + c_i h,\; y + h \textstyle\sum_{j<i} a_{ij} k_j\big),\qquad
        y_{+} = y + h \textstyle\sum_i b_i k_i .

    Validation: ``a`` is ``s×s`` strictly lower triangular (explicit), ``b`` and ``c``
    have length ``s``, each row of ``a`` sums to ``c_i`` and the order conditions
    (rooted trees, Butcher 1963) hold up to ``min(order, 4)`` to 1e-12.

    Args:
        name: a label.
        a: ``s`` rows of ``s`` coefficients (strictly lower triangular), or ragged rows
            ``(), (a21,), (a31, a32), ...`` which are padded with zeros.
        b: ``s`` weights.
        c: ``s`` nodes.
        order: the classical order ``p`` of the method (1 ≤ p).

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
        b = tuple(float(x) for x in self.b)
        c = tuple(float(x) for x in self.c)
        s = len(b)
        if s == 0:
            raise ValueError(f"tableau {self.name!r}: b is empty; give at least one stage")
        if len(c) != s:
            raise ValueError(f"tableau {self.name!r}: len(c)={len(c)} but len(b)={s}")
        if len(self.a) != s:
            raise ValueError(f"tableau {self.name!r}: a has {len(self.a)} rows, expected {s}")
        if not all(math.isfinite(float(x)) for x in (*b, *c, *(v for r in self.a for v in r))):
            raise ValueError(
                f"tableau {self.name!r}: every coefficient of a, b and c must be finite"
            )
        rows = []
        for i, row in enumerate(self.a):
            row = tuple(float(x) for x in row)
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
        if not isinstance(self.order, int) or self.order < 1:
            raise ValueError(
                f"tableau {self.name!r}: order must be a positive int, got {self.order!r}"
            )
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


def get_tableau(method: str | ButcherTableau) -> ButcherTableau:
    """Resolve a method name or pass a :class:`ButcherTableau` through.

    Args:
        method: one of ``euler, midpoint, heun, ralston, rk3, ssprk3, rk4, rk38`` or a tableau.

    Returns:
        The :class:`ButcherTableau`.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).
        TypeError: for anything else.

    Example:
        >>> get_tableau("rk4").order
        4
    """
    if isinstance(method, ButcherTableau):
        return method
    if isinstance(method, str):
        try:
            return TABLEAUS[method]
        except KeyError:
            valid = ", ".join(TABLEAUS)
            raise ValueError(
                f"unknown method {method!r}; valid methods are: {valid} "
                "(or pass an odeflow.ButcherTableau)"
            ) from None
    raise TypeError(f"method must be a str or ButcherTableau, got {type(method).__name__}")
