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
