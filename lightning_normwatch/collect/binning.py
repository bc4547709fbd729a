"""Bin indices by table lookup: the shared histogram bins of ``stats.histogram`` and the input features' anchor
bins of ``stats.feature_drift``, the same indices as ``torch.bucketize`` in a few passes without a binary search.

Example:
    >>> x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0])
    >>> e = torch.tensor([-1.0, 0.0, 1.0])
    >>> bin_index_into(x, e, torch.empty(6, dtype=torch.int32)).tolist() == torch.bucketize(x, e).tolist()
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..stats.feature_drift import FEATURE_BINS, FEATURE_EDGES
from ..stats.histogram import _KEY_BITS, _bin_lookup

__all__ = ["WIDTH", "bin_index_into", "feature_counts"]

WIDTH = {torch.float32: torch.int32, torch.float64: torch.int64}  # integers of a float's width

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
        offsets = torch.arange(channels, device=device, dtype=WIDTH[dtype]).mul_(FEATURE_BINS)
        _OFFSETS[(channels, device, dtype)] = offsets
    z = (sample - center) / scale
    index = bin_index_into(z.reshape(-1), edges, torch.empty(z.numel(), dtype=WIDTH[dtype], device=device))
    index.view(rows, channels).add_(offsets)
    index.masked_fill_(z.isfinite().logical_not_().reshape(-1), channels * FEATURE_BINS)  # a discarded bin
    return torch.bincount(index, minlength=channels * FEATURE_BINS + 1)[:-1].to(dtype)
