"""``odeflow epi``: EPI susceptibility distortion correction from the command line."""

from __future__ import annotations

import argparse
import inspect
import re
import time
import warnings

from odeflow.imaging.epi import EPIConvergenceWarning, EPIInputError, correct_files
from odeflow.imaging.epi._intensity import NEGATIVE_MODES  # (no public name)

from ._demo_epi import run_demo

__all__ = ["register"]

#: correct_files' defaults: the library owns them, the flags only read them
_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(correct_files).parameters.items()
    if p.default is not inspect.Parameter.empty
}

_RANGE = " ".join(f"{t:g}" for t in _DEFAULTS["readout_time_range"])

#: correct_files' arguments that name their flag differently in errors (``name=`` → flag)
_FLAGS = {
    "out_prefix": "--out",
    "up_volume": "--up-volume",
    "down_volume": "--down-volume",
    "pe_dir_down": "--pe-dir-down",
    "pe_dir": "--pe-dir",
    "apply_pe_dir": "--apply-pe-dir",
    "readout_time_range": "--readout-time-range",
    "readout_time": "--readout-time",
    "max_iter": "--max-iter",
    "device": "--device",
}
#: boolean arguments as the switches that set them
_SWITCHES = {
    "overwrite=True": "--overwrite",
    "ignore_sidecars=True": "--ignore-sidecars",
    "qc=False": "--no-qc",
}
#: an argument name starts a word (not inside a path or a flag); a bare one has a "_"
_ARG = r"(?<![\w/.-])"
_NAME = r"[a-z]+(?:_[a-z]+)+"


def _as_flags(message: str) -> str:
    """A library error in the command line's terms.

    The library names arguments (``up_volume=-1``, ``out_prefix``); where its message also
    gives the flag in parentheses after an argument (``pe_dir (--pe-dir)``), the flag replaces
    the argument; otherwise ``name=value`` becomes ``--flag value``, ``overwrite=True``
    ``--overwrite``, and a bare ``out_prefix`` ``--out prefix``.
    """
    names = "|".join(_FLAGS)
    # "a and b (--a and --b)" / "a (--a)" / "a=v (--a v)": the parenthetical is the CLI form
    message = re.sub(
        rf"{_ARG}(?:[a-z_]+=\S+|{_NAME}(?: and {_NAME})?) \((--[a-z-]+(?: [^()]*)?)\)",
        r"\1",
        message,
    )
    for text, switch in _SWITCHES.items():
        message = message.replace(text, switch)
    message = re.sub(rf"{_ARG}({names})=", lambda m: f"{_FLAGS[m[1]]} ", message)
    return re.sub(rf"{_ARG}out_prefix\b", "--out prefix", message)


_CORRECT_EPILOG = """\
examples:
  # BIDS pair: PhaseEncodingDirection and TotalReadoutTime are read from the .json sidecars
  odeflow epi correct --up sub-01_dir-AP_epi.nii.gz --down sub-01_dir-PA_epi.nii.gz \\
      --out derivatives/sub-01_

  # no sidecars: give the up image's PE direction (down is its opposite) and readout time
  odeflow epi correct --up ap.nii.gz --down pa.nii.gz --pe-dir j- --readout-time 0.05 --out res/

  # both b0s in one 4-D file (volume 0 = AP, volume 1 = PA), correct a DWI series too, on a GPU
  odeflow epi correct --up b0s.nii.gz --up-volume 0 --down b0s.nii.gz --down-volume 1 \\
      --pe-dir AP --readout-time 0.062 --apply dwi.nii.gz --device cuda --out res/sub-01_

outputs (PREFIX = --out): PREFIXup_corrected, down_corrected, corrected (mean), fieldmap (Hz),
displacement_mm, displacement_vox, jacobian_up/down (.nii.gz + .json, the input's affine and
header), <apply>_corrected, qc.png, qc.html, metrics.json.  Every output gets its own file:
an --apply series named like another output (e.g. up.nii.gz -> up_corrected) is refused.
Field sign: an image with PE sign s (+1 for 'j', -1 for 'j-') and readout time T is displaced
by s*field*T voxels along the axis.  Outputs are written atomically: on any error nothing is
left behind and the exit code is 1.  A solve that stops unconverged is still written, with a
warning and "NOT CONVERGED (...)" in the summary line.
"""


def _volume(text: str) -> int | str:
    if text == "mean":
        return "mean"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"volume must be an integer index or 'mean', got {text!r}"
        ) from None


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _run(args: argparse.Namespace):
    """correct_files with the parsed flags."""
    return correct_files(
        args.up,
        args.down,
        args.out,
        pe_dir=args.pe_dir,
        pe_dir_down=args.pe_dir_down,
        readout_time=args.readout_time,
        up_volume=args.up_volume,
        down_volume=args.down_volume,
        ignore_sidecars=args.ignore_sidecars,
        apply=args.apply or (),
        apply_pe_dir=args.apply_pe_dir,
        alpha=args.alpha,
        beta=args.beta,
        solver=args.solver,
        levels=args.levels,
        max_iter=args.max_iter,
        device=args.device,
        qc=not args.no_qc,
        overwrite=args.overwrite,
        verbose=not args.quiet,
        negative=args.negative,
        readout_time_range=tuple(args.readout_time_range),
    )


def _correct(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():  # (main prints it as one "odeflow epi: warning:" line)
        warnings.simplefilter("always", EPIConvergenceWarning)
        try:
            out = _run(args)
        except EPIInputError as exc:
            raise EPIInputError(_as_flags(str(exc))) from None
    acq = out.metrics["acquisition"]
    print(
        f"odeflow epi: up {acq['pe_up']} ({acq['pe_up_anatomical']}, {acq['sources']['pe_up']}), "
        f"down {acq['pe_down']}, readout {acq['readout_time_s']:.4g} s "
        f"({acq['sources']['readout_time']})"
    )
    # the summary ends with "NOT CONVERGED (...)" when the solver did not converge
    print(f"odeflow epi: {out.summary} -> {args.out}*")
    return 0


def _demo(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    quick = {"voxel_size": 4.0, "shape": (32, 40, 32), "peak_displacement": 2.0}
    kwargs = quick if args.quick else {}
    res = run_demo(args.out, verbose=not args.quiet, overwrite=args.overwrite, **kwargs)
    print(
        # the RMS ratio ‖T₊ − T₋‖/‖I₊ − I₋‖, not PyHySCO's squared "relative distance"
        f"odeflow epi demo: field RMSE {res['field_rmse_vox']:.3f} voxel in the brain, "
        f"relative RMS distance {100 * res['relative_rms_distance']:.1f} %, "
        f"{time.perf_counter() - t0:.1f} s -> {args.out}"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``odeflow epi`` (``correct``, ``demo``) to the top-level parser."""
    epi = sub.add_parser(
        "epi",
        help="EPI susceptibility distortion correction (blip-up/blip-down)",
        description="EPI susceptibility distortion correction from a pair of scans with "
        "opposite phase-encoding polarity (e.g. AP/PA b0 images), keeping the scan's geometry.",
    )
    esub = epi.add_subparsers(dest="epi_command", metavar="SUBCOMMAND")
    epi.set_defaults(func=lambda a: (epi.print_help(), 2)[1])

    p = esub.add_parser(
        "correct",
        help="estimate the field from an up/down pair and correct the images",
        description="Estimate the susceptibility field from a blip-up/blip-down NIfTI pair and "
        "write the corrected images, the field in Hz and the displacement, all with the "
        "input's affine and header, plus a QC report.",
        epilog=_CORRECT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = p.add_argument_group("inputs and outputs")
    io.add_argument(
        "--up",
        required=True,
        metavar="UP.nii.gz",
        help="image acquired with one PE polarity (.nii or .nii.gz)",
    )
    io.add_argument(
        "--down",
        required=True,
        metavar="DOWN.nii.gz",
        help="image acquired with the opposite polarity, on the same grid",
    )
    io.add_argument(
        "--out",
        required=True,
        metavar="PREFIX",
        help="output prefix: 'dir/' or 'dir/name_' (folder created if needed)",
    )
    io.add_argument(
        "--up-volume",
        type=_volume,
        default=None,
        metavar="N|mean",
        help="volume of a 4-D --up file to use (index or 'mean'); required for 4-D",
    )
    io.add_argument(
        "--down-volume",
        type=_volume,
        default=None,
        metavar="N|mean",
        help="volume of a 4-D --down file to use (index or 'mean'); required for 4-D",
    )
    io.add_argument(
        "--apply",
        action="append",
        metavar="SERIES.nii.gz",
        help="also correct this 3-D/4-D series with the field (repeatable); its PE "
        "comes from its sidecar, else --apply-pe-dir, else the --up direction",
    )
    io.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs (inputs are never overwritten)",
    )
    io.add_argument("--no-qc", action="store_true", help="skip the PNG/HTML report")

    meta = p.add_argument_group("acquisition (overrides the BIDS sidecars)")
    meta.add_argument(
        "--pe-dir",
        default=None,
        metavar="DIR",
        help="PE direction of --up: BIDS i, i-, j, j-, k, k- (array axes) or "
        "anatomical AP, PA, LR, RL, IS, SI (mapped through the affine); --down "
        "is taken as the opposite unless its sidecar or --pe-dir-down says",
    )
    meta.add_argument(
        "--pe-dir-down",
        default=None,
        metavar="DIR",
        help="PE direction of --down (must be the opposite of --up's)",
    )
    meta.add_argument(
        "--readout-time",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="total readout time in seconds (default: TotalReadoutTime or "
        "EffectiveEchoSpacing*(ReconMatrixPE-1) from the sidecars)",
    )
    meta.add_argument(
        "--readout-time-range",
        type=_positive,
        nargs=2,
        default=_DEFAULTS["readout_time_range"],
        metavar=("MIN", "MAX"),
        help=f"plausible total readout times in seconds (default: {_RANGE}); a readout time "
        "outside is refused as a likely unit error; widen it for an unusual but correct value",
    )
    meta.add_argument(
        "--apply-pe-dir",
        default=None,
        metavar="DIR",
        help="PE direction of --apply series that have no sidecar",
    )
    meta.add_argument(
        "--ignore-sidecars",
        action="store_true",
        help="do not use the sidecars' PhaseEncodingDirection (when they are wrong)",
    )

    sol = p.add_argument_group("solver")
    sol.add_argument(
        "--alpha",
        type=float,
        default=_DEFAULTS["alpha"],
        help=f"smoothness weight, 0 .. 1e10 ({_DEFAULTS['alpha']:g})",
    )
    sol.add_argument(
        "--beta",
        type=float,
        default=_DEFAULTS["beta"],
        help=f"Jacobian barrier weight, > 0 .. 1e10 ({_DEFAULTS['beta']:g})",
    )
    sol.add_argument(
        "--negative",
        choices=NEGATIVE_MODES,
        default=_DEFAULTS["negative"],
        help="negative intensities, which the mass-preserving model does not allow: error "
        "(default; refused when over 0.1 %% of an image's mass, stating the fraction), clip "
        "(set to 0: noise around a zero background) or shift (subtract the pair's common "
        "minimum: a constant offset)",
    )
    sol.add_argument(
        "--solver",
        choices=("gn", "lbfgs"),
        default=_DEFAULTS["solver"],
        help="gn = Gauss-Newton-PCG (default), lbfgs = L-BFGS (needs far more iterations; "
        "warns when it stops unconverged)",
    )
    sol.add_argument(
        "--levels",
        type=int,
        default=_DEFAULTS["levels"],
        help=f"coarse-to-fine levels ({_DEFAULTS['levels']})",
    )
    sol.add_argument(
        "--max-iter",
        type=int,
        default=_DEFAULTS["max_iter"],
        help=f"outer iterations ({_DEFAULTS['max_iter']}; L-BFGS runs 5x as many)",
    )
    sol.add_argument(
        "--device",
        default=_DEFAULTS["device"],
        help="torch device: cpu, cuda, cuda:N, or auto (default: CUDA when available)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_correct)

    d = esub.add_parser(
        "demo",
        help="run the offline phantom end to end (NIfTIs, sidecars, QC report)",
        description="Build the MNI152-based phantom pair with a known field, write it as BIDS "
        "NIfTIs, correct it with `odeflow epi correct`'s pipeline and write the QC report.",
    )
    d.add_argument("--out", default="epi-demo", help="output folder (default: epi-demo)")
    d.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the outputs of an earlier demo in --out (refused otherwise)",
    )
    d.add_argument(
        "--quick",
        action="store_true",
        help="a 4 mm crop of the phantom (seconds) instead of the 2 mm whole brain",
    )
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_demo)
