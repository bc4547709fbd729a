"""Moments, merging, within-channel shape, normality tests and histograms against scipy/numpy."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from lightning_normwatch.stats.histogram import (
    bin_counts,
    bin_edges,
    edges_numpy,
    ks_distance,
    normal_ks,
    num_bins,
    psi,
    quantile_groups,
    tensorboard_buckets,
)
from lightning_normwatch.stats.moments import Moments, channel_moments, merge_groups, standardized_shape
from lightning_normwatch.stats.normality import normality, pvalue_of_z

RNG_SEED = 1234


def rng(offset: int = 0) -> np.random.Generator:
    return np.random.default_rng(RNG_SEED + offset)


def assert_moments_match(m: Moments, x: np.ndarray, rtol: float = 1e-9, atol: float = 1e-9) -> None:
    """``m`` describes the values ``x`` as numpy/scipy do (float64)."""
    x = np.asarray(x, dtype=np.float64)
    assert m.n == x.size
    np.testing.assert_allclose(m.mean, x.mean(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(m.std, x.std(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(m.skew, stats.skew(x), rtol=rtol, atol=atol)
    np.testing.assert_allclose(m.kurtosis, stats.kurtosis(x), rtol=rtol, atol=atol)


def counts_of(values: np.ndarray) -> np.ndarray:
    """Shared-bin counts of float64 values (through the device binning)."""
    return bin_counts(torch.as_tensor(values, dtype=torch.float64), bin_edges(dtype=torch.float64)).numpy()


# --------------------------------------------------------------------------- Moments / merging
@pytest.mark.parametrize(
    "sampler",
    [
        lambda g: g.normal(3.0, 2.0, 1000),
        lambda g: g.exponential(1.5, 777),
        lambda g: g.standard_t(4, 500),
        lambda g: g.uniform(-1, 5, 321),
    ],
)
def test_moments_of_matches_scipy(sampler) -> None:
    x = sampler(rng())
    assert_moments_match(Moments.of(x), x)


def test_moments_empty_and_constant() -> None:
    empty = Moments.of(np.array([]))
    assert empty.n == 0 and math.isnan(empty.std) and math.isnan(empty.skew) and math.isnan(empty.kurtosis)
    const = Moments.of(np.full(10, 2.5))
    assert const.std == 0 and math.isnan(const.skew) and math.isnan(const.kurtosis)
    assert Moments.of(np.arange(5.0)).merge(Moments()) == Moments.of(np.arange(5.0))
    assert Moments().merge(Moments.of(np.arange(5.0))) == Moments.of(np.arange(5.0))


@pytest.mark.parametrize("seed", range(5))
def test_merge_of_random_splits_equals_whole(seed: int) -> None:
    g = rng(seed)
    x = g.standard_t(5, 3000) * 4 + g.normal() * 10
    cuts = np.sort(g.integers(0, x.size, size=g.integers(1, 12)))
    cuts = np.concatenate([cuts, cuts[:2]])  # repeated cuts: empty groups
    parts = np.split(x, np.sort(cuts))
    assert any(p.size == 0 for p in parts)
    moments = [Moments.of(p) for p in parts]
    n, mean, m2, m3, m4 = merge_groups(*(np.array(v) for v in zip(*(m.astuple() for m in moments), strict=True)))
    assert_moments_match(Moments(float(n), float(mean), float(m2), float(m3), float(m4)), x, rtol=1e-10)
    chained = Moments()
    for m in moments:
        chained = chained.merge(m)
    assert_moments_match(chained, x, rtol=1e-10)


def test_merge_groups_along_axis_per_channel() -> None:
    """Merging ``[groups, channels]`` along axis 0 gives each channel's own moments."""
    g = rng(7)
    x = g.normal(size=(600, 3)) * np.array([1.0, 10.0, 0.1]) + np.array([0.0, -5.0, 100.0])
    groups = np.split(x, [100, 100, 350])  # includes an empty group
    table = np.array([[Moments.of(p[:, c]).astuple() for c in range(3)] for p in groups])  # [G, C, 5]
    n, mean, m2, m3, m4 = merge_groups(*(table[..., i] for i in range(5)), axis=0)
    for c in range(3):
        assert_moments_match(Moments(n[c], mean[c], m2[c], m3[c], m4[c]), x[:, c], rtol=1e-10)


def test_merge_groups_of_equal_constants_has_zero_variance() -> None:
    """Groups with the same constant value merge to exactly zero spread (no rounding residue)."""
    g = rng(3)
    for _ in range(200):
        c = g.normal() * 10.0 ** g.integers(-5, 5)
        k = int(g.integers(2, 8))
        n = g.integers(1, 50, size=k).astype(float)
        total, mean, m2, m3, m4 = merge_groups(n, np.full(k, c), np.zeros(k), np.zeros(k), np.zeros(k))
        assert total == n.sum() and m2 == 0 and m3 == 0 and m4 == 0
        merged = Moments(float(total), float(mean), float(m2), float(m3), float(m4))
        assert math.isnan(merged.skew) and math.isnan(merged.kurtosis)


def test_float32_device_moments_with_large_mean_stay_accurate() -> None:
    """STATISTICS.md §1 pitfall: mean 100, std 1, float32, many batches — kurtosis stays near scipy's."""
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(5000, 1, generator=g) + 100.0).float() for _ in range(200)]
    cols = [torch.stack(channel_moments(b)[:5]).double().numpy()[:, 0] for b in batches]
    n, mean, m2, m3, m4 = merge_groups(*np.array(cols).T)
    merged = Moments(float(n), float(mean), float(m2), float(m3), float(m4))
    whole = torch.cat(batches).double().numpy().ravel()
    assert merged.n == whole.size
    np.testing.assert_allclose(merged.mean, whole.mean(), rtol=1e-7)
    np.testing.assert_allclose(merged.std, whole.std(), rtol=1e-4)
    assert abs(merged.skew - stats.skew(whole)) < 1e-3
    assert abs(merged.kurtosis - stats.kurtosis(whole)) < 1e-3


def test_channel_moments_ignore_nonfinite_and_count_nonzeros() -> None:
    x = torch.tensor([[1.0, 0.0, float("nan")], [3.0, 0.0, 2.0], [float("inf"), 5.0, 4.0], [2.0, 0.0, 6.0]])
    n, mean, m2, m3, m4, nz = channel_moments(x.double())
    assert n.tolist() == [3.0, 4.0, 3.0]
    assert nz.tolist() == [4.0, 1.0, 4.0]  # NaN/inf are not zeros
    for c, values in enumerate(([1.0, 3.0, 2.0], [0.0, 0.0, 5.0, 0.0], [2.0, 4.0, 6.0])):
        ref = Moments.of(np.array(values))
        np.testing.assert_allclose([mean[c], m2[c], m3[c], m4[c]], [ref.mean, ref.m2, ref.m3, ref.m4], atol=1e-12)


# --------------------------------------------------------------------------- within-channel shape
def pooled_standardized(x: np.ndarray) -> tuple[float, float]:
    """scipy skewness and excess kurtosis of ``x[:, c]`` standardized per column, pooled."""
    z = (x - x.mean(0)) / x.std(0)
    return float(stats.skew(z.ravel())), float(stats.kurtosis(z.ravel()))


def test_standardized_shape_matches_scipy_on_standardized_values() -> None:
    g = rng(11)
    x = np.column_stack(
        [g.normal(0, 1, 400), g.exponential(50.0, 400), g.standard_t(5, 400) * 0.01 + 7, g.uniform(0, 1e3, 400)]
    )
    table = np.array([Moments.of(x[:, c]).astuple() for c in range(x.shape[1])])
    g1, g2 = standardized_shape(table[:, 0], table[:, 2], table[:, 3], table[:, 4])
    e1, e2 = pooled_standardized(x)
    np.testing.assert_allclose([g1, g2], [e1, e2], rtol=1e-9, atol=1e-12)
    # The pooled (unstandardized) kurtosis is inflated by the mixture of scales; the standardized one is not.
    assert stats.kurtosis(x.ravel()) > e2 + 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_standardized_shape_skips_constant_and_tiny_channels(dtype: torch.dtype) -> None:
    """A constant channel (here 0.1, not exactly representable) and a 1-value channel are left out."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 5, generator=g, dtype=torch.float64)
    x[:, 1] = x[:, 1].exp()
    x[:, 2] = 0.1
    x = x.to(dtype)
    n, _, m2, m3, m4, _ = (t.double().numpy() for t in channel_moments(x))
    assert m2[2] == 0  # exact: the constant channel has no spread at all
    n = np.append(n, 1.0)
    m2, m3, m4 = (np.append(v, 0.0) for v in (m2, m3, m4))
    g1, g2 = standardized_shape(n, m2, m3, m4)
    e1, e2 = pooled_standardized(x.double().numpy()[:, [0, 1, 3, 4]])
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose([g1, g2], [e1, e2], rtol=tol, atol=tol)
    assert all(math.isnan(v) for v in standardized_shape(np.array([1.0, 5.0]), np.zeros(2), np.zeros(2), np.zeros(2)))


# --------------------------------------------------------------------------- normality tests
SAMPLERS = {
    "normal": lambda g, n: g.normal(2.0, 3.0, n),
    "exponential": lambda g, n: g.exponential(1.0, n),
    "uniform": lambda g, n: g.uniform(-1.0, 1.0, n),
    "laplace": lambda g, n: g.laplace(0.0, 1.0, n),
    "t3": lambda g, n: g.standard_t(3, n),
}


def assert_normality_matches_scipy(x: np.ndarray) -> None:
    r = normality(Moments.of(x))
    st, kt, nt, jb = stats.skewtest(x), stats.kurtosistest(x), stats.normaltest(x), stats.jarque_bera(x)
    close = dict(rtol=1e-8, atol=1e-10)
    assert r.n == x.size
    np.testing.assert_allclose(r.skew_z, st.statistic, **close)
    np.testing.assert_allclose(pvalue_of_z(r.skew_z), st.pvalue, **close)
    np.testing.assert_allclose(r.kurtosis_z, kt.statistic, **close)
    np.testing.assert_allclose(pvalue_of_z(r.kurtosis_z), kt.pvalue, **close)
    np.testing.assert_allclose(r.normaltest_k2, nt.statistic, **close)
    np.testing.assert_allclose(r.normaltest_p, nt.pvalue, **close)
    np.testing.assert_allclose(r.jarque_bera, jb.statistic, **close)
    np.testing.assert_allclose(r.jarque_bera_p, jb.pvalue, **close)


@pytest.mark.parametrize("n", [20, 100, 5000])
@pytest.mark.parametrize("dist", sorted(SAMPLERS))
def test_normality_matches_scipy(dist: str, n: int) -> None:
    assert_normality_matches_scipy(SAMPLERS[dist](rng(n), n))


@pytest.mark.parametrize("n", [20, 100, 5000])
def test_normality_exactly_zero_skew_matches_scipy(n: int) -> None:
    """Symmetric integers: skewness is exactly 0 (scipy's y == 0 quirk must be reproduced)."""
    half = np.arange(1.0, n // 2 + 1)
    x = np.concatenate([-half, half])
    assert stats.skew(x) == 0.0
    assert_normality_matches_scipy(x)


def test_normality_small_or_constant_samples_give_nan() -> None:
    for x in (np.arange(7.0), np.full(30, 1.5), np.array([1.0])):
        r = normality(Moments.of(x))
        assert math.isnan(r.skew_z) and math.isnan(r.normaltest_p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = np.array([0.0, 1.0, 3.0, 4.0, 9.0, 2.0])
        np.testing.assert_allclose(normality(Moments.of(x)).kurtosis_z, stats.kurtosistest(x).statistic, rtol=1e-9)


def test_normaltest_p_separates_normal_from_skewed() -> None:
    g = rng(99)
    assert normality(Moments.of(g.normal(size=5000))).normaltest_p > 1e-3
    assert normality(Moments.of(g.exponential(size=5000))).normaltest_p < 1e-10


# --------------------------------------------------------------------------- histogram
def test_edges_are_symmetric_increasing_and_span_the_range() -> None:
    e = edges_numpy()
    assert np.all(np.diff(e) > 0)
    np.testing.assert_array_equal(e, -e[::-1])
    pos = e[e > 0]
    assert pos[0] == pytest.approx(1e-6) and pos[-1] >= 1e6
    np.testing.assert_allclose(pos[1:] / pos[:-1], 1.1)
    assert num_bins() == e.size + 1


def test_bin_counts_sum_to_finite_count_and_match_searchsorted() -> None:
    g = rng(21)
    e = edges_numpy()
    values = np.concatenate(
        [
            g.normal(0, 1, 500),
            g.normal(0, 1e-4, 50),
            10.0 ** g.uniform(-8, 8, 100) * g.choice([-1, 1], 100),
            e[::17],  # exactly on edges: belong to the bin they close
            [0.0, -0.0, 1e9, -1e9, np.nan, np.inf, -np.inf],
        ]
    )
    counts = counts_of(values)
    finite = values[np.isfinite(values)]
    assert counts.shape == (num_bins(),)
    assert counts.sum() == finite.size
    expected = np.bincount(np.searchsorted(e, finite, side="left"), minlength=num_bins())
    np.testing.assert_array_equal(counts, expected)
    # Every value v in bin i satisfies edges[i-1] < v <= edges[i].
    idx = np.searchsorted(e, finite, side="left")
    lower = np.where(idx > 0, e[np.maximum(idx - 1, 0)], -np.inf)
    upper = np.where(idx < e.size, e[np.minimum(idx, e.size - 1)], np.inf)
    assert np.all((lower < finite) & (finite <= upper))


def test_bin_counts_float32_match_searchsorted_on_float32_edges() -> None:
    x = torch.randn(50, 40, generator=torch.Generator().manual_seed(2)) * 3
    counts = bin_counts(x, bin_edges()).numpy()
    e32 = edges_numpy().astype(np.float32)
    expected = np.bincount(np.searchsorted(e32, x.numpy().ravel(), side="left"), minlength=num_bins())
    np.testing.assert_array_equal(counts, expected)


def test_psi_and_ks_of_identical_distributions_are_zero() -> None:
    counts = counts_of(rng(1).normal(size=20_000))
    assert psi(counts, counts) == 0.0
    assert psi(counts, 3 * counts) == pytest.approx(0.0, abs=1e-12)  # only proportions matter
    assert ks_distance(counts, counts) == 0.0
    relu = counts_of(np.maximum(rng(2).normal(size=20_000), 0))
    assert psi(relu, relu) == 0.0
    assert math.isnan(psi(counts, np.zeros_like(counts))) and math.isnan(ks_distance(np.zeros_like(counts), counts))


def test_psi_under_no_drift_is_small() -> None:
    x, y = rng(3).normal(size=100_000), rng(4).normal(size=100_000)
    a, b = counts_of(x), counts_of(y)
    assert 0 < psi(a, b) < 0.005
    assert ks_distance(a, b) == pytest.approx(stats.ks_2samp(x, y).statistic, abs=0.005)


def normal_psi(shift: float, scale: float, groups: int = 20) -> float:
    """PSI of N(shift, scale) against N(0, 1) on ``groups`` bins of equal reference mass (scipy)."""
    e = np.concatenate([[-np.inf], stats.norm.ppf(np.arange(1, groups) / groups), [np.inf]])
    p, q = np.diff(stats.norm.cdf(e)), np.diff(stats.norm.cdf(e, shift, scale))
    return float(((q - p) * np.log(q / p)).sum())


@pytest.mark.parametrize(
    ("shift", "scale", "ks_expected"),
    [(0.25, 1.0, 0.10), (0.5, 1.0, 0.20), (0.0, 1.2, 0.05), (0.0, 1.5, 0.10)],
)
def test_psi_and_ks_calibration(shift: float, scale: float, ks_expected: float) -> None:
    """STATISTICS.md §3 calibration: normal reference against shifted/scaled normals.

    Shifts give the table's PSI (0.06, 0.25); for scale changes PSI depends on the binning, so the
    oracle is the exact PSI of the two normals on 20 equal-mass bins.
    """
    ref = rng(5).normal(size=200_000)
    cur = rng(6).normal(size=200_000) * scale + shift
    value = psi(counts_of(ref), counts_of(cur))
    assert value == pytest.approx(normal_psi(shift, scale), rel=0.1)
    if scale == 1.0:
        assert value == pytest.approx({0.25: 0.06, 0.5: 0.25}[shift], rel=0.15)
    ks = ks_distance(counts_of(ref), counts_of(cur))
    assert ks == pytest.approx(stats.ks_2samp(ref, cur).statistic, abs=0.01)
    assert ks == pytest.approx(ks_expected, abs=0.015)


def test_psi_grows_with_shift() -> None:
    ref = counts_of(rng(7).normal(size=50_000))
    values = [psi(ref, counts_of(rng(8).normal(size=50_000) + s)) for s in (0.1, 0.3, 0.6, 1.0)]
    assert values == sorted(values)
    assert values[-1] > 0.5


def test_quantile_groups_give_equal_mass_and_isolate_a_spike() -> None:
    counts = counts_of(rng(9).normal(size=100_000))
    starts = quantile_groups(counts, 20)
    mass = np.add.reduceat(counts, starts) / counts.sum()
    assert len(starts) >= 15 and mass.max() < 0.12
    x = np.maximum(rng(10).normal(size=100_000), 0)
    relu = counts_of(x)
    starts = quantile_groups(relu, 20)
    zero_bin = int(np.searchsorted(edges_numpy(), 0.0))
    assert zero_bin + 1 in starts  # the group holding the zeros ends with their bin ...
    group = int(np.searchsorted(starts, zero_bin, side="right")) - 1
    mass = np.add.reduceat(relu, starts)
    assert mass[group] == np.count_nonzero(x == 0)  # ... and holds nothing else


def test_normal_ks_small_for_normal_samples() -> None:
    x = rng(12).normal(5.0, 2.0, 100_000)
    d = normal_ks(counts_of(x), x.mean(), x.std())
    assert d < 0.01
    # Evaluated at the edges only, it cannot exceed scipy's KS statistic against the same normal.
    assert d <= stats.kstest(x, "norm", args=(x.mean(), x.std())).statistic + 1e-12


def test_normal_ks_of_relu_normal_is_about_a_quarter() -> None:
    x = np.maximum(rng(13).normal(size=100_000), 0)
    d = normal_ks(counts_of(x), x.mean(), x.std())
    assert d == pytest.approx(0.25, abs=0.02)
    assert d == pytest.approx(stats.kstest(x, "norm", args=(x.mean(), x.std())).statistic, abs=0.01)
    assert math.isnan(normal_ks(counts_of(x), 0.0, 0.0)) and math.isnan(normal_ks(np.zeros(num_bins()), 0.0, 1.0))


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(0).normal(size=1000),
        np.maximum(np.random.default_rng(1).normal(size=1000), 0),
        np.concatenate([np.random.default_rng(2).normal(size=100), [3e6, -5e6, 7e7]]),
        np.array([4.2]),
    ],
)
def test_tensorboard_buckets(values: np.ndarray) -> None:
    counts = counts_of(values)
    limits, bucket_counts = tensorboard_buckets(counts, float(values.min()), float(values.max()))
    assert len(limits) == len(bucket_counts) > 0
    assert np.all(np.diff(limits) > 0)
    assert sum(bucket_counts) == values.size
    assert limits[-1] >= values.max()
    # Every value lies at or below its bucket's limit and above the previous bucket's limit.
    which = np.searchsorted(np.array(limits), values, side="left")
    np.testing.assert_array_equal(np.bincount(which, minlength=len(limits)), bucket_counts)
    assert tensorboard_buckets(np.zeros(num_bins()), 0.0, 0.0) == ([], [])
