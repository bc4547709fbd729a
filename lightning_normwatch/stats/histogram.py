"""Histograms on fixed, shared bin edges: binned on the device, merged by adding counts.

The edges are the same for every tensor, step and rank: zero, then magnitudes from ``1e-6``
to ``1e6`` growing by 10 % per bin on each side (TensorBoard's own default bucketing uses the
same idea), plus two open-ended outer bins. Because they never change, counts from different
steps, ranks and checkpoints merge by summation, and every drift distance (PSI, KS) comes from
counts alone.

Example:
    >>> import torch
    >>> edges = bin_edges()
    >>> counts = bin_counts(torch.tensor([[0.0, 1.0], [-1.0, float("nan")]]), edges)
    >>> int(counts.sum())   # non-finite values are not binned
    3
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "INDEX_DTYPE",
    "bin_edges",
    "bin_index",
    "edges_numpy",
    "bin_counts",
    "num_bins",
    "psi",
    "ks_distance",
    "normal_ks",
    "tensorboard_buckets",
    "tensorboard_buckets_many",
    "quantile_groups",
]

_LOW, _HIGH, _GROWTH = 1e-6, 1e6, 1.1
#: stds whose shape the shared bins resolve (at least 10 bins inside 1 std on each side of the mean);
#: outside, shape figures read from the bins (``normal_ks``) are NaN rather than wrong
RESOLVED_STD = (_LOW * 10, _HIGH / 10)


@lru_cache(maxsize=1)
def edges_numpy() -> np.ndarray:
    """The shared bin edges as a float64 array (increasing, symmetric around zero)."""
    k = math.ceil(math.log(_HIGH / _LOW) / math.log(_GROWTH))
    pos = _LOW * _GROWTH ** np.arange(k + 1)
    return np.concatenate([-pos[::-1], pos])


def num_bins() -> int:
    """Number of bins: one more than the number of edges (two open-ended outer bins)."""
    return len(edges_numpy()) + 1


_EDGE_CACHE: dict[tuple[torch.device, torch.dtype], Tensor] = {}


def bin_edges(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """The shared edges as a tensor on ``device`` (cached per device and dtype)."""
    key = (torch.device(device), dtype)
    if key not in _EDGE_CACHE:
        _EDGE_CACHE[key] = torch.as_tensor(edges_numpy(), dtype=dtype, device=key[0])
    return _EDGE_CACHE[key]


_LUT_CACHE: dict[int, tuple[Tensor, tuple[Tensor, Tensor] | None]] = {}  # id(edges) -> (edges, tables)
# sign, exponent and 4 mantissa bits: ranges 6 % wide, under the bins' 10 % (a 32 KiB table for float32)
_KEY_BITS = {torch.float32: 1 + 8 + 4, torch.float64: 1 + 11 + 4}
#: the integer type of a float's width: bin indices of float32/float64 values (``bin_index``'s ``out``)
INDEX_DTYPE = {torch.float32: torch.int32, torch.float64: torch.int64}


def _bin_lookup(edges: Tensor) -> tuple[Tensor, Tensor] | None:
    """A table giving each value's bin from the top bits of its float32/float64 encoding.

    The sign, the exponent and the 4 leading mantissa bits split the floats into contiguous
    ranges (8,192 for float32, 65,536 for float64), each at most 6.25 % wide, narrower than the
    bins (10 %), so that a range holds at most one edge. ``table[key]`` counts the edges below the
    range; one comparison with the next edge finishes the count, exactly as ``bucketize`` would.
    The table is small (int32) so that it stays in cache between the layers' forward passes.
    Returns ``(table, edges + [inf])``, or None if some range would hold two edges.
    """
    width = {torch.float32: (np.uint32, np.float32), torch.float64: (np.uint64, np.float64)}.get(edges.dtype)
    if width is None:
        return None
    utype, ftype = width
    e = edges.detach().cpu().numpy()
    bits = _KEY_BITS[edges.dtype]
    shift = utype(8 * np.dtype(ftype).itemsize - bits)
    keys = np.arange(1 << bits, dtype=utype) << shift
    lo, hi = keys.view(ftype), (keys | ((utype(1) << shift) - utype(1))).view(ftype)
    with np.errstate(invalid="ignore"):
        first, last = np.fmin(lo, hi), np.fmax(lo, hi)  # a range's extreme values (negatives run backwards)
    below = np.searchsorted(e, first, side="left")
    inside = np.searchsorted(e, last, side="right") - below
    if (inside[np.isfinite(first) & np.isfinite(last)] > 1).any():
        return None
    table = torch.as_tensor(np.minimum(below, len(e)).astype(np.int32), device=edges.device)
    return table, torch.cat([edges, edges.new_full((1,), math.inf)])


def _lookup(edges: Tensor) -> tuple[Tensor, Tensor] | None:
    """``_bin_lookup``'s table and, per key, the edge its values are compared with (``upper[table[key]]``, so
    that both gathers read by key), cached while ``edges`` lives (``bin_edges`` are cached tensors). None: no table."""
    cached = _LUT_CACHE.get(id(edges))
    if cached is None or cached[0] is not edges:
        if len(_LUT_CACHE) >= 16:  # edges that are not the cached ones: do not keep them all
            _LUT_CACHE.clear()
        found = _bin_lookup(edges)
        if found is not None:
            table, upper = found
            found = (table, upper.index_select(0, table))
        cached = _LUT_CACHE[id(edges)] = (edges, found)
    return cached[1]


def bin_index(flat: Tensor, edges: Tensor, out: Tensor | None = None) -> Tensor:
    """``torch.bucketize(flat, edges)`` of the finite values of a 1-D ``flat`` (any index in ``[0, len(edges)]``
    for non-finite values), by a table lookup for float32/float64 (a few passes, no binary search), written into
    ``out`` when given (``INDEX_DTYPE[flat.dtype]``, ``flat``'s size: the intermediate results stay in it).

    Example:
        >>> x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0])
        >>> e = torch.tensor([-1.0, 0.0, 1.0])
        >>> bin_index(x, e).tolist() == torch.bucketize(x, e).tolist()
        True
    """
    found = _lookup(edges) if flat.dtype == edges.dtype else None
    if found is None:
        idx = torch.bucketize(torch.nan_to_num(flat, 0.0, 0.0, 0.0), edges)
        return idx if out is None else out.copy_(idx)
    table, edge = found
    out = torch.empty_like(flat, dtype=INDEX_DTYPE[flat.dtype]) if out is None else out
    width = _KEY_BITS[flat.dtype]
    torch.bitwise_right_shift(flat.view(out.dtype), 8 * flat.element_size() - width, out=out)
    key = out.bitwise_and_((1 << width) - 1)
    below = table.index_select(0, key)
    torch.lt(edge.index_select(0, key), flat, out=out)
    return out.add_(below)


def bin_counts(sample: Tensor, edges: Tensor) -> Tensor:
    """Counts of the finite values of ``sample`` in the shared bins, on its device, no host sync.

    Bin ``i`` holds values ``v`` with ``edges[i-1] < v <= edges[i]`` (bin 0 and the last bin are
    open-ended). Non-finite values are left out.
    """
    flat = sample.reshape(-1)
    finite = flat.mul(0).add_(1).nan_to_num_(0.0, 0.0, 0.0)  # 1 where finite, else 0 (float ops only: fast)
    if flat.dtype == edges.dtype and edges is bin_edges(edges.device, edges.dtype):
        idx = bin_index(flat, edges)  # a table lookup: 5x faster than bucketize on 583 edges
    else:
        idx = torch.bucketize(torch.nan_to_num(flat, 0.0, 0.0, 0.0), edges.to(flat.dtype))
    counts = torch.zeros(edges.numel() + 1, dtype=flat.dtype, device=flat.device)
    return counts.index_add_(0, idx, finite)


def _probabilities(counts: np.ndarray, floor: float) -> np.ndarray:
    total = counts.sum()
    p = counts / total if total > 0 else np.full_like(counts, 1.0 / len(counts))
    return np.maximum(p, floor)


def quantile_groups(reference: np.ndarray, groups: int = 20) -> np.ndarray:
    """Group the fine bins into about ``groups`` bins of equal reference mass.

    Returns the indices of fine bins at which each group starts (first is 0). A bin holding more
    than one group's share (e.g. ReLU's zeros) becomes a group of its own.
    """
    total = reference.sum()
    if total <= 0:
        return np.array([0])
    cum = np.cumsum(reference) / total
    cuts = np.searchsorted(cum, np.arange(1, groups) / groups, side="left") + 1
    cuts = cuts[cuts < len(reference)]
    return np.unique(np.concatenate([[0], cuts]))


def psi(reference: np.ndarray, current: np.ndarray, groups: int = 20, floor: float = 1e-4) -> float:
    """Population stability index between two count vectors on the shared bins.

    ``PSI = sum((q - p) * ln(q / p))`` over groups of equal reference mass, with empty groups
    floored at ``floor`` (Evidently's choice). Bands: < 0.1 stable, 0.1-0.25 moderate, > 0.25 major.

    Example:
        >>> import numpy as np
        >>> psi(np.array([10.0, 10, 0]), np.array([10.0, 10, 0]))
        0.0
    """
    if reference.sum() <= 0 or current.sum() <= 0:
        return math.nan
    starts = quantile_groups(reference, groups)
    p = _probabilities(np.add.reduceat(reference, starts), floor)
    q = _probabilities(np.add.reduceat(current, starts), floor)
    return float(((q - p) * np.log(q / p)).sum())


def ks_distance(reference: np.ndarray, current: np.ndarray) -> float:
    """Largest gap between the two empirical CDFs, evaluated at the shared edges."""
    if reference.sum() <= 0 or current.sum() <= 0:
        return math.nan
    f = np.cumsum(reference) / reference.sum()
    g = np.cumsum(current) / current.sum()
    return float(np.abs(f - g).max())


def normal_ks(counts: np.ndarray, mean: float, std: float) -> float:
    """Distance to the fitted normal: max |F_empirical - Phi((edge - mean) / std)| at the edges.

    An effect size for non-normality that does not grow with the sample size (KS D in
    ``shared/STATISTICS.md`` §2; resolution is one bin, 10 % in magnitude).
    """
    from scipy import special

    total = counts.sum()
    if total <= 0 or not (RESOLVED_STD[0] <= std <= RESOLVED_STD[1]):
        return math.nan
    cdf = np.cumsum(counts)[:-1] / total
    phi = special.ndtr((edges_numpy() - mean) / std)
    return float(np.abs(cdf - phi).max())


def tensorboard_buckets(
    counts: np.ndarray, vmin: float, vmax: float, group: int = 3, merge_below: float = 0.01, merge_empty: bool = True
) -> tuple[list[float], list[float]]:
    """Bucket limits and counts for ``add_histogram_raw``: from the first to the last non-empty bin.

    ``group`` fine bins make one bucket (3: 33 % wide in magnitude, plenty for a picture), and the bins
    of magnitude under ``merge_below`` times the largest magnitude make one bucket around zero:
    TensorBoard redraws histograms on about 30 linear buckets, so they are invisible, yet they made
    half of the bytes TensorBoard checksums in pure Python (a Gaussian's values reach down to 1e-4 of
    its largest, 100 fine bins per side). Each limit is its bucket's right edge; the open top bin's
    limit is ``vmax``. Limits are strictly increasing.

    Example:
        >>> import torch
        >>> c = bin_counts(torch.tensor([-2.0, -1.0, 1e-5, 0.5, 3.0]), bin_edges()).double().numpy()
        >>> limits, counts = tensorboard_buckets(c, -2.0, 3.0)
        >>> every = tensorboard_buckets(c, -2.0, 3.0, merge_empty=False)[1]
        >>> unmerged = tensorboard_buckets(c, -2.0, 3.0, merge_below=0.0, merge_empty=False)[1]
        >>> sum(counts), len(counts), len(every), len(unmerged)
        (5.0, 9, 33, 105)
    """
    nz = np.flatnonzero(counts)
    if nz.size == 0:
        return [], []
    lo, hi = int(nz[0]), int(nz[-1])
    edges = edges_numpy()
    half = len(edges) // 2  # bin ``half`` is (-1e-6, 1e-6]; bin i is (edges[i-1], edges[i]]
    top = max(abs(vmin), abs(vmax)) if math.isfinite(vmin) and math.isfinite(vmax) else 0.0
    k = max(1, int(np.searchsorted(edges[half:], merge_below * top, side="right")))
    c0, c1 = half - (k - 1), half + (k - 1)  # bins c0..c1 cover (-edges[c1], edges[c1]]: one bucket
    ends: list[int] = []  # the last fine bin of every bucket
    if lo < c0:
        ends += [min(i + group - 1, c0 - 1, hi) for i in range(lo, min(c0 - 1, hi) + 1, group)]
    if lo <= c1 and hi >= c0:
        ends.append(min(c1, hi))
    if hi > c1:
        first = max(lo, c1 + 1)
        ends += [min(i + group - 1, hi) for i in range(first, hi + 1, group)]
    cum = np.concatenate([[0.0], np.cumsum(counts[lo : hi + 1])])
    bounds = np.array(ends) - lo + 1
    grouped = np.diff(np.concatenate([[0.0], cum[bounds]]))
    limits = [float(edges[i]) for i in ends if i < len(edges)]
    if hi == len(edges):  # open-ended top bin: its limit is the observed maximum
        top_limit = float(vmax) if math.isfinite(vmax) else float(edges[-1]) * _GROWTH
        limits.append(max(top_limit, float(edges[-1]) * (1 + 1e-9)))
    # A run of empty buckets becomes one (its last limit; ``merge_empty``): every other bucket keeps both
    # edges, so TensorBoard, which spreads each count over its bucket's width, draws the same picture.
    keep = (grouped != 0) | (not merge_empty)
    keep[:-1] |= grouped[1:] != 0  # an empty bucket stays only as the last of its run
    keep[-1] = True
    return [limits[i] for i in np.flatnonzero(keep)], [float(c) for c in grouped[keep]]


def tensorboard_buckets_many(
    counts: np.ndarray,
    vmin: np.ndarray,
    vmax: np.ndarray,
    group: int = 3,
    merge_below: float = 0.01,
    merge_empty: bool = True,
) -> list[tuple[list[float], list[float]]]:
    """``tensorboard_buckets`` of every row of ``counts`` ``[tensors, bins]``, in a few numpy passes over all rows.

    The same limits and counts, bit for bit, as ``tensorboard_buckets(counts[i], vmin[i], vmax[i])``: a
    bucket's count is the difference of two running sums along its row, as there (the zero bins before a
    row's first non-empty bin add nothing to a running sum), and a row's bucket ends are the bins where a
    group of ``group`` ends, counted from the first non-empty bin on the negative side and from the first
    bin after the merged zero bucket on the positive side. The logging step's histograms cost one call
    instead of one call per tensor (about 60 numpy calls each).

    Example:
        >>> import torch
        >>> rows = [bin_counts(torch.tensor(v), bin_edges()).double().numpy() for v in ([-2.0, 1e-5, 3.0], [0.5])]
        >>> many = tensorboard_buckets_many(np.stack(rows), np.array([-2.0, 0.5]), np.array([3.0, 0.5]))
        >>> many == [tensorboard_buckets(rows[0], -2.0, 3.0), tensorboard_buckets(rows[1], 0.5, 0.5)]
        True
        >>> tensorboard_buckets_many(np.zeros((1, num_bins())), np.zeros(1), np.zeros(1))
        [([], [])]
    """
    counts = np.asarray(counts)
    n_rows, n_bins = counts.shape
    edges = edges_numpy()
    if n_bins != len(edges) + 1:
        raise ValueError(f"counts have {n_bins} bins per row, the shared bins are {len(edges) + 1}")
    if n_rows == 0:
        return []
    vmin, vmax = np.asarray(vmin, dtype=float), np.asarray(vmax, dtype=float)
    filled = counts != 0
    found = filled.any(axis=1)
    lo = filled.argmax(axis=1)
    hi = n_bins - 1 - filled[:, ::-1].argmax(axis=1)
    half = len(edges) // 2  # bin ``half`` is (-1e-6, 1e-6]; bin i is (edges[i-1], edges[i]]
    finite = np.isfinite(vmin) & np.isfinite(vmax)
    top = np.maximum(np.abs(np.where(finite, vmin, 0.0)), np.abs(np.where(finite, vmax, 0.0)))
    k = np.maximum(1, np.searchsorted(edges[half:], merge_below * top, side="right"))
    c0, c1 = half - (k - 1), half + (k - 1)  # bins c0..c1 make one bucket
    zero = np.minimum(c1, hi)
    # per row three runs of buckets: groups from ``lo`` below the zero bucket, the zero bucket, groups from the
    # bin after it; each run as its first bin, its last bin (a bucket ends there at the latest) and its size
    start = np.array((lo, zero - (group - 1), np.maximum(lo, c1 + 1))).ravel(order="F")  # row by row
    stop = np.array((np.minimum(c0 - 1, hi), zero, hi)).ravel(order="F")
    present = (np.array((lo < c0, (lo <= c1) & (hi >= c0), hi > c1)) & found).ravel(order="F")
    sizes = np.where(present, (stop - start) // group + 1, 0)
    run = np.repeat(np.arange(len(sizes)), sizes)
    ends = np.cumsum(sizes)
    nth = np.arange(len(run)) - np.repeat(ends - sizes, sizes)  # a bucket's place in its run
    cols = np.minimum(start[run] + group * nth + (group - 1), stop[run])  # the last bin of every bucket
    rows = run // 3  # row by row, bins increasing
    first = int(lo[found].min()) if len(cols) else 0  # every row's bins before this one are empty,
    last = int(hi[found].max()) + 1 if len(cols) else 0  # and after this one
    running = np.cumsum(counts[:, first:last], axis=1)[rows, cols - first]
    per_row = ends[2::3] - np.concatenate([[0], ends[2:-1:3]])  # buckets of each row
    starts = np.zeros(len(rows), dtype=bool)  # the first bucket of its row
    starts[(ends[2::3] - per_row)[per_row > 0]] = True
    before = np.zeros_like(running)  # the running sum at the end of the previous bucket of the row
    before[1:] = running[:-1]
    before[starts] = 0.0
    grouped = running - before
    limits = np.append(edges, np.nan)[cols]
    top = cols == len(edges)  # the open top bin: its limit is the observed maximum
    limits[top] = np.maximum(np.where(np.isfinite(vmax), vmax, edges[-1] * _GROWTH), edges[-1] * (1 + 1e-9))[rows[top]]
    # a run of empty buckets becomes one (its last limit), as in ``tensorboard_buckets``
    keep = (grouped != 0) | (not merge_empty)
    keep[:-1] |= grouped[1:] != 0
    keep[:-1] |= starts[1:]  # the last bucket of its row
    keep[-1:] = True
    bounds = np.cumsum(np.bincount(rows[keep], minlength=n_rows)).tolist()
    limits, grouped = limits[keep].tolist(), grouped[keep].tolist()
    return [(limits[a:b], grouped[a:b]) for a, b in zip([0, *bounds[:-1]], bounds, strict=True)]


def abs_median_nonzero(counts: np.ndarray) -> float:
    """Median of |x| over the non-zero values, from counts on the shared bins (10 % resolution).

    The typical magnitude against which "massive" values are judged (Sun et al. 2024 compare with
    the median |x|); exact zeros (ReLU) are left out so that sparse layers have a typical magnitude.
    Returns the upper edge of the magnitude bin holding the median; NaN when there is no non-zero value
    or the median lies in the open top bin (above 1e6: the bins cannot tell how far above).

    Example:
        >>> import torch
        >>> c = bin_counts(torch.tensor([0.0, 0.0, 0.0, -1.0, 2.0, 3.0]), bin_edges()).double().numpy()
        >>> 1.9 < abs_median_nonzero(c) < 2.2
        True
    """
    edges = edges_numpy()
    half = len(edges) // 2  # edges[half:] are the positive magnitudes; bin `half` is the zero bin
    pos = counts[half + 1 :]  # bins (edges[half], edges[half+1]] ... and the open top bin
    neg = counts[:half][::-1]  # mirrored: bin half-1 is (-edges[half], -edges[half-1]] ...
    folded = pos + neg
    total = folded.sum()
    if total <= 0:
        return math.nan
    i = int(np.searchsorted(np.cumsum(folded), total / 2))
    magnitudes = edges[half + 1 :]
    return float(magnitudes[i]) if i < len(magnitudes) else math.nan
