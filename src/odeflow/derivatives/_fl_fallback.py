r"""The forward Laplacian's torch.func fallback for one op without a propagation rule.

With ``forward_laplacian(net, x, unsupported="torch.func")`` a traced node that has no rule,
y = g(x₁, …, x_k) (x_i its tensor inputs that depend on x; every other argument a constant), is
propagated exactly by nested forward-mode AD of the op itself. With the input jets
(v_i, J_i, L_i) (``_fl_jet.py``: J_i[:, a] the derivative along seed a, L_i the sum of second
derivatives over the first p seeds):

* value: y = g(v₁, …, v_k);
* directions: J_y[:, a] = Σ_i ∂_i g · J_i[:, a], one ``torch.func.jvp`` per seed a;
* Laplacian-type term: L_y = Σ_i ∂_i g · L_i + Σ_{a<p} D²g[u_a, u_a] with u_a = (J_i[:, a])_i,
  the second directional derivative of g along u_a as a forward-over-forward ``jvp`` of
  ``jvp`` (its outer primal output is J_y[:, a], so the p trace seeds cost one nested jvp each).

That is the chain rule to second order, d²/dt² g(v + t u + ½t² w)|₀ = D²g[u, u] + Dg[w], summed
over the seeds. The op runs on the whole batch (n, …) with the per-seed tangents (n, …): an op
that acts on each sample separately (dim 0 the batch, as everywhere in the forward Laplacian)
has a block-diagonal derivative over the samples, so the batch needs no extra map; the seeds
are one ``torch.func.vmap``. Cost per fallback node: p jvp-of-jvps (about three evaluations of
the op each), c − p jvps for the gradient-only seeds and one jvp for L, instead of one rule.
"""

from __future__ import annotations

import collections
import functools
import warnings

import torch
from torch import func as tf
from torch.fx.node import map_aggregate
from torch.utils import _pytree as pytree

from ._fl_jet import FLCtx, Jet, UnsupportedOpError, fit, fitL

__all__ = ["fallback"]


def _float_outputs(op, args, kwargs):
    """g(*tensors): the op with the jets' tensors substituted, returning its floating outputs
    as a list (the others are constants of the result)."""

    def g(*ts):
        it = iter(ts)
        # a clone per call: an op that writes into its input never touches the jets' values
        a, k = map_aggregate(
            (args, kwargs), lambda z: next(it).clone() if isinstance(z, Jet) else z
        )
        leaves = pytree.tree_leaves(op(*a, **k))
        return [t for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()]

    return g


def fallback(op, name: str, ctx: FLCtx, args, kwargs):
    """Propagate the jets in ``args``/``kwargs`` through ``op`` (named ``name`` in errors) by
    torch.func: the value, J and L of every floating tensor the op returns (see the module
    docstring); non-floating outputs are constants."""
    jets: list[Jet] = []
    map_aggregate((args, kwargs), lambda z: jets.append(z) if isinstance(z, Jet) else None)
    vals = tuple(j.v for j in jets)
    Js = []
    for j in jets:  # (n, c, *s): the value's shape, the batch expanded (a free view)
        J = fit(j.J, j.v).to(j.v.dtype)
        Js.append(J.expand(j.v.shape[0], *J.shape[1:]))
    c, p = Js[0].shape[1], min(ctx.p, Js[0].shape[1])
    g = _float_outputs(op, args, kwargs)

    def nested(*us):  # (Dg[u], D²g[u, u]) along one seed u = (J_i[:, a])_i
        return tf.jvp(lambda *prim: tf.jvp(g, prim, us)[1], vals, us)

    def first(*us):
        return tf.jvp(g, vals, us)[1]

    a, k = map_aggregate((args, kwargs), lambda z: z.v if isinstance(z, Jet) else z)
    out = op(*a, **k)  # (an error of the op itself is the user's, not the fallback's)
    try:
        with warnings.catch_warnings():
            # vmap's note on ops without a batching rule: the slowdown is what our warning says
            warnings.filterwarnings("ignore", "There is a performance drop")
            J1, J2, D2 = [], [], None
            if p:
                J1, D2 = tf.vmap(nested, in_dims=1)(*(J[:, :p] for J in Js))
            if c > p:
                J2 = tf.vmap(first, in_dims=1)(*(J[:, p:] for J in Js))
            DL = None
            if any(j.L is not None for j in jets):
                Ls = [
                    torch.zeros_like(v) if j.L is None else fitL(j.L, v).to(v.dtype)
                    for j, v in zip(jets, vals, strict=True)
                ]
                DL = tf.jvp(g, vals, tuple(Ls))[1]
    except UnsupportedOpError:
        raise
    except Exception as exc:
        raise UnsupportedOpError(
            f"forward Laplacian: the torch.func fallback could not propagate {name} "
            f"({type(exc).__name__}: {exc}); the op must be differentiable by torch.func.jvp "
            "and vmap-able over a leading axis."
        ) from exc
    return _assemble(out, vals[0].shape[0], J1, J2, D2, DL, ctx, name)


def _assemble(out, n: int, J1, J2, D2, DL, ctx: FLCtx, name: str):
    """The op's output with every floating tensor replaced by its jet."""
    leaves, spec = pytree.tree_flatten(out)
    k = 0
    for i, t in enumerate(leaves):
        if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
            continue
        if t.ndim == 0 or t.shape[0] != n:
            raise UnsupportedOpError(
                f"forward Laplacian: {name} maps the batch of {n} samples to shape "
                f"{tuple(t.shape)}; keep dim 0 the batch."
            )
        parts = [P[k] for P in (J1, J2) if len(P)]  # (seeds, n, *s) each
        J = (parts[0] if len(parts) == 1 else torch.cat(parts, 0)).movedim(0, 1)
        L = None if D2 is None else D2[k].to(ctx.acc).sum(0)
        if DL is not None:
            L = DL[k].to(ctx.acc) if L is None else L + DL[k].to(ctx.acc)
        leaves[i] = Jet(t, J, L)
        k += 1
    res = pytree.tree_unflatten(leaves, spec)
    fields = getattr(type(res), "__match_args__", None)
    if isinstance(res, tuple) and fields and not hasattr(res, "_fields"):
        # a torch.return_types structseq (values, indices): a namedtuple, whose fields the
        # interpreter keeps (``.values`` still works on it)
        res = _namedtuple(type(res).__name__, tuple(fields))(*res)
    return res


@functools.cache
def _namedtuple(name: str, fields: tuple):
    return collections.namedtuple(name, fields)
