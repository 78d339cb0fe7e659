"""The IMEXnet layer: an explicit nonlinear step, then an implicit linear (diffusion) step."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..optim import cg
from ._blocks import _check_finite
from ._layers import StandardLayer, VectorFieldLayer

__all__ = ["IMEXLayer"]


def _conv(x, w, boundary):
    r = w.shape[-1] // 2
    if boundary == "periodic":
        return F.conv2d(F.pad(x, (r, r, r, r), mode="circular"), w)
    return F.conv2d(x, w, padding=r)


def _conv_t(y, w, boundary):
    """The adjoint of :func:`_conv` (zero boundary: the transposed convolution)."""
    if boundary == "periodic":
        x = torch.zeros_like(y).requires_grad_(True)
        with torch.enable_grad():
            out = _conv(x, w, boundary)
        graph = torch.is_grad_enabled() and (w.requires_grad or y.requires_grad)
        return torch.autograd.grad(out, x, y, create_graph=graph)[0]
    return F.conv_transpose2d(y, w, padding=w.shape[-1] // 2)


def _normal_op(w, h, boundary):
    return lambda x: x + h * _conv_t(_conv(x, w, boundary), w, boundary)


def _cg_solve(b, w, h, rtol, maxiter):
    res = cg(_normal_op(w, h, "zero"), b, rtol=rtol, maxiter=maxiter, batch_dims=1)
    if not res.status.ok:
        raise RuntimeError(
            f"IMEXLayer: CG for (I + h LᵀL) x = b stopped with status {res.status.value} after "
            f"{res.iterations} iterations; raise maxiter or loosen rtol."
        )
    return res.x


class _ImplicitCG(torch.autograd.Function):
    """``x = (I + h LᵀL)⁻¹ b`` by CG, differentiated implicitly (one more CG solve)."""

    @staticmethod
    def forward(ctx, b, w, h, rtol, maxiter):
        x = _cg_solve(b, w.detach(), h, rtol, maxiter)
        ctx.save_for_backward(x, w)
        ctx.h, ctx.rtol, ctx.maxiter = h, rtol, maxiter
        return x

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        lam = _cg_solve(g, w.detach(), ctx.h, ctx.rtol, ctx.maxiter)
        gw = None
        if ctx.needs_input_grad[1]:
            with torch.enable_grad():
                wd = w.detach().requires_grad_(True)
                s = ctx.h * (_conv(lam, wd, "zero") * _conv(x, wd, "zero")).sum()
            gw = -torch.autograd.grad(s, wd)[0]
        return lam, gw, None, None, None


def _fft_solve(b, w, h):
    """``(I + h LᵀL)⁻¹ b`` for the circular convolution ``L`` by a 2-D FFT: per frequency a
    ``c × c`` Hermitian positive definite system ``(I + h L̂ᴴ L̂) x̂ = b̂``."""
    c, hh, ww = b.shape[1], b.shape[2], b.shape[3]
    k = w.shape[-1]
    r = k // 2
    kt = F.pad(w, (0, ww - k, 0, hh - k))
    kt = torch.roll(kt, shifts=(-r, -r), dims=(2, 3))
    lhat = torch.conj(torch.fft.fft2(kt)).permute(2, 3, 0, 1)  # (H, W, c_out, c_in)
    eye = torch.eye(c, dtype=lhat.dtype, device=lhat.device)
    a = eye + h * (lhat.conj().transpose(-1, -2) @ lhat)
    bhat = torch.fft.fft2(b).permute(0, 2, 3, 1).unsqueeze(-1)  # (B, H, W, c, 1)
    xhat = torch.linalg.solve(a, bhat).squeeze(-1).permute(0, 3, 1, 2)
    return torch.fft.ifft2(xhat).real.to(b.dtype)


class IMEXLayer(nn.Module):
    r"""One IMEX step ``y⁺ = (I + h LᵀL)⁻¹ (y + h f(y))``: explicit in the nonlinear layer
    ``f``, implicit in the learnable convolution ``L`` (``channels → channels``).

    The implicit part is unconditionally stable (``(I + h LᵀL)⁻¹`` has norm ≤ 1), so it allows
    steps where the explicit ResNet step ``y − h LᵀL y`` diverges (``h > 2/‖L‖²``), and
    couples every pixel to every other one in one layer (long-range interactions).

    ``boundary="periodic"``: ``L`` is a circular convolution, diagonalized by the 2-D FFT; the
    solve is exact (one ``c × c`` system per frequency). ``boundary="zero"``: zero padding,
    solved by CG (:func:`odeflow.optim.cg`, stopping at ``‖r‖ ≤ rtol‖b‖``) and differentiated
    implicitly (the adjoint is one more CG solve with the same SPD operator).

    Args:
        channels: channels of the state ``(batch, channels, height, width)``.
        h: the step size (> 0).
        kernel_size: odd size of ``L``'s kernel (the image must be at least this large).
        boundary: ``"periodic"`` (FFT) or ``"zero"`` (CG).
        layer: the explicit vector field ``f(t, y)`` (default ``StandardLayer(channels,
            operator="conv")``); ``None`` for the default, or any :class:`VectorFieldLayer`.
        rtol, maxiter: CG tolerance and iteration cap (``"zero"`` only).

    Raises:
        ValueError: wrong channel count, NaN/Inf input, image smaller than the kernel, bad
            ``h``/``boundary``; RuntimeError: CG did not converge.

    Reference: Haber, Lensink, Treister, Ruthotto, "IMEXnet: a forward stable deep neural
    network" (arXiv:1903.02639).

    Example:
        >>> layer = IMEXLayer(2, h=1.0).double()
        >>> x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
        >>> b = torch.randn_like(x)
        >>> r = layer.implicit_operator(layer.implicit_solve(b)) - b
        >>> bool(r.norm() <= 1e-10 * b.norm())
        True
    """

    def __init__(
        self,
        channels: int,
        *,
        h: float = 1.0,
        kernel_size: int = 3,
        boundary: str = "periodic",
        layer: VectorFieldLayer | None = None,
        rtol: float = 1e-8,
        maxiter: int | None = None,
    ):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"IMEXLayer: channels must be a positive int, got {channels!r}.")
        if not (isinstance(h, (int, float)) and 0 < h < math.inf):
            raise ValueError(f"IMEXLayer: h must be positive and finite, got {h!r}.")
        if boundary not in ("periodic", "zero"):
            raise ValueError(f"IMEXLayer: boundary must be 'periodic' or 'zero', got {boundary!r}.")
        if kernel_size % 2 == 0 or kernel_size < 1:
            raise ValueError(f"IMEXLayer: kernel_size must be odd, got {kernel_size}.")
        self.channels, self.h, self.boundary = channels, float(h), boundary
        self.rtol, self.maxiter = rtol, maxiter
        self.layer = StandardLayer(channels, operator="conv") if layer is None else layer
        if (
            not isinstance(self.layer, VectorFieldLayer)
            or self.layer.width != channels
            or not self.layer.operator.image
        ):
            raise ValueError(
                f"IMEXLayer: layer must be a convolutional VectorFieldLayer of width {channels}."
            )
        fan_in = channels * kernel_size * kernel_size
        self.weight = nn.Parameter(
            torch.randn(channels, channels, kernel_size, kernel_size) / math.sqrt(fan_in)
        )

    def _check(self, y: torch.Tensor) -> None:
        self.layer.operator.check(y, "IMEXLayer", self.channels)
        _check_finite(y, "IMEXLayer")
        k = self.weight.shape[-1]
        if y.shape[2] < k or y.shape[3] < k:
            raise ValueError(
                f"IMEXLayer: the image {tuple(y.shape[2:])} is smaller than the kernel {k}."
            )

    def implicit_operator(self, x: torch.Tensor) -> torch.Tensor:
        """``(I + h LᵀL) x`` (the adjoint ``Lᵀ`` by autograd for periodic boundaries)."""
        return _normal_op(self.weight, self.h, self.boundary)(x)

    def implicit_solve(self, b: torch.Tensor) -> torch.Tensor:
        """``(I + h LᵀL)⁻¹ b``, differentiable in ``b`` and in ``L``'s weight."""
        self._check(b)
        if self.boundary == "periodic":
            return _fft_solve(b, self.weight, self.h)
        return _ImplicitCG.apply(b, self.weight, self.h, self.rtol, self.maxiter)

    def explicit_step(self, y: torch.Tensor) -> torch.Tensor:
        """The explicit ResNet step ``y + h (f(y) − LᵀL y)`` of the same split (for comparison)."""
        self._check(y)
        f = self.layer(0.0, y)
        return y + self.h * (
            f - _conv_t(_conv(y, self.weight, self.boundary), self.weight, self.boundary)
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y)
        return self.implicit_solve(y + self.h * self.layer(0.0, y))
