"""The corridor's acceptance: closed-loop cost within 3 % of the IPOPT optimum, no collision
and no obstacle violation in 1000 perturbed closed-loop rollouts (slow: minutes of CPU)."""

import pytest
import torch

from odeflow.control import Corridor, LossWeights, ValueNetwork, fit
from odeflow.control._agents import agent_metrics

# IPOPT's optimum of the same discrete problem from the nominal start, 50 steps
# (benchmarks/_apps_agents.py: solve_ipopt(Corridor(), start, 50), CasADi 3.8.2)
IPOPT_CORRIDOR = 33.0633


@pytest.mark.slow
def test_corridor_within_three_percent_of_ipopt_and_safe():
    torch.manual_seed(0)
    phi = ValueNetwork(4, width=32)
    fit(Corridor(), phi, optimizer="lbfgs", iterations=450, batch=128, verbose=False)
    fit(Corridor(spread=0.5), phi, optimizer="lbfgs", iterations=100, batch=128, seed=1,
        weights=LossWeights(hjb=0.0, terminal_value=0.0), verbose=False)  # fmt: skip
    m = agent_metrics(Corridor(), phi, rollouts=1000, scale=0.25, dt=0.02)
    assert m["nominal_cost"] < 1.03 * IPOPT_CORRIDOR
    assert m["rollouts_with_collisions"] == 0 and m["rollouts_with_violations"] == 0
