"""The swap-12 warm start's cost-to-go and costates (benchmarks/_swap12_warmstart.py) against
IPOPT's optimal cost and constraint multipliers on a small transcription."""

import sys
from pathlib import Path

import pytest

from odeflow.control import Swap2


def test_costates_equal_ipopt_multipliers():
    """The discrete adjoint sweep (controls held) gives ∇ₓ of the optimal cost-to-go: V₀ is
    IPOPT's optimum and λ_k = −μ_{k−1} (CasADi's f + μᵀg), obstacle and pair costs included."""
    pytest.importorskip("casadi")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        from _apps_agents import solve_ipopt
        from _swap12_warmstart import check_costates
    finally:
        sys.path.pop(0)
    pb, nt = Swap2(), 12
    sol = solve_ipopt(pb, pb.start.numpy(), nt)
    assert sol["status"] == "Solve_Succeeded"
    err = check_costates(pb, sol, pb.horizon / nt)
    assert err["value_rel_error"] < 1e-12
    assert err["costate_rel_error"] < 1e-7
