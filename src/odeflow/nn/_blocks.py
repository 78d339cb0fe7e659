"""Blocks: time integrators over layers, with a state grid of ``n_steps`` steps on [0, T]
separate from the layers' weight-time grid (their :class:`~odeflow.nn.TimeBasis`)."""

from __future__ import annotations

import torch
from torch import nn

from ..ode import odeint
from ._layers import VectorFieldLayer
from ._reversible import LeapfrogStepper, ReversibleFunction, VerletStepper

__all__ = ["ExplicitBlock", "HamiltonianBlock", "LeapfrogBlock"]


def _check_finite(x: torch.Tensor, who: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: the input must be a tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"{who}: the input must be floating point, got {x.dtype}.")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(
            f"{who}: the input contains NaN or Inf; check the data or the layer before."
        )


class _Block(nn.Module):
    """Common part: the layers, the step count (with its check against the bases), ``h``."""

    def __init__(self, layers: list[nn.Module], n_steps: int, reversible: bool):
        super().__init__()
        who = type(self).__name__
        for layer in layers:
            if not isinstance(layer, VectorFieldLayer):
                raise TypeError(
                    f"{who}: expected an odeflow.nn layer (StandardLayer, AntisymmetricLayer, "
                    f"ParabolicLayer, …), got {type(layer).__name__}."
                )
            if reversible:
                bad = [
                    m
                    for m in layer.modules()
                    if isinstance(m, (nn.Dropout, nn.modules.batchnorm._BatchNorm))
                ]
                if not layer.reversible or bad:
                    raise TypeError(
                        f"{who}: {type(layer).__name__} is not reversible (random or "
                        "batch-dependent parts cannot be replayed backwards); use a deterministic "
                        "layer, or an ExplicitBlock for this one."
                    )
        horizons = {layer.horizon for layer in layers}
        if len(horizons) != 1:
            raise ValueError(f"{who}: the layers have different horizons {sorted(horizons)}.")
        self.horizon = horizons.pop()
        self._min_steps = max(layer.basis.min_steps for layer in layers)
        self.n_steps = n_steps

    @property
    def n_steps(self) -> int:
        """Number of steps (depth); assign another value to evaluate at another depth."""
        return self._n_steps

    @n_steps.setter
    def n_steps(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{type(self).__name__}: n_steps must be a positive int, got {n!r}.")
        if n < self._min_steps:
            raise ValueError(
                f"{type(self).__name__}: the weights' basis needs at least {self._min_steps} steps "
                f"to determine its coefficients (a basis degree/size larger than the number of "
                f"steps), got n_steps={n}; use more steps or a smaller basis."
            )
        self._n_steps = n

    @property
    def h(self) -> float:
        """The step size ``T / n_steps``."""
        return self.horizon / self._n_steps

    def extra_repr(self) -> str:
        return f"n_steps={self.n_steps}, horizon={self.horizon}"


class ExplicitBlock(_Block):
    r"""A first-order block ``y' = f(t, y)`` on [0, T] by an explicit Runge–Kutta method of
    :func:`odeflow.odeint` (``euler``: the ResNet ``y_{k+1} = y_k + h f(t_k, y_k)``).

    Args:
        layer: a vector-field layer (``width`` in and out).
        n_steps: number of steps (the depth), ``h = T / n_steps``.
        method: a method name of :func:`odeflow.odeint` (``euler``, ``rk4``, …) or tableau.
        gradient: ``"adjoint"`` (exact discrete adjoint, per-step recomputation) or
            ``"backprop"``.

    Input ``x: (batch, width)`` or ``(batch, width, height, width)``; returns ``y(T)``, same
    shape. Raises ``ValueError`` for a wrong shape, NaN/Inf in ``x``, or ``n_steps`` below the
    basis' size.

    Reference: Haber & Ruthotto, "Stable architectures for deep neural networks"
    (arXiv:1705.03341).

    Example:
        >>> from odeflow.nn import StandardLayer
        >>> block = ExplicitBlock(StandardLayer(3), n_steps=4)
        >>> block(torch.zeros(2, 3)).shape
        torch.Size([2, 3])
    """

    def __init__(self, layer, n_steps, *, method="euler", gradient="adjoint"):
        super().__init__([layer], n_steps, reversible=False)
        self.layer = layer
        self.method = method
        self.gradient = gradient

    def trajectory(self, x: torch.Tensor) -> torch.Tensor:
        """All states ``(n_steps + 1, *x.shape)``."""
        _check_finite(x, type(self).__name__)
        self.layer.check(x)
        t = torch.linspace(0.0, self.horizon, self.n_steps + 1, dtype=x.dtype, device=x.device)
        precision = "fp64" if x.dtype == torch.float64 else "fp32"
        return odeint(
            self.layer, x, t, method=self.method, gradient=self.gradient, precision=precision
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trajectory(x)[-1]


class _ReversibleBlock(_Block):
    def __init__(self, layers, n_steps, memory_free, drift_tol, checkpoint_every):
        super().__init__(layers, n_steps, reversible=True)
        if drift_tol is not None and not drift_tol >= 0:
            raise ValueError(f"{type(self).__name__}: drift_tol must be >= 0, got {drift_tol!r}.")
        if checkpoint_every is not None and (
            isinstance(checkpoint_every, bool)
            or not isinstance(checkpoint_every, int)
            or checkpoint_every < 1
        ):
            raise ValueError(
                f"{type(self).__name__}: checkpoint_every must be None or a positive int, "
                f"got {checkpoint_every!r}."
            )
        self.memory_free = bool(memory_free)
        self.drift_tol = None if drift_tol is None else float(drift_tol)
        self.checkpoint_every = checkpoint_every

    def _run(self, stepper, u, v):
        needs_grad = torch.is_grad_enabled() and (
            u.requires_grad or v.requires_grad or any(p.requires_grad for p in stepper.params)
        )
        if self.memory_free and needs_grad:
            tol = self.drift_tol
            if tol is None:
                tol = 1e3 * torch.finfo(u.dtype).eps
            return ReversibleFunction.apply(
                stepper, self.checkpoint_every, tol, u, v, *stepper.params
            )
        for k in range(stepper.n_steps):
            u, v = stepper.step(k, u, v)
        return u, v

    def _invert(self, stepper, u, v):
        for k in reversed(range(stepper.n_steps)):
            u, v = stepper.inverse(k, u, v)
        return u, v


_REV_DOC = """
    Memory-free training (``memory_free=True``, default): the forward pass keeps no graph, the
    backward pass reconstructs the states from the last two by the exact inverse of the scheme
    (O(1) memory in depth, one extra layer evaluation per step). Round-off drift check: at the
    block's input (and every ``checkpoint_every`` steps, if set) the reconstructed pair is
    compared in float64 with the stored one; if the relative drift exceeds ``drift_tol``
    (default ``1000·eps`` of the state's dtype: 2.2e-13 in float64, 1.2e-4 in float32) that
    segment's gradient is recomputed from the stored checkpoint with its states kept. Double
    backward is not supported in this mode (use ``memory_free=False``: plain autograd).
"""


class LeapfrogBlock(_ReversibleBlock):
    (
        r"""The hyperbolic (second-order) block ``y'' = f(t, y)``, ``y'(0) = 0``, by leapfrog:

    ``y_{k+1} = 2 y_k − y_{k−1} + h² f(t_k, y_k)``, ``y_{−1} = y_0 = x``; the inverse is
    ``y_{k−1} = 2 y_k − y_{k+1} + h² f(t_k, y_k)``, exact in exact arithmetic. It is run on
    ``(y_k, y_k − y_{k−1})`` (no cancellation in ``2 y_k − y_{k−1}``).
    """
        + _REV_DOC
        + r"""
    Args:
        layer: a vector-field layer, e.g. ``ParabolicLayer`` (``f = −Kᵀσ(K y + b)``, the
            hyperbolic network of the reference).
        n_steps: number of steps; ``h = T / n_steps``.
        memory_free, drift_tol, checkpoint_every: see above.

    Input ``x: (batch, width[, height, width])``; returns ``y_N`` of the same shape. Raises
    ``TypeError`` for a non-reversible layer, ``ValueError`` for wrong shapes, NaN/Inf input
    or ``n_steps`` below the basis' size.

    Reference: Ruthotto & Haber, "Deep neural networks motivated by partial differential
    equations" (arXiv:1804.04272); Chang et al., "Reversible architectures for arbitrarily
    deep residual neural networks" (arXiv:1709.03698).

    Example:
        >>> from odeflow.nn import ParabolicLayer
        >>> block = LeapfrogBlock(ParabolicLayer(3).double(), n_steps=10)
        >>> x = torch.randn(2, 3, dtype=torch.float64)
        >>> u, v = block.forward_pair(x, x)
        >>> bool(torch.allclose(block.inverse_pair(u, v)[1], x, atol=1e-12))
        True
    """
    )

    def __init__(self, layer, n_steps, *, memory_free=True, drift_tol=None, checkpoint_every=None):
        super().__init__([layer], n_steps, memory_free, drift_tol, checkpoint_every)
        self.layer = layer

    def _stepper(self):
        return LeapfrogStepper(self.layer, self.n_steps, self.h)

    def forward_pair(self, y_prev: torch.Tensor, y: torch.Tensor):
        """Run the steps from ``(y_{−1}, y_0)``; returns ``(y_{N−1}, y_N)``."""
        _check_finite(y_prev, "LeapfrogBlock")
        _check_finite(y, "LeapfrogBlock")
        self.layer.check(y_prev)
        self.layer.check(y)
        y, d = self._run(self._stepper(), y, y - y_prev)
        return y - d, y

    def inverse_pair(self, y_prev: torch.Tensor, y: torch.Tensor):
        """The inverse: from ``(y_{N−1}, y_N)`` back to ``(y_{−1}, y_0)``."""
        self.layer.check(y)
        y, d = self._invert(self._stepper(), y, y - y_prev)
        return y - d, y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_finite(x, "LeapfrogBlock")
        self.layer.check(x)
        return self._run(self._stepper(), x, torch.zeros_like(x))[0]

    def trajectory(self, x: torch.Tensor) -> torch.Tensor:
        """All states ``y_0 … y_N`` stacked, ``(n_steps + 1, *x.shape)`` (kept in memory)."""
        _check_finite(x, "LeapfrogBlock")
        self.layer.check(x)
        st, y, d, out = self._stepper(), x, torch.zeros_like(x), [x]
        for k in range(self.n_steps):
            y, d = st.step(k, y, d)
            out.append(y)
        return torch.stack(out)


class HamiltonianBlock(_ReversibleBlock):
    (
        r"""The two-stream Hamiltonian block by (symplectic) Verlet steps:

    ``y_{k+1} = y_k + h f_y(t_k, z_k)``, ``z_{k+1} = z_k + h f_z(t_k, y_{k+1})``; the input's
    channels are split in halves ``x = (y, z)`` and the output is ``(y_N, z_N)``. With
    ``f_y = ParabolicLayer(sign=+1)`` and ``f_z = ParabolicLayer(sign=−1)`` this is the
    Hamiltonian system ``y' = ∂H/∂z``, ``z' = −∂H/∂y``,
    ``H = Σ ψ(K_y z + b_y) + Σ ψ(K_z y + b_z)``, ``ψ' = σ``.
    """
        + _REV_DOC
        + r"""
    Args:
        layer_y: the field of ``y`` (evaluated at ``z``); ``layer_z``: of ``z`` (at ``y``);
            both of width ``channels / 2``.
        n_steps: number of steps; ``h = T / n_steps``.
        memory_free, drift_tol, checkpoint_every: see above.

    Input ``x: (batch, 2·width[, height, width])``; returns the same shape. Raises
    ``TypeError`` for non-reversible layers, ``ValueError`` for wrong channel counts, NaN/Inf
    input or ``n_steps`` below the basis' size.

    Reference: Haber & Ruthotto, "Stable architectures for deep neural networks"
    (arXiv:1705.03341); Chang et al., "Reversible architectures for arbitrarily deep residual
    neural networks" (arXiv:1709.03698).

    Example:
        >>> from odeflow.nn import ParabolicLayer
        >>> block = HamiltonianBlock(ParabolicLayer(2, sign=1), ParabolicLayer(2), n_steps=8)
        >>> x = torch.randn(5, 4)
        >>> bool(torch.allclose(block.inverse(block(x)), x, atol=1e-5))
        True
    """
    )

    def __init__(
        self, layer_y, layer_z, n_steps, *, memory_free=True, drift_tol=None, checkpoint_every=None
    ):
        super().__init__([layer_y, layer_z], n_steps, memory_free, drift_tol, checkpoint_every)
        if layer_y.width != layer_z.width:
            raise ValueError(
                f"HamiltonianBlock: both streams need the same width, got {layer_y.width} and "
                f"{layer_z.width}."
            )
        self.layer_y, self.layer_z = layer_y, layer_z
        self.width = layer_y.width

    def _stepper(self):
        return VerletStepper(self.layer_y, self.layer_z, self.n_steps, self.h)

    def _split(self, x):
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[1] != 2 * self.width:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"HamiltonianBlock: expected {2 * self.width} channels (two streams of "
                f"{self.width}), got shape {shape}; change channels with a Connector."
            )
        y, z = x[:, : self.width], x[:, self.width :]
        self.layer_y.check(z)
        return y, z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_finite(x, "HamiltonianBlock")
        y, z = self._split(x)
        y, z = self._run(self._stepper(), y, z)
        return torch.cat([y, z], dim=1)

    def inverse(self, out: torch.Tensor) -> torch.Tensor:
        """The exact inverse of :meth:`forward` (to round-off)."""
        y, z = self._split(out)
        y, z = self._invert(self._stepper(), y, z)
        return torch.cat([y, z], dim=1)

    def trajectory(self, x: torch.Tensor) -> torch.Tensor:
        """All states stacked, ``(n_steps + 1, *x.shape)`` (kept in memory)."""
        _check_finite(x, "HamiltonianBlock")
        y, z = self._split(x)
        st, out = self._stepper(), [x]
        for k in range(self.n_steps):
            y, z = st.step(k, y, z)
            out.append(torch.cat([y, z], dim=1))
        return torch.stack(out)
