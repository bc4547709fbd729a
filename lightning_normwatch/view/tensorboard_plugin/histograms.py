"""Histograms for the selected tensor: one step against the reference window, on one grid (pure numpy).

TensorBoard serves a histogram as rows ``[left, right, count]`` (NormWatch's bins grow by 10 % in
magnitude). The tab draws the selected step and the reference window on a common linear grid as
densities (count / total / width), spreading each bucket's count evenly over its width.

Example:
    >>> import numpy as np
    >>> a = np.array([[0.0, 1.0, 10.0], [1.0, 2.0, 30.0]])
    >>> edges, dens = rebin([a], bins=4)
    >>> edges.tolist(), dens[0].round(3).tolist()
    ([0.0, 0.5, 1.0, 1.5, 2.0], [0.25, 0.25, 0.75, 0.75])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["rebin", "merge", "nearest", "reference_steps", "reference_normal"]


def _span(hists: Sequence[np.ndarray]) -> tuple[float, float]:
    lo, hi = math.inf, -math.inf
    for h in hists:
        full = h[h[:, 2] > 0] if len(h) else h
        if len(full):
            lo, hi = min(lo, float(full[:, 0].min())), max(hi, float(full[:, 1].max()))
    if not math.isfinite(lo):
        return 0.0, 1.0
    if hi <= lo:
        return lo - 0.5, hi + 0.5
    return lo, hi


def rebin(hists: Sequence[np.ndarray], bins: int = 60) -> tuple[np.ndarray, list[np.ndarray]]:
    """Common edges over the filled range of all ``hists`` and each one's density on them."""
    lo, hi = _span(hists)
    edges = np.linspace(lo, hi, bins + 1)
    out = []
    for h in hists:
        counts = np.zeros(bins)
        for left, right, count in h:
            if count <= 0:
                continue
            if right <= left:  # a point mass
                counts[min(max(np.searchsorted(edges, left, side="right") - 1, 0), bins - 1)] += count
                continue
            overlap = np.clip(np.minimum(edges[1:], right) - np.maximum(edges[:-1], left), 0.0, None)
            counts += count * overlap / (right - left)
        total = counts.sum()
        out.append(counts / total / np.diff(edges) if total > 0 else counts)
    return edges, out


def merge(hists: Sequence[np.ndarray]) -> np.ndarray:
    """Several histograms as one (rows ``[left, right, count]``), each normalised to the same weight.

    Example:
        >>> import numpy as np
        >>> merge([np.array([[0.0, 1.0, 4.0]]), np.array([[1.0, 2.0, 2.0]])]).tolist()
        [[0.0, 1.0, 0.5], [1.0, 2.0, 0.5]]
    """
    parts = [h[:, :3] / np.array([1.0, 1.0, h[:, 2].sum()]) for h in hists if len(h) and h[:, 2].sum() > 0]
    if not parts:
        return np.zeros((0, 3))
    rows = np.concatenate(parts)
    return rows * np.array([1.0, 1.0, 1.0 / len(parts)])


def nearest(steps: Sequence[int], step: int) -> int:
    """Index of the step nearest to ``step`` (the earlier one on a tie); ``steps`` sorted.

    Example:
        >>> nearest([0, 10, 20], 14), nearest([0, 10, 20], 15), nearest([0, 10, 20], 99)
        (1, 1, 2)
    """
    i = int(np.searchsorted(np.asarray(steps), step))
    if i == 0:
        return 0
    if i >= len(steps):
        return len(steps) - 1
    return i if steps[i] - step < step - steps[i - 1] else i - 1


def reference_steps(steps: Sequence[int], first_drift: int | None) -> list[int]:
    """The logged steps taken as the reference window: from a third of the first drift step up to it.

    Drift figures start right after the reference window, so it ends there; its start is not
    logged, and is taken in the default's proportion (warm-up 100, reference 100-300).

    Example:
        >>> reference_steps(list(range(0, 400, 50)), 300)
        [100, 150, 200, 250]
        >>> reference_steps([0, 10], None)
        []
    """
    if first_drift is None:
        return []
    start = first_drift // 3
    return [s for s in steps if start <= s < first_drift]


def reference_normal(mean: float, std: float, std_log_ratio: float, mean_shift: float) -> tuple[float, float] | None:
    """The reference window's mean and std, recovered from one step's figures and its drift figures.

    ``std_log_ratio = log(std / ref_std)`` and ``mean_shift = (mean - ref_mean) / ref_std``.

    Example:
        >>> reference_normal(3.0, 2.0, math.log(2.0), 2.0)
        (1.0, 1.0)
    """
    values = (mean, std, std_log_ratio, mean_shift)
    if not all(isinstance(v, float) and math.isfinite(v) for v in values):
        return None
    ref_std = std / math.exp(std_log_ratio)
    return mean - mean_shift * ref_std, ref_std
