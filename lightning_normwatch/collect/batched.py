"""The arithmetic of a logging step for all sampled tensors at once: one set of operations, not one per tensor.

``sampling.measure_sampled`` turns one ``Sampled`` into a block with some 45 small tensor operations,
each paying PyTorch's per-operation dispatch cost (tens of microseconds on CPU, a kernel launch on
a GPU) on only a few thousand values. ``measure_all`` computes the same blocks for every tensor of a
step together:

- samples with the same number of rows are concatenated along the channel dimension into one dense
  ``[rows, channels of all of them]`` matrix (a model has a handful of distinct row counts: the
  sample size divided by the width), so per-channel moments are column reductions of one matrix,
  done by the very same ``channel_moments`` (the columns do not interact);
- p-value subsamples of equal length are stacked as the columns of one matrix, likewise;
- histogram bins for all tensors come from one lookup and one ``bincount`` over
  ``tensor * bins + bin`` (non-finite values go to a discarded bin);
- extremes and saturation counts are column reductions, then ``segment_reduce`` over each tensor's
  columns;
- the blocks are assembled by one ``index_select`` from a cached index.

Segment sums with ``index_add_``/``scatter_reduce`` over all values were measured first: on CPU they
run serially (1.3 ms for 400,000 values, against 0.03 ms for column sums of the same values), so
dense column reductions on row-grouped matrices won. The layout-dependent indices are cached per
step layout (the shapes repeat from one logging step to the next).

The result equals ``measure_sampled`` of every item to float rounding (the column reductions are
the same kernels; tests/test_batched.py states the tolerance).

Example:
    >>> import torch
    >>> from lightning_normwatch.collect.sampling import MeasureSpec, take_sample, measure_sampled
    >>> g = torch.Generator().manual_seed(0)
    >>> items = [take_sample(torch.randn(8, 3), MeasureSpec(), g), take_sample(torch.randn(4, 5), MeasureSpec(), g)]
    >>> blocks = measure_all(items)
    >>> [tuple(b.shape) for b in blocks] == [tuple(measure_sampled(s).shape) for s in items]
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..stats.block import CHANNEL_FIELDS, HEAD
from ..stats.feature_drift import FEATURE_BINS, FEATURE_EDGES
from ..stats.histogram import _KEY_BITS, _bin_lookup, bin_edges, num_bins
from ..stats.moments import channel_moments, pow2_scale, rescale
from .sampling import Sampled, measure_sampled

__all__ = ["measure_all", "bin_index_into", "feature_counts"]


@dataclass
class _Plan:
    """Layout-dependent indices of one group of items (same device and work dtype)."""

    row_groups: list[tuple[int, list[int]]]  # (rows, item positions), every item in exactly one
    p_groups: list[tuple[int, list[int]]]  # (p-value length, item positions)
    channel_order: Tensor  # global channel index (item order) -> column in the concatenated row groups
    channel_counts: Tensor  # channels per item (segment lengths), item order
    column_item: list[Tensor]  # per row group: item index (within the group) of each column, times bins
    lo: list[Tensor | None]  # per row group: per-column lower saturation threshold (None: no bounded item)
    hi: list[Tensor | None]
    gather: Tensor  # positions in the source vector of every block value, blocks in item order
    sizes: list[int]  # block sizes, item order
    values: int  # sampled values of all items


_PLANS: dict[tuple, _Plan] = {}
_MAX_PLANS = 32


def _signature(items: Sequence[Sampled]) -> tuple:
    """What a plan depends on: device, work dtype, and every item's shapes and saturation limits."""
    shapes = tuple(
        (tuple(s.sample.shape), s.pvalues.numel(), s.spec.bounds, s.spec.saturation_tolerance) for s in items
    )
    return (items[0].sample.device, items[0].sample.dtype, shapes)


def _thresholds(items: Sequence[Sampled], positions: list[int], dtype: torch.dtype, device: torch.device):  # noqa: ANN202
    """Per-column saturation thresholds of one row group (``-inf``/``inf`` where nothing is counted)."""
    if all(items[i].spec.bounds is None for i in positions):
        return None, None
    lo, hi = [], []
    for i in positions:
        spec, c = items[i].spec, items[i].sample.shape[1]
        low, high = -math.inf, math.inf
        if spec.bounds is not None:
            a, b = spec.bounds
            span = (b if b is not None else 1.0) - (a if a is not None else 0.0)
            tol = spec.saturation_tolerance * span
            low = a + tol if a is not None else -math.inf
            high = b - tol if b is not None else math.inf
        lo += [low] * c
        hi += [high] * c
    # thresholds in the work dtype, as ``sample <= lo + tol`` compares in measure_sampled
    return torch.tensor(lo, dtype=dtype, device=device), torch.tensor(hi, dtype=dtype, device=device)


def _plan(items: Sequence[Sampled]) -> _Plan:
    device, dtype = items[0].sample.device, items[0].sample.dtype
    nb = num_bins()
    by_rows: dict[int, list[int]] = {}
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(items):
        by_rows.setdefault(s.sample.shape[0], []).append(i)
        by_len.setdefault(s.pvalues.numel(), []).append(i)
    row_groups = list(by_rows.items())
    channels = [s.sample.shape[1] for s in items]
    # columns of the concatenated row groups, in group order; channel_order maps item order onto them
    column_of_item: dict[int, int] = {}
    col = 0
    column_item: list[Tensor] = []
    lo: list[Tensor | None] = []
    hi: list[Tensor | None] = []
    for _, positions in row_groups:
        ids = []
        for i in positions:
            column_of_item[i] = col
            col += channels[i]
            ids += [i * nb] * channels[i]
        itype = torch.int32 if dtype == torch.float32 and len(items) * nb < 2**31 else torch.int64
        column_item.append(torch.tensor(ids, dtype=itype, device=device))  # the bin index's dtype
        low, high = _thresholds(items, positions, dtype, device)
        lo.append(low)
        hi.append(high)
    order = [column_of_item[i] + j for i in range(len(items)) for j in range(channels[i])]
    total_c = sum(channels)
    t = len(items)
    # source vector: head [t, len(HEAD)], hist [t, nb], channel fields [len(CHANNEL_FIELDS), total_c] (item order)
    head_at, hist_at, chan_at = 0, t * len(HEAD), t * (len(HEAD) + nb)
    gather: list[int] = []
    sizes: list[int] = []
    start = 0
    for i, c in enumerate(channels):
        gather += range(head_at + i * len(HEAD), head_at + (i + 1) * len(HEAD))
        gather += range(hist_at + i * nb, hist_at + (i + 1) * nb)
        for f in range(len(CHANNEL_FIELDS)):
            gather += range(chan_at + f * total_c + start, chan_at + f * total_c + start + c)
        sizes.append(len(HEAD) + nb + len(CHANNEL_FIELDS) * c)
        start += c
    return _Plan(
        row_groups=row_groups,
        p_groups=list(by_len.items()),
        channel_order=torch.tensor(order, dtype=torch.int64, device=device),
        channel_counts=torch.tensor(channels, dtype=torch.int64, device=device),
        column_item=column_item,
        lo=lo,
        hi=hi,
        gather=torch.tensor(gather, dtype=torch.int64, device=device),
        sizes=sizes,
        values=sum(s.sample.numel() for s in items),
    )


def _segments(values: Tensor, counts: Tensor, reduce: str) -> Tensor:
    """Per-item reduction of per-channel values (segments of ``counts`` channels, in item order)."""
    return torch.segment_reduce(values, reduce, lengths=counts, unsafe=True)


def _finite_moments(sample: Tensor, absmax: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``channel_moments`` for a sample known to hold only finite values: the same arithmetic without the
    masks (``f`` is 1 everywhere, ``z`` is the sample), so the same figures in 12 passes instead of 18.
    Columns are divided by a power of two before the powers and scaled back in float64, as there.

    The products go into two work buffers in place (``d * d2`` is ``d2 * d``, IEEE products commute), and
    non-zero values are counted as floats: a boolean mask summed into a float is several times slower
    on CPU than the comparison written as 0.0/1.0, and the counts are the same integers.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
        >>> all(torch.equal(a, b) for a, b in zip(_finite_moments(x, x.abs().amax(0)), channel_moments(x)))
        True
    """
    scale = pow2_scale(absmax)
    scaled = sample / scale
    rows = scaled.shape[0]
    n = torch.full((scaled.shape[1],), float(rows), dtype=scaled.dtype, device=scaled.device)
    count = max(rows, 1)
    mean = scaled.sum(0) / count
    d = scaled - mean
    mean = mean + d.sum(0) / count
    torch.sub(scaled, mean, out=d)
    nonzero = scaled.ne_(0).sum(0)  # in place: 1.0 where non-zero (scaled is not read again)
    d2 = d * d
    m2 = d2.sum(0)
    m3 = d.mul_(d2).sum(0)
    m4 = d2.mul_(d2).sum(0)
    return rescale(n, mean, m2, m3, m4, nonzero, scale)


_WIDTH = {torch.float32: torch.int32, torch.float64: torch.int64}  # integers of a float's width

_LOOKUPS: dict[int, tuple[Tensor, tuple[Tensor, Tensor] | None]] = {}  # id(edges) -> (edges, tables)


def _lookups(edges: Tensor) -> tuple[Tensor, Tensor] | None:
    """``stats.histogram``'s table (``table[key]``: edges below the key's range) and per key the edge its
    values are compared with (``upper[table[key]]``, so that both gathers read by key). None: no table."""
    cached = _LOOKUPS.get(id(edges))
    if cached is None or cached[0] is not edges:  # edges are cached tensors (bin_edges, the feature edges)
        found = _bin_lookup(edges)
        if found is not None:
            table, upper = found
            found = (table, upper.index_select(0, table))
        cached = _LOOKUPS[id(edges)] = (edges, found)
    return cached[1]


def bin_index_into(flat: Tensor, edges: Tensor, out: Tensor) -> Tensor:
    """``torch.bucketize(flat, edges)`` of the finite values of a 1-D float32/float64 ``flat``, written into
    ``out`` (int32 for float32, int64 for float64, ``flat``'s size); non-finite values get some index in
    ``[0, len(edges)]``. The table lookup of ``stats.histogram`` (a few passes, no binary search), with the
    intermediate results in place.

    Example:
        >>> x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0])
        >>> e = torch.tensor([-1.0, 0.0, 1.0])
        >>> bin_index_into(x, e, torch.empty(6, dtype=torch.int32)).tolist() == torch.bucketize(x, e).tolist()
        True
    """
    found = _lookups(edges)
    if found is None:
        return out.copy_(torch.bucketize(torch.nan_to_num(flat, 0.0, 0.0, 0.0), edges))
    table, edge = found
    width = _KEY_BITS[flat.dtype]
    torch.bitwise_right_shift(flat.view(out.dtype), 8 * flat.element_size() - width, out=out)
    key = out.bitwise_and_((1 << width) - 1)
    below = table.index_select(0, key)
    torch.lt(edge.index_select(0, key), flat, out=out)
    return out.add_(below)


_FEATURE_EDGES: dict[tuple[torch.device, torch.dtype], Tensor] = {}
_OFFSETS: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}


def feature_counts(sample: Tensor, center: Tensor, scale: Tensor) -> Tensor:
    """``stats.feature_drift.feature_histogram`` (counts of each column on ``FEATURE_EDGES`` in anchor units,
    ``[C * FEATURE_BINS]`` in the sample's dtype; non-finite values not counted), the same counts from the
    table lookup and one ``bincount`` instead of a binary search per value. ``center`` and ``scale`` are
    in the sample's dtype.

    Example:
        >>> from lightning_normwatch.stats.feature_drift import feature_histogram
        >>> x = torch.tensor([[0.1, 10.0], [-5.0, 10.0], [float("nan"), 13.0]])
        >>> c, s = torch.tensor([0.0, 10.0]), torch.tensor([1.0, 1.0])
        >>> torch.equal(feature_counts(x, c, s), feature_histogram(x, c, s))
        True
    """
    rows, channels = sample.shape
    device, dtype = sample.device, sample.dtype
    edges = _FEATURE_EDGES.get((device, dtype))
    if edges is None:
        edges = _FEATURE_EDGES[(device, dtype)] = torch.tensor(FEATURE_EDGES, device=device, dtype=dtype)
    offsets = _OFFSETS.get((channels, device, dtype))
    if offsets is None:
        offsets = torch.arange(channels, device=device, dtype=_WIDTH[dtype]).mul_(FEATURE_BINS)
        _OFFSETS[(channels, device, dtype)] = offsets
    z = (sample - center) / scale
    index = bin_index_into(z.reshape(-1), edges, torch.empty(z.numel(), dtype=_WIDTH[dtype], device=device))
    index.view(rows, channels).add_(offsets)
    index.masked_fill_(z.isfinite().logical_not_().reshape(-1), channels * FEATURE_BINS)  # a discarded bin
    return torch.bincount(index, minlength=channels * FEATURE_BINS + 1)[:-1].to(dtype)


@torch.no_grad()
def _measure_group(items: Sequence[Sampled]) -> list[Tensor]:
    key = _signature(items)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        plan = _PLANS[key] = _plan(items)
    device, dtype = items[0].sample.device, items[0].sample.dtype
    t, nb = len(items), num_bins()
    edges = bin_edges(device, dtype)
    fmin = torch.stack([s.fmin.to(dtype) for s in items])
    fmax = torch.stack([s.fmax.to(dtype) for s in items])
    # Every sampled value is finite when every full tensor's extremes are: then the masks can go. Only
    # on CPU, where reading the flag costs nothing (on an accelerator it would wait for the device).
    finite = device.type == "cpu" and bool(torch.cat([fmin, fmax]).isfinite().all())
    moments_of = _finite_moments if finite else channel_moments

    moments: list[list[Tensor]] = [[] for _ in CHANNEL_FIELDS]
    cmin: list[Tensor] = []
    cmax: list[Tensor] = []
    csat: list[Tensor] = []
    # bin of every value, offset by its item's bins, all row groups in one index vector (for one bincount)
    itype = plan.column_item[0].dtype if plan.column_item else torch.int64
    index = torch.empty(plan.values, dtype=itype, device=device)
    at = 0
    for g, (rows, positions) in enumerate(plan.row_groups):
        parts = [items[i].sample for i in positions]
        matrix = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if rows == 0:
            inf = torch.full((matrix.shape[1],), math.inf, dtype=dtype, device=device)
            for acc, value in zip(moments, channel_moments(matrix), strict=True):
                acc.append(value)
            cmin.append(inf)
            cmax.append(-inf)
            csat.append(torch.zeros_like(inf))
            continue
        if finite:
            low, high = matrix.amin(0), matrix.amax(0)  # aminmax(dim=0) is 8x slower on CPU
        else:
            low = matrix.nan_to_num(math.inf, math.inf, math.inf).amin(0)
            high = matrix.nan_to_num(-math.inf, -math.inf, -math.inf).amax(0)
        absmax = torch.maximum(low.neg(), high)  # largest finite |x| per column (-inf: none): the moments' scale
        for acc, value in zip(moments, moments_of(matrix, absmax), strict=True):
            acc.append(value)
        cmin.append(low)
        cmax.append(high)
        lo, hi = plan.lo[g], plan.hi[g]
        if lo is not None and hi is not None:  # comparisons written as 0.0/1.0 (a bool mask summed as floats is slow)
            hits = torch.le(matrix, lo, out=torch.empty_like(matrix)).sum(0)
            csat.append(hits + torch.ge(matrix, hi, out=torch.empty_like(matrix)).sum(0))
        else:
            csat.append(torch.zeros(matrix.shape[1], dtype=dtype, device=device))
        flat = matrix.reshape(-1)
        mine = index[at : at + flat.numel()]
        at += flat.numel()
        if mine.dtype == _WIDTH[dtype]:
            bin_index_into(flat, edges, mine)
        else:  # (more than 2**31 bins in all: int64 offsets for float32 values)
            mine.copy_(bin_index_into(flat, edges, torch.empty_like(flat, dtype=_WIDTH[dtype])))
        mine.view(matrix.shape).add_(plan.column_item[g])
        if not finite:  # non-finite values to the discarded bin t * nb
            mine.masked_fill_(flat.isfinite().logical_not_(), t * nb)
    hist = torch.bincount(index, minlength=t * nb + 1)[: t * nb] if at else None
    hist = hist.to(dtype) if hist is not None else torch.zeros(t * nb, dtype=dtype, device=device)

    def item_order(parts: list[Tensor]) -> Tensor:
        return (torch.cat(parts) if len(parts) > 1 else parts[0]).index_select(0, plan.channel_order)

    channel = torch.stack([item_order(acc) for acc in moments])  # [fields, total channels], item order
    counts = plan.channel_counts
    sampled = [float(s.sample.numel()) for s in items]
    has_values = torch.tensor([v > 0 for v in sampled], device=device)
    smin = torch.where(has_values, _segments(item_order(cmin), counts, "min"), fmin)
    smax = torch.where(has_values, _segments(item_order(cmax), counts, "max"), fmax)
    saturated = _segments(item_order(csat), counts, "sum")

    pmoments = torch.zeros(5, t, dtype=torch.float64, device=device)
    for _, positions in plan.p_groups:
        columns = torch.stack([items[i].pvalues for i in positions], dim=1)  # [length, items]
        # p-values are sampled values: finite when the extremes are (the same figures, without the masks)
        if finite and columns.shape[0]:
            pn, pmean, pm2, pm3, pm4, _ = _finite_moments(columns, columns.abs().amax(0))
        else:  # (further calls of a module have empty p-value samples)
            pn, pmean, pm2, pm3, pm4, _ = channel_moments(columns)
        pmoments[:, positions] = torch.stack([pn, pmean, pm2, pm3, pm4])
    sizes = torch.tensor([[float(s.numel), v] for s, v in zip(items, sampled, strict=True)], dtype=dtype, device=device)
    head = torch.cat([sizes, torch.stack([fmin, fmax, smin, smax, saturated], dim=1)], dim=1).to(torch.float64)
    head = torch.cat([head, pmoments.T], dim=1)  # [items, len(HEAD)]: the moments are float64 already
    source = torch.cat([head.reshape(-1), hist.to(torch.float64), channel.reshape(-1)])
    return list(source.index_select(0, plan.gather).split(plan.sizes))


def measure_all(items: Sequence[Sampled]) -> list[Tensor]:
    """``[measure_sampled(s) for s in items]``, computed for all items together (float64 blocks, ``BlockLayout``).

    Items are grouped by device and work dtype (one group in the usual case); each group costs a
    fixed number of operations whatever the number of tensors in it.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, s in enumerate(items):
        groups.setdefault((s.sample.device, s.sample.dtype), []).append(i)
    out: list[Tensor | None] = [None] * len(items)
    for (_, dtype), positions in groups.items():
        if dtype not in (torch.float32, torch.float64):  # not produced by take_sample; keep the reference path
            for i in positions:
                out[i] = measure_sampled(items[i])
            continue
        for i, block in zip(positions, _measure_group([items[i] for i in positions]), strict=True):
            out[i] = block
    return out  # type: ignore[return-value]
