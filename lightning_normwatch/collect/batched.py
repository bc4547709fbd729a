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
from ..stats.histogram import _bin_index, bin_edges, num_bins
from ..stats.moments import channel_moments, pow2_scale, rescale
from .sampling import Sampled, measure_sampled

__all__ = ["measure_all"]


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
    )


def _segments(values: Tensor, counts: Tensor, reduce: str) -> Tensor:
    """Per-item reduction of per-channel values (segments of ``counts`` channels, in item order)."""
    return torch.segment_reduce(values, reduce, lengths=counts, unsafe=True)


def _finite_moments(sample: Tensor, absmax: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``channel_moments`` for a sample known to hold only finite values: the same arithmetic without the
    masks (``f`` is 1 everywhere, ``z`` is the sample), so the same figures in 12 passes instead of 18.
    Columns are divided by a power of two before the powers and scaled back in float64, as there."""
    scale = pow2_scale(absmax)
    sample = sample / scale
    rows = sample.shape[0]
    n = torch.full((sample.shape[1],), float(rows), dtype=sample.dtype, device=sample.device)
    count = max(rows, 1)
    mean = sample.sum(0) / count
    mean = mean + (sample - mean).sum(0) / count
    d = sample - mean
    d2 = d * d
    nonzero = (sample != 0).sum(0, dtype=sample.dtype)
    return rescale(n, mean, d2.sum(0), (d2 * d).sum(0), (d2 * d2).sum(0), nonzero, scale)


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
    bins: list[Tensor] = []
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
        if lo is not None and hi is not None:
            csat.append((matrix <= lo).sum(0, dtype=dtype) + (matrix >= hi).sum(0, dtype=dtype))
        else:
            csat.append(torch.zeros(matrix.shape[1], dtype=dtype, device=device))
        # bin of every value, offset by its item's bins; non-finite values to the discarded bin t * nb
        index = _bin_index(matrix.reshape(-1), edges).view(matrix.shape) + plan.column_item[g]
        bins.append((index if finite else torch.where(matrix.isfinite(), index, t * nb)).reshape(-1))
    hist = torch.bincount(torch.cat(bins), minlength=t * nb + 1)[: t * nb] if bins else None
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
