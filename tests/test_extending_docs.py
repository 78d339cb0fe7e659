"""docs/extending.md shows both extension points (its blocks run in tests/test_docs_code.py)."""

from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def test_the_extending_page_has_its_examples():
    code = "\n".join(re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S))
    assert "class DiagonalResidual(Block)" in code and "class JacobiNewton(AbstractDescent)" in code
    assert "res.iterations" in code
    assert "ButcherTableau(" in code and "FlowPreset" in PAGE.read_text(encoding="utf-8")
