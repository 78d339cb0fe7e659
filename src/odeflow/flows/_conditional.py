r"""The shared machinery of odeflow's conditional models (COT-Flow, PCP-Map).

* :class:`ConditionalDistribution` — ``model(y)`` is a ``torch.distributions.Distribution``
  over x, batched over y (zuko's convention): ``log_prob(x)``, ``sample(shape)``,
  ``rsample(shape)``.
* :class:`ConditionalModel` — the base class: data standardization folded exactly into the
  density, the training loop :meth:`ConditionalModel.fit` (validation split, early stopping
  on the validation NLL, learning-rate drops, tqdm, seed, best-weights checkpoint,
  data-parallel over a process group; the loop itself is in :mod:`._cond_fit`) and
  checkpoints that name their method.

With standardized variables x̃ = (x − m_x)/s_x, ỹ = (y − m_y)/s_y the model learns p̃(x̃ | ỹ)
and the density of the data is, exactly,

    log p(x | y) = log p̃(x̃ | ỹ) − Σᵢ log s_{x,i}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from .._utils import atomic_write, check_int
from ._checkpoint import load_payload
from ._cond_fit import ConditionalFitResult, check_pairs, fit_conditional

__all__ = ["BlockTriangular", "ConditionalDistribution", "ConditionalFitResult", "ConditionalModel"]


def _check_rows(t: Any, d: int, name: str, what: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim < 1 or t.shape[-1] != d:
        raise ValueError(f"{name} must have shape (..., {d}) ({what}), got {tuple(t.shape)}")
    if t.is_complex() or not t.is_floating_point():
        raise TypeError(f"{name} must be a real floating tensor, got {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf; the model needs finite inputs")
    return t


class ConditionalDistribution(Distribution):
    r"""p(x | y) of a conditional model for a batch of observations y, as a Distribution.

    ``batch_shape`` is ``y.shape[:-1]``, ``event_shape`` ``(x_dim,)``. ``log_prob(x)``
    broadcasts ``x: (..., x_dim)`` against the batch; ``sample(shape)`` /
    ``rsample(shape)`` return ``(*shape, *batch_shape, x_dim)`` (``rsample`` is
    differentiable in the model's parameters).

    Example:
        >>> import torch
        >>> from odeflow.flows import PCPMap
        >>> d = PCPMap(2, 3, width=8)(torch.zeros(5, 3))
        >>> d.sample((4,)).shape, d.log_prob(torch.zeros(5, 2)).shape
        (torch.Size([4, 5, 2]), torch.Size([5]))
    """

    arg_constraints: dict[str, constraints.Constraint] = {}  # noqa: RUF012
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, model: ConditionalModel, y: Tensor):
        y = _check_rows(y, model.y_dim, "y", f"y_dim={model.y_dim} of this model")
        ref = model._ref
        self.model = model
        self.y = y.to(device=ref.device, dtype=ref.dtype)
        super().__init__(y.shape[:-1], torch.Size([model.x_dim]), validate_args=False)

    def log_prob(self, x: Tensor) -> Tensor:
        m = self.model
        x = _check_rows(x, m.x_dim, "x", f"x_dim={m.x_dim} of this model")
        x = x.to(self.y)
        shape = torch.broadcast_shapes(x.shape[:-1], self.batch_shape)
        xf = x.expand(*shape, m.x_dim).reshape(-1, m.x_dim)
        yf = self.y.expand(*shape, m.y_dim).reshape(-1, m.y_dim)
        lp = m.log_prob(xf, yf)
        return lp.reshape(shape)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        m = self.model
        shape = self._extended_shape(torch.Size(sample_shape))
        yf = self.y.expand(*shape[:-1], m.y_dim).reshape(-1, m.y_dim)
        z = torch.randn(yf.shape[0], m.x_dim, dtype=yf.dtype, device=yf.device)
        return m._sample_raw(z, yf).reshape(shape)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)


class ConditionalModel(nn.Module):
    """Base of :class:`~odeflow.flows.COTFlow` and :class:`~odeflow.flows.PCPMap`.

    Subclasses implement ``_log_prob_std(x̃, ỹ)``, ``_sample_std(z, ỹ)``, ``_loss_std(x̃, ỹ)``
    (returning ``(total, nll, info dict)``), ``config()`` and the class attribute
    ``_FORMAT``. The buffers ``x_loc, x_scale, y_loc, y_scale`` hold the standardization
    (identity until :meth:`fit` sets them).
    """

    _FORMAT = ""
    _NAME = ""
    #: :meth:`fit`'s iterations when ``iters`` is not given
    DEFAULT_ITERS = 2000

    def _init_standardization(self, x_dim: int, y_dim: int) -> None:
        self.x_dim, self.y_dim = x_dim, y_dim
        self.register_buffer("x_loc", torch.zeros(x_dim))
        self.register_buffer("x_scale", torch.ones(x_dim))
        self.register_buffer("y_loc", torch.zeros(y_dim))
        self.register_buffer("y_scale", torch.ones(y_dim))

    @property
    def _ref(self) -> Tensor:
        return next(self.parameters())

    def forward(self, y: Tensor) -> ConditionalDistribution:
        """``model(y)``: the conditional distribution p(x | y), batched over ``y: (..., y_dim)``."""
        return ConditionalDistribution(self, y)

    # -------------------------------------------------------------- raw <-> standardized
    def _std_y(self, y: Tensor) -> Tensor:
        return (y - self.y_loc) / self.y_scale

    def _pair(self, x: Tensor, y: Tensor, name: str = "x") -> tuple[Tensor, Tensor]:
        """Rows ``x: (n, x_dim)`` and ``y: (n, y_dim)`` checked (ValueError naming the
        problem) and cast to the model's dtype and device."""
        x = _check_rows(x, self.x_dim, name, f"rows of width x_dim={self.x_dim}")
        y = _check_rows(y, self.y_dim, "y", f"rows of width y_dim={self.y_dim}")
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{name} and y must be matching rows (n, {self.x_dim}) and (n, {self.y_dim}), "
                f"got {tuple(x.shape)} and {tuple(y.shape)}; for a batch over y use model(y)"
            )
        ref = self._ref
        return x.to(ref), y.to(ref)

    def log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """log p(x | y) for rows ``x: (n, x_dim)``, ``y: (n, y_dim)``; returns ``(n,)``.

        Raises ValueError on rows of the wrong width or count, FloatingPointError for a
        non-finite result at finite inputs."""
        x, y = self._pair(x, y)
        xs = (x - self.x_loc) / self.x_scale
        lp = self._log_prob_std(xs, self._std_y(y)) - torch.log(self.x_scale).sum()
        if not bool(torch.isfinite(lp).all()):
            raise FloatingPointError(
                f"{self._NAME}: log_prob is not finite at {int((~torch.isfinite(lp)).sum())} "
                "finite inputs (non-finite weights, or a diverged model); retrain it"
            )
        return lp

    def _sample_raw(self, z: Tensor, y: Tensor) -> Tensor:
        return self._sample_std(z, self._std_y(y)) * self.x_scale + self.x_loc

    # -------------------------------------------------------------- training
    def fit(
        self,
        x: Any,
        y: Any,
        *,
        iters: int | None = None,
        batch: int = 256,
        lr: float = 1e-2,
        val_fraction: float = 0.1,
        val_every: int | None = None,
        patience: int = 5,
        lr_drop: float = 3.0,
        max_drops: int = 4,
        standardize: bool = True,
        seed: int = 0,
        checkpoint: str | Path | None = None,
        verbose: bool = True,
        process_group: Any = None,
    ) -> ConditionalFitResult:
        """Train by minimising the model's loss on pairs (x, y) with Adam.

        A fraction ``val_fraction`` of the pairs (random, by ``seed``) is held out; every
        ``val_every`` iterations the validation NLL of x | y is computed, the best weights are
        kept (and written to ``checkpoint`` if given); after ``patience`` validations without
        improvement the learning rate is divided by ``lr_drop`` and training resumes from the
        best weights with Adam's moments reset, and the next stall after ``max_drops`` drops
        stops it (early stopping). The best weights are restored at the end.
        With ``standardize`` the training rows' mean and standard deviation become the
        model's standardization, folded exactly into :meth:`log_prob` and the samples.

        Args:
            x: ``(n, x_dim)`` parameters θ (what the posterior is over).
            y: ``(n, y_dim)`` simulated observations.
            iters: iterations (default: the model's ``DEFAULT_ITERS``, 10 000 for PCP-Map
                and 2 000 for COT-Flow, whose iterations cost ~30× more; early stopping
                may end the run sooner).
            batch, lr: minibatch rows, Adam's learning rate.
            val_fraction: held-out fraction in (0, 0.5].
            val_every: iterations between validations (default ``min(100, max(1, iters // 20))``).
            patience, lr_drop, max_drops: the schedule above.
            standardize: fit the standardization to the training rows.
            seed: seeds the split and the minibatches.
            checkpoint: file that receives the best model (:meth:`save`), or None.
            verbose: tqdm progress bar (on rank 0 only).
            process_group: a ``torch.distributed`` process group to train data-parallel
                over (one process per device, e.g. ``torch.distributed.group.WORLD`` under
                ``torchrun``), or None. Every rank calls ``fit`` with the same model
                settings, pairs and arguments (checked: a difference raises ValueError on
                every rank); rank 0's initial weights are broadcast, each global minibatch
                of ``batch`` rows is split evenly over the ranks (``batch`` must be a
                multiple of the group size), the gradients are averaged with one
                all-reduce per step, the validation rows are shared out and their NLL
                reduced. So ``W`` ranks take the steps of one process with the same
                ``batch`` (up to summation order), each doing 1/W of the work; only rank
                0 writes ``checkpoint``. With gloo, import ``torch._dynamo`` before
                ``init_process_group`` and call ``dist.barrier()`` before
                ``destroy_process_group()`` (see :func:`odeflow.flows.fit`).

        Returns:
            :class:`ConditionalFitResult` (also stored as ``self.fit_result``).

        Raises:
            ValueError: x or y of the wrong width, different row counts, non-finite
                simulations (refused with their count), settings out of range; with a
                process group: pairs or settings that differ between the ranks, a batch
                that the ranks cannot share evenly, an uninitialised ``torch.distributed``.
            TypeError: ``process_group`` not a ProcessGroup.
            FloatingPointError: the training loss became NaN/inf.

        Reference: Wang et al., arXiv 2310.16975 (training by maximum likelihood).

        Example:
            >>> import torch
            >>> from odeflow.flows import PCPMap
            >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
            <...>
            >>> y = torch.randn(200, 2)
            >>> x = y[:, :1] + 0.1 * torch.randn(200, 1)
            >>> res = PCPMap(1, 2, width=8).fit(x, y, iters=5, batch=64, verbose=False)
            >>> res.iterations, res.status
            (5, 'completed')
        """
        self.fit_result = fit_conditional(
            self,
            x,
            y,
            iters=self.DEFAULT_ITERS if iters is None else iters,
            batch=batch,
            lr=lr,
            val_fraction=val_fraction,
            val_every=val_every,
            patience=patience,
            lr_drop=lr_drop,
            max_drops=max_drops,
            standardize=standardize,
            seed=seed,
            checkpoint=checkpoint,
            verbose=verbose,
            process_group=process_group,
        )
        return self.fit_result

    # -------------------------------------------------------------- checkpoints
    def save(self, path: str | Path) -> None:
        """Write ``{format, config, dtype, state_dict}`` (read back by :meth:`load`)."""
        bad = [k for k, v in self.state_dict().items() if not bool(torch.isfinite(v).all())]
        if bad:
            raise ValueError(f"the model's weights hold NaN or inf ({', '.join(bad[:4])})")
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        dtype = str(self._ref.dtype).removeprefix("torch.")
        payload = {"format": self._FORMAT, "config": self.config(), "dtype": dtype,
                   "state_dict": state}  # fmt: skip
        atomic_write(path, lambda fh: torch.save(payload, fh))

    @classmethod
    def load(cls, path: str | Path, map_location=None) -> ConditionalModel:
        """Rebuild a model saved by :meth:`save` (read with ``weights_only=True``).

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a checkpoint of this method (e.g. a PCP-Map checkpoint given to
                ``COTFlow.load``: the message names the right class), or damaged.
        """
        path = Path(path)
        ck = load_payload(
            path, map_location, f"pass a file written by {cls.__name__}.save", example="model.pt"
        )
        fmt = ck.get("format") if isinstance(ck, dict) else None
        if fmt != cls._FORMAT:
            owner = {"odeflow.cotflow/1": "COTFlow", "odeflow.pcpmap/1": "PCPMap",
                     "odeflow.otflow/1": "OTFlow"}.get(fmt)  # fmt: skip
            hint = f"; it is a {owner} checkpoint: load it with {owner}.load" if owner else ""
            raise ValueError(f"{path} is not a {cls.__name__} checkpoint (format {fmt!r}){hint}")
        try:
            model = cls(**ck["config"]).to(getattr(torch, ck["dtype"]))
            model.load_state_dict(ck["state_dict"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise ValueError(
                f"checkpoint {path} is damaged ({type(exc).__name__}: {exc})"
            ) from None
        return model.eval()


class BlockTriangular(nn.Module):
    r"""Joint density of (x, y) by a block-triangular map: a flow for y, then x | y.

    With a marginal model of y (any module with ``log_prob(y) -> (n,)`` and
    ``sample(shape)``, e.g. :class:`~odeflow.flows.OTFlow`) and a conditional model
    (:class:`~odeflow.flows.COTFlow` or :class:`~odeflow.flows.PCPMap`), the map
    (x, y) ↦ (T_x(x, y), T_y(y)) is block triangular, so

        log p(x, y) = log p(y) + log p(x | y).

    Reference: Wang et al., arXiv 2310.16975 (the joint variants of COT-Flow and PCP-Map).

    Example:
        >>> import torch
        >>> from odeflow.flows import OTFlow, PCPMap
        >>> joint = BlockTriangular(OTFlow(1, width=4).double(), PCPMap(2, 1, width=4).double())
        >>> x, y = joint.sample(3)
        >>> x.shape, y.shape, joint.log_prob(x, y).shape
        (torch.Size([3, 2]), torch.Size([3, 1]), torch.Size([3]))
    """

    def __init__(self, marginal: nn.Module, conditional: ConditionalModel):
        super().__init__()
        if not isinstance(conditional, ConditionalModel):
            raise TypeError(
                f"conditional must be a COTFlow or PCPMap, got {type(conditional).__name__}"
            )
        for attr in ("log_prob", "sample"):
            if not callable(getattr(marginal, attr, None)):
                raise TypeError(f"marginal must have a {attr}() method (e.g. an OTFlow)")
        self.marginal, self.conditional = marginal, conditional

    def log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """log p(x, y) = log p(y) + log p(x | y) for rows ``(n, x_dim)``, ``(n, y_dim)``."""
        x, y = self.conditional._pair(x, y)
        return self.marginal.log_prob(y) + self.conditional.log_prob(x, y)

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """``n`` joint samples: y from the marginal, then x | y; ``(n, x_dim), (n, y_dim)``."""
        n = check_int("n", n, minimum=1)
        with torch.no_grad():
            y = self.marginal.sample((n,))
            return self.conditional(y).sample(), y

    def fit(self, x: Any, y: Any, *, marginal: dict | None = None, **kwargs: Any) -> None:
        """Fit the marginal on y (``marginal``: its ``fit`` keywords), then x | y
        (``kwargs``: :meth:`ConditionalModel.fit` keywords)."""
        x, y = check_pairs(x, y, self.conditional.x_dim, self.conditional.y_dim)
        self.marginal.fit(y.to(next(self.marginal.parameters())), **(marginal or {}))
        self.conditional.fit(x, y, **kwargs)
