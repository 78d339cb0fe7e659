"""Toy generators, exact 8gaussians density, presets and MAF-format loaders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from odeflow.flows import (
    PRESETS,
    TOYS,
    check_data,
    eight_gaussians_entropy,
    eight_gaussians_log_prob,
    get_preset,
    load_sklearn,
    load_tabular,
    make_toy,
)


@pytest.mark.parametrize("name", list(TOYS))
def test_toys_seeded_shape_finite(name):
    a = make_toy(name, 1001, seed=3)
    b = make_toy(name, 1001, seed=3)
    c = make_toy(name, 1001, seed=4)
    assert a.shape == (1001, 2) and bool(torch.isfinite(a).all())
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.abs().max()) < 12.0  # the toys live in a box of a few units


@pytest.mark.parametrize("name", list(TOYS))
@pytest.mark.parametrize("n", [1, 2, 3])
def test_toys_draw_any_small_number_of_samples(name, n):
    """Every toy returns (n, 2) finite samples for every n >= 1 (2spirals crashed for n = 1,
    with no point on either arm)."""
    x = make_toy(name, n, seed=5, dtype=torch.float64)
    assert x.shape == (n, 2) and bool(torch.isfinite(x).all())
    assert torch.equal(x, make_toy(name, n, seed=5, dtype=torch.float64))


def test_two_spirals_odd_n_draws_distinct_points():
    """Odd n: the first arm gets the extra point (drawn, not a copy of another one)."""
    x = make_toy("2spirals", 5, seed=0, dtype=torch.float64)
    assert torch.unique(x, dim=0).shape[0] == 5
    big = make_toy("2spirals", 20001, seed=0, dtype=torch.float64)
    # the two arms mirror each other: the sample is symmetric about the origin
    assert float(big.mean(0).abs().max()) < 0.05


def test_toy_unknown_lists_valid():
    with pytest.raises(ValueError, match=r"8gaussians.*checkerboard"):
        make_toy("banana", 10)


def test_eight_gaussians_density_normalised_and_matches_samples():
    # the density integrates to one on a grid ...
    h = 0.02
    g = torch.arange(-5.0, 5.0, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    p = eight_gaussians_log_prob(torch.stack([xx.ravel(), yy.ravel()], 1)).exp()
    assert abs(float(p.sum()) * h * h - 1.0) < 1e-6
    # ... and samples follow it: E_p[log p] from samples equals ∫ p log p on the grid
    h_grid = -float((p * p.clamp_min(1e-300).log()).sum()) * h * h
    h_mc, se = eight_gaussians_entropy(100_000, seed=1)
    assert abs(h_mc - h_grid) < 5 * se
    # mixture entropy ≤ log 8 + H(component), nearly equal for these 6σ-separated modes
    sigma = 0.5 / 1.414
    bound = math.log(8) + 1 + math.log(2 * math.pi * sigma**2)
    assert bound - 0.02 < h_grid < bound


def test_presets_match_paper_and_unknown_lists_valid():
    assert set(TOYS) <= set(PRESETS)
    mb = get_preset("MINIBOONE")
    assert (mb.dim, mb.width, mb.alpha, mb.nt, mb.nt_val, mb.batch, mb.lr) == (
        43,
        256,
        (1.0, 100.0, 15.0),
        6,
        10,
        2000,
        0.02,
    )
    assert get_preset("bsds300").lr_drop == 3.3 and get_preset("8gaussians").lr == 0.1
    with pytest.raises(ValueError, match="valid presets are: 8gaussians"):
        get_preset("cifar10")


def test_check_data_errors():
    with pytest.raises(ValueError, match="NaN or inf"):
        check_data(torch.tensor([[0.0, float("nan")]]), 2)
    with pytest.raises(ValueError, match="3 columns but the flow has dim=2"):
        check_data(torch.zeros(4, 3), 2)
    with pytest.raises(ValueError, match="empty"):
        check_data(torch.zeros(0, 2), 2)
    with pytest.raises(ValueError, match="2-D"):
        check_data(torch.zeros(4), 2)


@pytest.mark.parametrize("bad,match", [
    ([["a", "b"], ["c", "d"]], r"x must hold real numbers, got an array of dtype <U1"),
    (np.array([[None, 1.0]], dtype=object), r"x must hold real numbers, got .* dtype object"),
    ([[1.0, 2.0], [3.0]], r"x is not a rectangular \(n, d\) array of numbers"),
    (np.ones((3, 2), dtype=np.complex128), r"x is complex"),
    (torch.ones(3, 2, dtype=torch.complex64), r"x is complex"),
])  # fmt: skip
def test_check_data_refuses_non_numeric_data(bad, match):
    with pytest.raises(ValueError, match=match):
        check_data(bad, 2, name="x")


def test_check_data_accepts_lists_and_integer_arrays():
    assert check_data([[1, 2], [3, 4]], 2).dtype == torch.get_default_dtype()
    x = check_data(np.arange(6, dtype=np.int16).reshape(3, 2), 2)
    assert x.is_floating_point() and x.tolist() == [[0, 1], [2, 3], [4, 5]]


# ----------------------------------------------------------------- MAF-format loaders
def test_missing_files_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"miniboone/data\.npy"):
        load_tabular("miniboone", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"1000_train\.csv"):
        load_tabular("HEPMASS", tmp_path)
    with pytest.raises(ValueError, match="valid names are"):
        load_tabular("mnist", tmp_path)


def _stats_ok(d, dim):
    assert d.train.shape[1] == d.val.shape[1] == d.test.shape[1] == dim
    for s in (d.train, d.val, d.test):
        assert bool(torch.isfinite(s).all())


def test_miniboone_split_and_whitening(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.normal(3.0, 2.0, size=(1000, 43))
    (tmp_path / "miniboone").mkdir()
    np.save(tmp_path / "miniboone" / "data.npy", raw)
    d = load_tabular("miniboone", tmp_path, dtype=torch.float64)
    _stats_ok(d, 43)
    assert (d.train.shape[0], d.val.shape[0], d.test.shape[0]) == (810, 90, 100)
    both = torch.cat([d.train, d.val])
    assert torch.allclose(both.mean(0), torch.zeros(43, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(both.std(0, unbiased=False), torch.ones(43, dtype=torch.float64))
    # the test rows are the last 10 % of the file, whitened with train+val statistics
    mu, sd = raw[:900].mean(0), raw[:900].std(0)
    assert np.allclose(d.test.numpy(), (raw[900:] - mu) / sd)


def test_power_layout(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "power").mkdir()
    np.save(tmp_path / "power" / "data.npy", rng.normal(size=(500, 8)))
    d = load_tabular("power", tmp_path)
    _stats_ok(d, 6)
    assert d.train.shape[0] + d.val.shape[0] + d.test.shape[0] == 500


def test_gas_drops_correlated_columns(tmp_path):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(2)
    cols = {f"s{i}": rng.normal(size=400) for i in range(8)}
    cols["dup"] = cols["s0"] * 2.0 + 1.0  # perfectly correlated with s0: must be dropped
    cols.update(Meth=rng.normal(size=400), Eth=rng.normal(size=400), Time=np.arange(400.0))
    (tmp_path / "gas").mkdir()
    pd.DataFrame(cols).to_pickle(tmp_path / "gas" / "ethylene_CO.pickle")
    d = load_tabular("gas", tmp_path)
    _stats_ok(d, 8)


def test_hepmass_signal_rows_and_discrete_features(tmp_path):
    rng = np.random.default_rng(3)
    (tmp_path / "hepmass").mkdir()
    n = 600
    lab = rng.integers(0, 2, n)
    feats = rng.normal(size=(n, 4))
    feats[:, 2] = rng.integers(0, 3, n)  # discrete-valued feature: removed
    np.savetxt(
        tmp_path / "hepmass" / "1000_train.csv",
        np.column_stack([lab, feats]),
        delimiter=",",
        header="# label,f0,f1,f2,f3",
        comments="",
    )
    lab_t = rng.integers(0, 2, 200)
    ft = np.column_stack([lab_t, rng.normal(size=(200, 4)), rng.normal(size=200)])
    np.savetxt(
        tmp_path / "hepmass" / "1000_test.csv",
        ft,
        delimiter=",",
        header="# label,f0,f1,f2,f3,mass",
        comments="",
    )
    d = load_tabular("hepmass", tmp_path)
    _stats_ok(d, 3)
    assert d.train.shape[0] + d.val.shape[0] == int((lab == 1).sum())
    assert d.test.shape[0] == int((lab_t == 1).sum())


def test_bsds300_hdf5(tmp_path):
    h5py = pytest.importorskip("h5py")
    (tmp_path / "BSDS300").mkdir()
    with h5py.File(tmp_path / "BSDS300" / "BSDS300.hdf5", "w") as h:
        for k, n in (("train", 50), ("validation", 20), ("test", 30)):
            h[k] = np.random.default_rng(0).normal(size=(n, 63))
    d = load_tabular("bsds300", tmp_path)
    _stats_ok(d, 63)
    assert d.test.shape[0] == 30


@pytest.mark.parametrize("name,dim", [("breast_cancer", 30), ("digits", 61)])
def test_sklearn_case_standardised(name, dim):
    pytest.importorskip("sklearn")
    d = load_sklearn(name, seed=0, dtype=torch.float64)
    _stats_ok(d, dim)
    assert torch.allclose(d.train.mean(0), torch.zeros(dim, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(d.train.std(0, unbiased=False), torch.ones(dim, dtype=torch.float64))


def _ffjord_pinwheel(n, rng):
    """FFJORD's pinwheel generator (Grathwohl et al., arXiv 1810.01367, lib/toy_data.py)."""
    radial_std, tangential_std, num_classes, rate = 0.3, 0.1, 5, 0.25
    per_class = n // num_classes
    rads = np.linspace(0, 2 * np.pi, num_classes, endpoint=False)
    feats = rng.randn(num_classes * per_class, 2) * np.array([radial_std, tangential_std])
    feats[:, 0] += 1.0
    labels = np.repeat(np.arange(num_classes), per_class)
    angles = rads[labels] + rate * np.exp(feats[:, 0])
    rot = np.stack([np.cos(angles), -np.sin(angles), np.sin(angles), np.cos(angles)])
    rot = np.reshape(rot.T, (-1, 2, 2))
    return 2 * rng.permutation(np.einsum("ti,tij->tj", feats, rot))


def test_pinwheel_has_ffjord_orientation():
    n = 50_000
    ref = _ffjord_pinwheel(n, np.random.RandomState(0))
    ours = make_toy("pinwheel", n, seed=3, dtype=torch.float64).numpy()
    edges = np.linspace(-4, 4, 25)

    def tv(a, b):  # total variation between 24×24 histograms
        ha = np.histogram2d(a[:, 0], a[:, 1], bins=[edges, edges])[0] / a.shape[0]
        hb = np.histogram2d(b[:, 0], b[:, 1], bins=[edges, edges])[0] / b.shape[0]
        return 0.5 * np.abs(ha - hb).sum()

    # two FFJORD draws differ by ≈ 0.03 here; the mirror image by ≈ 0.59
    assert tv(ours, ref) < 0.06
    assert tv(ours * np.array([1.0, -1.0]), ref) > 0.4


def test_power_matches_maf_preprocessing(tmp_path):
    raw = np.random.RandomState(1).rand(1000, 8) * 5
    (tmp_path / "power").mkdir()
    np.save(tmp_path / "power" / "data.npy", raw)
    # MAF's datasets/power.py (arXiv 1705.07057): shuffle with seed 42, drop columns 3 and 1,
    # draw voltage noise (0.01), then gap noise (0.001), then sub-metering noise (1)
    rng = np.random.RandomState(42)
    data = raw.copy()
    rng.shuffle(data)
    n = data.shape[0]
    data = np.delete(np.delete(data, 3, axis=1), 1, axis=1)
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    data = data + np.hstack((gap_noise, voltage_noise, sm_noise, np.zeros((n, 1))))
    n_test = int(0.1 * n)
    te, rest = data[-n_test:], data[:-n_test]
    n_val = int(0.1 * rest.shape[0])
    va, tr = rest[-n_val:], rest[:-n_val]
    both = np.vstack((tr, va))
    mu, s = both.mean(0), both.std(0)
    d = load_tabular("power", tmp_path, dtype=torch.float64)
    for got, want in ((d.train, tr), (d.val, va), (d.test, te)):
        assert np.allclose(got.numpy(), (want - mu) / s, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [0, 2.5, True, "3"])
def test_make_toy_refuses_a_non_integer_count(n):
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        make_toy("moons", n)


_FLOAT_DTYPE = r"dtype must be a floating-point torch\.dtype"


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64, "float32"])
def test_non_floating_dtypes_are_refused(dtype):
    """make_toy, load_tabular and load_sklearn refuse a dtype that is not a real
    floating-point torch.dtype (make_toy and load_sklearn truncated the samples to
    integers; load_tabular ignored the request and returned float32)."""
    with pytest.raises(ValueError, match=_FLOAT_DTYPE):
        make_toy("moons", 5, dtype=dtype)
    with pytest.raises(ValueError, match=_FLOAT_DTYPE):
        load_tabular("miniboone", ".", dtype=dtype)
    pytest.importorskip("sklearn")
    with pytest.raises(ValueError, match=_FLOAT_DTYPE):
        load_sklearn("digits", dtype=dtype)


def test_eight_gaussians_entropy_needs_two_samples():
    """n = 1 gave a NaN standard error."""
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        eight_gaussians_entropy(1)
    h, se = eight_gaussians_entropy(2)
    assert math.isfinite(h) and math.isfinite(se)


def _npy(root, sub, arr):
    (root / sub).mkdir()
    np.save(root / sub / "data.npy", arr)


def _truncated(root):
    _npy(root, "miniboone", np.zeros((100, 43)))
    f = root / "miniboone" / "data.npy"
    f.write_bytes(f.read_bytes()[:2000])


def _nan_row(root):
    a = np.random.default_rng(0).normal(size=(100, 43))
    a[7, 3] = np.nan
    _npy(root, "miniboone", a)


def _constant_column(root):
    a = np.random.default_rng(0).normal(size=(100, 43))
    a[:, 5] = 2.0
    _npy(root, "miniboone", a)


def _hepmass_without_mass_column(root):
    (root / "hepmass").mkdir()
    rng = np.random.default_rng(0)
    for f in ("1000_train.csv", "1000_test.csv"):  # both files label + 4 features
        tab = np.column_stack([np.ones(50), rng.normal(size=(50, 4))])
        np.savetxt(root / "hepmass" / f, tab, delimiter=",", header="l,a,b,c,d", comments="")


def _bsds_missing_split(root):
    h5py = pytest.importorskip("h5py")
    (root / "BSDS300").mkdir()
    with h5py.File(root / "BSDS300" / "BSDS300.hdf5", "w") as h:
        h["train"] = h["test"] = np.zeros((20, 63))


def _gas_series(root):
    pd = pytest.importorskip("pandas")
    (root / "gas").mkdir()
    pd.Series([1.0, 2.0]).to_pickle(root / "gas" / "ethylene_CO.pickle")


@pytest.mark.parametrize("name,make,match", [
    ("miniboone", lambda r: _npy(r, "miniboone", np.zeros((100, 50))),
     r"miniboone/data\.npy holds an array of shape \(100, 50\), not \(n, 43\)"),
    ("miniboone", lambda r: _npy(r, "miniboone", np.zeros(100)), r"shape \(100,\), not \(n, 43\)"),
    ("power", lambda r: _npy(r, "power", np.zeros((100, 7))), r"power/data\.npy .*not \(n, 8\)"),
    ("miniboone", _truncated, r"miniboone/data\.npy is not a readable \.npy array"),
    ("miniboone", _nan_row, r"data\.npy has NaN or inf in 1 row\(s\) \(the first is row 7\)"),
    ("miniboone", _constant_column, r"data\.npy has constant column\(s\) \[5\]"),
    ("miniboone", lambda r: _npy(r, "miniboone", np.ones((10, 43))),
     r"data\.npy has 10 rows; the 10 %/10 % split needs >= 11"),
    ("hepmass", _hepmass_without_mass_column,
     r"1000_test\.csv holds an array of shape \(50, 5\), not \(n, 6\)"),
    ("bsds300", _bsds_missing_split, r"BSDS300\.hdf5 lacks the dataset\(s\) \['validation'\]"),
    ("gas", _gas_series, r"ethylene_CO\.pickle holds a Series, not a pandas DataFrame"),
], ids=["wide", "1-D", "power-width", "truncated", "nan-row", "constant-column", "few-rows",
        "hepmass-no-mass-column", "bsds-no-validation", "gas-series"])  # fmt: skip
def test_maf_loaders_name_the_file_that_is_not_the_maf_file(tmp_path, name, make, match):
    """A file of the wrong shape, damaged, with NaN rows or constant columns, or too short
    for the splits is a ValueError naming the file and what is wrong. Before: NumPy/pandas
    broadcasting errors, a 50-column "MINIBOONE" accepted, and "miniboone train contains
    NaN or inf in 81 row(s)" for one NaN row (or for a constant column) of the file."""
    make(tmp_path)
    with pytest.raises(ValueError, match=match):
        load_tabular(name, tmp_path)


def test_maf_loader_root_that_is_a_file(tmp_path):
    _npy(tmp_path, "miniboone", np.zeros((100, 43)))
    with pytest.raises(FileNotFoundError, match=r"data\.npy is a file; pass the folder"):
        load_tabular("miniboone", tmp_path / "miniboone" / "data.npy")
