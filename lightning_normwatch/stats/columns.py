"""The array work of ``figures_many``: figures of all tensors of a logging step at once, one value per tensor.

Per-channel arrays of all tensors are concatenated and summed per tensor in one ``reduceat`` (a sequential
sum per segment, whatever the array's shape), histograms are stacked ``[tensors, bins]``: a fixed number of
numpy calls per logging step instead of a few dozen per tensor.

Example:
    >>> from types import SimpleNamespace
    >>> one = np.ones(2)
    >>> st = SimpleNamespace(cn=4 * one, cmean=np.array([1.0, 3.0]), cm2=4 * one, cm3=0 * one, cm4=8 * one, cnz=4 * one)
    >>> f = per_tensor_figures([st])
    >>> f["grand"].tolist(), f["m2"].tolist(), f["channel_std_min"].tolist()
    ([2.0], [16.0], [1.0])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .histogram import RESOLVED_STD, edges_numpy

__all__ = ["channel_scales", "hist_figures", "per_tensor_figures", "where"]


def where(mask: np.ndarray, values: np.ndarray, fill: float) -> np.ndarray:
    """``np.where(mask, values, fill)``, or ``values`` itself when every entry is masked in (the usual case: all
    channels have values): the same array values at a fraction of the cost (``np.where`` is slow per element).

    Example:
        >>> x = np.array([1.0, -2.0])
        >>> where(np.array([True, True]), x, 0.0) is x, where(np.array([True, False]), x, 0.0).tolist()
        (True, [1.0, 0.0])
    """
    return values if mask.all() else np.where(mask, values, fill)


def channel_scales(n: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(channels with values, std, RMS) per channel from counts, means and M2 sums.

    Example:
        >>> live, std, rms = channel_scales(np.array([4.0, 0.0]), np.array([3.0, 0.0]), np.array([64.0, 0.0]))
        >>> live.tolist(), std.tolist(), rms.tolist()
        ([True, False], [4.0, 0.0], [5.0, 0.0])
    """
    live = n > 0
    std = np.sqrt(where(live, m2 / where(live, n, 1), 0.0))
    return live, std, np.sqrt(std**2 + mean**2)


def per_tensor_figures(stats: Sequence[Any]) -> dict[str, np.ndarray]:
    """For the ``TensorStats`` of tensors with channels: the figures that reduce per-channel arrays, one value
    per tensor (every sum in one ``reduceat``), and the overall moments ``n grand m2 m3 m4`` (``merge_groups``
    over each tensor's channels)."""
    sizes = [st.cn.size for st in stats]
    starts = np.cumsum([0, *sizes[:-1]])
    seg = np.repeat(np.arange(len(stats)), sizes)
    cn, cmean, cm2, cm3, cm4, cnz = (
        np.concatenate([getattr(st, f) for st in stats]) for f in ("cn", "cmean", "cm2", "cm3", "cm4", "cnz")
    )

    def per_tensor(values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, starts, axis=-1)

    out: dict[str, np.ndarray] = {}
    live = cn > 0
    n = out["n"] = per_tensor(cn)
    safe = np.where(n > 0, n, 1.0)
    grand = per_tensor(cn * cmean) / safe
    grand = out["grand"] = grand + per_tensor(where(live, cn * (cmean - grand[seg]), 0.0)) / safe
    d = where(live, cmean - grand[seg], 0.0)
    d2 = d * d
    # per channel: scales, liveness, within-channel shape
    _, cstd, crms = channel_scales(cn, cmean, cm2)
    scaled = live & (crms > 0)
    ok = (cn >= 2) & (cm2 > 0)
    var = where(ok, cm2 / where(ok, cn, 1), 1.0)
    sums = per_tensor(
        np.array(
            [
                cm2 + cn * d2,
                cm3 + 3 * d * cm2 + cn * d2 * d,
                cm4 + 4 * d * cm3 + 6 * d2 * cm2 + cn * d2 * d2,
                where(ok, cn, 0.0),
                where(ok, cm3 / var**1.5, 0.0),
                where(ok, cm4 / var**2, 0.0),
                live,
                scaled,
                where(live, cstd, 0.0),
                (cnz == 0) & live,
                cnz,
            ]
        )
    )
    out["m2"], out["m3"], out["m4"], shape_n, z3, z4, live_n, scaled_n, cstd_sum, dead_n, out["nonzero"] = sums
    std = out["std"] = np.sqrt(out["m2"] / safe)
    out["channel_skew"] = np.where(shape_n > 0, z3 / shape_n, np.nan)
    out["channel_kurtosis"] = np.where(shape_n > 0, z4 / shape_n - 3.0, np.nan)
    # extremes over the live (scaled) channels: NaN where a tensor has none
    low = np.minimum.reduceat(np.array([where(live, cstd, np.inf), where(scaled, crms, np.inf)]), starts, axis=1)
    high = np.maximum.reduceat(
        np.array([where(live, cstd, -np.inf), where(scaled, crms, -np.inf), where(live, np.abs(cmean), -np.inf)]),
        starts,
        axis=1,
    )
    out["channel_std_min"], out["channel_std_max"] = (np.where(live_n > 0, v, np.nan) for v in (low[0], high[0]))
    out["channel_scale_ratio"] = np.where(scaled_n > 0, high[1], np.nan) / np.where(scaled_n > 0, low[1], np.nan)
    out["channel_mean_absmax"] = np.where(live_n > 0, high[2], np.nan)
    # batch_spread: mean over live units of the unit's std across rows, over the tensor's RMS
    rms = np.hypot(grand, std)
    live_or_1 = np.where(live_n > 0, live_n, 1)
    out["batch_spread"] = np.where((live_n > 0) & (rms > 0), cstd_sum / live_or_1 / np.where(rms > 0, rms, 1), np.nan)
    out["dead"] = np.where(live_n > 0, dead_n / live_or_1, np.nan)
    # the median of the rows per channel: every channel's, as they almost always are equal
    even = np.minimum.reduceat(cn, starts) == np.maximum.reduceat(cn, starts)
    medians = [math.nan if e else float(np.median(st.cn)) for e, st in zip(even, stats, strict=True)]
    out["channel_rows"] = np.where(even, cn[starts], medians)
    return out


def hist_figures(
    hist: np.ndarray, cum: np.ndarray, n: np.ndarray, mean: np.ndarray, std: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per tensor (rows of ``hist``, ``[tensors, bins]``, ``cum`` their cumulative sums): distance to the fitted
    normal (``normal_ks``) and median magnitude of the non-zero values (``abs_median``); NaN where the shared
    bins cannot resolve them."""
    from scipy import special

    total = hist.sum(axis=1)
    edges = edges_numpy()
    fitted = (n > 0) & (std >= RESOLVED_STD[0]) & (std <= RESOLVED_STD[1]) & (total > 0)
    cdf = cum[:, :-1] / np.where(total > 0, total, 1.0)[:, None]
    phi = special.ndtr((edges[None, :] - mean[:, None]) / np.where(fitted, std, 1.0)[:, None])
    ks = np.where(fitted, np.abs(cdf - phi).max(axis=1), np.nan)
    half = len(edges) // 2
    folded = hist[:, half + 1 :] + hist[:, :half][:, ::-1]
    folded_total = folded.sum(axis=1)
    above = np.cumsum(folded, axis=1) >= (folded_total / 2)[:, None]
    magnitudes = np.append(edges[half + 1 :], np.nan)  # the median in the open top bin: unknown
    abs_median = np.where(folded_total > 0, magnitudes[np.minimum(above.argmax(axis=1), len(magnitudes) - 1)], np.nan)
    return ks, abs_median
