"""Every code block of the README and the docs runs, and the README's figures are the JSON's.

``python`` blocks are executed page by page, in order, in one namespace per page (as a reader
runs them), in an empty working directory, on CPU. Shell blocks are checked without running them: an ``odeflow`` command line (also under
``torchrun -m odeflow``) must parse with the CLI's own argparse parser, a ``make`` target must
exist in the Makefile, a ``python benchmarks/X.py`` line must name an existing script and only
flags that script defines, a ``pip install`` line only extras that pyproject defines.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def _readme_example() -> str:
    """The README's 30-second example, which tests/test_examples.py runs (in a fresh
    interpreter, with assertions on what its comments promise): not run twice."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## In 30 seconds", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def _blocks(lang: str) -> list:
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in (b for b in FENCE.finditer(text) if b.group(1) == lang):
            if lang == "python" and m.group(2) == _readme_example():
                continue
            line = text[: m.start()].count("\n") + 1
            out.append(pytest.param(m.group(2), id=f"{page.relative_to(ROOT)}:{line}"))
    return out


def _python_pages() -> list:
    pages: dict[str, list[str]] = {}
    for param in _blocks("python"):
        pages.setdefault(param.id.rsplit(":", 1)[0], []).append(param.values[0])
    return [pytest.param(blocks, id=page) for page, blocks in pages.items()]


@pytest.mark.parametrize("blocks", _python_pages())
def test_python_blocks_run(blocks, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = {"__name__": "__docs__"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"<docs block {i}>", "exec"), ns)


def _commands(script: str) -> list[list[str]]:
    lines, cur = [], ""
    for raw in script.splitlines():
        cur += raw.rstrip()
        if cur.endswith("\\"):
            cur = cur[:-1] + " "
            continue
        words = shlex.split(cur, comments=True)
        if words:
            lines.append(words)
        cur = ""
    return lines


def _check_odeflow(args: list[str]) -> None:
    from odeflow.cli import build_parser

    try:
        build_parser().parse_args(args)
    except SystemExit as e:  # argparse reports and exits 2 on an unknown flag or value
        raise AssertionError(f"`odeflow {' '.join(args)}` does not parse") from e


def _check_command(words: list[str]) -> None:
    head = words[0]
    if re.fullmatch(r"[A-Z_]+=.*", head):  # a shell variable for the next lines
        return
    if head == "odeflow":
        return _check_odeflow(words[1:])
    if head == "torchrun":
        i = words.index("-m")
        assert words[i + 1] == "odeflow", words
        return _check_odeflow(words[i + 2 :])
    if head == "make":
        makefile = (ROOT / "Makefile").read_text()
        for target in (w for w in words[1:] if "=" not in w and not w.startswith("-")):
            assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"no make {target}"
        return None
    if head == "python" and words[1].startswith("benchmarks/"):
        script = ROOT / words[1]
        assert script.is_file(), script
        source = script.read_text()
        for flag in (w for w in words[2:] if w.startswith("--")):
            assert f'"{flag}"' in source, f"{script.name} has no flag {flag}"
        return None
    if head == "pip" and words[1] == "install":
        toml = (ROOT / "pyproject.toml").read_text()
        section = toml.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
        defined = set(re.findall(r"^([\w-]+) = \[", section, re.M))
        for w in words[2:]:
            for name in re.findall(r"\[([^\]]*)\]", w):
                assert set(name.split(",")) <= defined, w
        return None
    raise AssertionError(f"a shell line the docs test does not know how to check: {words}")


@pytest.mark.parametrize("script", _blocks("bash"))
def test_shell_block_is_valid(script):
    commands = _commands(script)
    assert commands
    for words in commands:
        _check_command(words)


# ----------------------------------------------------------------- headline figures
RESULTS = ROOT / "benchmarks" / "results"


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _row(rows, **kw) -> dict:
    (hit,) = [r for r in rows if all(r.get(k) == v for k, v in kw.items())]
    return hit


def test_readme_headline_figures_match_their_json():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    # captured adjoint steps against torchdiffeq's backprop, mlp bf16, H200
    rows = _load("h200_ode_mlp_shared_stream.json")["results"]
    ours = _row(rows, solver="odeflow-adjoint+graphs", precision="bf16")
    peer = _row(rows, solver="torchdiffeq", precision="bf16")
    assert f"{peer['ms'] / ours['ms']:.1f}× faster than torchdiffeq" in readme
    assert 0.15 < ours["peak_mb"] / peer["peak_mb"] < 0.25  # "a fifth of its memory"
    # the adjoint's cost where the arithmetic dominates: conv, H200, fastest adjoint variant
    rows = _load("h200_ode_conv_shared_stream.json")["results"]
    for prec in ("bf16", "fp32"):
        ours = min(r["ms"] for r in rows if r["precision"] == prec and "adjoint" in r["solver"]
                   and r["solver"].startswith("odeflow"))  # fmt: skip
        peer = _row(rows, solver="torchdiffeq", precision=prec)["ms"]
        assert f"{ours / peer:.2f}× ({prec})" in readme
    # stage recompute, conv bf16, H100
    rows = _load("h100_ode_conv.json")["results"]
    ours = _row(rows, solver="odeflow-adjoint-stage", precision="bf16")
    peer = _row(rows, solver="torchdiffeq", precision="bf16")
    assert f"{100 * ours['peak_mb'] / peer['peak_mb']:.0f} % of torchdiffeq" in readme
    assert f"within {ours['err64']:.1e}".replace("e-03", "e-3") in readme
    # exact Laplacian, d = 256, n = 1000, against the trace of torch.func's Hessian
    rows = _load("cpu_derivatives_after_transposed_jacobians.json")["rows"]
    case = {"net": "hessquik", "quantity": "laplacian", "n": 1000, "d": 256}
    ours = _row(rows, method="odeflow (auto)", **case)["seconds"]
    peer = min(r["seconds"] for r in rows if r["method"].startswith("torch.func")
               and all(r[k] == v for k, v in case.items()))  # fmt: skip
    assert 100 <= peer / ours < 1000 and "two orders of magnitude" in readme
    # OT-Flow bf16, compiled and captured, against the matched-step Hutchinson CNF, H200
    fast = _row(_load("h200_flows_compile_graphs.json")["speed"],
                model="odeflow OT-Flow bf16 +compile+graphs")  # fmt: skip
    matched = _row(_load("h200_flows_speed_graphs_run2.json")["speed"],
                   model="Hutchinson CNF (matched steps)")  # fmt: skip
    assert f"{matched['train_iter_s'] / fast['train_iter_s']:.2f}× faster" in readme
    # EPI, 2 mm whole brain, Gauss–Newton
    gn = _row(_load("cpu_epi_lbfgs_ftol.json")["results"], method="odeflow-gn")
    assert f"RMSE {gn['field_rmse_vox']:.3f} voxel" in readme
    assert f"converged in {gn['iterations']} iterations, {gn['seconds']:.1f} s" in readme


def test_benchmark_pages_read_committed_json():
    import sys

    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    try:
        import bench_pages
    finally:
        sys.path.pop(0)
    for name in bench_pages.used_files():
        json.loads((RESULTS / name).read_text())
