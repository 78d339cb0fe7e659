"""OT-Flow continuous normalizing flows: model, training, presets and data.

OT-Flow (Onken, Wu Fung, Li, Ruthotto, AAAI 2021, arXiv 2006.00104) drives the flow by
the gradient of a potential Φ(x, t) whose Laplacian gives an exact log-determinant.
"""

from ._checkpoint import save_checkpoint
from ._conditional import (
    BlockTriangular,
    ConditionalDistribution,
    ConditionalFitResult,
    ConditionalModel,
)
from ._cotflow import COTFlow
from ._gas import convert_gas
from ._otflow import OTFlow, OTFlowLoss, build_potential, load_checkpoint
from ._pcpmap import PCPMap
from ._plot import plot_flow_2d
from ._presets import PRESETS, FlowPreset, default_preset, get_preset
from ._sbi_exact import two_moons_log_likelihood, two_moons_posterior_sample
from ._sbi_plot import plot_corner, sbibm_reference
from ._sbi_presets import SBI_PRESETS, SBIPreset, build_sbi_model, get_sbi_preset
from ._sbi_ssa import gillespie_lotka_volterra, lotka_volterra_summaries
from ._sbi_tasks import SBI_TASKS, SBITask, lotka_volterra_states, sbi_task
from ._tabular import TABULAR_FILES, TabularData, check_data, load_sklearn, load_tabular
from ._toys import (
    TOYS,
    eight_gaussians_entropy,
    eight_gaussians_log_prob,
    eight_gaussians_means,
    make_toy,
)
from ._train import FitResult, TrainingDiverged, evaluate_nll, fit

__all__ = [
    "PRESETS",
    "SBI_PRESETS",
    "SBI_TASKS",
    "TABULAR_FILES",
    "TOYS",
    "BlockTriangular",
    "COTFlow",
    "ConditionalDistribution",
    "ConditionalFitResult",
    "ConditionalModel",
    "FitResult",
    "FlowPreset",
    "OTFlow",
    "OTFlowLoss",
    "PCPMap",
    "SBIPreset",
    "SBITask",
    "TabularData",
    "TrainingDiverged",
    "build_potential",
    "build_sbi_model",
    "check_data",
    "convert_gas",
    "default_preset",
    "eight_gaussians_entropy",
    "eight_gaussians_log_prob",
    "eight_gaussians_means",
    "evaluate_nll",
    "fit",
    "get_preset",
    "get_sbi_preset",
    "gillespie_lotka_volterra",
    "load_checkpoint",
    "load_sklearn",
    "load_tabular",
    "lotka_volterra_states",
    "lotka_volterra_summaries",
    "make_toy",
    "plot_corner",
    "plot_flow_2d",
    "save_checkpoint",
    "sbi_task",
    "sbibm_reference",
    "two_moons_log_likelihood",
    "two_moons_posterior_sample",
]
