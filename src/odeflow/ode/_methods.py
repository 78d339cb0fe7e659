"""The method registry: a method name (fixed-step or embedded pair) to its tableau."""

from __future__ import annotations

from ._embedded import EMBEDDED_TABLEAUS
from ._tableaus import TABLEAUS, ButcherTableau

__all__ = ["get_tableau"]


def get_tableau(method: str | ButcherTableau) -> ButcherTableau:
    """Resolve a method name or pass a :class:`ButcherTableau` through.

    Args:
        method: one of ``euler, midpoint, heun, ralston, rk3, ssprk3, rk4, rk38``, an embedded
            pair ``bosh3, dopri5, tsit5, dopri8`` or a tableau.

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
            return TABLEAUS[method] if method in TABLEAUS else EMBEDDED_TABLEAUS[method]
        except KeyError:
            valid = ", ".join([*TABLEAUS, *EMBEDDED_TABLEAUS])
            raise ValueError(
                f"unknown method {method!r}; valid methods are: {valid} "
                "(or pass an odeflow.ButcherTableau)"
            ) from None
    raise TypeError(f"method must be a str or ButcherTableau, got {type(method).__name__}")
