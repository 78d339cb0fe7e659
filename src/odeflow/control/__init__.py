r"""Neural optimal control and mean-field games.

One network Φ(x, t) is the value function; its gradient gives the feedback control
u*(x, ∇Φ); particles follow the characteristics by RK4 (:func:`solve_characteristics`,
deterministic problems and potential mean-field games, with exact densities through the
log-determinant) or Euler–Maruyama paths under the feedback (:func:`stochastic_loss`);
the loss adds HJB penalties. Problems are :class:`ControlProblem` subclasses; presets
(:func:`make_problem`) come with exact references (Riccati, Cole–Hopf, Gaussian OT).

>>> import torch
>>> from odeflow.control import LQR, ValueNetwork, fit
>>> pb = LQR(dim=2)
>>> phi = ValueNetwork(2, width=8).double()
>>> result = fit(pb, phi, iterations=3, batch=32, verbose=False, seed=0)
>>> len(result.history)
3

References: Ruthotto et al., PNAS 2020, arXiv 1912.01825; Onken et al., arXiv 2104.03270;
Li, Verma, Ruthotto, arXiv 2209.13104.
"""

from ._agents import AgentProblem, Corridor, SafetyReport, Swap2, Swap12, Swarm50, agent_rollout
from ._agents_plot import animate_agents, plot_agents
from ._crowd import crowd_metrics, plot_crowd
from ._hjb_grid import GridHJBSolution, solve_hjb_grid
from ._hodgkin_huxley import HodgkinHuxley
from ._ilqr import ILQRValue
from ._obstacle import StochasticObstacle
from ._online import OnlineFeedback
from ._plot import plot_solution
from ._presets import HJB, LQR, PRESETS, CrowdMotion, GaussianOT, PnasOT, make_problem
from ._problem import ControlProblem, QuadraticControlProblem
from ._quadcopter import Quadcopter, ShockResult, quadcopter_shock
from ._quadcopter_lqr import HoverLQRValue
from ._reference import (
    GaussianOTReference,
    LQRValue,
    MonteCarloEstimate,
    cole_hopf_value,
    gaussian_ot_reference,
)
from ._residual import ResidualValue
from ._shock import shock_experiment
from ._simulate import Rollout, rollout
from ._solver import (
    Characteristics,
    ControlLoss,
    LossWeights,
    control_loss,
    hjb_residual,
    solve_characteristics,
)
from ._stochastic import StochasticLoss, simulate, stochastic_loss
from ._supervised import SupervisedFit, fit_value_to_data
from ._tracking_lqr import TrackingLQRValue
from ._train import FitResult, evaluate, fit, load_checkpoint, save_checkpoint
from ._value import ValueFunction, ValueJet, ValueNetwork, hessian_trace

__all__ = [
    "HJB",
    "LQR",
    "PRESETS",
    "AgentProblem",
    "Characteristics",
    "ControlLoss",
    "ControlProblem",
    "Corridor",
    "CrowdMotion",
    "FitResult",
    "GaussianOT",
    "GaussianOTReference",
    "GridHJBSolution",
    "HodgkinHuxley",
    "HoverLQRValue",
    "ILQRValue",
    "LQRValue",
    "LossWeights",
    "MonteCarloEstimate",
    "OnlineFeedback",
    "PnasOT",
    "Quadcopter",
    "QuadraticControlProblem",
    "ResidualValue",
    "Rollout",
    "SafetyReport",
    "ShockResult",
    "StochasticLoss",
    "StochasticObstacle",
    "SupervisedFit",
    "Swap2",
    "Swap12",
    "Swarm50",
    "TrackingLQRValue",
    "ValueFunction",
    "ValueJet",
    "ValueNetwork",
    "agent_rollout",
    "animate_agents",
    "cole_hopf_value",
    "control_loss",
    "crowd_metrics",
    "evaluate",
    "fit",
    "fit_value_to_data",
    "gaussian_ot_reference",
    "hessian_trace",
    "hjb_residual",
    "load_checkpoint",
    "make_problem",
    "plot_agents",
    "plot_crowd",
    "plot_solution",
    "quadcopter_shock",
    "rollout",
    "save_checkpoint",
    "shock_experiment",
    "simulate",
    "solve_characteristics",
    "solve_hjb_grid",
    "stochastic_loss",
]
