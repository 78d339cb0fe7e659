"""The typed outcome of :func:`odeflow.flows.fit` (read by the model's ``OTFlow.fit`` too)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FitResult"]


@dataclass
class FitResult:
    """Outcome of :func:`~odeflow.flows.fit`.

    Attributes:
        status: ``"completed"`` (all iterations), ``"converged"`` (stopped after the last
            learning-rate drop), or ``"callback"`` (the callback asked to stop).
        iterations: iterations performed.
        best_val_nll: best validation NLL (nats, per sample) or ``nan`` without validation.
        best_iter: iteration of the best validation NLL.
        history: one dict per logged iteration (``iter, loss, nll, transport, hjb, lr`` and
            ``val_nll`` on validation iterations).
        seconds: wall time.
        dtype: the dtype training ran in (the flow's parameter dtype, e.g. ``"float64"``).
        precision: the ODE precision policy training ran in (e.g. ``"bf16"``).
        world_size: processes that trained together (``process_group``'s size; 1 alone).
        alpha: the weights (α₀, α₁, α₂) of the objective training minimised (the preset's,
            else the flow's own).
        nt: RK4 steps of the training steps (the preset's, else the flow's ``nt``).
        val_nt: RK4 steps of the validations (``val_nt``, else the preset's ``nt_val``,
            else the flow's ``nt_eval``).
        preset: the preset's name (``""`` without one).

    Example:
        >>> import torch
        >>> from odeflow.flows import OTFlow, fit
        >>> res = fit(OTFlow(2, width=4, nt=2).double(), torch.randn(64, 2).double(),
        ...           preset="8gaussians", iters=2, batch=32, verbose=False)
        >>> res.alpha, res.nt, res.val_nt, res.preset
        ((1.0, 30.0, 1.0), 8, 12, '8gaussians')
    """

    status: str
    iterations: int
    best_val_nll: float
    best_iter: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    dtype: str = ""
    precision: str = ""
    world_size: int = 1
    alpha: tuple[float, ...] = ()
    nt: int = 0
    val_nt: int = 0
    preset: str = ""
