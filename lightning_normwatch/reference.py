"""The reference distribution of a tensor and drift measured against it.

The reference accumulates, exactly, the moments and the shared-bin histogram of every logging
step inside a window that starts after a warm-up (activations move fast at initialization, see
``shared/STATISTICS.md`` §3). Drift is then: the log-ratio of stds, the mean shift in reference
stds, PSI and KS on the shared bins.

Example:
    >>> import torch
    >>> from lightning_normwatch.histogram import bin_counts, bin_edges
    >>> def hist(x): return bin_counts(x, bin_edges()).double().numpy()
    >>> x = torch.tensor([-1.0, 1.0])
    >>> ref = Reference()
    >>> ref.add(Moments.of(x.numpy()), hist(x))
    >>> d = drift(ref, Moments.of(2 * x.numpy()), hist(2 * x))
    >>> round(d["std_log_ratio"], 4), d["mean_shift"]
    (0.6931, 0.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .histogram import edges_numpy, ks_distance, psi
from .moments import Moments

__all__ = ["Reference", "drift", "shape_drift", "DRIFT_FIGURES"]

DRIFT_FIGURES = ("std_log_ratio", "mean_shift", "psi", "ks", "shape_psi", "shape_ks")


@dataclass
class Reference:
    """Accumulated reference statistics of one tensor.

    Attributes:
        moments: merged moments of every sample in the window.
        hist: summed shared-bin counts.
        steps: logging steps accumulated.
    """

    moments: Moments = field(default_factory=Moments)
    hist: np.ndarray | None = None
    steps: int = 0

    def add(self, moments: Moments, hist: np.ndarray) -> None:
        """Add one logging step's statistics."""
        self.moments = self.moments.merge(moments)
        self.hist = hist.copy() if self.hist is None else self.hist + hist
        self.steps += 1

    def state(self) -> dict[str, object]:
        """Plain values for a checkpoint (loads with ``weights_only=True``)."""
        return {
            "moments": list(self.moments.astuple()),
            "hist": [] if self.hist is None else self.hist.tolist(),
            "steps": self.steps,
        }

    @classmethod
    def from_state(cls, state: dict[str, object]) -> Reference:
        hist = state["hist"]
        return cls(
            Moments(*state["moments"]),  # type: ignore[misc]
            np.asarray(hist, dtype=np.float64) if len(hist) else None,  # type: ignore[arg-type]
            int(state["steps"]),  # type: ignore[arg-type]
        )


def drift(reference: Reference, current: Moments, hist: np.ndarray) -> dict[str, float]:
    """Drift figures of the current step against the reference; NaN where undefined."""
    ref = reference.moments
    out = dict.fromkeys(DRIFT_FIGURES, math.nan)
    if ref.n == 0 or current.n == 0 or reference.hist is None:
        return out
    ref_std, cur_std = ref.std, current.std
    if ref_std > 0 and cur_std > 0:
        out["std_log_ratio"] = math.log(cur_std / ref_std)
    # a reference std of zero (constant tensor) would make any change infinite: floor it.
    scale = max(ref_std, 1e-6 * max(abs(ref.mean), 1e-12))
    out["mean_shift"] = (current.mean - ref.mean) / scale
    out["psi"] = psi(reference.hist, hist)
    out["ks"] = ks_distance(reference.hist, hist)
    if ref_std > 0 and cur_std > 0:
        out["shape_psi"], out["shape_ks"] = shape_drift(reference.hist, ref.mean, ref_std, hist, current.mean, cur_std)
    return out


def _split_zeros(counts: np.ndarray, mean: float, std: float) -> tuple[float, np.ndarray, float, float]:
    """(share of exact zeros, counts without them, mean and std of the non-zero part).

    Exact zeros (ReLU, dropout) are a point mass that no location-scale change moves; they are
    compared as a group of their own. The zero bin is (-1e-6, 1e-6]: continuous data has ~no mass there.
    """
    zero_bin = int(np.searchsorted(edges_numpy(), 0.0))
    total = counts.sum()
    p0 = float(counts[zero_bin] / total)
    rest = counts.copy()
    rest[zero_bin] = 0
    if p0 >= 1:
        return 1.0, rest, math.nan, math.nan
    mean_nz = mean / (1 - p0)
    var_nz = (std * std + mean * mean) / (1 - p0) - mean_nz * mean_nz
    return p0, rest, mean_nz, math.sqrt(max(var_nz, 0.0))


def _standardized_cdf(counts: np.ndarray, std: float) -> tuple[np.ndarray, np.ndarray]:
    """(z at each shared edge, empirical CDF there), robustly standardized: (x - median) / IQR.

    Median and IQR (read off the CDF) rather than mean and std: a few large values (one feature on
    a much larger scale, a heavy tail) would otherwise squeeze the bulk of the values into a sliver
    of z where sampling noise moves every quantile group.
    """
    cdf = np.cumsum(counts)[:-1] / counts.sum()
    edges = edges_numpy()
    q25, median, q75 = np.interp([0.25, 0.5, 0.75], cdf, edges)
    scale = q75 - q25 if q75 > q25 else std
    return (edges - median) / scale, cdf


def shape_drift(
    ref_hist: np.ndarray,
    ref_mean: float,
    ref_std: float,
    hist: np.ndarray,
    mean: float,
    std: float,
    groups: int = 20,
    floor: float = 1e-4,
) -> tuple[float, float]:
    """PSI and KS between the two distributions after standardizing each by its own location and scale.

    Location and scale have their own figures (``mean_shift``, ``std_log_ratio``); this isolates a
    change of *shape*. Exact zeros are one group of their own (a point mass that does not move); the
    non-zero parts are standardized by their own median and IQR and both CDFs are read on a common
    grid (linear interpolation between the shared edges); the groups are the reference's quantiles.

    Example:
        >>> import numpy as np
        >>> from lightning_normwatch.histogram import bin_counts, bin_edges
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> a = bin_counts(torch.randn(20000, generator=g), bin_edges()).numpy().astype(float)
        >>> b = bin_counts(5 + 3 * torch.randn(20000, generator=g), bin_edges()).numpy().astype(float)
        >>> psi_value, ks_value = shape_drift(a, 0.0, 1.0, b, 5.0, 3.0)
        >>> psi_value < 0.02
        True
    """
    if ref_hist.sum() <= 0 or hist.sum() <= 0:
        return math.nan, math.nan
    r0, ref_rest, ref_mean, ref_std = _split_zeros(ref_hist, ref_mean, ref_std)
    c0, rest, mean, std = _split_zeros(hist, mean, std)
    pr, pc = [max(r0, floor)], [max(c0, floor)]
    shape_ks = abs(r0 - c0)
    if ref_rest.sum() > 0 and rest.sum() > 0 and ref_std > 0 and std > 0:
        zr, fr = _standardized_cdf(ref_rest, ref_std)
        zc, fc = _standardized_cdf(rest, std)
        cuts = np.unique(np.interp(np.arange(1, groups) / groups, fr, zr))
        pr += list(np.maximum((1 - r0) * np.diff(np.concatenate([[0.0], np.interp(cuts, zr, fr), [1.0]])), floor))
        pc += list(np.maximum((1 - c0) * np.diff(np.concatenate([[0.0], np.interp(cuts, zc, fc), [1.0]])), floor))
        shape_ks = max(shape_ks, float(np.abs((1 - r0) * fr - (1 - c0) * np.interp(zr, zc, fc)).max()))
    p, q = np.asarray(pr), np.asarray(pc)
    return float(((q - p) * np.log(q / p)).sum()), float(shape_ks)
