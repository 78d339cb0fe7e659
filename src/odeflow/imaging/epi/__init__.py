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

# file level (NIfTI/BIDS I/O, pipeline, QC): correct_files is what `odeflow epi correct` runs
from ._bids import Acquisition, PhaseEncoding, parse_pe_direction, read_sidecar, resolve_acquisition
from ._nifti import EPIInputError, NiftiImage, load_nifti, save_nifti
from ._pipeline import CorrectionOutputs, correct_files
from ._qc import write_qc_report

__all__ = [
    "Acquisition",
    "CorrectionOutputs",
    "EPIInputError",
    "EPIObjective",
    "EPIResult",
    "NiftiImage",
    "PhaseEncoding",
    "Phantom",
    "apply_correction",
    "correct_files",
    "distort",
    "estimate_field",
    "load_nifti",
    "make_phantom",
    "ot_displacement",
    "parse_pe_direction",
    "read_sidecar",
    "resolve_acquisition",
    "save_nifti",
    "write_qc_report",
]
