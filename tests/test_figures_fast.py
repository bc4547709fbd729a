"""The fast paths of a logging step's figures against their plain definitions, bit for bit where the arithmetic
is the same: percentiles of all tensors at once (``hist_percentiles_many``), the one-block read of
``TensorStats.from_blocks``, the figures ``figures_many`` takes per tensor, the cached normality constants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_normwatch.collect.batched import measure_all
from lightning_normwatch.collect.sampling import MeasureSpec, take_sample
from lightning_normwatch.stats.block import BlockLayout
from lightning_normwatch.stats.columns import channel_scales, where
from lightning_normwatch.stats.figures import TensorStats, figures, figures_many
from lightning_normwatch.stats.histogram import edges_numpy, num_bins
from lightning_normwatch.stats.moments import Moments
from lightning_normwatch.stats.normality import normality, normality_p
from lightning_normwatch.stats.percentiles import PERCENTILES, hist_percentiles, hist_percentiles_many
from tests.test_batched import ragged_samples


def same(a: float, b: float) -> bool:
    """Equal bit for bit (NaN equal to NaN, 0.0 not equal to -0.0)."""
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1.0, a) == math.copysign(1.0, b))


def count_rows() -> list[tuple[np.ndarray, float, float]]:
    """Histogram rows with their extremes: random, sparse, one value, empty, outer bins only, non-finite extremes."""
    g = np.random.default_rng(5)
    bins, edges, mid = num_bins(), edges_numpy(), num_bins() // 2
    rows = []
    for total in (1, 2, 3, 7, 60, 1000, 4096):
        x = g.normal(g.uniform(-3, 3), 10 ** g.uniform(-7, 3), total)
        counts = np.bincount(np.searchsorted(edges, x, side="right"), minlength=bins).astype(np.float64)
        rows.append((counts, float(x.min()), float(x.max())))
    zeros = np.zeros(bins)
    one = zeros.copy()
    one[mid] = 1.0
    outer = zeros.copy()
    outer[0], outer[-1] = 5.0, 3.0  # below the first and above the last edge: clipped to the extremes
    rows += [
        (zeros, math.nan, math.nan),  # nothing finite sampled
        (zeros, 0.0, 0.0),
        (one, 0.0, 0.0),
        (one, -0.0, 0.0),
        (outer, -1e9, 1e9),
        (outer, -math.inf, 1e9),  # non-finite extremes: NaN percentiles
        (rows[3][0], rows[3][1], math.nan),
    ]
    return rows


@pytest.mark.parametrize("qs", [PERCENTILES, (0, 1, 50, 99, 100), (37.5,)])
def test_percentiles_of_all_tensors_are_the_per_tensor_definition_bit_for_bit(qs: tuple[float, ...]) -> None:
    rows = count_rows()
    table = np.stack([c for c, _, _ in rows])
    many = hist_percentiles_many(table, qs, [lo for _, lo, _ in rows], [hi for _, _, hi in rows])
    cum = hist_percentiles_many(table, qs, [lo for _, lo, _ in rows], [hi for _, _, hi in rows], np.cumsum(table, 1))
    for i, (counts, lo, hi) in enumerate(rows):
        want = hist_percentiles(counts, qs, lo, hi)
        assert all(same(a, b) for a, b in zip(many[i].tolist(), want, strict=True)), (i, many[i], want)
        assert all(same(a, b) for a, b in zip(cum[i].tolist(), want, strict=True)), i
    assert np.isnan(many[7]).all() and not np.isnan(many[0]).any()


def test_one_block_is_read_field_by_field_as_the_layout_says() -> None:
    """The one-block path reads what ``BlockLayout.unpack`` names, input-feature tail included, on a copy."""
    g = np.random.default_rng(1)
    for channels, feature_bins in ((3, 0), (1, 0), (4, 18)):
        layout = BlockLayout(channels, feature_bins)
        block = g.normal(size=layout.size)
        block[0] = 12.0  # numel
        f = layout.unpack(block)
        st = TensorStats.from_blocks(block[None], channels, feature_bins)
        for name in ("cn", "cmean", "cm2", "cm3", "cm4", "cnz", "hist"):
            assert np.array_equal(getattr(st, name), f[name]), name
        assert (st.numel, st.sampled, st.saturated) == (f["numel"], f["sampled"], f["saturated"])
        assert (st.vmin, st.vmax, st.smin, st.smax) == (f["fmin"], f["fmax"], f["smin"], f["smax"])
        assert st.pvalue == Moments(*(float(f[k]) for k in ("pn", "pmean", "pm2", "pm3", "pm4")))
        if feature_bins:
            assert np.array_equal(st.fhist, f["fhist"]) and st.fitems == f["fitems"]
        else:
            assert st.fhist is None and st.fitems == 0.0
        kept = st.cn.copy()
        block[:] = 0.0  # the caller's block is not the statistics' storage
        assert np.array_equal(st.cn, kept)
        empty = TensorStats.from_blocks(np.zeros((1, layout.size)), channels, feature_bins)
        assert math.isnan(empty.vmin) and math.isnan(empty.smax) and not empty.has_nonfinite


def test_figures_of_all_tensors_equal_the_plain_definitions() -> None:
    """Figures whose arithmetic is per tensor are equal bit for bit to ``figures``; the rest to float rounding
    (the channel sums run in another order). Covers NaN/Inf, dead channels, empty, constant and 0-d tensors, and
    tensors whose channels saw different numbers of rows (the median of ``channel_rows``)."""
    constant = take_sample(torch.full((40, 3), 2.0), MeasureSpec(), torch.Generator().manual_seed(0))
    items = ragged_samples(torch.float64) + ragged_samples(torch.float32, seed=3) + [constant]
    blocks = [b.numpy() for b in measure_all(items)]
    stats = [TensorStats.from_blocks(b[None], s.sample.shape[1]) for s, b in zip(items, blocks, strict=True)]
    uneven = blocks[0].copy()
    layout = BlockLayout(items[0].sample.shape[1])
    start = layout.size - 6 * layout.channels
    uneven[start : start + layout.channels // 2 + 1] -= 1.0  # most channels lost a row to a non-finite value
    uneven[start] -= 3.0  # the median is not the first channel's count
    stats.append(TensorStats.from_blocks(uneven[None], layout.channels))
    stats.append(TensorStats.from_blocks(np.stack([blocks[6], blocks[6]]), items[6].sample.shape[1]))

    def fresh(st: TensorStats) -> TensorStats:
        return TensorStats(**{k: getattr(st, k) for k in TensorStats.__dataclass_fields__})

    expected = [figures(fresh(st)) for st in stats]
    exact = ("min", "max", "max_abs", "zeros", "nonfinite", "saturated", "normaltest_p", "jarque_bera_p")
    exact += ("channel_rows", "numel", "sampled", "p15", "p50", "p85")
    for i, (got, want) in enumerate(zip(figures_many(stats), expected, strict=True)):
        assert list(got) == list(want)
        for name in exact:
            assert same(got[name], want[name]), (i, name, got[name], want[name])
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=f"{i} {name}")
        assert same(stats[i].nonfinite, fresh(stats[i]).nonfinite)
        assert stats[i].has_nonfinite == fresh(stats[i]).has_nonfinite
    assert any(st.has_nonfinite for st in stats) and figures_many([]) == []


def test_normality_constants_cached_per_size_give_the_same_p_values() -> None:
    g = np.random.default_rng(3)
    for n in (8, 9, 20, 500, 500, 2048):
        m = Moments.of(g.standard_t(5, n))
        r = normality(m)
        assert normality_p(m) == (r.normaltest_p, r.jarque_bera_p)
        again = normality(Moments(m.n, m.mean, m.m2, m.m3, m.m4))  # the constants come from the cache now
        assert again == r


def test_where_and_channel_scales_keep_the_values_of_np_where() -> None:
    n = np.array([4.0, 0.0, 2.0])
    for mask in (n > 0, n >= 0):
        assert np.array_equal(where(mask, n * 2, -1.0), np.where(mask, n * 2, -1.0))
    live, std, rms = channel_scales(np.array([4.0, 4.0]), np.array([3.0, -0.0]), np.array([64.0, 0.0]))
    assert live.all() and std.tolist() == [4.0, 0.0] and rms.tolist() == [5.0, 0.0]
