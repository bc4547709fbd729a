"""The reference distribution of a tensor and drift measured against it.

The reference accumulates, exactly, the moments and the shared-bin histogram of every logging
step inside a window that starts after a warm-up (activations move fast at initialization, see
``shared/STATISTICS.md`` §3). Drift is then: the log-ratio of stds, the mean shift in reference
stds, PSI and KS on the shared bins.

Example:
    >>> import torch
    >>> from lightning_normwatch.stats.histogram import bin_counts, bin_edges
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

__all__ = ["Reference", "drift", "moment_drift", "shape_drift", "DRIFT_FIGURES"]

DRIFT_FIGURES = ("std_log_ratio", "mean_shift", "psi", "ks", "shape_psi", "shape_ks")


@dataclass
class Reference:
    """Accumulated reference statistics of one tensor.

    Attributes:
        moments: merged moments of every sample in the window.
        hist: summed shared-bin counts.
        steps: logging steps accumulated.
        cache: arrays derived from the sums above (``drift_rows``), dropped by ``add``; never checkpointed.
    """

    moments: Moments = field(default_factory=Moments)
    hist: np.ndarray | None = None
    steps: int = 0
    cache: dict[str, object] = field(default_factory=dict, repr=False, compare=False)

    def add(self, moments: Moments, hist: np.ndarray) -> None:
        """Add one logging step's statistics."""
        self.moments = self.moments.merge(moments)
        self.hist = hist.copy() if self.hist is None else self.hist + hist
        self.steps += 1
        self.cache.clear()

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
    """Drift figures of the current step against the reference; NaN where undefined.

    The plain definition; ``drift_rows.drift_many`` gives the same figures for many tensors at once.
    """
    out = moment_drift(reference, current)
    if out is None or reference.hist is None:
        return dict.fromkeys(DRIFT_FIGURES, math.nan)
    ref, ref_hist = reference.moments, reference.hist
    out["psi"] = psi(ref_hist, hist)
    out["ks"] = ks_distance(ref_hist, hist)
    if ref.std > 0 and current.std > 0:
        out["shape_psi"], out["shape_ks"] = shape_drift(ref_hist, ref.mean, ref.std, hist, current.mean, current.std)
    return out


def moment_drift(reference: Reference, current: Moments) -> dict[str, float] | None:
    """The figures of ``drift`` read off the moments (the histogram ones NaN), or None when drift is undefined."""
    ref = reference.moments
    if ref.n == 0 or current.n == 0 or reference.hist is None:
        return None
    out = dict.fromkeys(DRIFT_FIGURES, math.nan)
    ref_std, cur_std = ref.std, current.std
    if ref_std > 0 and cur_std > 0:
        out["std_log_ratio"] = math.log(cur_std / ref_std)
    # a reference std of zero (constant tensor) would make any change infinite: floor it, relative to
    # the mean (an absolute floor would hide a real shift of a tensor whose unit is tiny, std 1e-20)
    scale = max(ref_std, 1e-6 * abs(ref.mean)) or 1e-18
    out["mean_shift"] = (current.mean - ref.mean) / scale
    return out


#: a bin holding at least this share of the values is a point mass (image background, one-hot level)
POINT_MASS = 0.1


def _split_masses(counts: np.ndarray, std: float) -> tuple[float, np.ndarray, np.ndarray, float]:
    """(share of exact zeros, shares of the other point masses (largest first), the rest's counts, its std).

    Exact zeros (ReLU, dropout) and other point masses (a bin holding ``POINT_MASS`` of the values:
    an image background after a global normalization, the levels of a one-hot or sparse feature)
    are compared by their shares, not standardized with the rest: a point mass holding about half
    of the values would otherwise move the median, and every standardized value with it, whenever
    a batch moves its share across 50 %. The zero bin is (-1e-6, 1e-6]: continuous data has ~no mass there.
    """
    edges = edges_numpy()
    zero_bin = int(np.searchsorted(edges, 0.0))
    total = counts.sum()
    share = counts / total
    p0 = float(share[zero_bin])
    heavy = np.flatnonzero(share >= POINT_MASS)
    heavy = heavy[heavy != zero_bin]
    rest = counts.copy()
    rest[zero_bin] = 0
    rest[heavy] = 0
    masses = np.sort(share[heavy])[::-1]
    if rest.sum() <= 0:
        return p0, masses, rest, math.nan
    # the rest's std from bin midpoints (only a fallback scale when its IQR is zero)
    mids = np.concatenate([[edges[0]], (edges[:-1] + edges[1:]) / 2, [edges[-1]]])
    w = rest / rest.sum()
    mu = float((w * mids).sum())
    rest_std = math.sqrt(max(float((w * (mids - mu) ** 2).sum()), 0.0)) or std
    return p0, masses, rest, rest_std


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
    change of *shape*. Exact zeros are one group of their own, and other point masses (bins holding
    ``POINT_MASS`` of the values) are groups matched by rank; the rest of each distribution is
    standardized by its own median and IQR and both CDFs are read on a common grid (linear
    interpolation between the shared edges); the groups are the reference's quantiles.

    Example:
        >>> import numpy as np
        >>> from lightning_normwatch.stats.histogram import bin_counts, bin_edges
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
    r0, r_masses, ref_rest, ref_std = _split_masses(ref_hist, ref_std)
    c0, c_masses, rest, std = _split_masses(hist, std)
    # point masses are matched by rank (largest first): where they sit is location, not shape
    k = max(len(r_masses), len(c_masses))
    r_masses, c_masses = (np.concatenate([m, np.zeros(k - len(m))]) for m in (r_masses, c_masses))
    pr = [max(r0, floor), *np.maximum(r_masses, floor)]
    pc = [max(c0, floor), *np.maximum(c_masses, floor)]
    shape_ks = float(np.abs(np.concatenate([[r0 - c0], r_masses - c_masses])).max())
    r_cont, c_cont = 1 - r0 - r_masses.sum(), 1 - c0 - c_masses.sum()
    if ref_rest.sum() > 0 and rest.sum() > 0 and ref_std > 0 and std > 0:
        zr, fr = _standardized_cdf(ref_rest, ref_std)
        zc, fc = _standardized_cdf(rest, std)
        cuts = np.unique(np.interp(np.arange(1, groups) / groups, fr, zr))
        pr += list(np.maximum(r_cont * np.diff(np.concatenate([[0.0], np.interp(cuts, zr, fr), [1.0]])), floor))
        pc += list(np.maximum(c_cont * np.diff(np.concatenate([[0.0], np.interp(cuts, zc, fc), [1.0]])), floor))
        shape_ks = max(shape_ks, float(np.abs(r_cont * fr - c_cont * np.interp(zr, zc, fc)).max()))
    else:
        pr.append(max(r_cont, floor))
        pc.append(max(c_cont, floor))
    p, q = np.asarray(pr), np.asarray(pc)
    return float(((q - p) * np.log(q / p)).sum()), float(shape_ks)
