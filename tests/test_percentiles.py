"""Percentile figures (``p15``, ``p50``, ``p85``) from the shared-bin counts against numpy's percentiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_normwatch.collect.sampling import MeasureSpec, measure
from lightning_normwatch.stats.figures import TensorStats, figures


def _figures_of(x: np.ndarray) -> dict[str, float]:
    """Figures of a ``[rows, 1]`` tensor measured whole (fewer values than ``sample_size``)."""
    t = torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1)
    block = measure(t, MeasureSpec(), torch.Generator().manual_seed(0)).numpy()
    return figures(TensorStats.from_blocks(block[None], channels=1))


def _bound(sorted_x: np.ndarray, q: float) -> float:
    """The documented accuracy: one bin (10 % of |x|) of the two values numpy interpolates between."""
    h = q / 100 * (len(sorted_x) - 1)
    a, b = sorted_x[int(np.floor(h))], sorted_x[int(np.ceil(h))]
    return 0.11 * max(abs(a), abs(b)) + 2e-6


@pytest.mark.parametrize(
    "name, sampler",
    [
        ("normal", lambda g: g.normal(0.3, 2.0, 4000)),
        ("exponential", lambda g: g.exponential(1.5, 3000)),
        ("relu", lambda g: np.maximum(g.normal(0.0, 1.0, 5000), 0.0)),
        ("shifted negative", lambda g: g.uniform(-9.0, -7.0, 2000)),
        ("heavy tail", lambda g: g.standard_t(3, 4000)),
        ("one sigmoid's batch", lambda g: g.normal(-1.0, 0.7, 60)),
        ("a sparse batch across zero", lambda g: g.normal(0.1, 1.2, 60)),
        ("two values", lambda g: np.array([-3.0, 5.0])),
        ("wide range", lambda g: np.exp(g.normal(0.0, 4.0, 3000))),
    ],
)
def test_percentiles_match_numpy(name: str, sampler) -> None:
    x = sampler(np.random.default_rng(7)).astype(np.float32).astype(np.float64)
    fig = _figures_of(x)
    xs = np.sort(x)
    for q in (15, 50, 85):
        exact = float(np.percentile(x, q))
        got = fig[f"p{q}"]
        assert abs(got - exact) <= _bound(xs, q), (name, q, got, exact)
    if len(x) >= 1000:  # on many values the interpolation inside a bin does far better than the 10 % bound
        scale = float(np.percentile(x, 85) - np.percentile(x, 15))
        assert abs(fig["p50"] - np.percentile(x, 50)) < 0.02 * scale, name


def test_percentiles_are_ordered_and_nan_without_values() -> None:
    fig = _figures_of(np.random.default_rng(1).normal(size=500))
    assert fig["p15"] < fig["p50"] < fig["p85"]
    empty = _figures_of(np.full(10, np.nan))
    assert all(np.isnan(empty[f"p{q}"]) for q in (15, 50, 85))
