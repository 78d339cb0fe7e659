r"""The abstract block: every sweep a derivative-aware block provides, declared in one place.

A block is a stateless :class:`torch.nn.Module` mapping a batch ``u: (n, in_features)`` to
``(n, out_features)``. Beside ``forward`` it implements the sweeps that
:func:`odeflow.derivatives.compute` runs (all private; ``ctx`` is a :class:`~._sweep.Ctx`):

* ``_jet(u, J, L, ctx)`` — forward jet: with the Jacobian ``∂u/∂s`` held transposed,
  ``J: (c, in)`` shared by the batch or ``(n, c, in)`` (one row per seed column, so that a
  layer is one GEMM ``(n·c, in) @ (in, out)`` and every elementwise op runs on contiguous
  memory), and ``L = Σ_{a<p} ∂²u/∂s_a²`` (``(n, in)`` or None for zero) return the same
  three objects for the output (the "forward Laplacian"). ``mode="forward"``.
* ``_record(u, J, ctx)`` — forward sweep of the Jacobians of every preactivation, keeping only
  what the reverse sweep needs (row norms ``‖J_z[j,:p]‖²`` for a Laplacian, ``J_z`` for a
  Hessian); returns ``(value, output Jacobian, tape)``. ``J`` is None for a gradient.
* ``_reverse(tape, g, ctx)`` — reverse sweep of the adjoints ``g: (n, s, out)`` (one row per
  output seed), returning the input adjoint ``(n, s, in)`` and this block's second-order term
  ``Σ_ℓ J_ℓᵀ diag(σ″(z_ℓ) ⊙ λ_ℓ) J_ℓ`` (or its trace / its product with directions).
  ``mode="mixed"`` is ``_record`` then ``_reverse``.
* ``_input_second(u, seed, G, H, ctx)`` — ``mode="backward"``: given the adjoint ``G`` and
  the second-order adjoint ``H: (n, s, out, out)`` (None for zero) at the output, return
  ``(value, input adjoint, seedᵀ ∇²f seed)`` contracting the input seed as late as possible.
  :func:`~._sweep.input_second_by_record` is the generic form.
* ``_entry_width()`` — the width right after the first affine map on every path (``inf``
  where nothing narrows, 0 for a block that adds no path): ``compute``'s auto mode picks
  ``"backward"`` when it is below the number of seed columns.
* The Laplacian sweep (``_laplacian.py``): ``_lap_supported()`` (a specialised sweep exists;
  else the auto mode prefers the forward jet), ``_lap_uses_jacobian()`` (the block's sweep
  reads its input Jacobian: False only for affine blocks), ``_lap_record(u, J, need, acc)``
  with ``J`` a :class:`~._laplacian.Jac` (``need``: the caller uses the output Jacobian) and
  ``_lap_reverse(tape, g, acc)`` returning ``(input adjoint, Laplacian (n, s) or None)``.
  :func:`~._laplacian.lap_record_generic` / :func:`~._laplacian.lap_reverse_generic` give
  a block without specialised kernels an exact sweep from its ``_record``/``_reverse``.

This is the identity ∇²f = Σ_ℓ J_ℓᵀ diag(σ″(z_ℓ) ⊙ λ_ℓ) J_ℓ (+ constant quadratic terms):
batched GEMMs only, memory O(n·c·width + n·c²), never an (n, d, d, width) tensor.
"""

from __future__ import annotations

import abc

import torch
from torch import nn

__all__ = ["Block", "check_blocks"]


class Block(nn.Module, abc.ABC):
    """Abstract base of the derivative-aware blocks; a new block implements every method below.

    The sweeps are private (see the module docstring of ``_blocks/_base.py`` and
    ``docs/extending.md``); the public contract is ``forward`` and the two sizes.

    Attributes:
        in_features: input width.
        out_features: output width (1 for a scalar potential).
    """

    in_features: int
    out_features: int

    @abc.abstractmethod
    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """The value, ``(n, in_features) → (n, out_features)``."""

    @abc.abstractmethod
    def _jet(self, u, J, L, ctx):
        """Forward jet ``(u, J, L) → (value, J_out, L_out)``."""

    @abc.abstractmethod
    def _record(self, u, J, ctx):
        """Forward Jacobian sweep ``→ (value, J_out or None, tape)``."""

    @abc.abstractmethod
    def _reverse(self, tape, g, ctx):
        """Reverse adjoint sweep ``→ (input adjoint, second-order term or None)``."""

    @abc.abstractmethod
    def _input_second(self, u, seed, G, H, ctx):
        """Backward-mode second-order sweep ``→ (value, input adjoint, second or None)``."""

    @abc.abstractmethod
    def _entry_width(self) -> float:
        """Width after the first affine map of every path (``inf``: none narrows)."""

    @abc.abstractmethod
    def _lap_supported(self) -> bool:
        """Whether the block has a specialised Laplacian sweep."""

    @abc.abstractmethod
    def _lap_uses_jacobian(self) -> bool:
        """Whether the block's Laplacian sweep reads its input Jacobian (not affine)."""

    @abc.abstractmethod
    def _lap_record(self, u, J, need: bool, acc):
        """Laplacian sweep, forward ``→ (value, output Jac or None, tape)``."""

    @abc.abstractmethod
    def _lap_reverse(self, tape, g, acc):
        """Laplacian sweep, reverse ``→ (input adjoint, Laplacian (n, s) or None)``."""

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def check_blocks(blocks, who: str) -> list[Block]:
    """The blocks of a combinator, each checked to be a :class:`Block`."""
    if len(blocks) == 0:
        raise ValueError(f"{who} needs at least one block.")
    for i, b in enumerate(blocks):
        if not isinstance(b, Block):
            raise TypeError(
                f"{who}: item {i} is a {type(b).__name__}, not an odeflow.derivatives block "
                "(Single, ResNet, ICNN, Quadratic, Linear, Sum, Sequential); arbitrary modules go "
                "through odeflow.derivatives(net, x, mode='func') instead."
            )
    return list(blocks)
