"""MkDocs hook: pages generated at build time, never committed.

* ``reference/cli.md``: the ``--help`` of ``odeflow`` and of every subcommand, rendered from
  the argparse parsers of this checkout (``odeflow.cli.build_parser``).
* ``benchmarks/{ode,derivatives,flows,epi,nn}.md`` and their PNG plots: tables and figures made
  from the committed JSON in ``benchmarks/results/`` by ``docs/hooks/bench_pages.py``, and
  ``benchmarks/{ode-workprecision,ode-checkpointing,sde,optim}.md`` by
  ``docs/hooks/bench_pages_extra.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's odeflow, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_pages  # noqa: E402
import bench_pages_apps  # noqa: E402
import bench_pages_sbi  # noqa: E402


@contextlib.contextmanager
def _columns(n: int):
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(n)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def _walk(parser: argparse.ArgumentParser, path: list[str]):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, [*path, name])


def cli_reference() -> str:
    """Markdown with the ``--help`` of every (sub)command, in the order ``--help`` lists them."""
    from odeflow.cli import build_parser

    out = [
        "# Command line",
        "",
        "Generated at build time from the argparse parsers (`odeflow.cli.build_parser`): "
        "what `odeflow ... --help` prints for this version.",
        "",
    ]
    with _columns(100):
        for path, parser in _walk(build_parser(), ["odeflow"]):
            level = "#" * min(len(path) + 1, 4)
            out += [f"{level} `{' '.join(path)}`", "", "```text", parser.format_help().rstrip()]
            out += ["```", ""]
    return "\n".join(out)


#: Warnings about docstrings in src/ that --strict would otherwise fail on, each with its
#: cause; they are shown as INFO. Fix the docstring, then delete its line here.
KNOWN_DOCSTRING_ISSUES: tuple[str, ...] = ()


class _Demote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and any(
            k in record.getMessage() for k in KNOWN_DOCSTRING_ISSUES
        ):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def on_startup(command, dirty):
    for handler in logging.getLogger("mkdocs").handlers:
        handler.addFilter(_Demote())


def on_files(files, config):
    files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
    for uri, content in bench_pages.render_all(ROOT / "benchmarks" / "results"):
        files.append(File.generated(config, uri, content=content))
    for uri, content in bench_pages_sbi.render_pages(ROOT / "benchmarks" / "results"):
        files.append(File.generated(config, uri, content=content))
    for uri, content in bench_pages_apps.render_pages(ROOT / "benchmarks" / "results"):
        files.append(File.generated(config, uri, content=content))
    return files
