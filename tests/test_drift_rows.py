"""The drift figures' fast paths give, bit for bit, what the plain definitions give, on ordinary and edge
inputs: ``drift_many`` (all tensors of a logging step at once, the reference side cached) against ``drift``,
and ``feature_histogram`` (a table lookup) against ``torch.bucketize``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_normwatch.stats import drift_rows
from lightning_normwatch.stats.drift_rows import RefSide, drift_many
from lightning_normwatch.stats.feature_drift import FEATURE_BINS, FEATURE_EDGES, feature_histogram, homogeneity_pvalue
from lightning_normwatch.stats.histogram import bin_counts, bin_edges, num_bins
from lightning_normwatch.stats.moments import Moments
from lightning_normwatch.stats.reference import DRIFT_FIGURES, Reference, drift, shape_drift


def _item(values: np.ndarray) -> tuple[Moments, np.ndarray]:
    finite = values[np.isfinite(values)]
    moments = Moments.of(finite) if len(finite) else Moments()
    return moments, bin_counts(torch.as_tensor(values, dtype=torch.float32), bin_edges()).double().numpy()


def _reference(*samples: np.ndarray) -> Reference:
    ref = Reference()
    for s in samples:
        ref.add(*_item(s))
    return ref


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal figures, bit for bit (NaN equals NaN), in the same order."""
    return list(a) == list(b) == list(DRIFT_FIGURES) and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a
    )


def _distributions(rng: np.random.Generator) -> list[np.ndarray]:
    n = 4000
    normal = rng.normal(size=n)
    levels = rng.choice([0.0, 1.0, 2.0, 3.0, 5.0], size=n) * rng.choice([1.0, -1.0])
    many_levels = rng.choice(np.arange(1.0, 10.0), size=n)  # nine point masses of ~11 %: the plain path
    return [
        normal * rng.uniform(0.1, 10) + rng.normal(),
        np.maximum(normal, 0.0),  # ReLU: zeros are a point mass of their own
        rng.standard_t(2, size=n),  # heavy tails
        np.where(rng.random(n) < 0.3, 0.0, rng.exponential(size=n)),
        levels,
        many_levels,
        np.zeros(n),  # constant: std 0, no shape figures
        np.where(rng.random(n) < 0.5, 3.0, rng.normal(size=n) * 1e-3),  # one heavy bin, a narrow rest
        rng.normal(size=n) * 1e-8,  # inside the zero bin
        rng.normal(size=n) * 1e7,  # beyond the outer edges
        np.concatenate([rng.normal(size=n // 2), [np.nan, np.inf, -np.inf] * 10]),
        np.array([1.0, 1.0, 1.0, 1.0 + 1e-3]),  # a tiny sample: IQR zero, the rest's std is the scale
    ]


def test_drift_many_equals_drift_on_every_pairing(monkeypatch: pytest.MonkeyPatch) -> None:
    plain_rows = []
    monkeypatch.setattr(drift_rows, "shape_drift", lambda *a: plain_rows.append(a) or shape_drift(*a))
    rng = np.random.default_rng(7)
    refs_data, curs_data = _distributions(rng), _distributions(rng)
    refs = [_reference(a, a[::-1] * 1.01) for a in refs_data]
    items = [(ref, *_item(cur)) for ref in refs for cur in curs_data]
    plain = [drift(*item) for item in items]
    fast = drift_many(items)
    assert all(_same(a, b) for a, b in zip(plain, fast, strict=True))
    # the comparison is not vacuous: most pairings have every figure, some have none of the shape ones
    finite = [sum(math.isfinite(v) for v in d.values()) for d in fast]
    assert finite.count(6) > len(items) // 2 and min(finite) < 6
    assert 0 < len(plain_rows) < len(items) // 4  # the rows with 8+ point masses took the plain path


def test_drift_many_edge_cases() -> None:
    rng = np.random.default_rng(1)
    ref = _reference(rng.normal(size=1000))
    empty_hist = np.zeros(num_bins())
    m, h = _item(rng.normal(size=1000))
    items = [
        (ref, m, empty_hist),  # no finite value binned: histogram figures NaN
        (ref, Moments(), h),  # nothing measured: all NaN
        (Reference(), m, h),  # no reference yet
        (ref, Moments(3.0, float("nan"), float("nan"), 0.0, 0.0), h),  # non-finite moments
        (ref, m, h.astype(np.float32)),  # not float64: the plain path
        (_reference(np.zeros(10)), m, h),  # an all-zero reference: std 0
        (ref, m, h),
    ]
    assert all(_same(a, b) for a, b in zip([drift(*i) for i in items], drift_many(items), strict=True))
    assert drift_many([]) == []


def test_reference_side_is_cached_until_the_reference_changes() -> None:
    rng = np.random.default_rng(3)
    ref = _reference(rng.normal(size=2000))
    m, h = _item(rng.normal(size=2000) + 0.5)
    first = drift_many([(ref, m, h)])[0]
    side = RefSide.cached(ref)
    assert RefSide.cached(ref) is side  # computed once
    assert "cache" not in ref.state() and Reference.from_state(ref.state()).cache == {}  # never checkpointed
    ref.add(*_item(rng.normal(size=2000) * 3))  # the reference grows: the side is rebuilt
    assert RefSide.cached(ref) is not side
    assert _same(drift_many([(ref, m, h)])[0], drift(ref, m, h)) and not _same(first, drift(ref, m, h))
    ref.hist = ref.hist * 2  # replaced by hand: the cache notices
    assert _same(drift_many([(ref, m, h)])[0], drift(ref, m, h))


@pytest.mark.parametrize("seed", range(3))
def test_drift_many_on_random_counts(seed: int) -> None:
    """Arbitrary count vectors (sparse, spiky, shifted), with moments that need not match them."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(40):
        ref, cur = Reference(), []
        for _ in range(2):
            counts = np.zeros(num_bins())
            lo = int(rng.integers(0, num_bins() - 50))
            counts[lo : lo + int(rng.integers(1, 200))] = rng.poisson(rng.uniform(0.1, 30), size=1)[0]
            counts[rng.integers(0, num_bins(), size=5)] += rng.integers(0, 500, size=5)
            cur.append(counts)
        ref.add(Moments(1000.0, rng.normal(), rng.uniform(0, 2000), 0.0, 0.0), cur[0])
        items.append((ref, Moments(1000.0, rng.normal(), rng.uniform(0, 2000), 0.0, 0.0), cur[1]))
    assert all(_same(a, b) for a, b in zip([drift(*i) for i in items], drift_many(items), strict=True))


def _bucketized(sample: torch.Tensor, center: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``feature_histogram`` as it was defined, with ``torch.bucketize``."""
    z = (sample - center.to(sample.dtype)) / scale.to(sample.dtype)
    finite = torch.isfinite(z).to(sample.dtype)
    edges = torch.tensor(FEATURE_EDGES, dtype=sample.dtype)
    idx = torch.bucketize(z.nan_to_num(0.0, 0.0, 0.0), edges) + torch.arange(z.shape[1]) * FEATURE_BINS
    return torch.zeros(z.numel() // len(z) * FEATURE_BINS, dtype=sample.dtype).index_add_(
        0, idx.reshape(-1), finite.reshape(-1)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_feature_histogram_equals_bucketize(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 7, generator=g, dtype=torch.float64) * torch.tensor([1, 1e-3, 1e3, 5, 1, 1, 1.0])
    x[:17, 4] = torch.tensor(FEATURE_EDGES, dtype=torch.float64)  # exactly on the edges (anchor 0, scale 1)
    x[17:19, 4] = torch.tensor([math.nextafter(1.0, 2.0), math.nextafter(-1.0, 0.0)])
    x[:5, 5] = torch.tensor([math.nan, math.inf, -math.inf, 1e30, -1e30])
    x[:, 6] = 0.0  # constant
    x = x.to(dtype)
    center = torch.tensor([0.0, 0, 10, -2, 0, 0, 0])
    scale = torch.tensor([1.0, 1e-3, 1e3, 0.5, 1, 1, 1])
    fast = feature_histogram(x, center, scale)
    assert torch.equal(fast, _bucketized(x, center, scale)) and fast.dtype == dtype
    z = (x - center.to(dtype)) / scale.to(dtype)
    assert int(fast.double().sum()) == int(torch.isfinite(z).sum()) <= 300 * 7 - 3  # NaN and infinities not counted
    strided = x.t().contiguous().t()  # a non-contiguous sample
    assert torch.equal(feature_histogram(strided, center, scale), fast)


def test_stacked_reference_arrays_follow_the_references() -> None:
    """The arrays stacked from the references are reused only while the very same references come back."""
    rng = np.random.default_rng(5)
    refs = [_reference(rng.normal(size=500) * s) for s in (1.0, 2.0, 0.5)]
    items = [(ref, *_item(rng.normal(size=500))) for ref in refs]
    other = [(_reference(rng.exponential(size=500)), *_item(rng.normal(size=500))) for _ in range(3)]
    for batch in (items, other, items, items[::-1], items[:2], other):  # alternating evaluators, subsets, order
        assert all(_same(a, b) for a, b in zip([drift(*i) for i in batch], drift_many(batch), strict=True))
    refs[0].add(*_item(rng.normal(size=500) + 3))  # one reference changes: its side and the stacks follow
    assert all(_same(a, b) for a, b in zip([drift(*i) for i in items], drift_many(items), strict=True))


def test_homogeneity_pvalue_is_pearsons_test_where_no_bins_are_grouped() -> None:
    from scipy import stats

    rng = np.random.default_rng(2)
    ref = rng.integers(20, 200, size=(30, 6)).astype(float)
    cur = rng.integers(20, 200, size=(30, 6)).astype(float)
    cur[:5, 0] *= 3  # some rows differ
    expected = [
        stats.chi2_contingency(np.stack([r, c]), correction=False).pvalue for r, c in zip(ref, cur, strict=True)
    ]
    np.testing.assert_allclose(homogeneity_pvalue(ref, cur), expected, rtol=1e-9)
    assert math.isnan(homogeneity_pvalue(np.zeros((1, 6)), cur[:1])[0])
