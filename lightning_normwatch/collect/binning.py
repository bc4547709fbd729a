"""Bin indices by table lookup written into a given vector: the shared histogram bins of ``stats.histogram``
for all tensors of a logging step at once, the same indices as ``torch.bucketize`` without a binary search.

Example:
    >>> x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0])
    >>> e = torch.tensor([-1.0, 0.0, 1.0])
    >>> bin_index_into(x, e, torch.empty(6, dtype=torch.int32)).tolist() == torch.bucketize(x, e).tolist()
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..stats.histogram import _KEY_BITS, _bin_lookup

__all__ = ["WIDTH", "bin_index_into"]

WIDTH = {torch.float32: torch.int32, torch.float64: torch.int64}  # integers of a float's width

_LOOKUPS: dict[int, tuple[Tensor, tuple[Tensor, Tensor] | None]] = {}  # id(edges) -> (edges, tables)


def _lookups(edges: Tensor) -> tuple[Tensor, Tensor] | None:
    """``stats.histogram``'s table (``table[key]``: edges below the key's range) and per key the edge its
    values are compared with (``upper[table[key]]``, so that both gathers read by key). None: no table."""
    cached = _LOOKUPS.get(id(edges))
    if cached is None or cached[0] is not edges:  # edges are cached tensors (bin_edges)
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
