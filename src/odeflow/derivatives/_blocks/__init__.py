"""Derivative-aware blocks, one file per block; each file carries all of the block's sweeps.

The abstract :class:`Block` (``_base.py``) declares the sweeps; a new block is a new file
here that subclasses it (see ``docs/extending.md``).
"""

from ._base import Block
from ._icnn import ICNN
from ._linear import Linear
from ._quadratic import Quadratic
from ._resnet import ResNet
from ._sequential import Sequential
from ._single import Single
from ._sum import Sum

__all__ = ["ICNN", "Block", "Linear", "Quadratic", "ResNet", "Sequential", "Single", "Sum"]
