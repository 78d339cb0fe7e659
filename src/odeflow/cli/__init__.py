"""The ``odeflow`` command line.

Each subcommand lives in its own module (``_demo``, ``_flow``, ``_epi``, …) that exposes
``register(subparsers)``; ``main`` builds the parser from the modules listed in
``_COMMANDS`` and dispatches to the ``func`` each subparser sets. The demo drivers
(``_demo_ode``, ``_demo_otflow``, ``_demo_epi``, ``_demo_nn``) live here too, not in the
engine packages: they plot with matplotlib, which ``import odeflow`` never loads.

The errors odeflow raises on bad input (:data:`USER_ERRORS`) are reported as one line,
``odeflow COMMAND [SUBCOMMAND]: error: MESSAGE``, with exit code 1; any other exception is
a bug and keeps its traceback. odeflow's own warnings (e.g. a convergence or performance
warning) are one line too, ``odeflow COMMAND: warning: MESSAGE``; others keep Python's format.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence

__all__ = ["USER_ERRORS", "build_parser", "main"]

#: what odeflow raises for bad input, a missing optional dependency or a failed run
#: (TrainingDiverged is a RuntimeError, FileNotFoundError an OSError)
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    OSError,
    RuntimeError,
    ImportError,
    FloatingPointError,
)

#: modules providing ``register(subparsers)``; order is the order shown in ``--help``.
_COMMANDS: tuple[str, ...] = (
    "odeflow.cli._demo",
    "odeflow.cli._epi",
    "odeflow.cli._flow",
    "odeflow.cli._control",
    "odeflow.cli._bench",
    "odeflow.cli._sbi",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``odeflow`` argument parser with every registered subcommand."""
    from odeflow import __version__

    parser = argparse.ArgumentParser(
        prog="odeflow",
        description="odeflow: continuous-time deep learning and scientific ML on PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"odeflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``odeflow`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():  # (restores showwarning on the way out)
            warnings.showwarning = _plain_warnings(f"odeflow {args.command}", warnings.showwarning)
            rc = args.func(args)
    except KeyboardInterrupt:
        print("odeflow: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        print(f"{_command_name(args)}: error: {exc}", file=sys.stderr)
        return 1
    return int(rc or 0)


def _plain_warnings(prefix: str, shown):
    """A ``warnings.showwarning`` printing odeflow's own warnings as one stderr line (the
    file and line of the code that warned mean nothing to a command-line user)."""

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.partition(".")[0] == "odeflow":
            print(f"{prefix}: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    return show


def _command_name(args: argparse.Namespace) -> str:
    """``odeflow COMMAND`` plus the subcommand, if the command has one (stored as
    ``COMMAND_command`` by convention, e.g. ``flow_command``)."""
    sub = getattr(args, f"{args.command}_command", None)
    return f"odeflow {args.command}" + (f" {sub}" if isinstance(sub, str) else "")
