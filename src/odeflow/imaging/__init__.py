"""Medical imaging applications built on :mod:`odeflow.optim` (EPI distortion correction)."""

from . import epi

__all__ = ["epi"]
