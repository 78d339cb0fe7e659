"""Embedded Runge–Kutta pairs (adaptive step sizes) as validated Butcher tableaus."""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass
from fractions import Fraction as F

from ._tableaus import ButcherTableau, _density, _order_residuals, _reals, _trees

__all__ = ["EMBEDDED_TABLEAUS", "EmbeddedTableau", "get_embedded"]

_TOL = 1e-12


def _dense_residuals(
    a: tuple[tuple[float, ...], ...],
    c: tuple[float, ...],
    dense: tuple[tuple[float, ...], ...],
    order: int,
) -> list[tuple[int, int, str, float]]:
    """Residuals of the continuous order conditions ``Σ_i b_i(θ) Φ_i(t) = θ^|t| / γ(t)``.

    With ``b_i(θ) = Σ_k dense[i][k] θ^(k+1)`` the identity in θ holds iff for every power
    ``k + 1`` the weights ``w_i = dense[i][k]`` give ``Φ(t) = 1/γ(t)`` if ``|t| = k + 1`` and
    ``0`` otherwise. Returns ``(|t|, power, condition, residual)``."""
    gammas = [_density(t) for p in range(1, order + 1) for t in _trees(p)]
    out = []
    for k in range(len(dense[0])):
        w = tuple(row[k] for row in dense)
        # _order_residuals gives Φ_w(t) − 1/γ(t), in the order of ``gammas``
        for g, (p, cond, res) in zip(gammas, _order_residuals(a, w, c, order)):
            out.append((p, k + 1, cond, res if p == k + 1 else res + 1.0 / g))
    return out


@dataclass(frozen=True)
class EmbeddedTableau(ButcherTableau):
    r"""An embedded explicit Runge–Kutta pair: a method of order ``p`` and, from the same
    stages, a second solution of order ``p̂`` whose difference estimates the local error.

    .. math::
        y_{+} = y + h \sum_i b_i k_i, \qquad \hat y_{+} = y + h \sum_i \hat b_i k_i, \qquad
        e = y_{+} - \hat y_{+} = h \sum_i (b_i - \hat b_i) k_i = O(h^{\hat p + 1}).

    Optionally a continuous extension (dense output) of order ``q``:
    ``y(t + θh) ≈ y + h Σ_i b_i(θ) k_i`` with ``b_i(θ) = Σ_k dense[i][k] θ^{k+1}``.

    Validation (besides :class:`ButcherTableau`'s for ``a, b, c, order``): ``b_low`` satisfies
    every order condition up to ``order_low < order`` (and differs from ``b``); the dense
    weights satisfy the continuous order conditions ``Σ_i b_i(θ) Φ_i(t) = θ^{|t|}/γ(t)`` for
    every rooted tree up to ``dense_order`` (as polynomial identities in θ) and reproduce
    ``b`` at ``θ = 1``. A pair whose last stage is evaluated at ``y_+`` (``c_s = 1`` and the
    last row of ``a`` equal to ``b``) is *FSAL*: that stage is the next step's first.

    Args:
        name, a, b, c, order: as for :class:`ButcherTableau`.
        b_low: the embedded weights ``b̂`` (length ``s``).
        order_low: the order ``p̂`` of the embedded solution, ``1 ≤ p̂ < p``.
        dense: ``s`` rows of polynomial coefficients (of ``θ, θ², …``) or ``None`` (then a
            cubic Hermite interpolant is used between steps).
        dense_order: the order ``q`` of the dense output (``0`` when ``dense`` is ``None``).

    Raises:
        ValueError: on wrong sizes, non-finite weights, or a failed order condition of the
            main, embedded or dense weights (the message names it).

    Reference:
        E. Hairer, S. P. Nørsett, G. Wanner, *Solving Ordinary Differential Equations I*,
        2nd ed., Springer 1993, §II.4–II.6; Dormand & Prince, J. Comput. Appl. Math. 6
        (1980) 19–26.

    Example:
        >>> heun_euler = EmbeddedTableau("heun_euler", a=((), (1.0,)), b=(0.5, 0.5),
        ...     c=(0.0, 1.0), order=2, b_low=(1.0, 0.0), order_low=1)
        >>> heun_euler.error_weights
        (-0.5, 0.5)
        >>> EmbeddedTableau("bad", a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0), order=2,
        ...     b_low=(0.9, 0.0), order_low=1)
        Traceback (most recent call last):
        ...
        ValueError: tableau 'bad': embedded weights b_low fail the order-1 condition sum b = 1 (residual -1.000e-01)
    """  # noqa: E501

    b_low: tuple[float, ...] = ()
    order_low: int = 0
    dense: tuple[tuple[float, ...], ...] | None = None
    dense_order: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        name, s = self.name, self.stages
        if (
            isinstance(self.order_low, bool)
            or not isinstance(self.order_low, numbers.Integral)
            or not 1 <= self.order_low < self.order
        ):
            raise ValueError(
                f"tableau {name!r}: order_low must be an int from 1 to order - 1 = "
                f"{self.order - 1}, got {self.order_low!r}"
            )
        b_low = _reals(name, "b_low", self.b_low)
        if len(b_low) != s or not all(math.isfinite(x) for x in b_low):
            raise ValueError(f"tableau {name!r}: b_low must hold {s} finite numbers")
        for p, cond, res in _order_residuals(self.a, b_low, self.c, self.order_low):
            if abs(res) > _TOL:
                raise ValueError(
                    f"tableau {name!r}: embedded weights b_low fail the order-{p} condition "
                    f"{cond} (residual {res:.3e})"
                )
        if max(abs(x - y) for x, y in zip(self.b, b_low)) <= _TOL:
            raise ValueError(f"tableau {name!r}: b_low equals b, so it estimates no error")
        object.__setattr__(self, "b_low", b_low)
        object.__setattr__(self, "order_low", int(self.order_low))
        self._check_dense()

    def _check_dense(self) -> None:
        name, s = self.name, self.stages
        if self.dense is None:
            if self.dense_order != 0:
                raise ValueError(f"tableau {name!r}: dense_order given without dense weights")
            return
        rows = [_reals(name, f"row {i} of dense", r) for i, r in enumerate(self.dense)]
        if len(rows) != s or len({len(r) for r in rows}) != 1 or not rows[0]:
            raise ValueError(f"tableau {name!r}: dense must have {s} rows of equal length")
        if not all(math.isfinite(x) for r in rows for x in r):
            raise ValueError(f"tableau {name!r}: dense weights must be finite")
        q = self.dense_order
        if isinstance(q, bool) or not isinstance(q, numbers.Integral) or not 1 <= q <= self.order:
            raise ValueError(
                f"tableau {name!r}: dense_order must be an int from 1 to {self.order}, got {q!r}"
            )
        dense = tuple(rows)
        for i, row in enumerate(dense):
            if abs(sum(row) - self.b[i]) > _TOL:
                raise ValueError(
                    f"tableau {name!r}: dense weights at θ = 1 must equal b (stage {i}: "
                    f"{sum(row):.6g} != {self.b[i]:.6g})"
                )
        for p, power, cond, res in _dense_residuals(self.a, self.c, dense, int(q)):
            if abs(res) > _TOL:
                raise ValueError(
                    f"tableau {name!r}: dense output fails the order-{p} condition {cond} "
                    f"in its θ^{power} coefficient (residual {res:.3e})"
                )
        object.__setattr__(self, "dense", dense)
        object.__setattr__(self, "dense_order", int(q))

    @property
    def error_weights(self) -> tuple[float, ...]:
        """``b − b̂``: the local error estimate is ``h Σ_i (b_i − b̂_i) k_i``."""
        return tuple(x - y for x, y in zip(self.b, self.b_low))

    @functools.cached_property
    def fsal(self) -> bool:
        """First same as last: the last stage is ``f(t + h, y_+)``, reused by the next step."""
        s = self.stages
        return (
            self.c[-1] == 1.0
            and all(abs(self.a[-1][j] - self.b[j]) <= _TOL for j in range(s))
            and self.b[-1] == 0.0
        )

    @property
    def error_order(self) -> int:
        """The exponent base ``min(p, p̂) + 1`` of the step-size rule ``h ∝ err^{-1/k}``."""
        return min(self.order, self.order_low) + 1


def _fl(xs) -> tuple[float, ...]:
    return tuple(float(x) for x in xs)


def _poly_mul(p: list[float], q: list[float]) -> list[float]:
    """Product of two polynomials given by coefficients of 1, θ, θ², … ."""
    out = [0.0] * (len(p) + len(q) - 1)
    for i, x in enumerate(p):
        for j, y in enumerate(q):
            out[i + j] += x * y
    return out


# --------------------------------------------------------------------------- the pairs
def _bosh3() -> EmbeddedTableau:
    # Bogacki & Shampine, Appl. Math. Lett. 2 (1989) 321–325: order 3(2), FSAL.
    b = (F(2, 9), F(1, 3), F(4, 9), F(0))
    return EmbeddedTableau(
        "bosh3",
        a=((), (F(1, 2),), (F(0), F(3, 4)), b[:3]),
        b=_fl(b),
        c=(0.0, 0.5, 0.75, 1.0),
        order=3,
        b_low=_fl((F(7, 24), F(1, 4), F(1, 3), F(1, 8))),
        order_low=2,
    )


def _dopri5() -> EmbeddedTableau:
    # Dormand & Prince, J. Comput. Appl. Math. 6 (1980) 19–26: RK5(4)7M, FSAL; dense output
    # of order 4 (Shampine, Math. Comp. 46 (1986) 135–150, in the form of Hairer–Nørsett–
    # Wanner I, §II.6: y(θ) = y + θ r₂ + θ(1−θ) r₃ + θ²(1−θ) r₄ + θ²(1−θ)² r₅).
    a = (
        (),
        (F(1, 5),),
        (F(3, 40), F(9, 40)),
        (F(44, 45), F(-56, 15), F(32, 9)),
        (F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)),
        (F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)),
        (F(35, 384), F(0), F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84)),
    )
    b = (*a[6], F(0))
    b_low = (F(5179, 57600), F(0), F(7571, 16695), F(393, 640), F(-92097, 339200),
             F(187, 2100), F(1, 40))  # fmt: skip
    d = (F(-12715105075, 11282082432), F(0), F(87487479700, 32700410799),
         F(-10690763975, 1880347072), F(701980252875, 199316789632),
         F(-1453857185, 822651844), F(69997945, 29380423))  # fmt: skip
    dense = []
    for i in range(7):
        e1, e7 = F(i == 0), F(i == 6)
        # r₂ = b, r₃ = e₁ − b, r₄ = 2b − e₁ − e₇, r₅ = d (per stage, times h)
        terms = [
            ([0, 1], b[i]),
            ([0, 1, -1], e1 - b[i]),
            ([0, 0, 1, -1], 2 * b[i] - e1 - e7),
            ([0, 0, 1, -2, 1], d[i]),
        ]
        poly = [F(0)] * 5
        for coeffs, w in terms:
            for k, x in enumerate(coeffs):
                poly[k] += x * w
        dense.append(_fl(poly[1:]))
    return EmbeddedTableau(
        "dopri5",
        a=tuple(_fl(r) for r in a),
        b=_fl(b),
        c=(0.0, 0.2, 0.3, 0.8, 8 / 9, 1.0, 1.0),
        order=5,
        b_low=_fl(b_low),
        order_low=4,
        dense=tuple(dense),
        dense_order=4,
    )


def _tsit5() -> EmbeddedTableau:
    # Tsitouras, Comput. Math. Appl. 62 (2011) 770–775: order 5(4), FSAL, dense output of
    # order 4. The paper's "b̂" are the error weights b − b̂; its last one is printed with
    # the wrong sign (+1/66; the order-4 conditions of b̂ hold only with −1/66).
    c = (0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0)
    a = (
        (),
        (0.161,),
        (-0.008480655492356989, 0.335480655492357),
        (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
        (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
        (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
         -0.02826905039406838),
        (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742,
         -3.290069515436081, 2.324710524099774),
    )  # fmt: skip
    b = (*a[6], 0.0)
    err = (0.00178001105222577714, 0.0008164344596567469, -0.007880878010261995,
           0.1447110071732629, -0.5823571654525552, 0.45808210592918697, -1 / 66)  # fmt: skip
    # the paper's dense weights b_i(θ) in factored form, multiplied out here
    basis = [
        (-1.0530884977290216, [[0, -1.3299890189751412, 1], [0.7139816917074209,
                                                             -1.4364028541716351, 1]]),
        (0.1017, [[0, 0, 1], [1.2949852507374631, -2.1966568338249754, 1]]),
        (2.490627285651252793, [[0, 0, 1], [1.57803468208092486, -2.38535645472061657, 1]]),
        (-16.54810288924490272, [[0, 0, 1], [-1.21712927295533244, 1],
                                 [-0.61620406037800089, 1]]),
        (47.37952196281928122, [[0, 0, 1], [-1.203071208372362603, 1],
                                [-0.658047292653547382, 1]]),
        (-34.87065786149660974, [[0, 0, 1], [-1.2, 1], [-2 / 3, 1]]),
        (2.5, [[0, 0, 1], [-1.0, 1], [-0.6, 1]]),
    ]  # fmt: skip
    dense = []
    for scale, factors in basis:
        poly = [scale]
        for f in factors:
            poly = _poly_mul(poly, f)
        poly = poly + [0.0] * (5 - len(poly))
        dense.append(tuple(poly[1:5]))
    return EmbeddedTableau(
        "tsit5",
        a=a,
        b=b,
        c=c,
        order=5,
        b_low=tuple(x - e for x, e in zip(b, err)),
        order_low=4,
        dense=tuple(dense),
        dense_order=4,
    )


def _dopri8() -> EmbeddedTableau:
    # Prince & Dormand, J. Comput. Appl. Math. 7 (1981) 67–75: RK8(7)13M (the rational
    # approximations of the paper), with a 14th stage f(t + h, y_+) appended (weights 0) so
    # that the pair is FSAL: 13 evaluations per step, and the end slope for interpolation.
    a = [
        [],
        [F(1, 18)],
        [F(1, 48), F(1, 16)],
        [F(1, 32), 0, F(3, 32)],
        [F(5, 16), 0, F(-75, 64), F(75, 64)],
        [F(3, 80), 0, 0, F(3, 16), F(3, 20)],
        [F(29443841, 614563906), 0, 0, F(77736538, 692538347), F(-28693883, 1125000000),
         F(23124283, 1800000000)],
        [F(16016141, 946692911), 0, 0, F(61564180, 158732637), F(22789713, 633445777),
         F(545815736, 2771057229), F(-180193667, 1043307555)],
        [F(39632708, 573591083), 0, 0, F(-433636366, 683701615), F(-421739975, 2616292301),
         F(100302831, 723423059), F(790204164, 839813087), F(800635310, 3783071287)],
        [F(246121993, 1340847787), 0, 0, F(-37695042795, 15268766246),
         F(-309121744, 1061227803), F(-12992083, 490766935), F(6005943493, 2108947869),
         F(393006217, 1396673457), F(123872331, 1001029789)],
        [F(-1028468189, 846180014), 0, 0, F(8478235783, 508512852), F(1311729495, 1432422823),
         F(-10304129995, 1701304382), F(-48777925059, 3047939560), F(15336726248, 1032824649),
         F(-45442868181, 3398467696), F(3065993473, 597172653)],
        [F(185892177, 718116043), 0, 0, F(-3185094517, 667107341), F(-477755414, 1098053517),
         F(-703635378, 230739211), F(5731566787, 1027545527), F(5232866602, 850066563),
         F(-4093664535, 808688257), F(3962137247, 1805957418), F(65686358, 487910083)],
        [F(403863854, 491063109), 0, 0, F(-5068492393, 434740067), F(-411421997, 543043805),
         F(652783627, 914296604), F(11173962825, 925320556), F(-13158990841, 6184727034),
         F(3936647629, 1978049680), F(-160528059, 685178525), F(248638103, 1413531060), 0],
    ]  # fmt: skip
    b = [F(14005451, 335480064), 0, 0, 0, 0, F(-59238493, 1068277825),
         F(181606767, 758867731), F(561292985, 797845732), F(-1041891430, 1371343529),
         F(760417239, 1151165299), F(118820643, 751138087), F(-528747749, 2220607170),
         F(1, 4)]  # fmt: skip
    b_low = [F(13451932, 455176623), 0, 0, 0, 0, F(-808719846, 976000145),
             F(1757004468, 5645159321), F(656045339, 265891186), F(-3867574721, 1518517206),
             F(465885868, 322736535), F(53011238, 667516719), F(2, 45), 0]  # fmt: skip
    c = [sum(row, F(0)) for row in a] + [F(1)]
    a.append(b)
    return EmbeddedTableau(
        "dopri8",
        a=tuple(_fl(r) for r in a),
        b=_fl([*b, 0]),
        c=_fl(c),
        order=8,
        b_low=_fl([*b_low, 0]),
        order_low=7,
    )


EMBEDDED_TABLEAUS: dict[str, EmbeddedTableau] = {
    t.name: t for t in (_bosh3(), _dopri5(), _tsit5(), _dopri8())
}
"""The built-in embedded pairs: ``bosh3`` (3(2)), ``dopri5`` (5(4), dense output of order
4), ``tsit5`` (5(4), dense output of order 4), ``dopri8`` (8(7), 13 stages + FSAL)."""


def get_embedded(method: str | ButcherTableau) -> EmbeddedTableau:
    """Resolve an embedded pair by name, or pass an :class:`EmbeddedTableau` through.

    Args:
        method: ``"bosh3"``, ``"dopri5"``, ``"tsit5"``, ``"dopri8"`` or an
            :class:`EmbeddedTableau`.

    Returns:
        The :class:`EmbeddedTableau`.

    Raises:
        ValueError: for a method without an embedded error estimate (a fixed-step name or
            a plain :class:`ButcherTableau`); the message lists the embedded pairs.
        TypeError: for anything but a str or a tableau.

    Example:
        >>> get_embedded("dopri5").order, get_embedded("dopri5").order_low
        (5, 4)
        >>> get_embedded("rk4")
        Traceback (most recent call last):
        ...
        ValueError: method 'rk4' has no embedded error estimate, so it cannot choose its own step sizes; adaptive stepping needs one of: bosh3, dopri5, tsit5, dopri8 (or an odeflow.EmbeddedTableau); for fixed steps pass step_size= or steps_per_interval=
    """  # noqa: E501
    if isinstance(method, EmbeddedTableau):
        return method
    if isinstance(method, str) and method in EMBEDDED_TABLEAUS:
        return EMBEDDED_TABLEAUS[method]
    if isinstance(method, str | ButcherTableau):
        label = method if isinstance(method, str) else method.name
        raise ValueError(
            f"method {label!r} has no embedded error estimate, so it cannot choose its own "
            f"step sizes; adaptive stepping needs one of: {', '.join(EMBEDDED_TABLEAUS)} (or "
            "an odeflow.EmbeddedTableau); for fixed steps pass step_size= or "
            "steps_per_interval="
        )
    raise TypeError(f"method must be a str or ButcherTableau, got {type(method).__name__}")
