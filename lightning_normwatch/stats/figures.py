"""Host-side merging of packed blocks and the figures derived from them (pure numpy, float64).

Example:
    >>> import torch
    >>> from lightning_normwatch.collect.sampling import MeasureSpec, measure
    >>> x = torch.tensor([[1.0, -2.0], [3.0, 0.5], [0.0, 4.0]])
    >>> block = measure(x, MeasureSpec(), torch.Generator().manual_seed(0)).numpy()
    >>> stats = TensorStats.from_blocks(block[None], channels=2)
    >>> round(figures(stats)["mean"], 6)
    1.083333
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .block import BlockLayout
from .histogram import RESOLVED_STD, abs_median_nonzero, edges_numpy, normal_ks
from .moments import Moments, merge_groups, standardized_shape
from .normality import normality

__all__ = [
    "TensorStats",
    "channel_scales",
    "feature_figures",
    "figures",
    "figures_many",
    "hist_percentiles",
    "PERCENTILES",
]

#: percentiles given as figures ``p15``, ``p50``, ``p85`` (Ioffe & Szegedy 2015, Figure 1)
PERCENTILES = (15, 50, 85)


@dataclass
class TensorStats:
    """One tensor's raw statistics at one logging step, merged over ranks (and calls).

    Attributes:
        numel: values in the full tensor(s).
        sampled: values in the sample(s) the moments come from.
        vmin, vmax: full-tensor extremes (NaN/inf when the tensor held non-finite values).
        smin, smax: extremes of the sample's finite values.
        saturated: sampled values at a bounded activation's limits.
        pvalue: moments of the fixed-size subsample used for p-values.
        hist: counts on the shared histogram bins (finite sampled values).
        cn, cmean, cm2, cm3, cm4, cnz: per-channel count, mean, central moment sums, non-zero count.
        fhist: input features only: ``[channels, FEATURE_BINS]`` counts on each feature's anchor bins.
        fitems: input features only: batch items the sample came from.
    """

    numel: float
    sampled: float
    vmin: float
    vmax: float
    smin: float
    smax: float
    saturated: float
    pvalue: Moments
    hist: np.ndarray
    cn: np.ndarray
    cmean: np.ndarray
    cm2: np.ndarray
    cm3: np.ndarray
    cm4: np.ndarray
    cnz: np.ndarray
    fhist: np.ndarray | None = None
    fitems: float = 0.0

    @classmethod
    def from_blocks(cls, blocks: np.ndarray, channels: int, feature_bins: int = 0) -> TensorStats:
        """Merge blocks ``[k, size]`` (one per rank or per call; empty ones allowed) exactly."""
        layout = BlockLayout(channels, feature_bins)
        f = layout.unpack(np.asarray(blocks, dtype=np.float64).reshape(-1, layout.size))
        seen = f["numel"] > 0
        if len(seen) == 1:  # one block (one call on one process, the usual case): nothing to merge
            pn, pmean, pm2, pm3, pm4 = (f[k][0] for k in ("pn", "pmean", "pm2", "pm3", "pm4"))
            cn, cmean, cm2, cm3, cm4 = (f[k][0].copy() for k in ("cn", "cmean", "cm2", "cm3", "cm4"))
        else:
            pn, pmean, pm2, pm3, pm4 = merge_groups(f["pn"], f["pmean"], f["pm2"], f["pm3"], f["pm4"])
            cn, cmean, cm2, cm3, cm4 = merge_groups(f["cn"], f["cmean"], f["cm2"], f["cm3"], f["cm4"])

        def extreme(values: np.ndarray, fn) -> float:
            values = values[seen]
            return float(fn(values)) if values.size else math.nan

        return cls(
            numel=float(f["numel"].sum()),
            sampled=float(f["sampled"].sum()),
            vmin=extreme(f["fmin"], np.min),
            vmax=extreme(f["fmax"], np.max),
            smin=extreme(f["smin"], np.min),
            smax=extreme(f["smax"], np.max),
            saturated=float(f["saturated"].sum()),
            pvalue=Moments(float(pn), float(pmean), float(pm2), float(pm3), float(pm4)),
            hist=f["hist"].sum(axis=0),
            cn=cn,
            cmean=cmean,
            cm2=cm2,
            cm3=cm3,
            cm4=cm4,
            cnz=f["cnz"].sum(axis=0),
            fhist=f["fhist"].sum(axis=0) if feature_bins else None,
            fitems=float(f["fitems"].sum()) if feature_bins else 0.0,
        )

    @cached_property
    def overall(self) -> Moments:
        """Moments of all sampled finite values (channels merged exactly; computed once)."""
        n, mean, m2, m3, m4 = merge_groups(self.cn, self.cmean, self.cm2, self.cm3, self.cm4)
        return Moments(float(n), float(mean), float(m2), float(m3), float(m4))

    @property
    def nonfinite(self) -> float:
        """Share of sampled values that were NaN or infinite."""
        return (self.sampled - float(self.cn.sum())) / self.sampled if self.sampled > 0 else math.nan

    @property
    def has_nonfinite(self) -> bool:
        """Whether any value of the full tensor was NaN/inf (from its extremes) or of the sample."""
        if self.numel == 0:  # an empty tensor has no values, non-finite or otherwise
            return False
        return not (math.isfinite(self.vmin) and math.isfinite(self.vmax)) or self.nonfinite > 0


def _safe_div(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def figures(stats: TensorStats) -> dict[str, float]:
    """All figures for one tensor at one step, by name.

    Names: ``mean std min max max_abs zeros nonfinite skew kurtosis channel_skew channel_kurtosis
    channel_std_min channel_std_max channel_scale_ratio channel_mean_absmax batch_spread dead saturated
    normal_ks normaltest_p jarque_bera_p abs_median channel_rows numel sampled p15 p50 p85``. Non-finite
    statistics (an exploding layer) give NaN/inf figures, not numpy warnings.
    """
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return _figures(stats)


def channel_scales(n: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(channels with values, std, RMS) per channel from counts, means and M2 sums.

    Example:
        >>> live, std, rms = channel_scales(np.array([4.0, 0.0]), np.array([3.0, 0.0]), np.array([64.0, 0.0]))
        >>> live.tolist(), std.tolist(), rms.tolist()
        ([True, False], [4.0, 0.0], [5.0, 0.0])
    """
    live = n > 0
    std = np.sqrt(np.where(live, m2 / np.where(live, n, 1), 0.0))
    return live, std, np.sqrt(std**2 + mean**2)


def feature_figures(
    n: np.ndarray, mean: np.ndarray, m2: np.ndarray, m3: np.ndarray, m4: np.ndarray, min_rows: float = 256
) -> dict[str, float]:
    """Input-feature scales and within-feature shape from per-feature moments (of all batches seen).

    Empty when no feature has ``min_rows`` values yet, or none has a non-zero finite RMS.
    """
    if n.max() < min_rows:
        return {}
    live, _, rms = channel_scales(n, mean, m2)
    scaled = live & (rms > 0) & np.isfinite(rms)
    if not scaled.any():
        return {}
    g1, g2 = standardized_shape(n, m2, m3, m4)
    return {
        # largest over median: a feature far larger than the rest dominates the gradients; tiny,
        # sparse features (a pixel that is almost always 0) are harmless and would make max/min useless
        "feature_rms_ratio": float(rms[scaled].max() / np.median(rms[scaled])),
        "feature_rms_max": float(rms[scaled].max()),
        "channel_skew": g1,
        "channel_kurtosis": g2,
    }


def _figures(stats: TensorStats) -> dict[str, float]:
    m = stats.overall
    # Full-tensor extremes, else the sample's finite ones (NaN when no finite value was sampled).
    finite_min = stats.vmin if math.isfinite(stats.vmin) else (stats.smin if math.isfinite(stats.smin) else math.nan)
    finite_max = stats.vmax if math.isfinite(stats.vmax) else (stats.smax if math.isfinite(stats.smax) else math.nan)
    live, cstd, crms = channel_scales(stats.cn, stats.cmean, stats.cm2)
    scaled = live & (crms > 0)
    g1, g2 = standardized_shape(stats.cn, stats.cm2, stats.cm3, stats.cm4)
    test = normality(stats.pvalue)
    return {
        "mean": m.mean if m.n else math.nan,
        "std": m.std,
        "min": finite_min,
        "max": finite_max,
        "max_abs": max(abs(finite_min), abs(finite_max)),
        "zeros": _safe_div(stats.sampled - float(stats.cnz.sum()), stats.sampled),
        "nonfinite": stats.nonfinite,
        "skew": m.skew,
        "kurtosis": m.kurtosis,
        "channel_skew": g1,
        "channel_kurtosis": g2,
        "channel_std_min": float(cstd[live].min()) if live.any() else math.nan,
        "channel_std_max": float(cstd[live].max()) if live.any() else math.nan,
        "channel_scale_ratio": float(crms[scaled].max() / crms[scaled].min()) if scaled.any() else math.nan,
        "channel_mean_absmax": float(np.abs(stats.cmean[live]).max()) if live.any() else math.nan,
        "batch_spread": _safe_div(float(cstd[live].mean()), math.hypot(m.mean, m.std)) if live.any() else math.nan,
        "dead": float(((stats.cnz == 0) & live).sum() / live.sum()) if live.any() else math.nan,
        "saturated": _safe_div(stats.saturated, stats.sampled),
        "normal_ks": normal_ks(stats.hist, m.mean, m.std) if m.n else math.nan,
        "normaltest_p": test.normaltest_p,
        "jarque_bera_p": test.jarque_bera_p,
        "abs_median": abs_median_nonzero(stats.hist),
        "channel_rows": float(np.median(stats.cn)) if stats.cn.size else 0.0,
        "numel": stats.numel,
        "sampled": stats.sampled,
        **_percentile_figures(stats),
    }


def _percentile_figures(stats: TensorStats) -> dict[str, float]:
    values = hist_percentiles(stats.hist, PERCENTILES, stats.smin, stats.smax)
    return {f"p{q}": v for q, v in zip(PERCENTILES, values, strict=True)}


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


def figures_many(stats: list[TensorStats]) -> list[dict[str, float]]:
    """``[figures(st) for st in stats]``, with the array work done once over all tensors.

    Per-channel arrays of all tensors are concatenated and reduced per tensor (``reduceat``), histograms
    are stacked ``[tensors, bins]``: about 40 numpy calls in all instead of about 40 per tensor (a
    fraction of a millisecond each on a few hundred values). Equal to ``figures`` to float rounding
    (tests/test_batched.py). Tensors without channels take the per-tensor path.

    Example:
        >>> import torch
        >>> from lightning_normwatch.collect.sampling import MeasureSpec, measure
        >>> block = measure(torch.randn(16, 3), MeasureSpec(), torch.Generator().manual_seed(0)).numpy()
        >>> st = TensorStats.from_blocks(block[None], channels=3)
        >>> bool(np.isclose(figures_many([st])[0]["std"], figures(st)["std"]))
        True
    """
    out: list[dict[str, float] | None] = [None] * len(stats)
    batch = [i for i, st in enumerate(stats) if st.cn.size > 0]
    for i in set(range(len(stats))) - set(batch):
        out[i] = figures(stats[i])
    if batch:
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            for i, fig in zip(batch, _figures_many([stats[i] for i in batch]), strict=True):
                out[i] = fig
    return out  # type: ignore[return-value]


def _segment_extreme(values: np.ndarray, mask: np.ndarray, starts: np.ndarray, fn: np.ufunc, fill: float) -> np.ndarray:
    """Per-segment ``fn`` (np.minimum/np.maximum) over the masked values; NaN where none is masked."""
    reduced = fn.reduceat(np.where(mask, values, fill), starts)
    return np.where(np.add.reduceat(mask.astype(np.float64), starts) > 0, reduced, np.nan)


def _hist_figures(hist: np.ndarray, n: np.ndarray, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per tensor (rows of ``hist``, ``[tensors, bins]``): distance to the fitted normal (``normal_ks``) and
    median magnitude of the non-zero values (``abs_median``); NaN where the shared bins cannot resolve them."""
    from scipy import special

    total = hist.sum(axis=1)
    edges = edges_numpy()
    fitted = (n > 0) & (std >= RESOLVED_STD[0]) & (std <= RESOLVED_STD[1]) & (total > 0)
    cdf = np.cumsum(hist, axis=1)[:, :-1] / np.where(total > 0, total, 1.0)[:, None]
    phi = special.ndtr((edges[None, :] - mean[:, None]) / np.where(fitted, std, 1.0)[:, None])
    ks = np.where(fitted, np.abs(cdf - phi).max(axis=1), np.nan)
    half = len(edges) // 2
    folded = hist[:, half + 1 :] + hist[:, :half][:, ::-1]
    folded_total = folded.sum(axis=1)
    above = np.cumsum(folded, axis=1) >= (folded_total / 2)[:, None]
    magnitudes = np.append(edges[half + 1 :], np.nan)  # the median in the open top bin: unknown
    abs_median = np.where(folded_total > 0, magnitudes[np.minimum(above.argmax(axis=1), len(magnitudes) - 1)], np.nan)
    return ks, abs_median


def _figures_many(stats: list[TensorStats]) -> list[dict[str, float]]:
    t = len(stats)
    sizes = np.array([st.cn.size for st in stats])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    seg = np.repeat(np.arange(t), sizes)
    cn, cmean, cm2, cm3, cm4, cnz = (
        np.concatenate([getattr(st, f) for st in stats]) for f in ("cn", "cmean", "cm2", "cm3", "cm4", "cnz")
    )

    def per_tensor(values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, starts)

    # overall moments: merge_groups over each tensor's channels
    n = per_tensor(cn)
    safe = np.where(n > 0, n, 1.0)
    grand = per_tensor(cn * cmean) / safe
    grand = grand + per_tensor(np.where(cn > 0, cn * (cmean - grand[seg]), 0.0)) / safe
    d = np.where(cn > 0, cmean - grand[seg], 0.0)
    d2 = d * d
    m2 = per_tensor(cm2 + cn * d2)
    m3 = per_tensor(cm3 + 3 * d * cm2 + cn * d2 * d)
    m4 = per_tensor(cm4 + 4 * d * cm3 + 6 * d2 * cm2 + cn * d2 * d2)
    overall = [Moments(*(float(v[i]) for v in (n, grand, m2, m3, m4))) for i in range(t)]
    for st, m in zip(stats, overall, strict=True):
        st.__dict__["overall"] = m  # the cached property, for drift and the panels
    std = np.sqrt(m2 / safe)
    # per channel: scales, liveness, within-channel shape
    live, cstd, crms = channel_scales(cn, cmean, cm2)
    scaled = live & (crms > 0)
    ok = (cn >= 2) & (cm2 > 0)
    var = np.where(ok, cm2 / np.where(ok, cn, 1), 1.0)
    shape_n = per_tensor(np.where(ok, cn, 0.0))
    g1 = np.where(shape_n > 0, per_tensor(np.where(ok, cm3 / var**1.5, 0.0)) / shape_n, np.nan)
    g2 = np.where(shape_n > 0, per_tensor(np.where(ok, cm4 / var**2, 0.0)) / shape_n - 3.0, np.nan)
    std_min = _segment_extreme(cstd, live, starts, np.minimum, np.inf)
    std_max = _segment_extreme(cstd, live, starts, np.maximum, -np.inf)
    rms_ratio = _segment_extreme(crms, scaled, starts, np.maximum, -np.inf) / _segment_extreme(
        crms, scaled, starts, np.minimum, np.inf
    )
    mean_absmax = _segment_extreme(np.abs(cmean), live, starts, np.maximum, -np.inf)
    # batch_spread: mean over live units of the unit's std across rows, over the tensor's RMS
    live_n = per_tensor(live.astype(np.float64))
    rms = np.hypot(grand, std)
    spread = np.where(
        (live_n > 0) & (rms > 0),
        per_tensor(np.where(live, cstd, 0.0)) / np.where(live_n > 0, live_n, 1) / np.where(rms > 0, rms, 1),
        np.nan,
    )
    dead = np.where(
        live_n > 0, per_tensor(((cnz == 0) & live).astype(np.float64)) / np.where(live_n > 0, live_n, 1), np.nan
    )
    nonzero = per_tensor(cnz)
    ks, abs_median = _hist_figures(np.stack([st.hist for st in stats]), n, grand, std)

    out = []
    for i, st in enumerate(stats):
        m = overall[i]
        finite_min = st.vmin if math.isfinite(st.vmin) else (st.smin if math.isfinite(st.smin) else math.nan)
        finite_max = st.vmax if math.isfinite(st.vmax) else (st.smax if math.isfinite(st.smax) else math.nan)
        test = normality(st.pvalue)
        out.append(
            {
                "mean": m.mean if m.n else math.nan,
                "std": m.std,
                "min": finite_min,
                "max": finite_max,
                "max_abs": max(abs(finite_min), abs(finite_max)),
                "zeros": _safe_div(st.sampled - float(nonzero[i]), st.sampled),
                "nonfinite": st.nonfinite,
                "skew": m.skew,
                "kurtosis": m.kurtosis,
                "channel_skew": float(g1[i]),
                "channel_kurtosis": float(g2[i]),
                "channel_std_min": float(std_min[i]),
                "channel_std_max": float(std_max[i]),
                "channel_scale_ratio": float(rms_ratio[i]),
                "channel_mean_absmax": float(mean_absmax[i]),
                "batch_spread": float(spread[i]),
                "dead": float(dead[i]),
                "saturated": _safe_div(st.saturated, st.sampled),
                "normal_ks": float(ks[i]) if m.n else math.nan,
                "normaltest_p": test.normaltest_p,
                "jarque_bera_p": test.jarque_bera_p,
                "abs_median": float(abs_median[i]),
                "channel_rows": float(np.median(st.cn)),
                "numel": st.numel,
                "sampled": st.sampled,
                **_percentile_figures(st),
            }
        )
    return out
