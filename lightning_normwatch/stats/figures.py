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

from .block import HEAD, BlockLayout
from .columns import channel_scales, hist_figures, per_tensor_figures
from .histogram import abs_median_nonzero, normal_ks, num_bins
from .moments import Moments, merge_groups, standardized_shape
from .normality import normality, normality_p
from .percentiles import PERCENTILES, hist_percentiles, hist_percentiles_many

__all__ = [
    "TensorStats",
    "channel_scales",
    "feature_figures",
    "figures",
    "figures_many",
    "hist_percentiles",
    "PERCENTILES",
]


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
        table = np.asarray(blocks, dtype=np.float64).reshape(-1, layout.size)
        if len(table) == 1:  # one block (one call on one process, the usual case): nothing to merge
            return cls._of_block(table[0].copy(), channels, feature_bins)
        f = layout.unpack(table)
        seen = f["numel"] > 0
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

    @classmethod
    def _of_block(cls, row: np.ndarray, channels: int, feature_bins: int) -> TensorStats:
        """The statistics of one block (a copy the fields view): what ``from_blocks`` gives for ``[row]``."""
        numel, sampled, fmin, fmax, smin, smax, saturated, pn, pmean, pm2, pm3, pm4 = row[: len(HEAD)].tolist()
        start = len(HEAD) + num_bins()
        cn, cmean, cm2, cm3, cm4, cnz = (row[start + i * channels : start + (i + 1) * channels] for i in range(6))
        tail = start + 6 * channels
        seen = numel > 0  # an empty block's extremes are not values
        return cls(
            numel=numel,
            sampled=sampled,
            vmin=fmin if seen else math.nan,
            vmax=fmax if seen else math.nan,
            smin=smin if seen else math.nan,
            smax=smax if seen else math.nan,
            saturated=saturated,
            pvalue=Moments(pn, pmean, pm2, pm3, pm4),
            hist=row[len(HEAD) : start],
            cn=cn,
            cmean=cmean,
            cm2=cm2,
            cm3=cm3,
            cm4=cm4,
            cnz=cnz,
            fhist=row[tail + 1 : tail + 1 + channels * feature_bins].reshape(channels, feature_bins)
            if feature_bins
            else None,
            fitems=float(row[tail]) if feature_bins else 0.0,
        )

    @cached_property
    def overall(self) -> Moments:
        """Moments of all sampled finite values (channels merged exactly; computed once)."""
        n, mean, m2, m3, m4 = merge_groups(self.cn, self.cmean, self.cm2, self.cm3, self.cm4)
        return Moments(float(n), float(mean), float(m2), float(m3), float(m4))

    @cached_property
    def nonfinite(self) -> float:
        """Share of sampled values that were NaN or infinite (computed once)."""
        return (self.sampled - float(self.cn.sum())) / self.sampled if self.sampled > 0 else math.nan

    @cached_property
    def has_nonfinite(self) -> bool:
        """Whether any value of the full tensor was NaN/inf (from its extremes) or of the sample (computed once)."""
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


#: the figures of ``per_tensor_figures`` that go into the figures as they are, in this order
_CHANNEL = (
    "channel_skew",
    "channel_kurtosis",
    "channel_std_min",
    "channel_std_max",
    "channel_scale_ratio",
    "channel_mean_absmax",
    "batch_spread",
    "dead",
)


def _figures_many(stats: list[TensorStats]) -> list[dict[str, float]]:
    arrays = per_tensor_figures(stats)
    hist = np.stack([st.hist for st in stats])
    cum = np.cumsum(hist, axis=1)
    ks, abs_median = hist_figures(hist, cum, arrays["n"], arrays["grand"], arrays["std"])
    lo, hi = [st.smin for st in stats], [st.smax for st in stats]
    percentiles = hist_percentiles_many(hist, PERCENTILES, lo, hi, cum)
    names = ("n", "grand", "m2", "m3", "m4", "nonzero", "channel_rows")
    # per tensor: its values as Python floats (one ``tolist`` per figure, rows by ``zip``)
    moments = zip(*(arrays[k].tolist() for k in names), strict=True)
    channel = zip(*(arrays[k].tolist() for k in _CHANNEL), strict=True)
    hists = zip(ks.tolist(), abs_median.tolist(), percentiles.tolist(), strict=True)
    out = []
    for st, (n, grand, m2, m3, m4, nonzero, rows), ch, (ks_i, abs_median_i, p) in zip(
        stats, moments, channel, hists, strict=True
    ):
        if "nonfinite" not in st.__dict__:  # its cached property: n is the sum of the (integer) counts cn
            st.__dict__["nonfinite"] = (st.sampled - n) / st.sampled if st.sampled > 0 else math.nan
        skew, kurtosis, std_min, std_max, scale_ratio, mean_absmax, spread, dead = ch
        m = st.__dict__["overall"] = Moments(n, grand, m2, m3, m4)  # the cached property, for drift and the panels
        finite_min = st.vmin if math.isfinite(st.vmin) else (st.smin if math.isfinite(st.smin) else math.nan)
        finite_max = st.vmax if math.isfinite(st.vmax) else (st.smax if math.isfinite(st.smax) else math.nan)
        normaltest_p, jarque_bera_p = normality_p(st.pvalue)
        sampled = st.sampled
        p15, p50, p85 = p  # PERCENTILES
        out.append(
            {
                "mean": grand if n else math.nan,
                "std": m.std,
                "min": finite_min,
                "max": finite_max,
                "max_abs": max(abs(finite_min), abs(finite_max)),
                "zeros": (sampled - nonzero) / sampled if sampled > 0 else math.nan,
                "nonfinite": st.nonfinite,
                "skew": m.skew,
                "kurtosis": m.kurtosis,
                "channel_skew": skew,
                "channel_kurtosis": kurtosis,
                "channel_std_min": std_min,
                "channel_std_max": std_max,
                "channel_scale_ratio": scale_ratio,
                "channel_mean_absmax": mean_absmax,
                "batch_spread": spread,
                "dead": dead,
                "saturated": st.saturated / sampled if sampled > 0 else math.nan,
                "normal_ks": ks_i if n else math.nan,
                "normaltest_p": normaltest_p,
                "jarque_bera_p": jarque_bera_p,
                "abs_median": abs_median_i,
                "channel_rows": rows,
                "numel": st.numel,
                "sampled": sampled,
                "p15": p15,
                "p50": p50,
                "p85": p85,
            }
        )
    return out
