"""OT-Flow (odeflow) against Hutchinson-trace CNFs (torchdiffeq) and zuko's CNF.

Measures, side by side in one run:

1. time per training iteration (forward + backward of the loss), log-density throughput and
   the number of vector-field evaluations (NFE) per training iteration, for d ∈ {2, 43, 63}:

   - odeflow OT-Flow fp32 and bf16: exact analytic trace, fixed-step RK4 (the paper's step
     counts: 8 at d = 2, 6 at d = 43 (MINIBOONE), 14 at d = 63 (BSDS300)), backprop through
     the steps;
   - "Hutchinson CNF (matched steps)": a tanh MLP d+1 → h → h → d with a one-probe
     Rademacher Hutchinson trace, integrated by torchdiffeq's fixed-step rk4 with the same
     step count as OT-Flow (the like-for-like arithmetic comparison);
   - "FFJORD-faithful": the model and solver FFJORD actually trains on MINIBOONE
     (``train_tabular.py --data miniboone --adjoint --nonlinearity softplus --nhidden 2
     --hdim_factor 20 --num_blocks 1 --layer_type concat``): "concat" layers (t appended to
     each layer's input), softplus, hidden width 20·d (860 at d = 43, 1260 at d = 63; 64 at
     d = 2), one *Gaussian* Hutchinson probe per solve, ``torchdiffeq.odeint_adjoint``
     with dopri5, atol 1e-8, rtol 1e-6, and a trained end time T (``train_T``, started at
     0.5). Its NFE is counted, forward and backward (the continuous adjoint re-solves
     backward in time). Because FFJORD's NFE grows during training, the row is measured
     twice: at initialisation ("cold") and after a short warm training ("warm": Adam,
     lr 1e-3, weight decay 1e-6 as FFJORD, batch 256, on the data described below);
   - zuko's CNF (adaptive dopri5 with its defaults atol 1e-6, rtol 1e-5; exact trace by
     default, Hutchinson option), hidden (h, h), NFE counted by a hook on its MLP. A row
     whose single iteration exceeds the per-row budget is skipped with the reason recorded.

   Each row also carries analytic costs: multiply-adds (MACs) per sample per vector-field
   evaluation ("stage") of value + trace, and the NFE per iteration.

2. time to target on 8gaussians: wall time of training (validation excluded) until the
   validation NLL first gets within 0.1 nats of the Monte-Carlo entropy of the true mixture,
   with a cap; plus the test NLL after a fixed budget of iterations.
3. with ``--dataset ROOT`` (MAF-format data present), OT-Flow with the paper's MINIBOONE /
   POWER presets and its test NLL beside the published value.

Warm-training data (fixed, seeded, offline, non-Gaussian): d = 2: the 8gaussians toy;
2 < d ≤ 61: scikit-learn's ``digits`` (dequantised, standardised; 61 non-constant pixels),
reduced to d dimensions by whitened PCA (training split); d > 61: a seeded 10-component
Gaussian mixture, standardised.

    python benchmarks/flows_peers.py --quick --json flows.json
    python benchmarks/flows_peers.py --json flows_full.json
    python benchmarks/flows_peers.py --dataset ~/data/maf --json flows_full.json
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import platform
import signal
import statistics
import threading
import time

import torch
from torch import nn

import odeflow
from odeflow.flows import (
    OTFlow,
    eight_gaussians_entropy,
    evaluate_nll,
    fit,
    load_sklearn,
    make_toy,
)

OT_WIDTH = {2: 32, 43: 256, 63: 512}
OT_STEPS = {2: 8, 43: 6, 63: 14}
PEER_WIDTH = {2: 64, 43: 860, 63: 1260}  # 20·d at d = 43, 63 (FFJORD's hdim_factor 20)
FULL_BATCH = {2: 2000, 43: 2000, 63: 300}  # the paper's batch at d = 43 (MINIBOONE), 63 (BSDS300)
PUBLISHED = {"miniboone": 10.55, "power": -0.30}  # OT-Flow Table 2 (recalled, see flows.md)
FFJORD_TOL = {"atol": 1e-8, "rtol": 1e-6}  # FFJORD train_tabular defaults
ZUKO_FREQS = 3  # zuko's default time embedding: 2·3 extra inputs


# --------------------------------------------------------------------- timing with a budget
class _OverBudget(Exception):
    pass


@contextlib.contextmanager
def _alarm(seconds: float | None, state: dict):
    """Raise _OverBudget in the main thread after ``seconds`` (SIGALRM; no-op elsewhere)."""
    usable = (seconds is not None and hasattr(signal, "SIGALRM")
              and threading.current_thread() is threading.main_thread())  # fmt: skip
    if not usable:
        yield
        return

    def handler(signum, frame):
        state["fired"] = True
        raise _OverBudget(f"over the {seconds:.0f} s budget")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(float(seconds), 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _sync() -> None:
    """Wait for queued CUDA work (timings of GPU rows); a no-op on CPU."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _timeit(fn, repeats: int, budget_s: float) -> dict:
    """One warm-up call, then up to ``repeats`` timed calls while the budget lasts.

    Every call runs under an alarm of ``budget_s``; a call that exceeds it raises
    :class:`_OverBudget`. Returns min/median seconds, the number of timed calls and the
    last call's return value.
    """
    state = {"fired": False}
    try:
        with _alarm(budget_s, state):
            fn()  # warm-up
            _sync()
        times, out, spent = [], None, 0.0
        for _ in range(repeats):
            with _alarm(budget_s, state):
                t0 = time.perf_counter()
                out = fn()
                _sync()
                times.append(time.perf_counter() - t0)
            spent += times[-1]
            if spent > budget_s:
                break
    except Exception as exc:
        if state["fired"] or isinstance(exc, _OverBudget):
            raise _OverBudget(f"one call took longer than the per-row budget of {budget_s:.0f} s "
                              "and was stopped") from None  # fmt: skip
        raise
    return {"min": min(times), "median": statistics.median(times), "n": len(times), "out": out}


class _Counter:
    """Counts vector-field evaluations."""

    def __init__(self):
        self.n = 0


def _train_step(loss_fn, counter: _Counter | None):
    """Forward + backward of one loss; returns (NFE forward, NFE backward) or None."""
    c0 = counter.n if counter else 0
    loss = loss_fn()
    c1 = counter.n if counter else 0
    loss.backward()
    c2 = counter.n if counter else 0
    return (c1 - c0, c2 - c1) if counter else None


# --------------------------------------------------------------------- analytic costs
def macs_otflow(d: int, m: int, depth: int = 2, r: int | None = None) -> int:
    """MACs per sample of one OT-Flow stage: Φ, ∇Φ and the exact Laplacian Δ_xΦ.

    Forward K₀s: m(d+1); each residual layer m²; backward (gradient) the same again;
    trace: opening term m·d (squared columns of K₀ against σ″), per residual layer the
    Jacobian product K₁·diag(σ′)·K₀ₓ: m²·d, and its weighted sum m·d; the quadratic term
    A ∈ R^{r×(d+1)} forward and backward 2r(d+1).
    """
    r = min(10, d + 1) if r is None else r
    return (2 * m * (d + 1) + 2 * (depth - 1) * m * m + (depth - 1) * m * m * d
            + 3 * m * d + 2 * r * (d + 1) + m)  # fmt: skip


def _mlp_macs(sizes: list[tuple[int, int]]) -> int:
    return sum(i * o for i, o in sizes)


def macs_hutchinson(sizes: list[tuple[int, int]], probes: int = 1) -> int:
    """MACs per sample of one stage: the MLP forward plus one VJP per probe (≈ forward each)."""
    return (1 + probes) * _mlp_macs(sizes)


def _sizes_matched(d, h):  # tanh MLP on [x, t]
    return [(d + 1, h), (h, h), (h, d)]


def _sizes_ffjord(d, h):  # concat layers: t appended to every layer's input
    return [(d + 1, h), (h + 1, h), (h + 1, d)]


def _sizes_zuko(d, h):  # zuko: [cos, sin](k·π·t), k = 1..3, appended to the input
    return [(d + 2 * ZUKO_FREQS, h), (h, h), (h, d)]


# --------------------------------------------------------------------- Hutchinson CNFs
def _log_normal(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z * z).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)


class _MLPField(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d + 1, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(),
                                 nn.Linear(h, d))  # fmt: skip

    def forward(self, t, x):
        return self.net(torch.cat([x, t.expand(x.shape[0], 1)], 1))


class _HutchCNF(nn.Module):
    """Matched steps: ẋ = v(x, t), d log|det|/dt = εᵀ(∂v/∂x)ε, one Rademacher ε per solve,
    fixed-step rk4 (torchdiffeq) with ``nt`` steps, backprop through the steps."""

    def __init__(self, d: int, h: int, nt: int, exact_eval: bool = False):
        super().__init__()
        self.field, self.d, self.nt, self.exact = _MLPField(d, h), d, nt, exact_eval
        self.eps = None
        self.counter = _Counter()

    def forward(self, t, state):
        self.counter.n += 1
        x, _ = state
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.requires_grad_(True)
            v = self.field(t, x)
            if self.exact:
                div = sum(torch.autograd.grad(v[:, i].sum(), x, create_graph=True)[0][:, i]
                          for i in range(self.d))  # fmt: skip
            else:
                ev = torch.autograd.grad(v, x, self.eps, create_graph=True)[0]
                div = (ev * self.eps).sum(1)
        return v, div

    def log_prob(self, x):
        from torchdiffeq import odeint

        self.eps = torch.randint(0, 2, x.shape, device=x.device).to(x.dtype) * 2 - 1
        t = torch.tensor([0.0, 1.0], dtype=x.dtype)
        z, ld = odeint(self, (x, x.new_zeros(x.shape[0])), t, method="rk4",
                       options={"step_size": 1.0 / self.nt})  # fmt: skip
        return _log_normal(z[-1]) + ld[-1]


class _ConcatLinear(nn.Module):
    """FFJORD's "concat" layer: a linear map of [t, h]."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.lin = nn.Linear(n_in + 1, n_out)

    def forward(self, t, h):
        return self.lin(torch.cat([t.expand(h.shape[0], 1), h], 1))


class _FFJORDCNF(nn.Module):
    """FFJORD as run on MINIBOONE: concat-softplus MLP, Gaussian Hutchinson, adjoint dopri5.

    State (z, Δlogp) with dz/dt = f(z, t), dΔlogp/dt = −εᵀ(∂f/∂z)ε (one ε ~ N(0, I) per
    solve), integrated over [0, T] with T = sqrt_end_time² trained; log p(x) =
    log N(z(T)) − Δlogp(T). Grathwohl et al., arXiv 1810.01367.
    """

    def __init__(self, d: int, h: int, nhidden: int = 2, time_length: float = 0.5,
                 atol: float = 1e-8, rtol: float = 1e-6, exact_eval: bool = False):  # fmt: skip
        super().__init__()
        dims = [d] + [h] * nhidden + [d]
        self.layers = nn.ModuleList(_ConcatLinear(a, b) for a, b in itertools.pairwise(dims))
        self.sqrt_end_time = nn.Parameter(torch.tensor(math.sqrt(time_length)))
        self.atol, self.rtol, self.exact, self.d = atol, rtol, exact_eval, d
        self.eps = None
        self.counter = _Counter()

    def field(self, t, x):
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(t, h)
            if i < len(self.layers) - 1:
                h = nn.functional.softplus(h)
        return h

    def forward(self, t, state):
        self.counter.n += 1
        x = state[0]
        if not (torch.is_grad_enabled() and x.requires_grad):  # a fresh leaf for the VJP
            x = x.detach().requires_grad_(True)
        with torch.enable_grad():  # adjoint solve: x is already part of torchdiffeq's graph
            v = self.field(t, x)
            if self.exact:
                div = sum(torch.autograd.grad(v[:, i].sum(), x, create_graph=True)[0][:, i]
                          for i in range(self.d))  # fmt: skip
            else:
                ev = torch.autograd.grad(v, x, self.eps, create_graph=True)[0]
                div = (ev * self.eps).sum(1)
        return v, -div

    def log_prob(self, x, adjoint: bool = True):
        from torchdiffeq import odeint, odeint_adjoint

        self.eps = torch.randn_like(x)
        t = torch.stack([torch.zeros_like(self.sqrt_end_time), self.sqrt_end_time**2]).to(x)
        y0 = (x, x.new_zeros(x.shape[0]))
        kw = dict(method="dopri5", atol=self.atol, rtol=self.rtol)
        if adjoint and torch.is_grad_enabled():
            z, dlogp = odeint_adjoint(self, y0, t, adjoint_params=tuple(self.parameters()), **kw)
        else:
            z, dlogp = odeint(self, y0, t, **kw)
        return _log_normal(z[-1]) - dlogp[-1]


def _zuko(d: int, h: int, exact: bool):
    import zuko

    z = zuko.flows.CNF(d, hidden_features=(h, h), exact=exact)
    counter = _Counter()
    mlps = [m for m in z.modules() if isinstance(m, zuko.nn.MLP)]

    def hook(module, args):
        counter.n += 1

    mlps[0].register_forward_pre_hook(hook)
    return z, counter


# --------------------------------------------------------------------- data
def warm_data(d: int, n: int | None = None, seed: int = 0) -> tuple[torch.Tensor, str]:
    """Fixed, seeded, non-Gaussian training data of dimension ``d`` and its description."""
    if d == 2:
        return make_toy("8gaussians", n or 20_000, seed=seed), "8gaussians toy"
    if d <= 61:
        from sklearn.decomposition import PCA

        x = load_sklearn("digits", seed=seed).train.double().numpy()
        z = PCA(n_components=d, whiten=True, random_state=seed).fit_transform(x)
        return (
            torch.as_tensor(z, dtype=torch.float32),
            f"sklearn digits (dequantised, standardised), whitened PCA to {d} dims",
        )
    g = torch.Generator().manual_seed(seed)
    k, n = 10, n or 20_000
    mu = 3.0 * torch.randn(k, d, generator=g)
    scale = 0.3 + torch.rand(k, d, generator=g)
    idx = torch.randint(0, k, (n,), generator=g)
    x = mu[idx] + scale[idx] * torch.randn(n, d, generator=g)
    x = (x - x.mean(0)) / x.std(0)
    return x, f"seeded {k}-component Gaussian mixture in {d} dims, standardised"


# --------------------------------------------------------------------- speed table
def _measure(row, train_fn, eval_fn, repeats, budget, analytic_nfe=None):
    try:
        tr = _timeit(train_fn, repeats, budget)
        row["train_iter_s"], row["train_iter_median_s"], row["repeats"] = (
            tr["min"], tr["median"], tr["n"])  # fmt: skip
        if tr["out"] is not None:
            row["nfe_fwd"], row["nfe_bwd"] = tr["out"]
        elif analytic_nfe is not None:
            row["nfe_fwd"], row["nfe_bwd"] = analytic_nfe
        with torch.no_grad():
            ev = _timeit(eval_fn, repeats, budget)
        row["logp_per_s"] = row["batch"] / ev["min"]
    except _OverBudget as exc:
        row["skipped"] = str(exc)
    except Exception as exc:  # a peer failing is reported, not fatal
        row["error"] = f"{type(exc).__name__}: {exc}"[:200]
    if "nfe_fwd" in row and "macs_stage" in row:
        row["macs_iter_fwd"] = row["macs_stage"] * row["nfe_fwd"]
    print(_fmt_row(row), flush=True)
    return row


def bench_speed(
    d,
    batch,
    repeats,
    budget,
    have_tdq,
    have_zuko,
    zuko_dims,
    warm_iters,
    models=None,
    device="cpu",
    compile_rows=False,
):
    rows = []

    def want(name):
        return models is None or any(m.lower() in name.lower() for m in models)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, d, generator=g).to(device)
    nt, h = OT_STEPS[d], PEER_WIDTH[d]

    def row(model, kind, params, macs, **extra):
        return {"d": d, "model": model, "kind": kind, "batch": batch, "params": params,
                "macs_stage": macs, **extra}  # fmt: skip

    modes = ("", "compile", "graphs", "compile+graphs")
    variants = [(p, m) for m in modes for p in ("fp32", "bf16")]
    for prec, mode in variants:
        name = f"odeflow OT-Flow {prec}" + (f" +{mode}" if mode else "")
        compiled, graphs = "compile" in mode, "graphs" in mode
        if not want(name) or (compiled and not compile_rows):
            continue
        if graphs and device != "cuda":  # CUDA graphs: no effect elsewhere
            continue
        torch.manual_seed(0)
        f = OTFlow(d, width=OT_WIDTH[d], nt=nt, nt_eval=nt, precision=prec,
                   compile=compiled, gradient="adjoint" if graphs else "backprop",
                   cuda_graphs=graphs)  # fmt: skip
        f = f.to(device)
        kind = (
            "exact trace, rk4"
            + {
                "": "",
                "compile": ", torch.compile (warm-up call compiles)",
                "graphs": ", discrete adjoint, CUDA graphs (warm-up call captures)",
                "compile+graphs": ", torch.compile inside captured discrete-adjoint steps",
            }[mode]
        )
        note = (f"NFE analytic: 4 stages × {nt} steps, "
                + ("adjoint: forward + rebuild per step" if graphs
                   else "backprop, no re-evaluation"))  # fmt: skip
        r = row(
            name,
            kind,
            sum(p.numel() for p in f.parameters()),
            macs_otflow(d, OT_WIDTH[d]),
            rk4_steps=nt,
            note=note,
        )
        nfe = (4 * nt, 4 * nt) if graphs else (4 * nt, 0)
        rows.append(
            _measure(
                r,
                lambda f=f: f.loss(x).total.backward(),
                lambda f=f: f.log_prob(x),
                repeats,
                budget,
                nfe,
            )
        )
    if have_tdq and want("Hutchinson CNF (matched steps)"):
        torch.manual_seed(0)
        c = _HutchCNF(d, h, nt).to(device)
        r = row("Hutchinson CNF (matched steps)", "1 Rademacher probe, rk4",
                sum(p.numel() for p in c.parameters()), macs_hutchinson(_sizes_matched(d, h)),
                rk4_steps=nt, note="torchdiffeq rk4, same step count as OT-Flow")  # fmt: skip
        rows.append(_measure(r, lambda: _train_step(lambda: -c.log_prob(x).mean(), c.counter),
                             lambda: c.log_prob(x), repeats, budget))  # fmt: skip
    if have_tdq and want("FFJORD-faithful"):
        torch.manual_seed(0)
        ff = _FFJORDCNF(d, h, **FFJORD_TOL).to(device)
        npar = sum(p.numel() for p in ff.parameters())
        macs = macs_hutchinson(_sizes_ffjord(d, h))
        kind = "1 Gaussian probe, adjoint dopri5"
        note = "atol 1e-8, rtol 1e-6, continuous adjoint, trained T"

        def ff_train(ff=ff):
            return _train_step(lambda: -ff.log_prob(x).mean(), ff.counter)

        rows.append(_measure(row("FFJORD-faithful (cold)", kind, npar, macs,
                                 note="at initialisation; " + note),
                             ff_train, lambda: ff.log_prob(x), repeats, budget))  # fmt: skip
        if warm_iters > 0:
            data, desc = warm_data(d)
            opt = torch.optim.Adam(ff.parameters(), lr=1e-3, weight_decay=1e-6)
            gw = torch.Generator().manual_seed(1)
            trace, t0, state = [], time.perf_counter(), {"fired": False}
            try:
                with _alarm(max(budget, 1.0) * 4, state):
                    for it in range(1, warm_iters + 1):
                        xb = data[torch.randint(0, data.shape[0], (256,), generator=gw)]
                        xb = xb.to(device)
                        opt.zero_grad()
                        nfe = _train_step(lambda xb=xb: -ff.log_prob(xb).mean(), ff.counter)
                        opt.step()
                        trace.append({"iter": it, "nfe_fwd": nfe[0], "nfe_bwd": nfe[1]})
                done = warm_iters
            except _OverBudget:
                done = len(trace)
            warm_s = time.perf_counter() - t0
            first = f"{trace[0]['nfe_fwd']}/{trace[0]['nfe_bwd']}" if trace else "-"
            last = f"{trace[-1]['nfe_fwd']}/{trace[-1]['nfe_bwd']}" if trace else "-"
            print(
                f"  d={d:<3} FFJORD-faithful warm training: {done} Adam iterations in "
                f"{warm_s:.0f} s; NFE fwd/bwd {first} -> {last}",
                flush=True,
            )
            r = row(f"FFJORD-faithful (warm, {done} it)", kind, npar, macs,
                    note=f"after {done} Adam iterations (lr 1e-3, batch 256, {warm_s:.0f} s) on "
                    f"{desc}; " + note, warm_iters=done, warm_s=warm_s,
                    warm_nfe_trace=trace[:: max(1, len(trace) // 20)] + trace[-1:])  # fmt: skip
            rows.append(_measure(r, ff_train, lambda: ff.log_prob(x), repeats, budget))
    if have_zuko and d in zuko_dims:
        for exact in (True, False):
            if not want(f"zuko CNF exact={exact}"):
                continue
            torch.manual_seed(0)
            z, counter = _zuko(d, h, exact)
            z = z.to(device)
            macs = (1 + d if exact else 2) * _mlp_macs(_sizes_zuko(d, h))
            r = row(
                f"zuko CNF exact={exact}",
                "exact trace (d VJPs)" if exact else "1 Gaussian probe",
                sum(p.numel() for p in z.parameters()),
                macs,
                note="adaptive dopri5, atol 1e-6, rtol 1e-5, adaptive checkpoint adjoint",
            )
            rows.append(_measure(r, lambda z=z, c=counter: _train_step(
                lambda: -z().log_prob(x).mean(), c), lambda z=z: z().log_prob(x), repeats,
                budget))  # fmt: skip
    return rows


# --------------------------------------------------------------------- 8gaussians NLL
def bench_nll_budget(iters, batch, have_tdq, have_zuko):
    """Test NLL on 8gaussians after ``iters`` Adam iterations (same batch for all)."""
    test = make_toy("8gaussians", 5000, seed=99)
    H, se = eight_gaussians_entropy(200_000)
    rows = [{"model": "true entropy (Monte Carlo)", "test_nll": H, "se": se}]
    torch.manual_seed(0)
    f = OTFlow(2, width=32, alpha=(1.0, 30.0, 1.0), nt=8, nt_eval=12)
    t0 = time.perf_counter()
    fit(f, "8gaussians", iters=iters, batch=batch, lr=0.05, val_every=max(1, iters // 10),
        patience=3, verbose=False)  # fmt: skip
    ts = time.perf_counter() - t0
    rows.append({"model": "odeflow OT-Flow fp32", "iters": iters, "train_s": ts,
                 "test_nll": evaluate_nll(f, test)})  # fmt: skip
    g = torch.Generator().manual_seed(0)

    def train_peer(model, loss_fn, lr):
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        t0 = time.perf_counter()
        for _ in range(iters):
            xb = make_toy("8gaussians", batch, generator=g)
            opt.zero_grad()
            loss = loss_fn(xb)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    if have_tdq:
        torch.manual_seed(0)
        c = _HutchCNF(2, PEER_WIDTH[2], 8)
        ts = train_peer(c, lambda xb: -c.log_prob(xb).mean(), 1e-2)
        c.exact, c.nt = True, 12
        with torch.no_grad():
            nll = float(-c.log_prob(test).mean())
        rows.append(
            {
                "model": "Hutchinson CNF (matched steps)",
                "iters": iters,
                "train_s": ts,
                "test_nll": nll,
                "note": "evaluated with exact trace, 12 rk4 steps",
            }
        )
    if have_zuko:
        torch.manual_seed(0)
        z, _ = _zuko(2, PEER_WIDTH[2], exact=True)
        ts = train_peer(z, lambda xb: -z().log_prob(xb).mean(), 1e-2)
        with torch.no_grad():
            nll = float(-z().log_prob(test).mean())
        rows.append({"model": "zuko CNF exact", "iters": iters, "train_s": ts, "test_nll": nll})
    for r in rows:
        print(
            f"  {r['model']:<32} test NLL {r['test_nll']:8.4f}"
            + (f"  ({r['iters']} iters, {r['train_s']:.1f} s)" if "iters" in r else "")
        )
    return rows


def bench_time_to_target(cap_s, batch, val_every, have_tdq, tol=0.1, compile_rows=False):
    """Training wall time until the validation NLL ≤ H + ``tol`` (validation time excluded)."""
    H, se = eight_gaussians_entropy(200_000)
    target = H + tol
    val = make_toy("8gaussians", 4000, seed=123)
    print(
        f"  target: validation NLL <= {target:.4f} (MC entropy {H:.4f} ± {se:.4f} + {tol}); "
        f"cap {cap_s:.0f} s of training per model, validation every {val_every} iterations"
    )
    rows = []

    def record(model, trace, note):
        hit = next((t for t in trace if t["val_nll"] <= target), None)
        best = min((t["val_nll"] for t in trace), default=math.nan)
        r = {"model": model, "target": target, "entropy": H, "reached": hit is not None,
             "time_to_target_s": hit["train_s"] if hit else None,
             "iters_to_target": hit["iter"] if hit else None,
             "train_s": trace[-1]["train_s"] if trace else 0.0,
             "iters": trace[-1]["iter"] if trace else 0, "best_val_nll": best,
             "trace": trace, "note": note}  # fmt: skip
        rows.append(r)
        msg = (
            f"reached in {r['time_to_target_s']:.1f} s ({r['iters_to_target']} it)"
            if hit
            else f"NOT reached within the cap ({r['iters']} it, {r['train_s']:.1f} s)"
        )
        print(f"  {model:<32} {msg}; best val NLL {best:.4f}", flush=True)

    # OT-Flow through the library's fit(), stopped by its callback; with compile_rows also with
    # OTFlow(compile=True), whose compilation counts as training time
    for compiled in (False, True) if compile_rows else (False,):
        torch.manual_seed(0)
        f = OTFlow(2, width=32, alpha=(1.0, 30.0, 1.0), nt=8, nt_eval=12, compile=compiled)
        trace, clock = [], {"train": 0.0, "t": 0.0}

        def cb(it, info, f=f, trace=trace, clock=clock):
            clock["train"] += time.perf_counter() - clock["t"]
            stop = clock["train"] > cap_s
            if it % val_every == 0 or stop:  # (the last iteration is always validated)
                v = evaluate_nll(f, val)
                trace.append({"iter": it, "train_s": clock["train"], "val_nll": v})
                stop = stop or v <= target
            clock["t"] = time.perf_counter()
            return stop

        clock["t"] = time.perf_counter()
        fit(f, "8gaussians", iters=10**7, batch=batch, lr=0.05, val_every=10**7,
            patience=10**7, verbose=False, callback=cb)  # fmt: skip
        record("odeflow OT-Flow fp32" + (" +compile" if compiled else ""), trace,
               "width 32, α (1, 30, 1), 8 rk4 steps (val 12), lr 0.05, float32; "
               "odeflow.flows.fit" + ("; OTFlow(compile=True), compile time included"
                                      if compiled else ""))  # fmt: skip

    def loop(model, loss_fn, nll_fn, lr):
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        g = torch.Generator().manual_seed(0)
        trace, train_s, it = [], 0.0, 0
        while train_s <= cap_s:
            t0 = time.perf_counter()
            xb = make_toy("8gaussians", batch, generator=g)
            opt.zero_grad()
            loss_fn(xb).backward()
            opt.step()
            train_s += time.perf_counter() - t0
            it += 1
            if it % val_every == 0 or train_s > cap_s:  # (the last iteration is always validated)
                with torch.no_grad():
                    v = nll_fn(val)
                trace.append({"iter": it, "train_s": train_s, "val_nll": v})
                if v <= target:
                    break
        return trace

    if have_tdq:
        torch.manual_seed(0)
        c = _HutchCNF(2, PEER_WIDTH[2], 8)

        def c_nll(v):
            c.exact, c.nt = True, 12
            try:
                return float(-c.log_prob(v).mean())
            finally:
                c.exact, c.nt = False, 8

        record("Hutchinson CNF (matched steps)", loop(c, lambda xb: -c.log_prob(xb).mean(), c_nll,
               1e-2), "tanh MLP 64-64, 1 Rademacher probe, 8 rk4 steps, lr 1e-2; validated with "
               "the exact trace and 12 rk4 steps")  # fmt: skip
        torch.manual_seed(0)
        ff = _FFJORDCNF(2, PEER_WIDTH[2], **FFJORD_TOL)

        def ff_nll(v):
            ff.exact = True
            try:
                return float(-ff.log_prob(v, adjoint=False).mean())
            finally:
                ff.exact = False

        record("FFJORD-faithful", loop(ff, lambda xb: -ff.log_prob(xb).mean(), ff_nll, 1e-2),
               "concat-softplus MLP 64-64, 1 Gaussian probe, adjoint dopri5 atol 1e-8 rtol 1e-6, "
               "lr 1e-2; validated with the exact trace at the same tolerances")  # fmt: skip
    return rows


def bench_dataset(root, iters):
    from odeflow.flows import get_preset, load_tabular

    rows = []
    for name in ("miniboone", "power"):
        try:
            data = load_tabular(name, root)
        except FileNotFoundError as exc:
            print(f"  {name}: skipped ({exc})")
            continue
        p = get_preset(name)
        torch.manual_seed(0)
        f = OTFlow.from_preset(p)
        t0 = time.perf_counter()
        res = fit(f, data, preset=p, iters=iters or p.iters, verbose=True)
        nll = evaluate_nll(f, data.test, nt=p.nt_test)
        rows.append(
            {
                "dataset": name,
                "test_nll": nll,
                "published": PUBLISHED[name],
                "iters": res.iterations,
                "train_s": time.perf_counter() - t0,
            }
        )
        print(f"  {name}: test NLL {nll:.3f} (published {PUBLISHED[name]})")
    return rows


# --------------------------------------------------------------------- report
def _fmt_row(r):
    head = f"  d={r['d']:<3} {r['model']:<34}"
    if "error" in r:
        return f"{head} ERROR {r['error']}"
    if "skipped" in r:
        return f"{head} SKIPPED ({r['skipped']})"
    nfe = f"{r['nfe_fwd']:>4}/{r['nfe_bwd']:<4}" if "nfe_fwd" in r else "    -    "
    return (f"{head} params {r['params']:>9,}  train iter {1e3 * r['train_iter_s']:9.1f} ms "
            f"(n={r['repeats']})  log p {r['logp_per_s']:9.0f}/s  NFE f/b {nfe}  "
            f"MMAC/stage {r['macs_stage'] / 1e6:7.3f}")  # fmt: skip


def summarize(speed, ttt) -> str:
    """One paragraph: OT-Flow against the matched-step and the FFJORD-faithful CNF."""
    parts = []
    for d in sorted({r["d"] for r in speed}):
        by = {r["model"]: r for r in speed if r["d"] == d and "train_iter_s" in r}
        ot = by.get("odeflow OT-Flow fp32")
        if ot is None:
            continue
        s = [
            f"d = {d}, batch {ot['batch']}: OT-Flow fp32 {ot['train_iter_s']:.3g} s per "
            "training iteration"
        ]
        mt = by.get("Hutchinson CNF (matched steps)")
        if mt:
            s.append(
                f"speed-up {mt['train_iter_s'] / ot['train_iter_s']:.2f}x over the "
                f"matched-step Hutchinson CNF ({mt['train_iter_s']:.3g} s; OT-Flow needs "
                f"{ot['macs_stage'] / mt['macs_stage']:.2f}x its MACs per stage)"
            )
        for key, r in by.items():
            if key.startswith("FFJORD-faithful"):
                s.append(
                    f"speed-up {r['train_iter_s'] / ot['train_iter_s']:.2f}x over "
                    f"{key} ({r['train_iter_s']:.3g} s, NFE {r['nfe_fwd']} forward + "
                    f"{r['nfe_bwd']} backward against OT-Flow's {ot['nfe_fwd']} + 0)"
                )
        parts.append(", ".join(s))
    # the fastest OT-Flow row that reached the target (eager, or compiled when measured)
    ots = [q for q in ttt if q["model"].startswith("odeflow") and q["reached"]]
    ot = min(ots, key=lambda q: q["time_to_target_s"], default=None)
    for r in ttt:
        if r["model"].startswith("odeflow") or ot is None:
            continue
        name = ot["model"].removeprefix("odeflow ")
        if r["reached"]:
            parts.append(
                f"8gaussians time to within 0.1 nats of the entropy: {name} "
                f"{ot['time_to_target_s']:.1f} s vs {r['model']} "
                f"{r['time_to_target_s']:.1f} s "
                f"({r['time_to_target_s'] / ot['time_to_target_s']:.1f}x)"
            )
        else:
            parts.append(
                f"8gaussians: {name} reached the target in "
                f"{ot['time_to_target_s']:.1f} s; {r['model']} did not within "
                f"{r['train_s']:.0f} s (best {r['best_val_nll']:.3f})"
            )
    return "; ".join(parts) + "."


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU-sized run (about 5 minutes)")
    ap.add_argument("--json", default=None, help="write results to this JSON file")
    ap.add_argument("--dataset", default=None, help="folder with MAF-format data")
    ap.add_argument("--dataset-iters", type=int, default=None)
    ap.add_argument(
        "--dims",
        type=int,
        nargs="+",
        default=None,
        help="dimensions (default 2 43 63; --quick: 2 43)",
    )
    ap.add_argument(
        "--batch",
        type=int,
        default=None,
        help="batch of the speed rows (default: the paper's, 2000 at d = 2 and 43, "
        "300 at d = 63; --quick: 256)",
    )
    ap.add_argument(
        "--zuko-dims",
        type=int,
        nargs="*",
        default=None,
        help="dims at which to run zuko (default: all)",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="per-row time budget in s (default 120; --quick: 20): a call longer "
        "than this is stopped and the row is skipped with the reason",
    )
    ap.add_argument(
        "--warm-iters",
        type=int,
        default=None,
        help="Adam iterations of FFJORD warm training (default 200; --quick: 25)",
    )
    ap.add_argument(
        "--ttt-cap",
        type=float,
        default=None,
        help="cap of training seconds per model for time to target (default 120; --quick: 30)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--compile",
        action="store_true",
        help="add OT-Flow rows with OTFlow(compile=True) (torch.compile of the "
        "field; on CUDA also compile+graphs)",
    )
    ap.add_argument(
        "--device",
        default="cpu",
        help="device of the speed rows (cpu or cuda; the 8gaussians sections stay on the CPU)",
    )
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per row (min reported)")
    ap.add_argument(
        "--parts",
        nargs="+",
        default=["speed", "ttt", "budget"],
        choices=["speed", "ttt", "budget"],
        help="sections to run: speed table, time to target, fixed-budget NLL",
    )
    ap.add_argument(
        "--models",
        default=None,
        help="comma-separated substrings: only speed rows whose model name "
        "contains one (e.g. 'OT-Flow,matched,FFJORD,zuko')",
    )
    ap.add_argument(
        "--append",
        action="store_true",
        help="merge into an existing --json file instead of replacing it",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    try:
        import torchdiffeq  # noqa: F401

        have_tdq = True
    except ImportError:
        have_tdq = False
    try:
        import zuko  # noqa: F401

        have_zuko = True
    except ImportError:
        have_zuko = False
    q = args.quick
    dims = args.dims or ([2, 43] if q else [2, 43, 63])
    batches = {d: args.batch or (256 if q else FULL_BATCH.get(d, 2000)) for d in dims}
    repeats = args.repeats
    models = args.models.split(",") if args.models else None
    budget = args.budget or (20.0 if q else 120.0)
    warm_iters = args.warm_iters if args.warm_iters is not None else (25 if q else 200)
    ttt_cap = args.ttt_cap or (30.0 if q else 120.0)
    zuko_dims = args.zuko_dims if args.zuko_dims is not None else dims
    dev_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    info = {"device": dev_name, "speed_device": args.device,
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "odeflow": odeflow.__version__, "quick": q, "batch": batches, "dims": dims,
            "repeats": repeats, "row_budget_s": budget, "ffjord_warm_iters": warm_iters,
            "ttt_cap_s": ttt_cap, "ot_width": OT_WIDTH, "peer_width": PEER_WIDTH,
            "rk4_steps": OT_STEPS, "ffjord_tol": FFJORD_TOL,
            "have": {"torchdiffeq": have_tdq, "zuko": have_zuko}}  # fmt: skip
    if not args.device.startswith("cuda"):  # False: bf16 products are emulated, its rows slow
        from odeflow.ode._precision import _cpu_native

        info["cpu_native_bf16"] = _cpu_native(torch.bfloat16)
    print(json.dumps(info))
    print(
        "== time per training iteration (min over repeats), log-density throughput, NFE "
        "per iteration (forward/backward), MACs per sample per stage"
    )
    speed, ttt, nll = [], [], []
    if "speed" in args.parts:
        for d in dims:
            speed += bench_speed(d, batches[d], repeats, budget, have_tdq, have_zuko, zuko_dims,
                                 warm_iters if d != 2 else 0, models, args.device,
                                 args.compile)  # fmt: skip
    if "ttt" in args.parts:
        print("== 8gaussians: time to target (validation NLL within 0.1 nats of the entropy)")
        ttt = bench_time_to_target(
            ttt_cap, 512 if q else 1024, 10 if q else 25, have_tdq, compile_rows=args.compile
        )
    if "budget" in args.parts:
        print("== 8gaussians NLL after a fixed budget")
        nll = bench_nll_budget(100 if q else 1000, 512 if q else 2000, have_tdq, have_zuko)
    ds = bench_dataset(args.dataset, args.dataset_iters) if args.dataset else []
    res = {"info": [info], "speed": speed, "time_to_target": ttt, "nll_budget": nll,
           "datasets": ds}  # fmt: skip
    if args.json and args.append:
        try:
            with open(args.json) as fh:
                old = json.load(fh)
        except FileNotFoundError:
            old = {}
        for key, val in res.items():
            prev = old.get(key, [])
            res[key] = (prev if isinstance(prev, list) else [prev]) + val
    res["summary"] = summarize(res["speed"], res["time_to_target"])
    print("== summary\n" + res["summary"])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
        print("wrote", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
