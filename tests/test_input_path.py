"""The fast input-feature path (issue 17) against its plain definitions, on edge inputs.

``feature_histogram`` counts quarter cells (``ceil(4 z)``) summed into the bins: it must equal
``torch.bucketize`` on the edges for every value, including values exactly on an edge or one ulp away,
non-finite values (not counted), overflowing ``4 z``, constant features, one row, many features and a
sample wider than ``max_channels`` (2048 columns).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_normwatch.stats.feature_drift import FEATURE_BINS, FEATURE_EDGES, feature_histogram


def _plain(sample: torch.Tensor, center: torch.Tensor, scale: torch.Tensor) -> np.ndarray:
    """Per column, ``numpy.searchsorted(edges, z, side='left')`` counts of the finite ``z`` (float64 result)."""
    z = ((sample - center.to(sample.dtype)) / scale.to(sample.dtype)).double().numpy()
    edges = np.asarray(FEATURE_EDGES)
    out = np.zeros((z.shape[1], FEATURE_BINS))
    for c in range(z.shape[1]):
        col = z[:, c][np.isfinite(z[:, c])]
        out[c] = np.bincount(np.searchsorted(edges, col, side="left"), minlength=FEATURE_BINS)
    return out.reshape(-1)


def _edge_values(dtype: torch.dtype) -> torch.Tensor:
    """Every edge, its neighbours one ulp away, +-0, huge, tiny and non-finite values, as one column."""
    e = torch.tensor(FEATURE_EDGES, dtype=dtype)
    up, down = torch.nextafter(e, e + 1), torch.nextafter(e, e - 1)
    info = torch.finfo(dtype)
    special = [0.0, -0.0, info.max, -info.max, info.tiny, -info.tiny, 1e-45, math.nan, math.inf, -math.inf, 4.25, -4.25]
    return torch.cat([e, up, down, torch.tensor(special, dtype=dtype)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_feature_histogram_on_edges_and_non_finite(dtype: torch.dtype) -> None:
    col = _edge_values(dtype)
    x = torch.stack([col, col * 3 + 1, torch.full_like(col, 2.5), col.flip(0)], 1)  # anchors below place them
    center = torch.tensor([0.0, 1.0, 2.5, 0.0])
    scale = torch.tensor([1.0, 3.0, 1.0, 1.0])
    got = feature_histogram(x, center, scale)
    assert got.dtype == dtype and got.shape == (4 * FEATURE_BINS,)
    np.testing.assert_array_equal(got.double().numpy(), _plain(x, center, scale))
    assert float(got.double().sum()) < x.numel()  # NaN and infinities are not counted


@pytest.mark.parametrize("rows", [1, 2, 257])
@pytest.mark.parametrize("channels", [1, 300, 2049])
def test_feature_histogram_shapes(rows: int, channels: int) -> None:
    g = torch.Generator().manual_seed(rows * channels)
    x = torch.randn(rows, channels, generator=g) * 3
    x[:, ::7] = 1.5  # constant features
    x[0, 1::11] = math.nan
    center, scale = torch.randn(channels, generator=g), torch.rand(channels, generator=g) + 0.1
    got = feature_histogram(x, center, scale)
    np.testing.assert_array_equal(got.numpy(), _plain(x, center, scale))
    strided = torch.randn(rows, 2 * channels, generator=g)[:, ::2]  # a non-contiguous sample
    np.testing.assert_array_equal(feature_histogram(strided, center, scale).numpy(), _plain(strided, center, scale))


def test_feature_histogram_float64_large_counts() -> None:
    """Counts stay exact when one bin holds many rows (cumulative sums of whole counts)."""
    x = torch.zeros(70000, 2, dtype=torch.float64)
    x[::2, 1] = 10.0
    got = feature_histogram(x, torch.zeros(2), torch.ones(2))
    np.testing.assert_array_equal(got.numpy(), _plain(x, torch.zeros(2), torch.ones(2)))


def _homogeneity_plain(ref: np.ndarray, cur: np.ndarray, min_expected: float = 5.0) -> np.ndarray:
    """``homogeneity_pvalue`` as it was defined before issue 17 (terms of every group id, empty ones included)."""
    from scipy import special

    rows, _ = ref.shape
    m, n = ref.sum(1, keepdims=True), cur.sum(1, keepdims=True)
    pooled = (ref + cur) / np.maximum(m + n, 1e-300)
    cum = np.cumsum(pooled * np.minimum(m, n), axis=1)
    groups = np.floor(cum / min_expected - 1e-9).astype(np.int64)
    top = np.maximum(np.floor(cum[:, -1:] / min_expected - 1e-9).astype(np.int64) - 1, 0)
    groups = np.clip(groups, 0, top)
    width = int(top.max()) + 1
    flat = (groups + np.arange(rows)[:, None] * width).ravel()
    r_g, c_g = (np.bincount(flat, weights=a.ravel(), minlength=rows * width).reshape(rows, width) for a in (ref, cur))
    p_g = (r_g + c_g) / np.maximum(m + n, 1e-300)
    with np.errstate(invalid="ignore", divide="ignore"):
        e_r, e_c = m * p_g, n * p_g
        terms = np.where(e_r > 0, (r_g - e_r) ** 2 / e_r, 0.0) + np.where(e_c > 0, (c_g - e_c) ** 2 / e_c, 0.0)
    dof = (np.diff(groups, axis=1) > 0).sum(1)
    out = np.where(dof > 0, special.chdtrc(np.maximum(dof, 1), terms.sum(1)), 1.0)
    return np.where((m[:, 0] > 0) & (n[:, 0] > 0), out, np.nan)


def test_homogeneity_pvalue_is_bitwise_the_plain_definition() -> None:
    from lightning_normwatch.stats.homogeneity import homogeneity_pvalue

    rng = np.random.default_rng(3)
    ref = rng.poisson(rng.uniform(0, 300, size=(400, FEATURE_BINS))) * rng.uniform(0.2, 1, size=(400, 1))
    cur = rng.poisson(rng.uniform(0, 30, size=(400, FEATURE_BINS))).astype(float)
    ref[:5], cur[5:10], cur[10:15] = 0.0, 0.0, 1e9  # empty rows, a huge current sample
    ref[20:30, 3:], cur[30:40, :9] = 0.0, 0.0  # sparse rows: empty groups between the others
    got = homogeneity_pvalue(ref, cur)
    assert np.array_equal(got, _homogeneity_plain(ref, cur), equal_nan=True)
    assert np.array_equal(homogeneity_pvalue(ref, cur, ref_sum=ref.sum(1, keepdims=True)), got, equal_nan=True)
    one = homogeneity_pvalue(ref[50:51], cur[50:51])
    assert np.array_equal(one, _homogeneity_plain(ref[50:51], cur[50:51]), equal_nan=True)


def test_feature_drift_follows_its_reference() -> None:
    """The reference's terms are computed once per reference state, and again after each ``add``."""
    from lightning_normwatch.stats.feature_drift import Anchor, FeatureReference, FeatureStats, feature_drift

    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, 6))
    x[:, 5] = 3.0  # constant
    anchor = Anchor.of(x.mean(0), x.std(0))
    batches = [FeatureStats.of(rng.normal(size=(64, 6)) * (1 + i), anchor) for i in range(3)]
    ref, one, two = FeatureReference(), FeatureReference(), FeatureReference()
    for r in (ref, one, two):
        r.add(FeatureStats.of(x, anchor))
    first = feature_drift(ref, batches[0])
    ref.add(batches[1])  # the reference changes: its cached terms must too
    two.add(batches[1])
    pairs = ((first, feature_drift(one, batches[0])), (feature_drift(ref, batches[2]), feature_drift(two, batches[2])))
    for a, b in pairs:
        for name in ("mean_shift", "std_log_ratio", "psi", "changed", "score", "constant"):
            assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name
    assert not np.array_equal(first.mean_shift, feature_drift(ref, batches[0]).mean_shift)


@pytest.mark.parametrize("shape", [(1, 257), (1,), (1, 3, 4)])
def test_merge_of_one_group_is_bitwise_the_general_merge(shape: tuple[int, ...]) -> None:
    from lightning_normwatch.stats.moments import _merge_many, merge_groups

    rng = np.random.default_rng(6)
    arrays = [rng.normal(size=shape) * 10.0 ** rng.integers(-30, 30, size=shape) for _ in range(5)]
    arrays[0] = rng.integers(0, 300, size=shape).astype(float)
    flat = [a.reshape(-1) for a in arrays]
    specials = [(0.0, -0.0), (3.0, -0.0), (5.0, np.nan), (2.0, np.inf), (7.0, 1e300), (0.0, 5.0)]
    for i, (count, value) in enumerate(specials[: flat[0].size]):
        flat[0][i], flat[1 + i % 4][i] = count, value
    with np.errstate(all="ignore"):
        plain = _merge_many(*arrays, axis=0)
    for a, b in zip(merge_groups(*arrays), plain, strict=True):
        assert a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
        assert np.array_equal(np.signbit(a), np.signbit(b))
