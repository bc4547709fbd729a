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
from ..stats.histogram import INDEX_DTYPE, bin_edges, bin_index, num_bins
from ..stats.moments import channel_moments, pow2_scale
from .sampling import Sampled, measure_sampled

__all__ = ["measure_all", "measure_flat"]


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
    head_sizes: Tensor  # [items, 2]: values in the full tensor and sampled (work dtype)
    has_values: Tensor  # per item: it has sampled values
    p_where: list[Tensor]  # per p-value group: its item positions
    column_rows: Tensor  # rows of each column of the row groups, in group order (float64): the count per channel


_PLANS: dict[tuple, _Plan] = {}
_MAX_PLANS = 32


def _signature(items: Sequence[Sampled]) -> tuple:
    """What a plan depends on: device, work dtype, and every item's shapes, size and saturation limits."""
    shapes = tuple(
        (tuple(s.sample.shape), s.pvalues.numel(), s.numel, s.spec.bounds, s.spec.saturation_tolerance) for s in items
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
        head_sizes=torch.tensor([[float(s.numel), float(s.sample.numel())] for s in items], dtype=dtype, device=device),
        has_values=torch.tensor([s.sample.numel() > 0 for s in items], device=device),
        p_where=[torch.tensor(positions, dtype=torch.int64, device=device) for positions in by_len.values()],
        column_rows=torch.tensor(
            [float(rows) for rows, positions in row_groups for i in positions for _ in range(channels[i])],
            dtype=torch.float64,
            device=device,
        ),
    )


def _segments(values: Tensor, counts: Tensor, reduce: str) -> Tensor:
    """Per-item reduction of per-channel values (segments of ``counts`` channels, in item order)."""
    return torch.segment_reduce(values, reduce, lengths=counts, unsafe=True)


def _raw_moments(sample: Tensor, scale: Tensor) -> Tensor:
    """``[5, channels]`` in the work dtype: mean, M2, M3, M4 and non-zero count of ``sample / scale`` per column,
    for a sample known to hold only finite values: ``channel_moments``' arithmetic without the masks (``f`` is
    1 everywhere, ``z`` is the sample), 12 passes instead of 18; ``_scaled_back`` finishes it.

    The products go into two work buffers in place (``d * d2`` is ``d2 * d``: IEEE products commute), and
    non-zero values are counted as floats: a boolean mask summed into a float is several times slower
    on CPU than the comparison written as 0.0/1.0, and the counts are the same integers.
    """
    scaled = sample / scale
    count = max(scaled.shape[0], 1)
    mean = scaled.sum(0) / count
    d = scaled - mean
    mean = mean + d.sum(0) / count
    torch.sub(scaled, mean, out=d)
    nonzero = scaled.ne_(0).sum(0)  # in place: 1.0 where non-zero (scaled is not read again)
    d2 = d * d
    return torch.stack([mean, d2.sum(0), d.mul_(d2).sum(0), d2.mul_(d2).sum(0), nonzero])


def _scaled_back(raw: Tensor, scale: Tensor) -> Tensor:
    """``rescale`` of stacked ``_raw_moments`` (columns of any number of them): ``[mean * s, M2 * s**2,
    M3 * s**3, M4 * s**4, non-zero]`` in float64, the very products ``rescale`` computes.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
        >>> scale = pow2_scale(x.abs().amax(0))
        >>> torch.equal(torch.cat([torch.full((1, 2), 2.0, dtype=torch.float64), _scaled_back(_raw_moments(x, scale),
        ...     scale)]), torch.stack(channel_moments(x)))
        True
    """
    s = scale.to(torch.float64)
    s2 = s * s
    out = raw.to(torch.float64)
    out[:4] *= torch.stack([s, s2, s2 * s, s2 * s2])
    return out


def _finite_fields(
    items: Sequence[Sampled], plan: _Plan, matrices: list[Tensor], bounds: list[Tensor]
) -> tuple[Tensor, Tensor]:
    """Per-channel moments ``[6, channels]`` (item order) and p-value moments ``[5, items]`` (float64) when every
    sampled value is finite and every row group has rows: one power-of-two scale and one ``rescale`` for all
    row groups and p-value groups together (elementwise, so the same numbers as group by group)."""
    p_rows = [torch.stack([items[i].pvalues for i in positions]) for _, positions in plan.p_groups]
    absmax = [torch.maximum(b[0].neg(), b[1]) for b in bounds]
    # = columns.abs().amax(0) of the p-value columns (max does not round); rows: the fast reduction
    absmax += [torch.maximum(r.amin(1).neg(), r.amax(1)) for r in p_rows if r.shape[1]]
    scale = pow2_scale(torch.cat(absmax))
    # one p-value subsample per row, then the [length, items] layout the moments are summed in (a blocked
    # transpose copy: faster than stacking into columns)
    columns = [r.T.contiguous() for r in p_rows if r.shape[1]]
    parts, at = [], 0
    for matrix in matrices + columns:
        parts.append(_raw_moments(matrix, scale[at : at + matrix.shape[1]]))
        at += matrix.shape[1]
    back = _scaled_back(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0], scale)
    width = len(plan.column_rows)
    fields = torch.cat([plan.column_rows[None], back[:, :width]]).index_select(1, plan.channel_order)
    pmoments = torch.zeros(5, len(items), dtype=torch.float64, device=scale.device)
    for (length, positions), where, rows in zip(plan.p_groups, plan.p_where, p_rows, strict=True):
        if length == 0:  # (further calls of a module have empty p-value samples)
            pmoments[:, where] = torch.stack(channel_moments(rows.T)[:5])
            continue
        pmoments[0, where] = float(length)
        pmoments[1:, where] = back[:4, width : width + len(positions)]
        width += len(positions)
    return fields, pmoments


def _masked_fields(
    items: Sequence[Sampled], plan: _Plan, matrices: list[Tensor], bounds: list[Tensor]
) -> tuple[Tensor, Tensor]:
    """``_finite_fields`` where some value may not be finite or some row group is empty: ``channel_moments``
    (masks for the non-finite values) group by group."""
    fields = [
        torch.stack(channel_moments(m, torch.maximum(b[0].neg(), b[1]) if m.shape[0] else None))
        for m, b in zip(matrices, bounds, strict=True)
    ]
    fields_t = (torch.cat(fields, dim=1) if len(fields) > 1 else fields[0]).index_select(1, plan.channel_order)
    pmoments = torch.zeros(5, len(items), dtype=torch.float64, device=fields_t.device)
    for (_, positions), where in zip(plan.p_groups, plan.p_where, strict=True):
        columns = torch.stack([items[i].pvalues for i in positions], dim=1)  # [length, items]
        pmoments[:, where] = torch.stack(channel_moments(columns)[:5])
    return fields_t, pmoments


def _row_groups(items: Sequence[Sampled], plan: _Plan, finite: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-channel moments ``[6, channels]`` (float64) and extremes and saturation counts ``[3, channels]`` (work
    dtype), both in item order, histogram counts ``[items * bins]`` (work dtype) and p-value moments."""
    device, dtype = items[0].sample.device, items[0].sample.dtype
    t, nb = len(items), num_bins()
    edges = bin_edges(device, dtype)
    matrices: list[Tensor] = []
    bounds: list[Tensor] = []
    # bin of every value, offset by its item's bins, all row groups in one index vector (for one bincount)
    itype = plan.column_item[0].dtype if plan.column_item else torch.int64
    index = torch.empty(plan.values, dtype=itype, device=device)
    at = 0
    for g, (rows, positions) in enumerate(plan.row_groups):
        parts = [items[i].sample for i in positions]
        matrix = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        matrices.append(matrix)
        if rows == 0:
            inf = torch.full((matrix.shape[1],), math.inf, dtype=dtype, device=device)
            bounds.append(torch.stack([inf, -inf, torch.zeros_like(inf)]))
            continue
        if finite:
            low, high = matrix.amin(0), matrix.amax(0)  # aminmax(dim=0) is 8x slower on CPU
        else:
            low = matrix.nan_to_num(math.inf, math.inf, math.inf).amin(0)
            high = matrix.nan_to_num(-math.inf, -math.inf, -math.inf).amax(0)
        lo, hi = plan.lo[g], plan.hi[g]
        if lo is not None and hi is not None:  # comparisons written as 0.0/1.0 (a bool mask summed as floats is slow)
            hits = torch.le(matrix, lo, out=torch.empty_like(matrix)).sum(0)
            saturated = hits + torch.ge(matrix, hi, out=torch.empty_like(matrix)).sum(0)
        else:
            saturated = torch.zeros(matrix.shape[1], dtype=dtype, device=device)
        bounds.append(torch.stack([low, high, saturated]))
        flat = matrix.reshape(-1)
        mine = index[at : at + flat.numel()]
        at += flat.numel()
        if mine.dtype == INDEX_DTYPE[dtype]:
            bin_index(flat, edges, mine)
        else:  # (more than 2**31 bins in all: int64 offsets for float32 values)
            mine.copy_(bin_index(flat, edges))
        mine.view(matrix.shape).add_(plan.column_item[g])
        if not finite:  # non-finite values to the discarded bin t * nb
            mine.masked_fill_(flat.isfinite().logical_not_(), t * nb)
    hist = torch.bincount(index, minlength=t * nb + 1)[: t * nb] if at else None
    hist = hist.to(dtype) if hist is not None else torch.zeros(t * nb, dtype=dtype, device=device)
    extremes = (torch.cat(bounds, dim=1) if len(bounds) > 1 else bounds[0]).index_select(1, plan.channel_order)
    fast = finite and all(m.shape[0] for m in matrices)
    fields, pmoments = (_finite_fields if fast else _masked_fields)(items, plan, matrices, bounds)
    return fields, extremes, hist, pmoments


@torch.no_grad()
def _measure_group(items: Sequence[Sampled]) -> tuple[Tensor, list[int]]:
    """The blocks of one group of items (same device and work dtype), concatenated, and their sizes."""
    key = _signature(items)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        plan = _PLANS[key] = _plan(items)
    dtype = items[0].sample.dtype
    extremes = [s.fmin for s in items] + [s.fmax for s in items]
    if any(e.dtype != dtype for e in extremes):
        extremes = [e.to(dtype) for e in extremes]
    fmin, fmax = torch.stack(extremes).view(2, len(items))
    # Every sampled value is finite when every full tensor's extremes are: then the masks can go. Only
    # on CPU, where reading the flag costs nothing (on an accelerator it would wait for the device).
    finite = items[0].sample.device.type == "cpu" and bool(torch.stack([fmin, fmax]).isfinite().all())
    channel, bounds, hist, pmoments = _row_groups(items, plan, finite)
    counts = plan.channel_counts
    smin = torch.where(plan.has_values, _segments(bounds[0], counts, "min"), fmin)
    smax = torch.where(plan.has_values, _segments(bounds[1], counts, "max"), fmax)
    saturated = _segments(bounds[2], counts, "sum")
    head = torch.stack([fmin, fmax, smin, smax, saturated], dim=1)
    head = torch.cat([plan.head_sizes, head], dim=1).to(torch.float64)
    head = torch.cat([head, pmoments.T], dim=1)  # [items, len(HEAD)]
    source = torch.cat([head.reshape(-1), hist.to(torch.float64), channel.reshape(-1)])
    return source.index_select(0, plan.gather), plan.sizes


def measure_flat(items: Sequence[Sampled]) -> tuple[Tensor, list[int]]:
    """``torch.cat(measure_all(items))`` and the blocks' sizes: without splitting the blocks (one vector for
    the one transfer of a logging step)."""
    if not items:
        return torch.zeros(0, dtype=torch.float64), []
    first = items[0].sample
    if first.dtype in (torch.float32, torch.float64) and all(
        s.sample.device == first.device and s.sample.dtype == first.dtype for s in items
    ):
        return _measure_group(items)
    blocks = measure_all(items)
    return torch.cat([b.to(blocks[0].device) for b in blocks]), [len(b) for b in blocks]


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
        source, sizes = _measure_group([items[i] for i in positions])
        for i, block in zip(positions, source.split(sizes), strict=True):
            out[i] = block
    return out  # type: ignore[return-value]
