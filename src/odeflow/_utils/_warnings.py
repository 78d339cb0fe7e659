"""Warnings that name the user's line."""

from __future__ import annotations

import os
import sys

__all__ = ["outside_stacklevel"]

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def outside_stacklevel() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` in the calling function name the first
    frame outside odeflow (the user's line), however deep inside odeflow the call is.

    Call it in the argument list of the ``warn`` itself:
    ``warnings.warn(msg, Category, stacklevel=outside_stacklevel())``.
    """
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level
