r"""Deployment form of a trained value network: the feedback u*(x, ∇Φ(x, t)) as a few fused
matrix products with the trained weights, no autograd graph and no derivative machinery.

The regular path (:meth:`ValueNetwork.jet`) builds the exact gradient with the batched
derivative blocks of :mod:`odeflow.derivatives`, made for training (weight gradients through
∇Φ, Laplacians, validation). Online, at batch 1, their Python bookkeeping is most of the
cost; here the same ∇ₓΦ is one forward and one reverse sweep written out once.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ._problem import ControlProblem, QuadraticControlProblem
from ._reference import LQRValue
from ._residual import ResidualValue
from ._value import ValueNetwork

__all__ = ["OnlineFeedback"]

_BACKENDS = ("numpy", "torch")


def _layers(value: ValueNetwork):
    """(K₀ (m, d+1), b₀, [(h, Kᵢ, bᵢ)], w (m,), A (r, d+1), b_q (d+1,)) of the OT-Flow
    potential Φ = wᵀN(s) + ½|As|² + b_qᵀs + c, or TypeError for any other network."""
    from odeflow.derivatives import Linear, LogCosh, Quadratic, ResNet, Sequential, Single, Sum

    fix = (
        "OnlineFeedback supports the default ValueNetwork (Sum(Sequential(Single, ResNet…, "
        "Linear(m, 1)), Quadratic) with LogCosh activations); use value.jet(x, t).grad otherwise"
    )
    net = getattr(value, "net", None)
    if not isinstance(net, Sum) or len(net.blocks) != 2:
        raise TypeError(fix)
    seq = [b for b in net.blocks if isinstance(b, Sequential)]
    quad = [b for b in net.blocks if isinstance(b, Quadratic)]
    if len(seq) != 1 or len(quad) != 1:
        raise TypeError(fix)
    blocks = list(seq[0].blocks)
    first, mids, last = blocks[0], blocks[1:-1], blocks[-1] if len(blocks) > 1 else None
    ok = (
        isinstance(first, Single)
        and isinstance(first.act, LogCosh)
        and all(isinstance(b, ResNet) and isinstance(b.act, LogCosh) for b in mids)
        and isinstance(last, Linear)
        and last.out_features == 1
    )
    if not ok:
        raise TypeError(fix)
    res = [(b.h, b.K[i], b.b[i]) for b in mids for i in range(b.depth)]
    return first.K, first.b, res, last.K[0], quad[0].A, quad[0].b


class OnlineFeedback:
    r"""The learned feedback of a trained value network, fused for real-time use.

    For the OT-Flow potential Φ(s) = wᵀN(s) + ½|As|² + b_qᵀs + c on s = (x, t), with
    u₀ = σ(z₀), z₀ = K₀s + b₀, u_i = u_{i−1} + h σ(z_i), z_i = K_iu_{i−1} + b_i (σ = log cosh,
    σ′ = tanh), the exact gradient is one reverse sweep

    .. math::
        g_L = w,\quad g_{i-1} = g_i + h\,(g_i \odot \tanh z_i)K_i,\quad
        \nabla_s\Phi = (g_0 \odot \tanh z_0)K_0 + A^\top A s + b_q,

    and for a control-affine problem with quadratic control cost
    (:class:`QuadraticControlProblem`) u* = −R⁻¹Bᵀ∇ₓΦ. A :class:`ResidualValue` with an
    :class:`LQRValue` baseline adds the baseline's P(t)x + q(t) to ∇ₓΦ (its coefficients are
    computed once per time value and cached). The map p ↦ −R⁻¹Bᵀp is folded into
    the last layer's weights once (K₀'s x-columns and the x-rows of AᵀA), so one feedback is
    about a dozen array operations with no autograd bookkeeping: the same numbers as
    ``problem.feedback(x, value.jet(x, t).grad, t)`` up to round-off (the weights are read
    once; retrain, then build a new object). A network with ``time_degree`` adds its
    S(t)x = Σₖ tᵏSₖx to ∇ₓΦ (folded in the same way).

    Any other :class:`ControlProblem` (nonlinear feedback u*(x, p), a drift, e.g. the
    :class:`Quadcopter`) takes the same sweep for p = ∇ₓΦ without the folding and then its
    own closed forms: with ``backend="numpy"`` the problem must provide
    ``online_feedback(x, p, t)`` and ``online_dynamics(x, u, t)`` on float64 arrays, with
    ``backend="torch"`` its ``feedback`` and ``dynamics`` run under inference mode.

    ``backend="numpy"`` evaluates in float64 numpy arrays (fastest at batch 1 on a CPU);
    ``backend="torch"`` in torch tensors under :func:`torch.inference_mode` on the value's
    device and dtype (for batches and GPUs).

    Args:
        problem: a :class:`QuadraticControlProblem` of dimension d (e.g. an agent problem),
            or a deterministic :class:`ControlProblem` with the numpy closed forms above.
        value: a trained :class:`ValueNetwork` of dimension d with the default architecture,
            or ``ResidualValue(LQRValue, ValueNetwork)``.
        backend: ``"numpy"`` (float64) or ``"torch"``.

    Raises:
        TypeError: not a :class:`ControlProblem`, a problem with a density, a numpy backend
            for a problem without ``online_feedback``/``online_dynamics``, or another network
            architecture (use ``value.jet`` instead).
        ValueError: dimensions that do not match, an unknown backend.

    Reference: Onken, Nurbekyan, Li, Wu Fung, Osher, Ruthotto, "A neural network approach
    for high-dimensional optimal control applied to multi-agent path finding", IEEE TCST
    (2022), arXiv 2104.03270; OT-Flow's exact gradient, arXiv 2006.00104.

    Example:
        >>> import numpy as np, torch
        >>> from odeflow.control import Swap2, ValueNetwork
        >>> pb, phi = Swap2(), ValueNetwork(4, width=8).double()
        >>> online = OnlineFeedback(pb, phi)
        >>> x = pb.start[None]
        >>> u = online.feedback(x.numpy(), 0.3)
        >>> ref = pb.feedback(x, phi.jet(x, 0.3).grad, None)
        >>> bool(np.abs(u - ref.detach().numpy()).max() < 1e-12)
        True
        >>> online.rollout(x.numpy(), nt=20).shape   # the closed loop's final states
        (1, 4)
        >>> from odeflow.control import Quadcopter
        >>> quad, psi = Quadcopter(), ValueNetwork(12, width=8).double()
        >>> z = quad.start[None]
        >>> u = OnlineFeedback(quad, psi).feedback(z, 0.1)   # nonlinear in p = ∇ₓΦ
        >>> ref = quad.feedback(z, psi.jet(z, 0.1).grad, None)
        >>> bool(np.abs(u - ref.detach().numpy()).max() < 1e-12)
        True
    """

    def __init__(self, problem: QuadraticControlProblem, value: ValueNetwork, *,
                 backend: str = "numpy"):  # fmt: skip
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        self._general = _check_general(problem, backend)
        if getattr(value, "dim", None) != problem.dim:
            raise ValueError(
                f"value has dim={getattr(value, 'dim', None)!r} but the problem has "
                f"dim={problem.dim}"
            )
        base = None
        if isinstance(value, ResidualValue):
            if not isinstance(value.base, LQRValue):
                raise TypeError("OnlineFeedback supports a ResidualValue with an LQRValue base")
            base, value = value.base, value.net
        K0, b0, res, w, A, bq = _layers(value)
        self.dim, self.control_dim, self.backend = problem.dim, problem.control_dim, backend
        self.horizon = float(problem.horizon)
        d = self.dim
        ref = K0.detach()
        with torch.no_grad():
            if backend == "numpy":
                to = lambda v: v.detach().to("cpu", torch.float64, copy=True)  # noqa: E731
            else:
                to = lambda v: v.detach().to(ref, copy=True)  # noqa: E731
            K0, b0, w, A, bq = map(to, (K0, b0, w, A, bq))
            if self._general:  # F = −I: the sweep returns p = ∇ₓΦ itself
                F = -torch.eye(d, dtype=K0.dtype, device=K0.device)
                drift_free, B = False, None
            else:
                F = self._control_map(problem).to(K0)  # (d, m): u = −∇ₓΦ F
                drift_free = problem.drift(torch.zeros(1, d, dtype=K0.dtype), 0.0) is None
                B = None if problem.B is None else to(problem.B)
            M = A.mT @ A  # (d+1, d+1)
            arrays = {
                "K0x": K0[:, :d].mT.contiguous(),  # (d, m)
                "k0t": K0[:, d].clone(),
                "b0": b0,
                "res": [(float(h), to(K).mT.contiguous(), to(b), h * to(K)) for h, K, b in res],
                "w": w,
                "Kout": -(K0[:, :d] @ F),  # (m, m_u)
                "Mout": -(M[:d, :d] @ F),  # (d, m_u)
                "mt": -(M[d, :d] @ F),  # (m_u,)
                "bout": -(bq[:d] @ F),
                "Bt": None if B is None else B.mT.contiguous(),
                "Sout": None,
            }
            Mk = getattr(value, "time_quadratic", None)
            if Mk is not None:  # ValueNetwork(time_degree=K): ∇ₓ gains S(t)x = Σₖ tᵏ Sₖx
                S = to(0.5 * (Mk + Mk.mT))
                arrays["Sout"] = [-(Sk @ F) for Sk in S]  # (d, m_u) each
        if backend == "numpy":
            arrays = {k: _numpy(v) for k, v in arrays.items()}
        self._w = arrays
        self._xp = np if backend == "numpy" else torch
        self._drift_free, self._problem = drift_free, problem
        self._base, self._F, self._cache = base, F, {}

    def _base_term(self, t: float):
        """(−P(t)F, −q(t)ᵀF) of the LQR baseline, cached per time value."""
        out = self._cache.get(t)
        if out is None:
            P, q, _ = self._base.coefficients(t)
            P = torch.as_tensor(0.5 * (P + P.T)).to(self._F)
            q = torch.as_tensor(q).to(self._F)
            out = (-(P @ self._F), -(q @ self._F))
            if self.backend == "numpy":
                out = tuple(v.numpy() for v in out)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[t] = out
        return out

    @staticmethod
    def _control_map(problem: QuadraticControlProblem) -> Tensor:
        """F ``(d, m)`` with u* = −pF, i.e. F = B R⁻ᵀ (B = I when None)."""
        d = problem.dim
        B = torch.eye(d, dtype=torch.float64) if problem.B is None else problem.B.double()
        Rinv = problem.R_inv
        if isinstance(Rinv, Tensor):
            return B @ Rinv.double().mT
        return B * float(Rinv)

    # ------------------------------------------------------------------ evaluation
    def _input(self, x):
        """``x`` as the backend's array (a numpy backend also takes a tensor, a torch backend
        also takes an array), checked: shape ``(n, d)`` and finite."""
        if self.backend == "numpy" and isinstance(x, Tensor):
            x = x.detach().cpu().double().numpy()
        elif self.backend == "torch" and isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, (np.ndarray, Tensor)) or x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"x must be an array or tensor of shape (n, {self.dim}) (n states of this "
                f"problem), got {type(x).__name__} {tuple(getattr(x, 'shape', ()))}"
            )
        if self.backend == "numpy":
            x = np.asarray(x, dtype=np.float64)
            finite = bool(np.isfinite(x).all())
        else:
            x = x.to(self._w["b0"])
            finite = bool(torch.isfinite(x).all())
        if not finite:
            raise ValueError("x has non-finite entries (NaN or inf): pass finite states")
        return x

    def _feedback(self, x, t: float):
        """u* at states ``x (n, d)`` and a time t (no checks)."""
        if not self._general:
            return self._sweep(x, t)
        if self.backend == "numpy":
            return self._problem.online_feedback(x, self._sweep(x, t), t)
        return self._problem.feedback(x, self._sweep(x, t), x.new_tensor(t))

    def _sweep(self, x, t: float):
        """The fused sweep: u* = −∇ₓΦ F (a quadratic problem) or p = ∇ₓΦ (F = −I)."""
        W, xp = self._w, self._xp
        z = x @ W["K0x"] + (t * W["k0t"] + W["b0"])
        u = xp.logaddexp(z, -z)
        tape = []
        for h, KT, b, _ in W["res"]:
            zi = u @ KT + b
            tape.append(xp.tanh(zi))
            u = u + h * xp.logaddexp(zi, -zi)
        g = W["w"]
        for (_, _, _, hK), s1 in zip(reversed(W["res"]), reversed(tape), strict=True):
            g = g + (g * s1) @ hK
        u = (g * xp.tanh(z)) @ W["Kout"] + x @ W["Mout"] + (t * W["mt"] + W["bout"])
        if W["Sout"] is not None:
            S, tk = W["Sout"][0], 1.0
            for Sk in W["Sout"][1:]:
                tk = tk * t
                S = S + tk * Sk
            u = u + x @ S
        if self._base is None:
            return u
        Pout, qout = self._base_term(t)
        return u + x @ Pout + qout

    def feedback(self, x, t: float):
        """u*(x, ∇ₓΦ(x, t)) ``(n, m)`` at states ``x (n, d)`` and a time t (a number); ``x``
        may be a numpy array or a torch tensor, the result is the backend's type (numpy
        float64, or a tensor of the value's dtype and device).

        Raises:
            ValueError: x of the wrong shape or not finite, or a non-finite t.
        """
        if not math.isfinite(float(t)):
            raise ValueError(f"t must be a finite number, got {t!r}")
        if self.backend == "numpy":
            return self._feedback(self._input(x), float(t))
        with torch.inference_mode():
            return self._feedback(self._input(x), float(t))

    def _velocity(self, z, t):
        u = self._feedback(z, t)
        if self._general:
            if self.backend == "numpy":
                return self._problem.online_dynamics(z, u, t)
            return self._problem.dynamics(z, u, z.new_tensor(t))
        return u if self._w["Bt"] is None else u @ self._w["Bt"]

    def rollout(self, x, nt: int, *, paths: bool = False):
        """The online closed loop: ``nt`` RK4 steps of ż = B u*(z, t) (a quadratic problem)
        or ż = f(z, u*(z, t), t) (any other) from ``x (n, d)`` over [0, T], the steps of
        :func:`odeflow.control.rollout`; returns the final states ``(n, d)`` or, with
        ``paths=True``, all of them ``(nt + 1, n, d)`` (the cost: ``rollout``).

        Raises:
            ValueError: x of the wrong shape or not finite, nt < 1 or below the problem's
                stable count (``check_steps``), a quadratic problem with a drift a(x, t).
        """
        if isinstance(nt, bool) or not isinstance(nt, int) or nt < 1:
            raise ValueError(f"nt must be an integer >= 1, got {nt!r}")
        if self._general:
            self._problem.check_steps(nt, "rk4")
        elif not self._drift_free:
            raise ValueError("OnlineFeedback.rollout needs a problem without drift (ż = Bu)")
        if self.backend == "numpy":
            return self._rollout(self._input(x), nt, paths)
        with torch.inference_mode():
            return self._rollout(self._input(x), nt, paths)

    def _rollout(self, z, nt: int, paths: bool):
        h = self.horizon / nt
        f, out = self._velocity, [z]
        for k in range(nt):
            t = k * h
            k1 = f(z, t)
            k2 = f(z + (0.5 * h) * k1, t + 0.5 * h)
            k3 = f(z + (0.5 * h) * k2, t + 0.5 * h)
            z = z + (h / 6) * (k1 + 2 * (k2 + k3) + f(z + h * k3, t + h))
            if paths:
                out.append(z)
        if not paths:
            return z
        return np.stack(out) if self.backend == "numpy" else torch.stack(out)


def _check_general(problem, backend: str) -> bool:
    """False for a :class:`QuadraticControlProblem` (folded fast path), True for another
    deterministic problem usable on ``backend``; TypeError otherwise."""
    if isinstance(problem, QuadraticControlProblem):
        return False
    use = "use problem.feedback(x, value.jet(x, t).grad, t)"
    if not isinstance(problem, ControlProblem):
        raise TypeError(
            f"OnlineFeedback needs a ControlProblem (e.g. a QuadraticControlProblem); got "
            f"{type(problem).__name__}: {use}"
        )
    if problem.uses_density or problem.diffusion is not None:
        raise TypeError(
            f"OnlineFeedback needs a deterministic problem without density; "
            f"{type(problem).__name__} has {'a density' if problem.uses_density else 'noise'}"
            f": {use}"
        )
    has = all(callable(getattr(problem, k, None)) for k in ("online_feedback", "online_dynamics"))
    if backend == "numpy" and not has:
        raise TypeError(
            f"backend='numpy' needs {type(problem).__name__}.online_feedback(x, p, t) and "
            f".online_dynamics(x, u, t) on numpy arrays: add them, or use backend='torch'"
        )
    return True


def _numpy(v):
    if v is None:
        return None
    if isinstance(v, list):
        return [_numpy(r) if isinstance(r, Tensor) else
                tuple(_numpy(a) if isinstance(a, Tensor) else a for a in r) for r in v]  # fmt: skip
    return np.ascontiguousarray(v.numpy())
