r"""Settings of COT-Flow and PCP-Map per simulation-based-inference task (presets).

A preset is data: the model's constructor arguments and :meth:`ConditionalModel.fit`'s
keywords for one (task, method) pair, with a note of where the values come from. The
values are the library's defaults unless a measurement here said otherwise (the paper's
hyperparameter searches, arXiv 2310.16975, were run on other problems and are not
tabulated per sbibm task); ``benchmarks/sbi_peers.py`` measures them against sbi's NPE.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ._conditional import ConditionalModel
from ._sbi_tasks import SBI_TASKS, sbi_task

__all__ = ["SBI_METHODS", "SBI_PRESETS", "SBIPreset", "build_sbi_model", "get_sbi_preset"]

#: method names and their aliases (the issue's spelling with a hyphen)
SBI_METHODS: Mapping[str, str] = MappingProxyType(
    {"cotflow": "cotflow", "cot-flow": "cotflow", "pcpmap": "pcpmap", "pcp-map": "pcpmap"}
)


@dataclass(frozen=True)
class SBIPreset:
    """The settings of one method on one task.

    Attributes:
        task: an :data:`~odeflow.flows.SBI_TASKS` name.
        method: ``"cotflow"`` or ``"pcpmap"``.
        model: constructor keywords of :class:`~odeflow.flows.COTFlow` /
            :class:`~odeflow.flows.PCPMap` (besides the dimensions).
        fit: keywords of :meth:`~odeflow.flows.ConditionalModel.fit`.
        note: where the values come from.

    Example:
        >>> p = get_sbi_preset("two_moons", "pcp-map")
        >>> p.method, p.fit["iters"]
        ('pcpmap', 10000)
    """

    task: str
    method: str
    model: Mapping[str, Any] = field(default_factory=dict)
    fit: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""

    def __post_init__(self) -> None:
        if self.task not in SBI_TASKS:
            raise ValueError(f"unknown SBI task {self.task!r}; valid: {', '.join(SBI_TASKS)}")
        if self.method not in ("cotflow", "pcpmap"):
            raise ValueError(f"method must be 'cotflow' or 'pcpmap', got {self.method!r}")
        object.__setattr__(self, "model", MappingProxyType(dict(self.model)))
        object.__setattr__(self, "fit", MappingProxyType(dict(self.fit)))


_DEFAULTS = "the library's defaults (measured: benchmarks/results/cpu_sbi_1e4.json)"
# (measured at 10³ simulations on two_moons and slcp; the other tasks are not measured yet)
_FIT = {"iters": 2000, "batch": 256, "lr": 1e-2}


_SLCP = (
    "lr 3e-3 over 4000 iterations: C2ST 0.967 at 10³ simulations against 0.977 with the "
    "defaults (sbi's NPE: 0.970); the validation NLL is best after ~200 iterations, early "
    "stopping ends the run (benchmarks/results/cpu_sbi_slcp_pcpmap_settings.json)"
)


def _presets() -> dict[tuple[str, str], SBIPreset]:
    out = {}
    for task in SBI_TASKS:
        pcp = {**_FIT, "iters": 10_000}  # PCPMap.DEFAULT_ITERS
        out[task, "pcpmap"] = SBIPreset(task, "pcpmap", {"width": 64}, pcp, _DEFAULTS)
        out[task, "cotflow"] = SBIPreset(task, "cotflow", {"width": 32, "nt": 8}, _FIT, _DEFAULTS)
    slcp = {**_FIT, "iters": 4000, "lr": 3e-3}
    out["slcp", "pcpmap"] = SBIPreset("slcp", "pcpmap", {"width": 64}, slcp, _SLCP)
    return out


#: presets by (task, method), e.g. ``SBI_PRESETS["two_moons", "pcpmap"]``
SBI_PRESETS: Mapping[tuple[str, str], SBIPreset] = MappingProxyType(_presets())


def _method(method: str) -> str:
    if method not in SBI_METHODS:
        raise ValueError(
            f"unknown method {method!r}; valid methods are: cotflow (cot-flow), pcpmap (pcp-map)"
        )
    return SBI_METHODS[method]


def get_sbi_preset(task: str, method: str) -> SBIPreset:
    """The preset of ``method`` (``cotflow``/``cot-flow``, ``pcpmap``/``pcp-map``) on ``task``.

    Args:
        task: an :data:`~odeflow.flows.SBI_TASKS` name; method: a method name or alias.

    Returns:
        The :class:`SBIPreset` (its ``model`` and ``fit`` keywords, and their source).

    Raises:
        ValueError: unknown task or method (the valid ones are named).

    Reference: Wang et al., arXiv 2310.16975 (the two methods).

    Example:
        >>> p = get_sbi_preset("slcp", "pcp-map")
        >>> dict(p.fit)["lr"], p.method
        (0.003, 'pcpmap')
    """
    sbi_task(task)  # names the valid tasks
    return SBI_PRESETS[task, _method(method)]


def build_sbi_model(task: str, method: str, **overrides: Any) -> ConditionalModel:
    r"""A :class:`~odeflow.flows.COTFlow` or :class:`~odeflow.flows.PCPMap` for the posterior
    θ | y of ``task`` with the preset's settings; ``overrides`` replace constructor keywords.

    Reference: Wang et al., arXiv 2310.16975.

    Example:
        >>> m = build_sbi_model("slcp", "pcpmap", width=16)
        >>> m.x_dim, m.y_dim, m.width
        (5, 8, 16)
    """
    from ._cotflow import COTFlow
    from ._pcpmap import PCPMap

    p = get_sbi_preset(task, method)
    t = sbi_task(task)
    cls = COTFlow if p.method == "cotflow" else PCPMap
    return cls(t.theta_dim, t.y_dim, **{**p.model, **overrides})
