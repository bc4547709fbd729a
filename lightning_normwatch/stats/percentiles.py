"""Percentiles of the sampled values from their counts on the shared histogram bins.

``hist_percentiles`` is the definition, one tensor at a time; ``hist_percentiles_many`` does the same
arithmetic for the rows of a ``[tensors, bins]`` table at once (the figures of one logging step), with
the same results bit for bit (``tests/test_percentiles.py``).

Example:
    >>> import numpy as np
    >>> counts = np.zeros(num_bins()); counts[len(counts) // 2 + 5] = 10.0
    >>> lo = hi = float(edges_numpy()[len(counts) // 2 + 4])
    >>> hist_percentiles(counts, (50,), lo, hi) == hist_percentiles_many(counts[None], (50,), [lo], [hi])[0].tolist()
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .histogram import edges_numpy, num_bins

__all__ = ["PERCENTILES", "hist_percentiles", "hist_percentiles_many"]

#: percentiles given as figures ``p15``, ``p50``, ``p85`` (Ioffe & Szegedy 2015, Figure 1)
PERCENTILES = (15, 50, 85)


def hist_percentiles(counts: np.ndarray, qs: tuple[float, ...], lo: float, hi: float) -> list[float]:
    """Percentiles (0-100) of the values counted on the shared bins, ``lo``/``hi`` their extremes.

    Each bin's ``c`` values are placed evenly inside it (the ``j``-th at ``(j + 0.5) / c`` of its width;
    the outer bins clipped to ``[lo, hi]``), and, as ``numpy.percentile`` does on the values themselves,
    the percentile interpolates linearly between the values of rank ``floor(h)`` and ``ceil(h)``,
    ``h = q / 100 * (n - 1)``. Accuracy: each placed value lies in the bin of the value it stands for,
    so the error is at most one bin width: 10 % of ``|x|`` (values within 1e-6 of zero share one bin).
    They are percentiles of the *sampled* values: of the whole tensor when it is no larger than
    ``sample_size``, else of its sample. NaN without finite values.

    Example:
        >>> import torch
        >>> from lightning_normwatch.stats.histogram import bin_counts, bin_edges
        >>> x = torch.linspace(1.0, 2.0, 1001, dtype=torch.float64)
        >>> c = bin_counts(x, bin_edges(dtype=torch.float64)).numpy()
        >>> [round(v, 2) for v in hist_percentiles(c, (15, 50, 85), 1.0, 2.0)]
        [1.15, 1.5, 1.85]
    """
    total = int(round(float(counts.sum())))
    if total <= 0 or not (math.isfinite(lo) and math.isfinite(hi)):
        return [math.nan] * len(qs)
    edges = edges_numpy()
    cum = np.cumsum(counts)

    def placed(rank: int) -> float:  # where the value of this rank (0-based) is placed
        i = min(int(np.searchsorted(cum, rank + 0.5, side="right")), len(counts) - 1)
        left = edges[i - 1] if i > 0 else lo
        right = edges[i] if i < len(edges) else hi
        left, right = min(max(left, lo), hi), max(min(right, hi), lo)
        f = (rank - (cum[i] - counts[i]) + 0.5) / counts[i]
        return float(left + min(max(f, 0.0), 1.0) * (right - left))

    out = []
    for q in qs:
        h = q / 100.0 * (total - 1)
        below = math.floor(h)
        a = placed(below)
        out.append(a if h == below else a + (h - below) * (placed(below + 1) - a))
    return out


def _max(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Python's ``max(a, b)`` elementwise: ``a`` unless ``b > a`` (keeps the sign of equal zeros as it does)."""
    return np.where(b > a, b, a)


def _min(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Python's ``min(a, b)`` elementwise: ``a`` unless ``b < a``."""
    return np.where(b < a, b, a)


def hist_percentiles_many(
    counts: np.ndarray,
    qs: tuple[float, ...],
    lo: Sequence[float],
    hi: Sequence[float],
    cum: np.ndarray | None = None,
) -> np.ndarray:
    """``[tensors, len(qs)]``: ``hist_percentiles`` of each row of ``counts`` (``[tensors, bins]``), ``lo``
    and ``hi`` per row (``cum``: ``np.cumsum(counts, axis=1)`` when the caller has it); the same operations
    on arrays, so the same values bit for bit."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    out = np.full((len(counts), len(qs)), np.nan)
    totals = np.rint(counts.sum(axis=1))  # int(round(...)) of each row's sum: half to even as Python's round
    ok = np.flatnonzero((totals > 0) & np.isfinite(lo) & np.isfinite(hi))
    if not len(ok):
        return out
    rows, lo, hi, totals = counts[ok], lo[ok, None], hi[ok, None], totals[ok, None]
    cum = np.cumsum(rows, axis=1) if cum is None else cum[ok]
    h = np.asarray(qs, dtype=np.float64)[None, :] / 100.0 * (totals - 1)
    below = np.floor(h)
    ranks = np.concatenate([below, below + 1], axis=1)  # the two values each percentile interpolates
    index = np.array([np.searchsorted(c, r + 0.5, side="right") for c, r in zip(cum, ranks, strict=True)])
    index = np.minimum(index, num_bins() - 1)
    edges = edges_numpy()
    left = np.where(index > 0, edges[np.maximum(index - 1, 0)], lo)
    right = np.where(index < len(edges), edges[np.minimum(index, len(edges) - 1)], hi)
    left, right = _min(_max(left, lo), hi), _max(_min(right, hi), lo)
    at = np.take_along_axis(cum, index, axis=1)
    count = np.take_along_axis(rows, index, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty top bin for a rank past the last: unused
        f = (ranks - (at - count) + 0.5) / count
    placed = left + _min(_max(f, 0.0), 1.0) * (right - left)
    a, b = placed[:, : len(qs)], placed[:, len(qs) :]
    out[ok] = np.where(h == below, a, a + (h - below) * (b - a))
    return out
