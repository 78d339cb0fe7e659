"""OT-Flow: a continuous normalizing flow driven by the gradient of a potential.

Onken, Wu Fung, Li, Ruthotto, "OT-Flow: Fast and Accurate Continuous Normalizing Flows
via Optimal Transport", AAAI 2021, arXiv 2006.00104.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..ode import Backprop, DiscreteAdjoint, PrecisionPolicy, odeint
from ._checkpoint import read_checkpoint, save_checkpoint
from ._checks import (
    check_alpha,
    check_gradient,
    check_int,
    check_precision,
    check_steps,
    gradient_name,
    precision_name,
)
from ._dynamics import OTFlowLoss, _Dynamics
from ._finite import log_prob_error
from ._fit_result import FitResult
from ._potential import build_potential
from ._presets import default_preset, get_preset
from ._train import fit

__all__ = ["OTFlow", "OTFlowLoss", "build_potential", "load_checkpoint"]


class OTFlow(nn.Module):
    r"""OT-Flow continuous normalizing flow with an exact, analytic log-determinant.

    The flow maps data x, standardized to y = (x − μ)/s, at t = 0 to a standard normal
    z at t = 1 along ż = −∇_xΦ(z, t), with Φ from :func:`build_potential`; the
    log-determinant obeys ℓ̇ = −Δ_xΦ (exact Laplacian, no Hutchinson probe), so

        log p(x) = log N(z(1); 0, I) + ℓ(1) − Σⱼ log sⱼ.

    The affine map (μ, s) is the identity (0, 1) until :func:`~odeflow.flows.fit` sets it
    from the training data (or :meth:`set_standardization` does); it is held in the buffers
    ``data_loc`` and ``data_scale`` (in ``state_dict`` and checkpoints) and is part of
    every method below. A new flow starts near the identity map (``init="identity"``), so
    an untrained flow is close to N(0, I).

    Training minimises J = α₀ E[L] + α₁ E[C] + α₂ E[R] with C = −log p(x) (the NLL),
    L = ∫ ½‖ż‖² dt (transport cost) and R = ∫ |−∂_tΦ + ½‖∇_xΦ‖²| dt (HJB penalty),
    all integrated by fixed-step RK4 through :func:`odeflow.odeint`. Training (``nt``)
    and evaluation (``nt_eval``) step counts are kept separate, as in the paper.

    Defaults: ``width``, ``alpha`` and the step counts follow the documented rule of
    :func:`odeflow.flows.default_preset` (width 32, α = (1, 20, 2), nt = 4, nt_eval = 8 at
    every d, for standardized data), which :func:`~odeflow.flows.fit` completes with
    standardization and early stopping; a preset (:meth:`from_preset`) gives the paper's.

    Args:
        dim: data dimension d.
        width: ResNet width m (default: the rule's).
        depth: ResNet layers M (paper: 2).
        rank: rank r of the quadratic term, default min(10, d + 1).
        alpha: (α₀, α₁, α₂), or ``"auto"`` (default) for the rule's.
        nt: RK4 steps used by :meth:`loss` (default: the rule's).
        nt_eval: RK4 steps used by :meth:`log_prob`, :meth:`transform`, :meth:`inverse`,
            :meth:`sample` (default: the rule's when ``nt`` is not given, else 2·nt).
        precision: ODE precision policy: an :class:`odeflow.PrecisionPolicy` or its shorthand
            ("fp32", "tf32", "bf16", "fp16"); :meth:`config` records its name.
        gradient: ODE gradient strategy for :meth:`loss`, the ODE engine's policy object
            (:class:`odeflow.Backprop`, :class:`odeflow.DiscreteAdjoint` with its options) or
            its shorthand ("backprop" as in the paper, or
            "adjoint", the exact discrete adjoint).
        compile: evaluate the ODE right-hand side (Φ's gradient and Laplacian) through
            ``torch.compile`` (inductor): fuses the hundreds of small kernels of each stage
            evaluation, which bound the iteration time on a GPU. The first calls compile
            (one graph per state layout: training and evaluation); results equal eager to
            round-off. An execution option, not part of :meth:`config`.
        cuda_graphs: with ``gradient="adjoint"`` on CUDA, capture each RK4 step's forward and
            its rebuild + VJP as CUDA graphs (:class:`odeflow.DiscreteAdjoint`
            ``(cuda_graphs=True)``) and replay them: one launch per step instead of the
            hundreds of small kernels of Φ's gradient and Laplacian. Captured once per state
            layout and batch size (the first call of each is slower); same gradients. An
            execution option, not part of :meth:`config`; no effect on CPU.
        init: ``"identity"`` (default: w = 0 and a small A, the flow starts near the
            identity map) or ``"paper"`` (w = 1, as in the OT-Flow code); see
            :func:`build_potential`. Not part of :meth:`config` (the weights are).

    Methods follow torch.distributions: ``log_prob(x)`` on ``(..., d)``,
    ``sample((n,))`` / ``sample(n)``, ``rsample`` (differentiable samples),
    ``sample_and_log_prob`` / ``rsample_and_log_prob`` (densities of the samples from the
    same solve), ``event_shape``; ``transform(x)`` is the data → latent map and
    ``inverse(z)`` its RK4 inverse.

    Raises:
        ValueError: on invalid sizes, α, step counts, precision or ``init``, and (in the methods)
            on inputs with the wrong last dimension, complex or non-finite values.

    Reference: Onken et al., AAAI 2021, arXiv 2006.00104.

    Example:
        >>> import torch
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <...>
        >>> flow = OTFlow(2, width=8, nt=8).double()
        >>> x = torch.randn(5, 2, dtype=torch.float64)
        >>> flow.log_prob(x).shape
        torch.Size([5])
        >>> bool((flow.inverse(flow.transform(x)) - x).abs().max() < 1e-4)
        True
    """

    def __init__(
        self,
        dim: int,
        width: int | None = None,
        depth: int = 2,
        rank: int | None = None,
        alpha: Sequence[float] | str = "auto",
        nt: int | None = None,
        nt_eval: int | None = None,
        precision: str | PrecisionPolicy = "fp32",
        gradient: str | Backprop | DiscreteAdjoint = "backprop",
        compile: bool = False,
        cuda_graphs: bool = False,
        init: str = "identity",
    ):
        super().__init__()
        dim = check_int("dim", dim, 1, "the data dimension")
        auto = default_preset(dim)  # the documented defaults (odeflow.flows.default_preset)
        width = auto.width if width is None else width
        alpha = auto.alpha if isinstance(alpha, str) and alpha == "auto" else alpha
        if nt is None:  # both step counts from the rule
            nt, nt_eval = auto.nt, auto.nt_val if nt_eval is None else nt_eval
        width = check_int("width", width, 1, "the ResNet width m")
        depth = check_int("depth", depth, 2, "the opening layer plus the residual layers")
        if rank is not None:
            rank = check_int("rank", rank, 1, "the rank of the quadratic term")
        alpha = check_alpha(alpha)
        nt = check_steps(nt, "nt")
        if nt_eval is not None:
            nt_eval = check_steps(nt_eval, "nt_eval")
        precision = check_precision(precision)
        gradient = check_gradient(gradient)
        if cuda_graphs and gradient_name(gradient) != "adjoint":
            raise ValueError(
                "cuda_graphs=True replays the discrete adjoint's per-step work; use it with "
                "gradient='adjoint' (backprop through all steps cannot be captured per step)"
            )
        if cuda_graphs and isinstance(gradient, DiscreteAdjoint):  # (its options checked)
            gradient = dataclasses.replace(gradient, cuda_graphs=True)
        self.dim = dim
        self.width = width
        self.depth = depth
        self.rank = min(10, self.dim + 1) if rank is None else rank
        self.alpha = alpha
        self.nt = nt
        self.nt_eval = 2 * self.nt if nt_eval is None else nt_eval
        self.precision = precision
        self.gradient = gradient
        self.potential = build_potential(self.dim, self.width, self.depth, self.rank, init=init)
        # the affine standardization x ↦ (x − loc)/scale in front of the ODE, identity until
        # fit() sets it (buffers: saved in state_dict, moved by .to(), cast by .double());
        # registered after the potential so that state_dict() starts with its weights
        self.register_buffer("data_loc", torch.zeros(self.dim))
        self.register_buffer("data_scale", torch.ones(self.dim))
        # not ``self.compile``: that would shadow nn.Module.compile()
        self.compile_field = bool(compile)
        self.cuda_graphs = bool(cuda_graphs)
        # plain dict, not a submodule: the compiled wrappers share self.potential's parameters
        self._fields: dict[tuple[bool, bool], Any] = {}

    @classmethod
    def from_preset(cls, preset, *, dtype: torch.dtype | None = None, **overrides: Any) -> OTFlow:
        """Build a flow with a preset's dim, width, depth, α, step counts and dtype.

        The parameters are in ``dtype``, by default the preset's (``preset.dtype``:
        float64 for the 2-D toys, which the paper trains in double precision, float32 for
        the tabular sets). :func:`odeflow.flows.fit` never changes a flow's dtype.

        Example:
            >>> OTFlow.from_preset("miniboone").config()["width"]
            256
            >>> next(OTFlow.from_preset("8gaussians").parameters()).dtype
            torch.float64
            >>> next(OTFlow.from_preset("8gaussians", dtype=torch.float32).parameters()).dtype
            torch.float32
        """
        p = get_preset(preset)
        if p.dim is None and "dim" not in overrides:
            raise ValueError(f"preset {p.name!r} has no fixed dimension; pass dim=")
        kw = dict(dim=p.dim, width=p.width, depth=p.depth, alpha=p.alpha, nt=p.nt,
                  nt_eval=p.nt_val)  # fmt: skip
        kw.update(overrides)
        return cls(**kw).to(p.dtype if dtype is None else dtype)

    @property
    def alpha(self) -> tuple[float, float, float]:
        """(α₀, α₁, α₂), the weights of L, C and R; validated when set."""
        # (pickles from before α was a property hold it under "alpha")
        return self.__dict__["_alpha"] if "_alpha" in self.__dict__ else self.__dict__["alpha"]

    @alpha.setter
    def alpha(self, value: Sequence[float]) -> None:
        self.__dict__["_alpha"] = check_alpha(value)

    def __getstate__(self) -> dict[str, Any]:
        # copies and pickles drop the cached (possibly compiled) right-hand sides; they are
        # rebuilt on first use around the copy's own potential
        state = dict(self.__dict__)
        state["_fields"] = {}
        return state

    # ------------------------------------------------------------------ standardization
    def set_standardization(self, loc: Any, scale: Any) -> OTFlow:
        """Set the affine map x ↦ (x − loc)/scale that runs before the ODE; returns ``self``.

        The flow models x = loc + scale ⊙ y, with y the density of the ODE, so

            log p(x) = log p_y((x − loc)/scale) − Σⱼ log scaleⱼ

        exactly (the map's log-determinant is added in :meth:`log_prob`, :meth:`loss`,
        :meth:`sample_and_log_prob`; :meth:`inverse` and :meth:`sample` map back with
        loc + scale ⊙ y). The map is held in the buffers ``data_loc`` and ``data_scale``,
        so ``state_dict`` and checkpoints carry it. A new flow has the identity (0, 1);
        :func:`odeflow.flows.fit` sets the training data's mean and standard deviation
        (``standardize=True``). Changing the map of a trained flow changes its density.

        Args:
            loc: ``(d,)`` finite shift (tensor, array or sequence).
            scale: ``(d,)`` finite scales > 0.

        Raises:
            ValueError: wrong shape, non-finite values, or a scale <= 0.

        Example:
            >>> import torch
            >>> f = OTFlow(1, width=4).double()
            >>> x = torch.tensor([[3.0]], dtype=torch.float64)
            >>> before = f.log_prob(x / 2.0)
            >>> bool(torch.allclose(f.set_standardization([0.0], [2.0]).log_prob(x),
            ...                     before - torch.log(torch.tensor(2.0))))
            True
        """
        vals = []
        for name, v in (("loc", loc), ("scale", scale)):
            try:
                t = torch.as_tensor(v, dtype=torch.float64).detach().cpu()
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(f"{name} must be {self.dim} real numbers, got {v!r:.80}") from None
            if t.shape != (self.dim,) or not bool(torch.isfinite(t).all()):
                raise ValueError(
                    f"{name} must hold {self.dim} finite numbers (shape ({self.dim},)), got "
                    f"shape {tuple(t.shape)}: {v!r:.80}"
                )
            vals.append(t)
        if not bool((vals[1] > 0).all()):
            raise ValueError(f"scale must be > 0 in every coordinate, got {vals[1].tolist()}")
        with torch.no_grad():
            self.data_loc.copy_(vals[0])
            self.data_scale.copy_(vals[1])
        return self

    @property
    def is_standardized(self) -> bool:
        """Whether the affine map of :meth:`set_standardization` is other than the identity."""
        return bool((self.data_loc != 0).any() or (self.data_scale != 1).any())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, *a):
        # checkpoints written before the affine map existed hold neither buffer: they are
        # the identity map. Only both missing together are filled in (one alone is damage).
        keys = [prefix + "data_loc", prefix + "data_scale"]
        if not any(k in state_dict for k in keys) and any(
            k.startswith(prefix + "potential.") for k in state_dict
        ):
            state_dict[keys[0]] = torch.zeros_like(self.data_loc)
            state_dict[keys[1]] = torch.ones_like(self.data_scale)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, *a)

    # ------------------------------------------------------------------ config
    def config(self) -> dict[str, Any]:
        """Constructor arguments, enough to rebuild the module before ``load_state_dict``."""
        return dict(
            dim=self.dim, width=self.width, depth=self.depth, rank=self.rank,
            alpha=list(self.alpha), nt=self.nt, nt_eval=self.nt_eval,
            precision=precision_name(self.precision), gradient=gradient_name(self.gradient),
        )  # fmt: skip

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())

    # ------------------------------------------------------------------ helpers
    @property
    def _ref(self) -> Tensor:
        return next(self.potential.parameters())

    def _check(self, x: Tensor, name: str) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim < 1 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{name} must have shape (..., {self.dim}) for this flow (dim={self.dim}), "
                f"got {tuple(x.shape)}"
            )
        if x.is_complex():
            raise ValueError(
                f"{name} is complex ({x.dtype}); the flow models real data: pass the real "
                "and imaginary parts as separate coordinates"
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or inf; the flow needs finite inputs")
        ref = self._ref
        return x.reshape(-1, self.dim).to(device=ref.device, dtype=ref.dtype)

    def _integrate(
        self, y0: Tensor, nt: int, full: bool, backward: bool, trajectory: bool, gradient: str
    ) -> Tensor:
        key = (full, self.compile_field)
        func = self._fields.get(key)
        if func is None or func.alpha0 != self.alpha[0]:  # (a compiled module forwards .alpha0)
            func = _Dynamics(self.potential, self.dim, self.alpha[0], full)
            self._fields[key] = torch.compile(func) if self.compile_field else func
            func = self._fields[key]
        t0, t1 = (1.0, 0.0) if backward else (0.0, 1.0)
        if trajectory:
            t = torch.linspace(t0, t1, nt + 1, dtype=y0.dtype, device=y0.device)
            spi = 1
        else:
            t = torch.tensor([t0, t1], dtype=y0.dtype, device=y0.device)
            spi = nt
        if gradient == "adjoint" and getattr(self, "cuda_graphs", False):  # (older pickles)
            gradient = DiscreteAdjoint(cuda_graphs=True)
        ys = odeint(
            func, y0, t, method="rk4", gradient=gradient, precision=self.precision,
            steps_per_interval=spi,
        )  # fmt: skip
        return ys if trajectory else ys[-1]

    def _forward_state(self, x: Tensor, nt: int, full: bool) -> Tensor:
        n = x.shape[0]
        extra = 3 if full else 1
        y0 = torch.cat([x, x.new_zeros(n, extra)], dim=1)
        return self._integrate(y0, nt, full, False, False, self.gradient)

    def _standardize(self, x: Tensor) -> Tensor:
        """(x − loc)/scale: data → the coordinates the ODE runs in (exactly x when the map
        is the identity: x − 0 and x/1 are exact)."""
        return (x - self.data_loc) / self.data_scale

    def _unstandardize(self, y: Tensor) -> Tensor:
        """loc + scale·y: the ODE's coordinates → data."""
        return self.data_loc + self.data_scale * y

    def _log_scale(self) -> Tensor:
        """log|det| of the map data → standardized coordinates is −Σ log scale; this returns
        Σ log scale (subtracted from log-densities)."""
        return self.data_scale.log().sum()

    def _log_normal(self, z: Tensor) -> Tensor:
        return -0.5 * (z * z).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)

    # ------------------------------------------------------------------ API
    def loss(self, x: Tensor, nt: int | None = None) -> OTFlowLoss:
        """The training objective on a batch.

        J = α₀ E[L] + α₁ E[C] + α₂ E[R], with C = ½‖z(1)‖² + (d/2) log 2π − ℓ(1) + Σ log s
        (−log p(x), the affine map included); L and R are measured in the standardized
        coordinates the ODE runs in.

        Args:
            x: ``(n, d)`` data batch.
            nt: RK4 steps, an integer >= 1 (default ``self.nt``).

        Returns:
            :class:`OTFlowLoss` ``(total, nll, transport, hjb)`` of scalars.

        Raises:
            ValueError: ``x`` of the wrong last dimension or not finite, or ``nt`` < 1.
        """
        steps = self.nt if nt is None else check_steps(nt)
        x = self._check(x, "x")
        y = self._forward_state(self._standardize(x), steps, full=True)
        z, ell, L, R = y[:, : self.dim], y[:, self.dim], y[:, self.dim + 1], y[:, self.dim + 2]
        nll = -(self._log_normal(z) + ell).mean() + self._log_scale()
        a0, a1, a2 = self.alpha
        Lm, Rm = L.mean(), R.mean()
        return OTFlowLoss(a0 * Lm + a1 * nll + a2 * Rm, nll, Lm, Rm)

    def forward(self, x: Tensor, nt: int | None = None) -> Tensor:
        """``flow(x)`` is :meth:`log_prob`: what calls a module, e.g.
        ``torch.func.functional_call(flow, params, (x,))`` under ``torch.func.grad``, gets the
        log-density (through the discrete adjoint, with its gradients)."""
        return self.log_prob(x, nt)

    def log_prob(self, x: Tensor, nt: int | None = None) -> Tensor:
        """log p(x) = log N(z(1)) + ℓ(1) − Σ log s for ``x`` of shape ``(..., d)``, the ODE
        started at (x − μ)/s; returns ``(...)``.

        ``nt``: RK4 steps, an integer >= 1 (default ``self.nt_eval``); a ValueError names
        it otherwise. A NaN/inf log-density at finite ``x`` (non-finite weights, or an ODE
        solution that overflowed) is a FloatingPointError naming the cause, never a silent
        NaN (one check after the solve)."""
        shape = x.shape[:-1] if isinstance(x, Tensor) else None
        lp = self._log_prob(x, nt)
        if not bool(torch.isfinite(lp).all()):
            raise log_prob_error(self, lp, self.nt_eval if nt is None else nt)
        return lp.reshape(shape)

    def _log_prob(self, x: Tensor, nt: int | None) -> Tensor:
        """log p of the rows of ``x`` as a flat ``(n,)`` tensor, unchecked for NaN/inf (the
        training loop's validation reads a non-finite value as "no improvement")."""
        steps = self.nt_eval if nt is None else check_steps(nt)
        x = self._check(x, "x")
        y = self._forward_state(self._standardize(x), steps, full=False)
        return self._log_normal(y[:, : self.dim]) + y[:, self.dim] - self._log_scale()

    def transform(
        self, x: Tensor, *, return_trajectory: bool = False, nt: int | None = None
    ) -> Tensor:
        """Data → latent map x ↦ z(1) (of y = (x − μ)/s), ``(..., d) -> (..., d)``.

        With ``return_trajectory=True`` the result is the whole RK4 path
        ``(nt+1, ..., d)`` of the ODE, in the standardized coordinates it runs in (its
        first entry is (x − μ)/s, x itself for a flow never standardized; its last is
        z(1)). ``nt``: RK4 steps, an integer >= 1 (default ``self.nt_eval``).
        """
        return self._map(x, nt, False, return_trajectory, "x")

    def inverse(
        self, z: Tensor, *, return_trajectory: bool = False, nt: int | None = None
    ) -> Tensor:
        """Latent → data map by RK4 backward in time from t = 1 to 0, then x = μ + s ⊙ y;
        ``(..., d)``.

        With ``return_trajectory=True`` the result is the ODE's path ``(nt+1, ..., d)``
        ordered from t = 1 down to t = 0, in its standardized coordinates (the last entry
        is y; x = μ + s ⊙ y). ``nt``: RK4 steps, an integer >= 1 (default ``self.nt_eval``).
        """
        return self._map(z, nt, True, return_trajectory, "z")

    def _map(self, x: Tensor, nt: int | None, backward: bool, traj: bool, name: str) -> Tensor:
        n_steps = self.nt_eval if nt is None else check_steps(nt)
        shape = x.shape if isinstance(x, Tensor) else None
        x = self._check(x, name)
        if not backward:  # data → the ODE's standardized coordinates
            x = self._standardize(x)
        y0 = torch.cat([x, x.new_zeros(x.shape[0], 1)], dim=1)
        ys = self._integrate(y0, n_steps, False, backward, traj, self.gradient)
        if traj:
            return ys[..., : self.dim].reshape(ys.shape[0], *shape)
        out = ys[:, : self.dim]
        return (self._unstandardize(out) if backward else out).reshape(shape)

    @property
    def event_shape(self) -> torch.Size:
        """Shape of one sample, ``(d,)`` (as in ``torch.distributions``)."""
        return torch.Size([self.dim])

    def sample(
        self,
        sample_shape: int | Sequence[int] = (),
        generator: torch.Generator | None = None,
        nt: int | None = None,
    ) -> Tensor:
        """Draw samples x = μ + s ⊙ T⁻¹(z), z ~ N(0, I); returns ``(*sample_shape, d)``, no
        graph.

        ``generator`` must live on the flow's device (CPU generators work for CPU flows).
        """
        with torch.no_grad():
            return self.rsample(sample_shape, generator, nt)

    def rsample(
        self,
        sample_shape: int | Sequence[int] = (),
        generator: torch.Generator | None = None,
        nt: int | None = None,
    ) -> Tensor:
        """Reparameterised samples x = T⁻¹(z), z ~ N(0, I), differentiable in the flow's
        parameters (through the flow's ``gradient`` strategy); ``(*sample_shape, d)``."""
        return self._draw(sample_shape, generator, nt, with_log_prob=False)

    def sample_and_log_prob(
        self,
        sample_shape: int | Sequence[int] = (),
        generator: torch.Generator | None = None,
        nt: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Samples and their log-densities in one backward-in-time solve, no graph.

        The log-determinant is integrated along the sampling path itself (ℓ̇ = −ΔΦ/α₀ from
        t = 1 down to 0), so ``log p(x) = log N(z) − ℓ(0)`` costs no second solve; it agrees
        with :meth:`log_prob` of the same ``x`` up to the RK4 error, O(h⁴) (tested); the
        affine map's −Σ log s is included.
        Returns ``(x, log_p)`` of shapes ``(*sample_shape, d)`` and ``sample_shape``.
        """
        with torch.no_grad():
            return self.rsample_and_log_prob(sample_shape, generator, nt)

    def rsample_and_log_prob(
        self,
        sample_shape: int | Sequence[int] = (),
        generator: torch.Generator | None = None,
        nt: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`sample_and_log_prob` with both outputs differentiable in the parameters
        (e.g. a variational objective E_q[log q(x) − log p̃(x)] with the flow as q)."""
        return self._draw(sample_shape, generator, nt, with_log_prob=True)

    def _draw(self, sample_shape, generator, nt, with_log_prob: bool):
        try:
            dims = [sample_shape] if not hasattr(sample_shape, "__iter__") else list(sample_shape)
            if any(isinstance(k, bool) for k in dims):
                raise TypeError
            shape = tuple(operator.index(k) for k in dims)
        except TypeError:
            shape = (-1,)
        if any(k < 0 for k in shape):
            raise ValueError(
                f"sample_shape must be an int >= 0 or a sequence of them (e.g. 1000 or "
                f"(10, 100)), got {sample_shape!r}"
            )
        n_steps = self.nt_eval if nt is None else check_steps(nt)
        ref = self._ref
        z = torch.randn((*shape, self.dim), generator=generator, device=ref.device, dtype=ref.dtype)
        zf = z.reshape(-1, self.dim)
        y0 = torch.cat([zf, zf.new_zeros(zf.shape[0], 1)], dim=1)
        y = self._integrate(y0, n_steps, False, True, False, self.gradient)
        x = self._unstandardize(y[:, : self.dim]).reshape(z.shape)
        if not with_log_prob:
            return x
        lp = self._log_normal(zf) - y[:, self.dim] - self._log_scale()
        return x, lp.reshape(shape)

    # ------------------------------------------------------------------ training & I/O
    def fit(self, data, **kwargs) -> FitResult:
        """Train in place: ``flow.fit(data, **kw)`` is :func:`odeflow.flows.fit`
        ``(flow, data, **kw)`` (same arguments, same behaviour), a thin convenience that
        returns its :class:`~odeflow.flows.FitResult`. The flow keeps its α, step counts and
        precision (a preset's are used for the run and recorded in the result).

        Example:
            >>> import torch
            >>> flow = OTFlow(2, width=4, nt=2).double()
            >>> res = flow.fit(torch.randn(64, 2).double(), iters=2, batch=32, verbose=False)
            >>> res.iterations, flow.nt
            (2, 2)
        """
        return fit(self, data, **kwargs)

    def save(self, path: str | Path, **extra: Any) -> None:
        """Write a checkpoint (config + ``state_dict`` + ``extra``) to ``path``
        (:func:`~odeflow.flows.save_checkpoint`)."""
        save_checkpoint(self, path, **extra)

    @classmethod
    def load(cls, path: str | Path, *, dim: int | None = None, map_location=None) -> OTFlow:
        """Rebuild a flow from a checkpoint (:func:`~odeflow.flows.load_checkpoint`); ``dim``
        (if given) must match the checkpoint."""
        return read_checkpoint(path, cls, dim=dim, map_location=map_location)


def load_checkpoint(path: str | Path, *, dim: int | None = None, map_location=None) -> OTFlow:
    """Rebuild an :class:`OTFlow` from a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: checkpoint file.
        dim: expected data dimension; a checkpoint of another dimension is refused.
        map_location: as in ``torch.load``; a device (``str`` or ``torch.device``) is also
            where the returned flow lives. Other mappings (dict, callable) only steer
            ``torch.load``; the flow is then on the CPU.

    The file is read with ``torch.load(weights_only=True)``: only plain data are unpickled
    (the reading and its checks live in the checkpoint module; this binds the class).

    Raises:
        FileNotFoundError: no such file (or a folder was given).
        ValueError: not an odeflow OT-Flow checkpoint (unreadable by ``torch.load``, or
            without the format tag, a ``config`` or a ``state_dict``), damaged (a dtype,
            config or ``state_dict`` that do not fit together), or of another dimension;
            ``dim`` not an integer >= 1.

    Example:
        >>> import tempfile, os
        >>> f = OTFlow(2, width=4)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     save_checkpoint(f, os.path.join(d, "c.pt"), note="demo")
        ...     g = load_checkpoint(os.path.join(d, "c.pt"), dim=2)
        >>> g.config() == f.config(), g.checkpoint_extra
        (True, {'note': 'demo'})
    """
    return read_checkpoint(path, OTFlow, dim=dim, map_location=map_location)
