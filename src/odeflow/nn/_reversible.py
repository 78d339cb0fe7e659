"""Memory-free training of reversible (leapfrog and Verlet) blocks.

The forward pass runs without a graph and keeps only the final pair of states (plus the
initial pair, and optional checkpoints). The backward pass walks the steps in reverse: each
step's inverse reconstructs the previous pair from the current one, and the same evaluations
of the layers give the step's vector–Jacobian products, so memory is O(1) in depth and the
cost is one extra evaluation of the layers per step.

Drift check: in floating point the reconstruction drifts from the forward states (slowly for
small steps and smooth layers, fast for large ``h‖K‖``). At every checkpoint (at least the
block's input) the reconstructed pair is compared with the stored one in float64,
``drift = max ‖reconstructed − stored‖ / ‖stored‖``; if ``drift > drift_tol`` (or is not
finite) that segment's backward pass is redone from the stored checkpoint by recomputing
the segment's states forward and keeping them (memory O(segment length) for that segment).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

__all__: list[str] = []


def _acc(grads: list[torch.Tensor], new, offset: int) -> None:
    for i, g in enumerate(new):
        if g is not None:
            grads[offset + i].add_(g)


def _fast_names(layer) -> list[str] | None:
    """The weight names whose coefficients get gradients, when the layer's parameters are
    exactly its time-parameterized weights (so the hand-written VJP covers all of them)."""
    params = list(layer.parameters())
    coeffs = [getattr(layer, n) for n in layer._weight_names]
    if len(params) != len(coeffs) or any(p is not c for p, c in zip(params, coeffs)):
        return None
    return [n for n in layer._weight_names if getattr(layer, n).requires_grad]


def field_and_vjp(layer, params, names, phi, x, a, grads, offset):
    """``f(x)`` at the step with basis values ``phi`` and ``(∂f/∂x)ᵀa``; the parameter part
    ``(∂f/∂θ)ᵀa`` is added to ``grads[offset:]`` (by hand where the layer has
    ``field_vjp``, else by autograd)."""
    w = layer.weights_from(phi)
    res = layer.field_vjp(x, w, a) if names is not None else None
    if res is not None:
        f, gx, gw = res
        for i, n in enumerate(names):
            g = gw[n].reshape(1, -1)
            grads[offset + i].add_((phi[:, None] * g).reshape(grads[offset + i].shape))
        return f, gx
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        f = layer.field(xg, layer.weights_from(phi))
    out = torch.autograd.grad(f, [xg, *params], a, allow_unused=True)
    _acc(grads, out[1:], offset)
    return f.detach(), out[0]


class LeapfrogStepper:
    """Leapfrog ``y_{k+1} = 2 y_k − y_{k−1} + h² f(t_k, y_k)`` on the pair ``(y_k, d_k)``,
    ``d_k = y_k − y_{k−1}``: ``d_{k+1} = d_k + h² f(t_k, y_k)``, ``y_{k+1} = y_k + d_{k+1}``.

    The same scheme in exact arithmetic; carrying the small difference ``d`` instead of
    ``y_{k−1}`` avoids the cancellation in ``2 y_k − y_{k−1}`` (round-off ``eps·|d|`` instead
    of ``eps·|y|`` per step), so the inverse reconstructs far more accurately.
    """

    def __init__(self, layer, n_steps: int, h: float):
        self.layer, self.n_steps, self.h = layer, n_steps, h
        self.params = [p for p in layer.parameters() if p.requires_grad]
        self.names = _fast_names(layer)
        self.phi = layer.basis_table([k * h for k in range(n_steps)])

    def _w(self, k):
        return self.layer.weights_from(self.phi[k])

    def step(self, k: int, y, d):
        d = d + self.h * self.h * self.layer.field(y, self._w(k))
        return y + d, d

    def inverse(self, k: int, y, d):
        y = y - d
        return y, d - self.h * self.h * self.layer.field(y, self._w(k))

    def reverse(self, k, nxt, adj, grads, prev=None):
        """One backward step: the previous pair (reconstructed, or ``prev``) and its adjoint."""
        yn, dn = nxt
        ayn, adn = adj
        h2 = self.h * self.h
        a_d = adn + ayn
        y = (yn - dn) if prev is None else prev[0]
        f, gy = field_and_vjp(
            self.layer, self.params, self.names, self.phi[k], y, h2 * a_d, grads, 0
        )
        if prev is None:
            prev = (y, dn - h2 * f)
        return prev, (ayn + gy, a_d)


class VerletStepper:
    """``y_{k+1} = y_k + h f_y(t_k, z_k)``, ``z_{k+1} = z_k + h f_z(t_k, y_{k+1})``."""

    def __init__(self, layer_y, layer_z, n_steps: int, h: float):
        self.layer_y, self.layer_z, self.n_steps, self.h = layer_y, layer_z, n_steps, h
        self.params_y = [p for p in layer_y.parameters() if p.requires_grad]
        self.params_z = [p for p in layer_z.parameters() if p.requires_grad]
        self.params = self.params_y + self.params_z
        self.names_y, self.names_z = _fast_names(layer_y), _fast_names(layer_z)
        times = [k * h for k in range(n_steps)]
        self.phi_y, self.phi_z = layer_y.basis_table(times), layer_z.basis_table(times)

    def _wy(self, k):
        return self.layer_y.weights_from(self.phi_y[k])

    def _wz(self, k):
        return self.layer_z.weights_from(self.phi_z[k])

    def step(self, k: int, y, z):
        y = y + self.h * self.layer_y.field(z, self._wy(k))
        return y, z + self.h * self.layer_z.field(y, self._wz(k))

    def inverse(self, k: int, y, z):
        z = z - self.h * self.layer_z.field(y, self._wz(k))
        return y - self.h * self.layer_y.field(z, self._wy(k)), z

    def reverse(self, k, nxt, adj, grads, prev=None):
        yn, zn = nxt
        ayn, azn = adj
        h, ny = self.h, len(self.params_y)
        lz, ly = self.layer_z, self.layer_y
        g, gy = field_and_vjp(
            lz, self.params_z, self.names_z, self.phi_z[k], yn, h * azn, grads, ny
        )
        ay = ayn + gy
        z = (zn - h * g) if prev is None else prev[1]
        f, gz = field_and_vjp(ly, self.params_y, self.names_y, self.phi_y[k], z, h * ay, grads, 0)
        y = (yn - h * f) if prev is None else prev[0]
        return (y, z), (ay, azn + gz)


def _drift(rec, stored) -> float:
    """``max_i ‖rec_i − stored_i‖ / ‖stored_i‖`` in float64 (``inf`` when not finite)."""
    worst = 0.0
    for a, b in zip(rec, stored):
        a64, b64 = a.to(torch.float64), b.to(torch.float64)
        den = max(float(torch.linalg.vector_norm(b64)), torch.finfo(torch.float64).tiny)
        d = float(torch.linalg.vector_norm(a64 - b64)) / den
        if not d == d or d == float("inf"):  # NaN or inf
            return float("inf")
        worst = max(worst, d)
    return worst


class ReversibleFunction(torch.autograd.Function):
    """Forward without a graph; backward by reconstruction (see the module docstring)."""

    @staticmethod
    def forward(ctx, stepper, every, drift_tol, u0, v0, *params):
        n = stepper.n_steps
        every = n if every is None else every
        with torch.no_grad():
            u, v = u0, v0
            flat = [u0, v0]
            for k in range(n):
                if k > 0 and k % every == 0:
                    flat += [u, v]
                u, v = stepper.step(k, u, v)
        if u is u0 or u is v0:
            u = u.clone()
        if v is u0 or v is v0:
            v = v.clone()
        ctx.stepper, ctx.every, ctx.drift_tol = stepper, every, drift_tol
        ctx.save_for_backward(u, v, *flat)
        return u, v

    @staticmethod
    @once_differentiable
    def backward(ctx, au, av):
        st, every, tol = ctx.stepper, ctx.every, ctx.drift_tol
        u, v, *flat = ctx.saved_tensors
        ckpts = [(flat[2 * j], flat[2 * j + 1]) for j in range(len(flat) // 2)]
        au = torch.zeros_like(u) if au is None else au
        av = torch.zeros_like(v) if av is None else av
        grads = [torch.zeros_like(p) for p in st.params]
        end = st.n_steps
        state = (u, v)
        for j in reversed(range(len(ckpts))):
            start = j * every
            keep = (au, av, [g.clone() for g in grads])
            s, a = state, (au, av)
            for k in reversed(range(start, end)):
                s, a = st.reverse(k, s, a, grads)
            if not _drift(s, ckpts[j]) <= tol:  # fall back to the stored checkpoint
                au, av, grads = keep[0], keep[1], keep[2]
                states = [ckpts[j]]
                with torch.no_grad():
                    for k in range(start, end):
                        states.append(st.step(k, *states[-1]))
                a = (au, av)
                for k in reversed(range(start, end)):
                    _, a = st.reverse(k, states[k - start + 1], a, grads, prev=states[k - start])
            au, av = a
            state = ckpts[j]
            end = start
        return (None, None, None, au, av, *grads)
