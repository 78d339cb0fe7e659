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
from ._sbi_tasks import SBI_TASKS, SBITask, sbi_task
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
    "SBITask",
    "TabularData",
    "TrainingDiverged",
    "build_potential",
    "check_data",
    "convert_gas",
    "default_preset",
    "eight_gaussians_entropy",
    "eight_gaussians_log_prob",
    "eight_gaussians_means",
    "evaluate_nll",
    "fit",
    "get_preset",
    "load_checkpoint",
    "load_sklearn",
    "load_tabular",
    "make_toy",
    "plot_flow_2d",
    "save_checkpoint",
    "sbi_task",
]
