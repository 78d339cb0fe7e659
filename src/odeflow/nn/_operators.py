"""Linear operators ``K`` of the layers, with their adjoints ``Kᵀ``: dense, convolution, lean
convolution (depthwise 5-point stencil + 1×1) and multigrid-in-channels (in ``_lowcost``).

An operator is weightless data: ``apply(x, w)`` and ``adjoint(x, w)`` take the weights as a
dict, so that the layers can evaluate time-parameterized weights ``θ(t)`` before applying them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["ConvOperator", "DenseOperator", "LeanConvOperator", "Operator", "get_operator"]


class Operator:
    """Base class: ``K: R^{in_width × …} → R^{out_width × …}`` with weights given per call.

    Attributes:
        in_width, out_width: features (dense) or channels (convolutional).
        image: True when the state is ``(batch, channels, height, width)``.
        has_adjoint: whether :meth:`adjoint` is available (for ``Kᵀσ(K y + b)`` layers).
    """

    image = False
    has_adjoint = True

    def __init__(self, in_width: int, out_width: int):
        for name, val in (("in_width", in_width), ("out_width", out_width)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(
                    f"{type(self).__name__}: {name} must be a positive int, got {val!r}."
                )
        self.in_width = in_width
        self.out_width = out_width

    def shapes(self) -> dict[str, tuple[int, ...]]:  # pragma: no cover - abstract
        raise NotImplementedError  # abstract

    def init(self, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Random weights, normal with variance ``1/fan_in`` (float32)."""
        out = {}
        for name, shape in self.shapes().items():
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
            out[name] = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
        return out

    def apply(
        self, x: torch.Tensor, w: dict[str, torch.Tensor]
    ) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError  # abstract

    def adjoint(
        self, x: torch.Tensor, w: dict[str, torch.Tensor]
    ) -> torch.Tensor:  # pragma: no cover
        raise TypeError(f"{type(self).__name__} has no adjoint; use a dense or conv operator.")

    def weight_grad(self, x: torch.Tensor, g: torch.Tensor, w) -> dict[str, torch.Tensor] | None:
        """``∂⟨g, K x⟩/∂W`` for each weight (``None``: not available, autograd is used)."""
        return None

    def bias_shape(self, width: int) -> tuple[int, ...]:
        """Shape that broadcasts a ``(width,)`` bias against the state."""
        return (width, 1, 1) if self.image else (width,)

    def check(self, y: torch.Tensor, who: str, width: int | None = None) -> None:
        """Raise a clear error when ``y`` is not a state this operator accepts."""
        width = self.in_width if width is None else width
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"{who}: the state must be a tensor, got {type(y).__name__}.")
        if not y.is_floating_point():
            raise TypeError(f"{who}: the state must be floating point, got {y.dtype}.")
        if self.image:
            if y.ndim != 4 or y.shape[1] != width:
                raise ValueError(
                    f"{who}: expected an image batch (batch, {width}, height, width), got shape "
                    f"{tuple(y.shape)}; change the channel count with a Connector first."
                )
        elif y.ndim != 2 or y.shape[1] != width:
            raise ValueError(
                f"{who}: expected (batch, {width}) features, got shape {tuple(y.shape)}; "
                "flatten images or change the width with a Connector first."
            )


class DenseOperator(Operator):
    """``K x = x Wᵀ`` with ``W: (out_width, in_width)``; ``Kᵀ x = x W``."""

    def shapes(self):
        return {"weight": (self.out_width, self.in_width)}

    def apply(self, x, w):
        return x @ w["weight"].mT

    def adjoint(self, x, w):
        return x @ w["weight"]

    def weight_grad(self, x, g, w):
        return {"weight": g.mT @ x}


class ConvOperator(Operator):
    """2-D convolution ``k × k`` with zero padding ``k // 2`` (same size); ``Kᵀ`` is the
    transposed convolution with the same kernel (its exact adjoint)."""

    image = True

    def __init__(self, in_width: int, out_width: int, kernel_size: int = 3):
        super().__init__(in_width, out_width)
        if (
            isinstance(kernel_size, bool)
            or not isinstance(kernel_size, int)
            or kernel_size % 2 == 0
        ):
            raise ValueError(f"ConvOperator: kernel_size must be an odd int, got {kernel_size!r}.")
        self.kernel_size = kernel_size

    def shapes(self):
        k = self.kernel_size
        return {"weight": (self.out_width, self.in_width, k, k)}

    def apply(self, x, w):
        return F.conv2d(x, w["weight"], padding=self.kernel_size // 2)

    def adjoint(self, x, w):
        return F.conv_transpose2d(x, w["weight"], padding=self.kernel_size // 2)

    def weight_grad(self, x, g, w):
        shape = w["weight"].shape
        pad = self.kernel_size // 2
        return {"weight": torch.nn.grad.conv2d_weight(x, shape, g, padding=pad)}


# the 5-point stencil's positions in a 3×3 kernel: centre, north, south, west, east
_STENCIL = torch.zeros(5, 9)
for _i, _pos in enumerate((4, 1, 7, 3, 5)):
    _STENCIL[_i, _pos] = 1.0


class LeanConvOperator(Operator):
    r"""LeanResNet's low-cost convolution ``K x = S x + P x``: a depthwise 5-point stencil ``S``
    (5 weights per channel) plus a 1×1 convolution ``P`` (channels²): ``5c + c²`` weights
    instead of a 3×3 convolution's ``9c²``.

    Reference: Ephrath, Eliasof, Ruthotto, Haber, Treister, "LeanConvNets: low-cost yet
    effective convolutional neural networks" (arXiv:1910.13157).
    """

    image = True

    def __init__(self, in_width: int, out_width: int | None = None):
        out_width = in_width if out_width is None else out_width
        super().__init__(in_width, out_width)
        if in_width != out_width:
            raise ValueError(
                f"LeanConvOperator: the stencil and the 1×1 convolution are summed, so in_width "
                f"({in_width}) must equal out_width ({out_width}); change channels with a "
                "Connector."
            )

    def shapes(self):
        c = self.in_width
        return {"stencil": (c, 5), "point": (c, c)}

    def init(self, generator=None):
        c = self.in_width
        return {
            "stencil": torch.randn(c, 5, generator=generator) / math.sqrt(5.0 + c),
            "point": torch.randn(c, c, generator=generator) / math.sqrt(5.0 + c),
        }

    def _kernel(self, w):
        stencil = w["stencil"]
        return (stencil @ _STENCIL.to(stencil)).reshape(-1, 1, 3, 3)

    def apply(self, x, w):
        c = self.in_width
        dw = F.conv2d(x, self._kernel(w), padding=1, groups=c)
        return dw + torch.einsum("oc,bchw->bohw", w["point"], x)

    def adjoint(self, x, w):
        c = self.in_width
        dw = F.conv_transpose2d(x, self._kernel(w), padding=1, groups=c)
        return dw + torch.einsum("oc,bohw->bchw", w["point"], x)


def get_operator(
    width: int, hidden: int | None, operator: str | Operator, kernel_size: int = 3
) -> Operator:
    """An operator by name: ``"dense"``, ``"conv"`` or ``"lean"`` (or an :class:`Operator`)."""
    if isinstance(operator, Operator):
        if operator.in_width != width:
            raise ValueError(
                f"operator acts on {operator.in_width} channels but the layer's width is {width}."
            )
        return operator
    hidden = width if hidden is None else hidden
    if operator == "dense":
        return DenseOperator(width, hidden)
    if operator == "conv":
        return ConvOperator(width, hidden, kernel_size)
    if operator == "lean":
        return LeanConvOperator(width, hidden)
    raise ValueError(f"unknown operator {operator!r}; valid names are: dense, conv, lean.")
