"""slimTrain: the slimTik step is recursive Tikhonov, sGCV is minimized, digits beat Adam."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from odeflow.optim import SlimTrain, slimtik_update

F64 = torch.float64


def _batches(seed=0, n_batches=6, b=5, p=8, C=3):
    g = torch.Generator().manual_seed(seed)
    W_true = torch.randn(p, C, generator=g, dtype=F64)
    out = []
    for _ in range(n_batches):
        A = torch.randn(b, p, generator=g, dtype=F64)
        out.append((A, A @ W_true + 0.1 * torch.randn(b, C, generator=g, dtype=F64)))
    return out


def _dense_tikhonov(pairs, Lam):
    A = torch.cat([a for a, _ in pairs])
    C = torch.cat([c for _, c in pairs])
    return torch.linalg.solve(A.T @ A + Lam * torch.eye(A.shape[1], dtype=F64), A.T @ C)


@pytest.mark.parametrize("lam", ["sgcv", -0.1, 0.3])
def test_full_memory_slimtik_is_recursive_tikhonov(lam):
    # with every batch in memory, W_k = argmin Σ_{i≤k} ‖A_i W − C_i‖² + Λ_k‖W‖² exactly,
    # whatever the increments λ_k (negative ones included); the first batches have fewer rows
    # than features, so M is rank deficient and the null-space part of the step is exercised
    pairs = _batches()
    W, Lam = torch.zeros(8, 3, dtype=F64), 1.0
    for k in range(1, len(pairs) + 1):
        A, C = pairs[k - 1]
        M = torch.cat([a for a, _ in pairs[:k]])
        st = slimtik_update(W, A, C, M, Lam, lam=lam)
        W, Lam = st.weight, st.Lambda
        ref = _dense_tikhonov(pairs[:k], Lam)
        assert float((W - ref).norm() / ref.norm()) < 1e-10
    assert Lam > 0


def _sgcv_dense(W, A, C, M, Lam, mu):
    """sGCV from its definition: an explicit inverse of MᵀM + μI."""
    Binv = torch.linalg.inv(M.T @ M + mu * torch.eye(M.shape[1], dtype=F64))
    W_new = W - Binv @ (A.T @ (A @ W - C) + (mu - Lam) * W)
    tr = torch.trace(A @ Binv @ A.T)
    return float(((A @ W_new - C) ** 2).sum() / (A.shape[0] - tr) ** 2)


def test_sgcv_values_and_their_minimum():
    pairs = _batches(seed=3, n_batches=4, b=12, p=6)
    g = torch.Generator().manual_seed(7)
    W, Lam = torch.randn(6, 3, generator=g, dtype=F64), 0.5
    A, C = pairs[-1]
    M = torch.cat([a for a, _ in pairs])
    st = slimtik_update(W, A, C, M, Lam)
    dense = [_sgcv_dense(W, A, C, M, Lam, float(mu)) for mu in st.sgcv_mus[::7]]
    assert torch.allclose(st.sgcv_values[::7], torch.tensor(dense, dtype=F64), rtol=1e-10)
    lo, hi = max(Lam / 2, 1e-7), Lam + 1e3  # the documented search range
    brute = [_sgcv_dense(W, A, C, M, Lam, mu) for mu in torch.logspace(
        math.log10(lo), math.log10(hi), 2000, dtype=F64).tolist()]  # fmt: skip
    assert _sgcv_dense(W, A, C, M, Lam, st.Lambda) <= min(brute) * (1 + 1e-4)
    assert st.lam == pytest.approx(st.Lambda - Lam)
    assert torch.allclose(st.weight, slimtik_update(W, A, C, M, Lam, lam=st.lam).weight)


def test_slimtrain_module_with_fixed_features_is_tikhonov_on_the_mean_loss():
    # identity features (no parameters), all batches in memory: W is the Tikhonov solution of
    # the mean-scaled problem Σ_i ‖[X_i, 1]W − Y_i‖²/b + Λ‖W‖²
    pairs = _batches(seed=5, n_batches=4, b=10, p=4, C=2)
    model = SlimTrain(nn.Identity(), 2, memory=10, Lambda=0.2)
    for X, Y in pairs:
        out = model.step(X, Y)
    s = 1 / math.sqrt(10)
    scaled = [(s * torch.cat([X, torch.ones(10, 1, dtype=F64)], 1), s * Y) for X, Y in pairs]
    ref = _dense_tikhonov(scaled, model.Lambda)
    assert float((model.weight - ref).norm() / ref.norm()) < 1e-10
    assert len(model.lam_history) == 4 and model.Lambda == pytest.approx(
        0.2 + sum(model.lam_history)
    )
    X, Y = pairs[-1]
    assert float(out.loss) == pytest.approx(float(0.5 / 10 * ((model(X) - Y) ** 2).sum()))


def _digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return X, y, perm[:1437], perm[1437:]


def _train_digits(method, seed, X, y, train, *, lr=1e-2, epochs=10, batch=64, width=32):
    torch.manual_seed(seed)
    feats = nn.Sequential(nn.Linear(64, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh())
    Y = torch.nn.functional.one_hot(y, 10).float()
    if method == "slimtrain":
        model = SlimTrain(feats, 10, memory=5)  # λ by sampled GCV, no sweep
        opt = torch.optim.Adam(model.features.parameters(), lr=lr)
    else:
        model = nn.Sequential(feats, nn.Linear(width, 10))
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(1000 + seed)
    for _ in range(epochs):
        order = train[torch.randperm(len(train), generator=g)]
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            if method == "slimtrain":
                loss = model.step(X[idx], Y[idx]).loss
            else:
                loss = 0.5 / len(idx) * ((model(X[idx]) - Y[idx]) ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slimtrain_digits_accuracy_after_10_epochs_at_least_adams(seed):
    # the same network, initialization, batches and learning rate (Adam's best of
    # {1e-3, 3e-3, 1e-2} on this task); slimTrain solves for the last layer, λ by sGCV
    X, y, train, test = _digits()
    acc = {}
    for method in ("slimtrain", "adam"):
        model = _train_digits(method, seed, X, y, train)
        with torch.no_grad():
            acc[method] = float((model(X[test]).argmax(1) == y[test]).float().mean())
    assert acc["slimtrain"] >= acc["adam"], acc
    assert acc["slimtrain"] > 0.9


def test_bad_input():
    W, A = torch.zeros(3, 1, dtype=F64), torch.ones(4, 3, dtype=F64)
    C = torch.ones(4, 1, dtype=F64)
    with pytest.raises(ValueError, match="shapes do not match"):
        slimtik_update(W, A, C, torch.ones(4, 2, dtype=F64), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        slimtik_update(W, A, C * float("nan"), A, 1.0)
    with pytest.raises(ValueError, match="Lambda"):
        slimtik_update(W, A, C, A, 0.0)
    with pytest.raises(ValueError, match="must be > 0"):
        slimtik_update(W, A, C, A, 1.0, lam=-2.0)
    with pytest.raises(ValueError, match="'sgcv'"):
        slimtik_update(W, A, C, A, 1.0, lam="gcv")
    with pytest.raises(ValueError, match="bounds"):
        slimtik_update(W, A, C, A, 1.0, bounds=(0.0, 1.0))
    with pytest.raises(ValueError, match="span of the memory"):
        slimtik_update(W, A, C, torch.eye(3, dtype=F64)[:2], 1.0)
    with pytest.raises(TypeError, match="2-D"):
        slimtik_update(W, A[0], C, A, 1.0)
    with pytest.raises(ValueError, match="memory"):
        SlimTrain(nn.Identity(), 1, memory=-1)
    model = SlimTrain(nn.Identity(), 2)
    with pytest.raises(RuntimeError, match="step"):
        model(A)
    with pytest.raises(ValueError, match=r"targets must be \(4, 2\)"):
        model.step(A, C)
    x = A.clone()
    model.step(x, torch.ones(4, 2, dtype=F64))
    assert torch.equal(x, A)  # inputs untouched
