"""EPI susceptibility distortion correction from blip-up/blip-down pairs.

Array-level API: :func:`estimate_field` (1-D OT start + Gauss–Newton–PCG or L-BFGS on the
mass-preserving model), :func:`apply_correction` (Jacobian modulation, 3-D or 4-D),
:func:`make_phantom` (offline MNI152-based phantom with ground truth), and the model pieces
(:class:`EPIObjective`, :func:`distort`, :func:`ot_displacement`).
"""

from ._apply import apply_correction, distort
from ._model import EPIObjective
from ._ot1d import ot_displacement
from ._phantom import Phantom, make_phantom
from ._solve import EPIResult, estimate_field

__all__ = [
    "EPIObjective",
    "EPIResult",
    "Phantom",
    "apply_correction",
    "distort",
    "estimate_field",
    "make_phantom",
    "ot_displacement",
]
