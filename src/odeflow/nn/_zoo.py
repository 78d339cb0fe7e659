"""Model zoo: whole classifiers from connectors and blocks, with documented defaults."""

from __future__ import annotations

import torch
from torch import nn

from ._blocks import ExplicitBlock, HamiltonianBlock, LeapfrogBlock
from ._layers import AntisymmetricLayer, ParabolicLayer, StandardLayer
from ._lowcost import MultigridChannelOperator

__all__ = [
    "KINDS",
    "Classifier",
    "Connector",
    "antisymmetric_resnet",
    "build_network",
    "hamiltonian_resnet",
    "hyperbolic_resnet",
    "lean_resnet",
    "mgic_resnet",
    "parabolic_resnet",
    "plain_resnet",
]


class Connector(nn.Module):
    r"""Between blocks: change the width and optionally pool, ``x ↦ pool(σ(N(W x + b)))``.

    ``W`` is a 1×1 convolution (``image=True``; 3×3 with ``kernel_size=3``) or a dense map.

    Args:
        in_width, out_width: channels (or features) in and out.
        image: convolutional (``(batch, c, H, W)``) or dense (``(batch, features)``).
        pool: 2×2 average pooling after (images only).
        kernel_size: of the convolution (odd).
        norm: the parameter-free normalization before σ; ``activation``: ``tanh`` or ``relu``.

    Raises:
        ValueError: wrong channel counts (at construction or call).

    Example:
        >>> Connector(1, 8, pool=True)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 8, 4, 4])
    """

    def __init__(
        self,
        in_width,
        out_width,
        *,
        image=True,
        pool=False,
        kernel_size=1,
        norm=True,
        activation="relu",
    ):
        super().__init__()
        for name, v in (("in_width", in_width), ("out_width", out_width)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Connector: {name} must be a positive int, got {v!r}.")
        self.in_width, self.out_width, self.image = in_width, out_width, image
        if image:
            self.map = nn.Conv2d(in_width, out_width, kernel_size, padding=kernel_size // 2)
        else:
            self.map = nn.Linear(in_width, out_width)
        self.norm = nn.GroupNorm(1, out_width, affine=False) if (norm and image) else None
        self.pool = nn.AvgPool2d(2) if (pool and image) else None
        self.act = {"tanh": torch.tanh, "relu": torch.relu}[activation]

    def forward(self, x):
        want = "(batch, {}, height, width)" if self.image else "(batch, {})"
        if x.ndim != (4 if self.image else 2) or x.shape[1] != self.in_width:
            raise ValueError(
                f"Connector: expected {want.format(self.in_width)}, got shape {tuple(x.shape)}."
            )
        z = self.map(x)
        if self.norm is not None:
            z = self.norm(z)
        z = self.act(z)
        return self.pool(z) if self.pool is not None else z


class Classifier(nn.Module):
    """The head: a dense map to ``n_classes`` logits from the flattened features (``pixels``
    given: images of ``pixels`` pixels) or from their global average over the pixels.

    Example:
        >>> Classifier(8, 10)(torch.zeros(2, 8, 4, 4)).shape
        torch.Size([2, 10])
        >>> Classifier(8, 10, pixels=16)(torch.zeros(2, 8, 4, 4)).shape
        torch.Size([2, 10])
    """

    def __init__(self, width: int, n_classes: int, pixels: int | None = None):
        super().__init__()
        self.pixels = pixels
        self.linear = nn.Linear(width * (pixels or 1), n_classes)

    def forward(self, x):
        if x.ndim == 4:
            if self.pixels is None:
                x = x.mean(dim=(2, 3))
            elif x.shape[2] * x.shape[3] != self.pixels:
                raise ValueError(
                    f"Classifier: built for {self.pixels} pixels, got {tuple(x.shape[2:])}."
                )
            else:
                x = x.flatten(1)
        return self.linear(x)


KINDS = ("plain", "antisymmetric", "parabolic", "hyperbolic", "hamiltonian", "lean", "mgic")


def _block(kind, width, n_steps, image, lkw, bkw):
    op = "conv" if image else "dense"
    if kind == "plain":
        return ExplicitBlock(
            StandardLayer(width, operator=op, **lkw), n_steps, gradient="backprop", **bkw
        )
    if kind == "antisymmetric":
        return ExplicitBlock(
            AntisymmetricLayer(width, operator=op, gamma=0.01, **lkw), n_steps, **bkw
        )
    if kind == "parabolic":
        return ExplicitBlock(ParabolicLayer(width, operator=op, **lkw), n_steps, **bkw)
    if kind == "hyperbolic":
        return LeapfrogBlock(ParabolicLayer(width, operator=op, **lkw), n_steps, **bkw)
    if kind == "hamiltonian":
        if width % 2:
            raise ValueError(f"hamiltonian_resnet: widths must be even (two streams), got {width}.")
        half = width // 2
        return HamiltonianBlock(  # hidden = width: as many weights as the plain layer
            ParabolicLayer(half, width, operator=op, sign=1.0, **lkw),
            ParabolicLayer(half, width, operator=op, **lkw),
            n_steps,
            **bkw,
        )
    if not image:
        raise ValueError(f"{kind}_resnet needs image=True (it is a convolutional network).")
    if kind == "lean":
        return ExplicitBlock(
            StandardLayer(width, operator="lean", **lkw), n_steps, gradient="backprop", **bkw
        )
    if kind == "mgic":
        op = MultigridChannelOperator(width, group_size=min(4, width))
        return ExplicitBlock(
            StandardLayer(width, operator=op, **lkw), n_steps, gradient="backprop", **bkw
        )
    raise ValueError(f"unknown network kind {kind!r}; valid kinds are: {', '.join(KINDS)}.")


def build_network(
    kind: str,
    in_channels: int,
    n_classes: int,
    *,
    widths: tuple[int, ...] = (16,),
    n_steps: int = 8,
    horizon: float = 1.0,
    image: bool = True,
    basis: str = "constant",
    basis_size: int | None = None,
    activation: str = "tanh",
    image_size: int | None = None,
    **block_kw,
) -> nn.Sequential:
    r"""A classifier ``Connector → (block → Connector with pooling)* → block → Classifier``.

    Args:
        kind: one of :data:`KINDS` (``plain, antisymmetric, parabolic, hyperbolic,
            hamiltonian, lean, mgic``).
        in_channels: input channels (``image=True``: ``(batch, c, H, W)``) or features
            (``image=False``: ``(batch, features)``).
        n_classes: number of logits.
        widths: width of each stage (one block per stage; between stages the width changes
            and, for images, the resolution halves).
        n_steps: steps per block (depth); ``horizon``: final time ``T`` of each block.
        basis, basis_size: the weights' time basis (default: one weight per step,
            ``basis_size = n_steps`` pieces, i.e. the plain ResNet parameterization).
        activation: of the layers.
        image_size: side of the input images; given, the head flattens the last block's
            output (``widths[-1] · side²`` features), else it averages over the pixels.
        block_kw: passed to the blocks (e.g. ``memory_free=False``, ``method="rk4"``).

    Returns:
        An ``nn.Sequential`` mapping inputs to logits ``(batch, n_classes)``.

    Raises:
        ValueError: unknown kind, odd widths for ``hamiltonian``, ``image=False`` for the
            convolutional kinds, or a basis larger than ``n_steps``.

    Reference: Ruthotto & Haber, "Deep neural networks motivated by partial differential
    equations" (arXiv:1804.04272).

    Example:
        >>> net = build_network("parabolic", 1, 10, widths=(4,), n_steps=2)
        >>> net(torch.zeros(3, 1, 8, 8)).shape
        torch.Size([3, 10])
    """
    if not widths:
        raise ValueError("build_network: widths must name at least one stage.")
    if basis_size is None:
        basis_size = n_steps if basis == "constant" else None
    lkw = {"basis": basis, "basis_size": basis_size, "horizon": horizon, "activation": activation}
    mods: list[nn.Module] = [
        Connector(in_channels, widths[0], image=image, kernel_size=3 if image else 1)
    ]
    for i, w in enumerate(widths):
        if i > 0:
            mods.append(Connector(widths[i - 1], w, image=image, pool=True))
        mods.append(_block(kind, w, n_steps, image, lkw, block_kw))
    pixels = None
    if image and image_size is not None:
        side = image_size // 2 ** (len(widths) - 1)
        pixels = side * side
    mods.append(Classifier(widths[-1], n_classes, pixels))
    return nn.Sequential(*mods)


_DOC = """
    Returns an ``nn.Sequential`` classifier (see :func:`build_network`, whose references,
    errors and example apply).

    Defaults: ``widths=(16,)``, ``n_steps=8``, ``horizon=1.0``, ``image=True``, one weight per
    step (``basis="constant"``, ``basis_size=n_steps``), ``activation="tanh"``; every keyword
    of :func:`build_network` is accepted (e.g. ``image_size=8``: a flattening head).
"""


def plain_resnet(in_channels: int, n_classes: int, **kw) -> nn.Sequential:
    """The plain ResNet ``y + h σ(K y + b)`` trained by autograd (the baseline)."""
    return build_network("plain", in_channels, n_classes, **kw)


def antisymmetric_resnet(in_channels: int, n_classes: int, **kw) -> nn.Sequential:
    """Forward Euler over ``σ((K − Kᵀ − γI) y + b)`` with ``γ = 0.01``."""
    return build_network("antisymmetric", in_channels, n_classes, **kw)


def parabolic_resnet(in_channels: int, n_classes: int, **kw) -> nn.Sequential:
    """Forward Euler over ``−Kᵀσ(K y + b)`` (the parabolic CNN)."""
    return build_network("parabolic", in_channels, n_classes, **kw)


def hyperbolic_resnet(in_channels: int, n_classes: int, **kw) -> nn.Sequential:
    """Leapfrog over ``y'' = −Kᵀσ(K y + b)`` (reversible, memory-free by default)."""
    return build_network("hyperbolic", in_channels, n_classes, **kw)


def hamiltonian_resnet(in_channels: int, n_classes: int, **kw) -> nn.Sequential:
    """The two-stream Hamiltonian network by Verlet (reversible, memory-free by default): each
    stage's channels split in halves ``(y, z)``, ``y' = K_yᵀσ(K_y z + b_y)``,
    ``z' = −K_zᵀσ(K_z y + b_z)``, ``K: width/2 → width`` (as many weights as the plain layer).

    Example:
        >>> net = hamiltonian_resnet(64, 10, image=False, widths=(8,), n_steps=4)
        >>> net(torch.zeros(2, 64)).shape
        torch.Size([2, 10])
    """
    return build_network("hamiltonian", in_channels, n_classes, **kw)


def lean_resnet(in_channels: int, n_classes: int, **kw) -> nn.Sequential:
    """LeanResNet: forward Euler over ``σ((S + P) y + b)``, ``S`` a depthwise 5-point stencil,
    ``P`` a 1×1 convolution (``5c + c²`` weights per layer instead of ``9c²``)."""
    return build_network("lean", in_channels, n_classes, **kw)


def mgic_resnet(in_channels: int, n_classes: int, **kw) -> nn.Sequential:
    """Forward Euler over ``σ(K y + b)`` with ``K`` a multigrid-in-channels convolution
    (groups of 4 channels; O(c) weights per layer)."""
    return build_network("mgic", in_channels, n_classes, **kw)


for _f in (
    plain_resnet,
    antisymmetric_resnet,
    parabolic_resnet,
    hyperbolic_resnet,
    hamiltonian_resnet,
    lean_resnet,
    mgic_resnet,
):
    _f.__doc__ = (_f.__doc__ or "").rstrip() + "\n" + _DOC
