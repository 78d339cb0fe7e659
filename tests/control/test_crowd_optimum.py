"""The exact optimum of one extra crowd-motion coordinate (benchmarks/control_mfg_acceptance.py's
``extra_coordinate_optimum``): the boundary-value solution against a direct minimisation of
the same objective over discretised Gaussian paths, and the KL it implies in d = 100."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "control_mfg_acceptance.py"


def _bench():
    spec = importlib.util.spec_from_file_location("control_mfg_acceptance", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _direct(eps=0.01, lam=5.0, var=0.3, n=400):
    """min over σ at n + 1 times (σ₀ fixed) of Σ h(½((σₖ₊₁ − σₖ)/h)² − eps·log of the
    midpoint σ) + lam·½(σₙ²/var − 1 − log(σₙ²/var)): a direct transcription."""
    s, h = math.sqrt(var), 1.0 / n

    def J(y):
        sig = np.concatenate([[s], y])
        d = np.diff(sig) / h
        mid = 0.5 * (sig[1:] + sig[:-1])
        r = sig[-1] ** 2 / var
        val = h * np.sum(0.5 * d**2 - eps * np.log(mid)) + lam * 0.5 * (r - 1 - np.log(r))
        g = np.zeros_like(sig)
        g[1:] += d
        g[:-1] -= d
        g[1:] += -eps * h * 0.5 / mid
        g[:-1] += -eps * h * 0.5 / mid
        g[-1] += lam * (sig[-1] / var - 1 / sig[-1])
        return val, g[1:]

    res = minimize(J, np.full(n, s), jac=True, method="L-BFGS-B", options={"gtol": 1e-13,
                   "ftol": 1e-16, "maxiter": 20000})  # fmt: skip
    return res.x[-1] / s


def test_extra_coordinate_optimum_against_direct_minimisation():
    opt = _bench().extra_coordinate_optimum()
    ratio = _direct()
    # σ(1)/σ(0) − 1 is about 4.8e-4: both methods agree on it to 0.1 %
    assert opt["sigma_T_over_sigma_0"] - 1 == pytest.approx(ratio - 1, rel=1e-3)
    r = opt["sigma_T_over_sigma_0"] ** 2
    assert opt["kl_per_coordinate"] == pytest.approx(0.5 * (r - 1 - math.log(r)), rel=1e-9)
    # the exact optimum's KL barely changes with d: 98 extra coordinates add < 1e-4 to it
    assert 0 < 98 * opt["kl_per_coordinate"] < 1e-4
    # the entropy makes the optimum spread: lower than staying put (−0.01·½log(2πe·0.3))
    assert opt["objective_per_coordinate"] < -0.01 * 0.5 * math.log(2 * math.pi * math.e * 0.3)
