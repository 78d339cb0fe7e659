"""The README's 30-second example and every script in examples/ run as a user runs them.

Each runs in a fresh interpreter in an empty working directory, with the smallest settings
its options allow, so that documentation cannot drift from the code without a test failing.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def _run(args: list[str], cwd: Path, timeout: float = 300) -> str:
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}  # (xdist runs 2 at once)
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not found in:\n{text}"
    return float(match.group(1))


def test_readme_example_runs_and_says_what_it_shows(tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## In 30 seconds", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    # what the snippet's comments promise
    checks = """
assert ys.shape == (5, 128, 2) and ys.dtype == torch.float32, (ys.shape, ys.dtype)
assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in func.parameters())
assert out.value.shape == (100,) and out.gradient.shape == (100, 3)
assert out.laplacian.shape == (100,)
assert flow.log_prob(x[:5]).shape == (5,) and flow.sample(1000).shape == (1000, 2)
assert math.isfinite(result.history[-1]["nll"])
"""
    script = tmp_path / "readme_example.py"
    script.write_text("import math\n" + code + checks, encoding="utf-8")
    out = _run([str(script)], cwd=tmp_path)
    assert "torch.Size([100]) torch.Size([100, 3]) torch.Size([100])" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["readme_example.py"]  # wrote nothing


def test_every_example_answers_help_without_doing_work(tmp_path):
    driver = tmp_path / "help_all.py"
    driver.write_text(
        "import contextlib, io, runpy, sys\n"
        f"for script in {[str(p) for p in EXAMPLES]!r}:\n"
        "    sys.argv = [script, '--help']\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        try:\n"
        "            runpy.run_path(script, run_name='__main__')\n"
        "        except SystemExit as e:\n"
        "            assert e.code in (0, None), (script, e.code)\n"
        "        else:\n"
        "            raise AssertionError(f'{script} --help did not exit')\n"
        "    assert buf.getvalue().startswith('usage:'), (script, buf.getvalue()[:200])\n",
        encoding="utf-8",
    )
    (tmp_path / "work").mkdir()
    _run([str(driver)], cwd=tmp_path / "work")
    assert not any((tmp_path / "work").iterdir())
    assert len(EXAMPLES) >= 5


def test_neural_ode_spiral(tmp_path):
    out = _run([str(ROOT / "examples/neural_ode_spiral.py"), "--iters", "3"], cwd=tmp_path)
    first = _number(r"loss: first ([0-9.e+-]+)", out)
    last = _number(r"-> last ([0-9.e+-]+)", out)
    assert math.isfinite(first) and math.isfinite(last)
    assert math.isfinite(_number(r"full-rollout MSE from y\(0\): ([0-9.e+-]+)", out))


def test_otflow_8gaussians(tmp_path):
    run = tmp_path / "run"
    out = _run(
        [str(ROOT / "examples/otflow_8gaussians.py"), "--iters", "3", "--out", str(run)],
        cwd=tmp_path,
    )
    assert math.isfinite(_number(r"test NLL ([0-9.]+) nats", out))
    entropy = _number(r"true entropy ([0-9.]+)", out)
    assert abs(entropy - 2.83) < 0.02  # the mixture's Monte Carlo entropy (README: 2.830)
    assert (run / "otflow_8gaussians.png").stat().st_size > 0


def test_otflow_variational(tmp_path):
    script = str(ROOT / "examples/otflow_variational.py")
    out = _run([script, "--iters", "3", "--batch", "64"], cwd=tmp_path)
    assert math.isfinite(_number(r"KL\(q \|\| p\) ≈ (-?[0-9.]+)", out))
    assert not any(tmp_path.iterdir())


def test_per_sample_gradients(tmp_path):
    script = str(ROOT / "examples/per_sample_gradients.py")
    out = _run([script, "--iters", "30", "--batch", "32"], cwd=tmp_path)
    # untrained 0.75, 30 clipped steps 0.88 (on two moons)
    assert _number(r"test accuracy ([0-9.]+)", out) >= 0.85
    assert not any(tmp_path.iterdir())


def test_epi_phantom_quick(tmp_path):
    pytest.importorskip("nibabel")
    pytest.importorskip("nilearn")
    out = _run(
        [str(ROOT / "examples/epi_phantom.py"), str(tmp_path / "epi"), "--quick"], cwd=tmp_path
    )
    rmse = _number(r"field RMSE in the brain: ([0-9.]+) voxel", out)
    peak = _number(r"peak displacement ([0-9.]+) voxels", out)
    assert rmse < 0.25 * peak  # the uncorrected error is the whole field
    assert (tmp_path / "epi/corrected/sub-01_qc.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epi"]
