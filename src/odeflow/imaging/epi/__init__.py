"""EPI susceptibility distortion correction from blip-up/blip-down pairs.

Array-level API: :func:`estimate_field` (1-D OT start + Gauss–Newton–PCG or L-BFGS on the
mass-preserving model), :func:`apply_correction` (Jacobian modulation, 3-D or 4-D),
:func:`make_phantom` (offline MNI152-based phantom with ground truth), and the model pieces
(:class:`EPIObjective`, :func:`distort`, :func:`ot_displacement`).

File-level API (what ``odeflow epi correct`` runs): :func:`correct_files` (NIfTI/BIDS in,
corrected images, field in Hz, displacement, sidecars and QC report out, atomically),
:func:`load_nifti`/:func:`save_nifti` (geometry-preserving I/O), :func:`resolve_acquisition`
(PE direction and readout time from BIDS sidecars or explicit overrides), :func:`write_qc_report`.
"""

from ._apply import apply_correction, distort
from ._bids import (
    Acquisition,
    PhaseEncoding,
    parse_pe_direction,
    read_sidecar,
    resolve_acquisition,
)
from ._model import EPIObjective
from ._nifti import EPIInputError, NiftiImage, load_nifti, save_nifti
from ._ot1d import ot_displacement
from ._phantom import Phantom, make_phantom
from ._pipeline import CorrectionOutputs, EPIConvergenceWarning, correct_files
from ._qc import write_qc_report
from ._solve import EPIResult, estimate_field

__all__ = [
    "Acquisition",
    "CorrectionOutputs",
    "EPIConvergenceWarning",
    "EPIInputError",
    "EPIObjective",
    "EPIResult",
    "NiftiImage",
    "Phantom",
    "PhaseEncoding",
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
