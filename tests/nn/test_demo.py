"""The `odeflow demo --only nn-hamiltonian` run (slow: about 10 s on a free core)."""

import pytest


@pytest.mark.slow
def test_nn_demo(tmp_path):
    from odeflow.cli._demo_nn import run_demo

    r = run_demo(tmp_path, verbose=False)
    assert r["test_accuracy"] >= 0.9
    assert r["test_accuracy_at_depth_64"] >= r["test_accuracy"] - 0.01
    assert r["depth_16_memory_free_bytes"] == r["depth_256_memory_free_bytes"]
    assert r["depth_256_memory_free_bytes"] < 0.05 * r["depth_256_stored_bytes"]
    assert (tmp_path / "metrics.json").is_file()
