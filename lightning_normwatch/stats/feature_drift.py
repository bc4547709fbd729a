"""Per-feature drift of the input features, the way drift tools judge columns, with noise-aware thresholds.

Each input feature (a column of ``[B, F]``, a channel of ``[B, C, H, W]``, a feature of ``[B, T, F]``)
is compared with its own reference, accumulated over the first logging steps (data is meant to be
stationary: no warm-up is needed). Three figures per feature:

- ``mean_shift``: (current mean - reference mean) / reference std;
- ``std_log_ratio``: log(current std / reference std);
- ``psi``: PSI between the current and reference counts on ``FEATURE_EDGES``, fixed bins in units of
  the feature's *anchor* (its mean and std at the first logging step it was seen): 18 bins per
  feature, so memory and the DDP collective grow with the number of features, not with the values.

A feature has *changed* at a step when a figure exceeds both its effect-size floor (``Thresholds.
input_mean_shift``, ``input_scale``, ``input_psi``) and what sampling noise alone produces at that
batch size (``noise_z`` standard errors; for the distribution, the same significance in a chi-square
test), and, for a mean or scale change, the binned distribution changed too (p < ``CONFIRM_ALPHA``).
It is *drifted* once it has changed on ``persistence`` consecutive logging steps (``InputTracker``).

Sampling noise (per feature, ``n`` current and ``m`` reference batch items; rows of one image or
sequence are not independent, so ``n`` counts batch items, not positions):

- mean: Welch's standard error ``sqrt(s_cur**2 / n + s_ref**2 / m) / s_ref``;
- log std: ``sqrt((g2 + 2) / 4 * (1 / n + 1 / m))`` with ``g2`` the reference excess kurtosis
  (``1 / sqrt(2 n)`` for a normal feature, much larger for sparse or heavy-tailed ones);
- distribution: Pearson's two-sample chi-square test on the anchor bins, grouped so that each group
  expects at least 5 counts (``homogeneity_pvalue``). PSI is the effect size; its own noise floor
  ``(k - 1)(1/n + 1/m)`` (``shared/STATISTICS.md`` §3) only holds for large batches: with 32 rows
  and 18 bins, empty bins (floored at 1e-4) give PSI 1-2 by chance, so PSI is not its own test.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ref_x = rng.normal(size=(2000, 3))
    >>> anchor = Anchor.of(ref_x.mean(0), ref_x.std(0))
    >>> ref = FeatureReference()
    >>> ref.add(FeatureStats.of(ref_x, anchor))
    >>> cur = rng.normal(size=(256, 3)); cur[:, 1] += 2.5
    >>> d = feature_drift(ref, FeatureStats.of(cur, anchor))
    >>> d.changed.tolist()
    [False, True, False]
    >>> bool(2.3 < d.mean_shift[1] < 2.7)
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from .homogeneity import homogeneity_pvalue
from .moments import merge_groups

__all__ = [
    "FEATURE_EDGES",
    "FEATURE_BINS",
    "Anchor",
    "FeatureStats",
    "FeatureReference",
    "FeatureDrift",
    "feature_histogram",
    "feature_drift",
    "homogeneity_pvalue",
    "describe_drift",
]

#: bin edges in anchor standard deviations (18 bins, open at both ends)
FEATURE_EDGES = (-4.0, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)
FEATURE_BINS = len(FEATURE_EDGES) + 1
#: PSI's floor for empty bins (Evidently's choice)
_PSI_FLOOR = 1e-4
#: a mean or scale change must also change the binned distribution at this significance
CONFIRM_ALPHA = 1e-3


@lru_cache(maxsize=8)
def _edges(device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.tensor(FEATURE_EDGES, device=device, dtype=dtype)


#: every edge is a multiple of 1/4 within [-4, 4]: ``q = ceil(4 z)`` clamped to [-16, 17] fixes the bin
_QUARTERS = 34


@lru_cache(maxsize=8)
def _quarter_bins(channels: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Per column, the offset of its quarter cells (``34 c + 16``), and the last quarter cell of each bin:
    cell ``q`` holds ``(q - 1) / 4 < z <= q / 4``, in the bin counting the edges ``<= (q - 1) / 4``."""
    offset = torch.arange(16, _QUARTERS * channels, _QUARTERS, device=device, dtype=dtype)
    cells = (torch.arange(-16, 18, dtype=torch.float64) - 1) / 4
    bins = torch.bucketize(cells, torch.tensor(FEATURE_EDGES, dtype=torch.float64), right=True)
    last = torch.searchsorted(bins, torch.arange(FEATURE_BINS), right=True) - 1
    return offset, last.to(device)


@torch.no_grad()
def feature_histogram(sample: Tensor, center: Tensor, scale: Tensor) -> Tensor:
    """Counts of each column of ``sample`` (``[rows, C]``) on ``FEATURE_EDGES`` in anchor units.

    Runs on the sample's device without host synchronisation; non-finite values are not counted.
    Returns ``[C * FEATURE_BINS]`` (column-major blocks of ``FEATURE_BINS``) in the sample's dtype.
    The bin of ``z = (x - center) / scale`` is ``torch.bucketize(z, edges)``; float32/float64 samples count
    ``z`` in quarter cells (``ceil(4 z)``, exact: the edges are multiples of 1/4) summed into the bins.

    Example:
        >>> x = torch.tensor([[0.1, 10.0], [-5.0, 10.0], [float("nan"), 13.0]])
        >>> h = feature_histogram(x, torch.tensor([0.0, 10.0]), torch.tensor([1.0, 1.0]))
        >>> h.reshape(2, -1).sum(1).tolist()   # the NaN is not counted
        [2.0, 3.0]
        >>> int(h.reshape(2, -1)[1].argmax()) == FEATURE_EDGES.index(0.0)   # 10.0 is exactly the anchor mean
        True
    """
    rows, channels = sample.shape
    z = (sample - center.to(sample.dtype)) / scale.to(sample.dtype)
    finite = z.mul(0).add_(1).nan_to_num_(0.0, 0.0, 0.0)  # 1 where finite (float ops only)
    if sample.dtype not in (torch.float32, torch.float64) or _QUARTERS * channels >= 1 << 24:  # the plain definition
        idx = torch.bucketize(z.nan_to_num(0.0, 0.0, 0.0).contiguous(), _edges(sample.device, sample.dtype))
        idx = idx + torch.arange(channels, device=sample.device).mul_(FEATURE_BINS)
        counts = torch.zeros(channels * FEATURE_BINS, dtype=sample.dtype, device=sample.device)
        return counts.index_add_(0, idx.reshape(-1), finite.reshape(-1))
    offset, last = _quarter_bins(channels, sample.device, sample.dtype)
    # 4 z is exact (a power of two), also for overflow to inf (clamped like any z > 4); NaN goes to any cell
    cell = z.mul_(4).ceil_().clamp_(-16, 17).nan_to_num_(0.0).add_(offset).reshape(-1).long()
    quarters = torch.zeros(channels * _QUARTERS, dtype=sample.dtype, device=sample.device)
    quarters.index_add_(0, cell, finite.reshape(-1))
    ends = quarters.view(channels, _QUARTERS).cumsum_(1).index_select(1, last)  # exact: sums of whole counts
    return ends.diff(dim=1, prepend=ends.new_zeros(channels, 1)).reshape(-1)


@dataclass(frozen=True)
class Anchor:
    """Per-feature centre and scale that fix the feature's bins (from its first logging step)."""

    center: np.ndarray
    scale: np.ndarray

    @classmethod
    def of(cls, mean: np.ndarray, std: np.ndarray) -> Anchor:
        """A constant feature (std 0) is binned in its own units around its value."""
        mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        ok = np.isfinite(std) & (std > 1e-12 * np.maximum(np.abs(mean), 1.0))
        return cls(np.where(np.isfinite(mean), mean, 0.0), np.where(ok, std, np.maximum(np.abs(mean), 1.0)))

    def tensors(self, device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        return (
            torch.as_tensor(self.center, device=device, dtype=dtype),
            torch.as_tensor(self.scale, device=device, dtype=dtype),
        )


@dataclass
class FeatureStats:
    """One logging step's per-feature statistics of an input (merged over calls and ranks).

    Attributes:
        n, mean, m2, m3, m4: per-feature count and central moment sums of the sampled values.
        hist: ``[C, FEATURE_BINS]`` counts on the anchor bins (all zero before the anchor exists).
        items: batch items the sample came from (the effective size of one feature's sample).
    """

    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    m3: np.ndarray
    m4: np.ndarray
    hist: np.ndarray
    items: float

    @classmethod
    def of(cls, x: np.ndarray, anchor: Anchor | None = None) -> FeatureStats:
        """From a ``[rows, C]`` array of finite values (for tests and benchmarks)."""
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(0)
        d = x - mean
        hist = np.zeros((x.shape[1], FEATURE_BINS))
        if anchor is not None:
            z = (x - anchor.center) / anchor.scale
            idx = np.searchsorted(np.asarray(FEATURE_EDGES), z, side="left")
            for c in range(x.shape[1]):
                hist[c] = np.bincount(idx[:, c], minlength=FEATURE_BINS)
        n = np.full(x.shape[1], float(len(x)))
        return cls(n, mean, (d**2).sum(0), (d**3).sum(0), (d**4).sum(0), hist, float(len(x)))

    def effective(self) -> np.ndarray:
        """Per-feature sample size for standard errors: values, but at most one per batch item."""
        return np.minimum(self.n, self.items)

    def std(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(np.where(self.n > 0, self.m2 / np.maximum(self.n, 1), np.nan))


@dataclass
class FeatureReference:
    """Per-feature reference: merged moments, summed anchor-bin counts, batch items, steps."""

    stats: FeatureStats | None = None
    steps: int = 0
    binned_steps: int = 0
    _side: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)  # dropped by ``add``

    def side(self) -> dict[str, np.ndarray]:
        """The reference's part of ``feature_drift``'s arithmetic, computed once per reference state (as
        ``Reference.cache``: dropped by ``add``, never checkpointed)."""
        if self._side is None:
            self._side = _reference_side(self.stats)  # type: ignore[arg-type]
        return self._side

    def add(self, cur: FeatureStats) -> None:
        if self.stats is not None and len(self.stats.n) != len(cur.n):
            return  # another width: not the same features
        moments = ("n", "mean", "m2", "m3", "m4")
        if self.stats is None:
            self.stats = FeatureStats(*(np.array(getattr(cur, f)) for f in (*moments, "hist")), cur.items)
        else:
            s = self.stats
            s.n, s.mean, s.m2, s.m3, s.m4 = merge_groups(*(np.stack([getattr(s, f), getattr(cur, f)]) for f in moments))
            s.hist = s.hist + cur.hist
            s.items += cur.items
        self.steps += 1
        self.binned_steps += int(cur.hist.sum() > 0)
        self._side = None

    def state(self) -> dict[str, object]:
        s = self.stats
        if s is None:
            return {"steps": 0}
        arrays = {f: getattr(s, f).tolist() for f in ("n", "mean", "m2", "m3", "m4", "hist")}
        return {**arrays, "items": s.items, "steps": self.steps, "binned_steps": self.binned_steps}

    @classmethod
    def from_state(cls, state: dict[str, object]) -> FeatureReference:
        if not state.get("steps"):
            return cls()
        arrays = [np.asarray(state[f], dtype=np.float64) for f in ("n", "mean", "m2", "m3", "m4", "hist")]
        stats = FeatureStats(*arrays, float(state["items"]))  # type: ignore[arg-type]
        return cls(stats, int(state["steps"]), int(state["binned_steps"]))  # type: ignore[arg-type]


@dataclass
class FeatureDrift:
    """Per-feature drift figures of one logging step (arrays of length C).

    Attributes:
        mean_shift: mean change in reference stds.
        std_log_ratio: log of the std ratio (``-inf`` for a feature that became constant).
        psi: PSI on the anchor bins (NaN before any reference step was binned).
        changed: the change exceeds its effect floor and the sampling noise at this step.
        score: the largest ratio of a changed figure to its effect floor (0 where not changed).
        constant: the feature is constant now and was not in the reference.
    """

    mean_shift: np.ndarray
    std_log_ratio: np.ndarray
    psi: np.ndarray
    changed: np.ndarray
    score: np.ndarray
    constant: np.ndarray
    mean_changed: np.ndarray = field(repr=False)
    scale_changed: np.ndarray = field(repr=False)


def _reference_side(ref: FeatureStats) -> dict[str, np.ndarray]:
    """What ``feature_drift`` computes from the reference alone (the same expressions, evaluated once)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        s_ref, m = ref.std(), ref.effective()
        g2 = np.where(ref.m2 > 0, ref.n * ref.m4 / np.maximum(ref.m2, 1e-300) ** 2 - 3.0, 0.0)
        pt = ref.hist.sum(1, keepdims=True)
        f_ref = np.minimum(1.0, ref.items / np.maximum(pt, 1))
        weighted = ref.hist * f_ref
        return {
            "s_ref": s_ref,
            "ref_scale": np.where(s_ref > 0, s_ref, np.maximum(np.abs(ref.mean) * 1e-6, 1e-12)),
            "var_m": s_ref**2 / np.maximum(m, 1),
            "inv_m": 1 / np.maximum(m, 1),
            "kurt": np.maximum(g2 + 2.0, 0.5) / 4.0,
            "live": (ref.n >= 2) & np.isfinite(s_ref),
            "p": np.maximum(ref.hist / pt, _PSI_FLOOR),
            "p_live": pt[:, 0] > 0,
            "weighted": weighted,
            "weighted_sum": weighted.sum(1, keepdims=True),
        }


def _psi_rows(side: dict[str, np.ndarray], q_counts: np.ndarray, qt: np.ndarray) -> np.ndarray:
    """PSI per row between the reference's and ``[C, bins]`` current counts with row sums ``qt`` (NaN if empty)."""
    p = side["p"]
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.maximum(q_counts / qt, _PSI_FLOOR)
        out = ((q - p) * np.log(q / p)).sum(1)
    return np.where(side["p_live"] & (qt[:, 0] > 0), out, np.nan)


def feature_drift(
    reference: FeatureReference,
    current: FeatureStats,
    mean_floor: float = 0.5,
    scale_floor: float = 1.5,
    psi_floor: float = 0.2,
    noise_z: float = 5.0,
) -> FeatureDrift:
    """Per-feature drift of ``current`` against ``reference`` (see the module docstring)."""
    ref = reference.stats
    assert ref is not None and len(ref.n) == len(current.n)
    side = reference.side()  # the reference's terms, once per reference (the same expressions)
    s_ref, ref_scale = side["s_ref"], side["ref_scale"]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        s_cur = current.std()
        n = current.effective()
        live = side["live"] & (current.n >= 2) & np.isfinite(s_cur)
        mean_shift = (current.mean - ref.mean) / ref_scale
        se_mean = np.sqrt(s_cur**2 / np.maximum(n, 1) + side["var_m"]) / ref_scale
        mean_changed = live & (np.abs(mean_shift) > np.maximum(mean_floor, noise_z * se_mean))

        log_ratio = np.log(s_cur / s_ref)
        se_log = np.sqrt(side["kurt"] * (1 / np.maximum(n, 1) + side["inv_m"]))
        scale_ok = live & (s_ref > 0) & (s_cur > 0)
        scale_changed = scale_ok & (np.abs(log_ratio) > np.maximum(math.log(scale_floor), noise_z * se_log))

        psi = np.full(len(current.n), np.nan)
        psi_changed = np.zeros(len(current.n), dtype=bool)
        if reference.binned_steps > 0 and current.hist.sum() > 0:
            qt = current.hist.sum(1, keepdims=True)
            psi = _psi_rows(side, current.hist, qt)
            # effective counts: rows of one image or sequence are not independent observations
            f_cur = np.minimum(1.0, current.items / np.maximum(qt, 1))
            p_value = homogeneity_pvalue(side["weighted"], current.hist * f_cur, ref_sum=side["weighted_sum"])
            psi_changed = live & np.isfinite(psi) & (psi > psi_floor) & (p_value < 2 * _normal_sf(noise_z))
            # The normal approximations of the mean and log-std tests fail for sparse features (a pixel
            # that is non-zero in 2 % of rows): a mean or scale change must also change the binned
            # distribution beyond chance (p < CONFIRM_ALPHA), which a real shift or rescale always does.
            confirmed = np.isfinite(p_value) & (p_value < CONFIRM_ALPHA)
            mean_changed &= confirmed
            scale_changed &= confirmed

        constant = live & (s_cur == 0) & (s_ref > 0) & psi_changed
        changed = mean_changed | scale_changed | psi_changed
        score = np.zeros(len(current.n))
        score = np.where(mean_changed, np.maximum(score, np.abs(mean_shift) / mean_floor), score)
        score = np.where(scale_changed, np.maximum(score, np.abs(log_ratio) / math.log(scale_floor)), score)
        score = np.where(psi_changed, np.maximum(score, psi / psi_floor), score)
        score = np.where(constant, np.maximum(score, psi / psi_floor), score)
    return FeatureDrift(mean_shift, log_ratio, psi, changed, score, constant, mean_changed, scale_changed)


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def _what(d: FeatureDrift, i: int, current_mean: float) -> str:
    if d.constant[i]:
        return f"became constant (= {current_mean:.4g})"
    if d.scale_changed[i] and (not d.mean_changed[i] or abs(d.std_log_ratio[i]) >= 0.5 * abs(d.mean_shift[i])):
        return f"rescaled x{math.exp(d.std_log_ratio[i]):.3g}"
    if d.mean_changed[i]:
        return f"shifted by {d.mean_shift[i]:+.2g} σ"
    return f"changed distribution (PSI {d.psi[i]:.2f})"


def describe_drift(
    d: FeatureDrift,
    flagged: np.ndarray,
    current_mean: np.ndarray,
    names: list[str] | None = None,
    most: int = 5,
) -> str:
    """A short sentence on what changed in the flagged features, worst first.

    Example:
        >>> z = np.zeros(4); t = np.ones(4, dtype=bool)
        >>> d = FeatureDrift(np.full(4, 2.5), z, z, t, np.full(4, 5.0), ~t, t, ~t)
        >>> describe_drift(d, t, z)
        'all 4 features shifted by +2.5 σ (median)'
    """
    idx = np.flatnonzero(flagged)
    total = len(flagged)
    label = (lambda i: names[i]) if names is not None else (lambda i: f"feature {i}")
    if len(idx) >= 3:
        kinds = {_what(d, int(i), float(current_mean[i])).split(" ")[0] for i in idx}
        signs = set(np.sign(d.mean_shift[idx]).tolist())
        share = "all" if len(idx) == total else f"{len(idx)} of"
        if kinds == {"shifted"} and len(signs) == 1:
            return f"{share} {total} features shifted by {np.median(d.mean_shift[idx]):+.2g} σ (median)"
        if kinds == {"rescaled"} and len(set(np.sign(d.std_log_ratio[idx]).tolist())) == 1:
            return f"{share} {total} features rescaled x{math.exp(np.median(d.std_log_ratio[idx])):.3g} (median)"
    worst = idx[np.argsort(-d.score[idx], kind="stable")]
    parts = [f"{label(int(i))} {_what(d, int(i), float(current_mean[i]))}" for i in worst[:most]]
    more = f" (+{len(worst) - most} more)" if len(worst) > most else ""
    return "; ".join(parts) + more
