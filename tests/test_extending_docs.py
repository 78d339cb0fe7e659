"""docs/extending.md: its Python blocks run, in order, in one namespace (as a reader runs them)."""

from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)


def test_the_extending_page_has_its_examples():
    code = "\n".join(_blocks())
    assert "class DiagonalResidual(Block)" in code and "class JacobiNewton(AbstractDescent)" in code


def test_the_extending_page_runs():
    ns: dict = {"__name__": "extending_docs"}
    for i, block in enumerate(_blocks()):
        exec(compile(block, f"{PAGE}:block{i}", "exec"), ns)  # asserts inside the page
    assert ns["res"].iterations >= 1
