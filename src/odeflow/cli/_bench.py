"""``odeflow bench``: run one of the side-by-side benchmarks against the peer libraries.

The benchmarks live in the repository's ``benchmarks/`` folder, not in the installed package
(they import the peers: torchdiffeq, torchode, hessQuik, zuko, PyHySCO, which odeflow itself
never needs). ``odeflow bench NAME ARGS...`` runs ``benchmarks/NAME_peers.py ARGS...`` of the
source checkout this odeflow comes from (an editable install) or of the current folder, with
this Python, and returns its exit code; ``odeflow bench NAME --help`` shows its options.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

#: name -> what the benchmark measures (its script is benchmarks/<name>_peers.py)
BENCHMARKS: dict[str, str] = {
    "ode": "neural-ODE engine: time, memory and gradient error per precision "
    "(torchdiffeq, torchode)",
    "derivatives": "exact gradient, Hessian and Laplacian of networks (torch.func, hessQuik)",
    "flows": "OT-Flow training iteration, throughput and NLL (Hutchinson CNFs, FFJORD, zuko)",
    "epi": "EPI distortion correction of a whole-brain phantom (PyHySCO)",
}


def benchmarks_dir() -> Path | None:
    """The ``benchmarks/`` folder of the source checkout of this odeflow, else of the current
    folder, else ``None``."""
    import odeflow

    here = Path(odeflow.__file__).resolve().parents[2] / "benchmarks"  # src/odeflow/__init__
    for cand in (here, Path.cwd() / "benchmarks"):
        if (cand / "ode_peers.py").is_file():
            return cand
    return None


def _run(args: argparse.Namespace) -> int:
    folder = benchmarks_dir()
    if folder is None:
        raise OSError(
            "odeflow bench runs the benchmarks of a source checkout (its benchmarks/ folder "
            "is not part of the installed package): run it from a clone of odeflow, where "
            "`make bench-setup` installs the peers"
        )
    script = folder / f"{args.name}_peers.py"
    if not script.is_file():
        raise OSError(f"{script} is missing from this checkout")
    return subprocess.call([sys.executable, str(script), *args.rest])


def register(sub: argparse._SubParsersAction) -> None:
    listing = "\n".join(f"  {name:12s} {what}" for name, what in BENCHMARKS.items())
    p = sub.add_parser(
        "bench",
        help="run a side-by-side benchmark against the peer libraries (source checkout)",
        description="Run one of odeflow's side-by-side benchmarks (benchmarks/NAME_peers.py of "
        "a source checkout) with the options that follow its name; it prints a table and, "
        f"with --json PATH, writes the results.\n\nbenchmarks:\n{listing}\n\nexamples:\n"
        "  odeflow bench ode --device cuda\n  odeflow bench flows --quick --dims 43\n"
        "  odeflow bench ode --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=list(BENCHMARKS), help="which benchmark")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own options")
    p.set_defaults(func=_run)
