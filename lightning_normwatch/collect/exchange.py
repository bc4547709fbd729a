"""Merging every rank's statistics into global figures with one collective per logging step.

Each rank merges its own calls on the host (``Collector.collect``), packs one fixed-size block per
watched tensor in an agreed layout (the same tensor names, channel counts and order on every
rank), and a single ``all_gather`` moves all tensors of all layers at once. Blocks merge exactly
(moments by the Pébay formulas, histograms by adding counts over shared edges, extremes by
min/max, counts by summing), so the figures equal those of one process that saw the global batch.
A rank whose forward skipped a module sends an empty block for it (``numel == 0``, ignored by the
merge): every rank makes the same calls in the same order.

Agreeing on the layout costs one ``all_gather_object``, which also carries the new tensors' blocks:

- first logging step: one ``all_gather_object`` (names, roles, channel counts and blocks), nothing else;
- steady state: one ``all_gather`` of ``8 * (1 + flags + sum(block sizes))`` bytes per rank;
- a step at which some rank meets a tensor not in the layout yet (a branch taken for the first
  time): the ``all_gather`` carries a flag, and all ranks then make one ``all_gather_object`` for
  the new tensors, so that step costs two collectives.

A tensor is identified by its name *and* its channel count: when one module is called with
different widths on different ranks (``name`` on one rank is ``name@2`` on another), the extra
width gets a name ``base@k`` agreed by all ranks instead of being merged with the wrong layout.

Example:
    >>> from lightning_normwatch.config import SessionConfig
    >>> ex = Exchange(Collector(SessionConfig()))   # single process: no collective
    >>> ex.collect(flags=[True])
    {}
    >>> ex.flags, ex.collectives
    ((True,), 0)
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..stats.block import BlockLayout
from ..stats.figures import TensorStats
from .collector import Collector

__all__ = ["Exchange", "to_block"]

_HEAD = ("numel", "sampled", "fmin", "fmax", "smin", "smax", "saturated")
_ARRAYS = ("hist", "cn", "cmean", "cm2", "cm3", "cm4", "cnz")


def to_block(stats: TensorStats, channels: int) -> np.ndarray:
    """Pack merged statistics back into one block (the inverse of ``TensorStats.from_blocks``).

    Example:
        >>> import torch
        >>> from lightning_normwatch.collect.sampling import MeasureSpec, measure
        >>> block = measure(torch.randn(5, 3), MeasureSpec(), torch.Generator().manual_seed(0)).numpy()
        >>> bool(np.allclose(to_block(TensorStats.from_blocks(block[None], 3), 3), block))
        True
    """
    feature_bins = stats.fhist.shape[-1] if stats.fhist is not None else 0
    layout = BlockLayout(channels, feature_bins)
    block = np.zeros(layout.size, dtype=np.float64)
    f = layout.unpack(block)
    attrs = ("numel", "sampled", "vmin", "vmax", "smin", "smax", "saturated")
    for field, attr in zip(_HEAD, attrs, strict=True):
        f[field][...] = getattr(stats, attr)
    p = stats.pvalue
    for field, value in zip(("pn", "pmean", "pm2", "pm3", "pm4"), p.astuple(), strict=True):
        f[field][...] = value
    for field in _ARRAYS:
        f[field][...] = getattr(stats, field)
    if feature_bins:
        f["fhist"][...] = stats.fhist
        f["fitems"][...] = stats.fitems
    return block


class Exchange:
    """Collects the collector's per-step statistics, merged over ranks when training is distributed.

    Every rank must call ``collect`` at the same logging steps (the session does so at the end of
    each logging step); the result is the same on every rank.

    Args:
        collector: the collector whose blocks are merged.
        device: where the gathered vector lives (the rank's device for NCCL, CPU for gloo).
        distributed: merge over the default process group (else: local statistics, no collective).

    Attributes:
        layout: agreed ``(name, channels)`` of every tensor seen so far, in the order they were
            first seen (the same on every rank).
        flags: after ``collect``, each flag passed to it OR-ed over ranks.
        collectives: collective calls made so far.
        bytes_sent: bytes this rank contributed to the collectives of the last ``collect``.
    """

    def __init__(self, collector: Collector, device: torch.device | None = None, distributed: bool = False) -> None:
        self.collector = collector
        self.device = device or torch.device("cpu")
        self.distributed = distributed
        self.layout: list[tuple[str, int]] = []
        self.flags: tuple[bool, ...] = ()
        self.collectives = 0
        self.bytes_sent = 0
        self._names: dict[tuple[str, int], str] = {}  # (local key, channels) -> agreed name

    @classmethod
    def for_process_group(cls, collector: Collector, world_size: int, device: torch.device | None) -> Exchange:
        """An exchange over the default process group when ``world_size > 1`` (else local, no collective);
        ``device`` is the rank's device (the gathered vector stays on the CPU under gloo)."""
        distributed = world_size > 1 and dist.is_available() and dist.is_initialized()
        if distributed and dist.get_backend() == "gloo":
            device = torch.device("cpu")
        return cls(collector, device if distributed else None, distributed)

    def collect(self, flags: Sequence[bool] = ()) -> dict[str, TensorStats]:
        """This step's statistics: local, or merged over all ranks (same result on every rank).

        Args:
            flags: per-rank booleans to OR over ranks in the same collective (e.g. "my loss was
                non-finite"); every rank must pass as many. The result is in ``self.flags``.

        Returns:
            ``{name: TensorStats}`` of the tensors some rank measured at this step, in layout order.
        """
        local = self.collector.collect()
        if not self.distributed:
            self.flags = tuple(bool(f) for f in flags)
            self.bytes_sent = 0
            return local
        self.bytes_sent = 0
        mine: dict[str, TensorStats] = {}
        new: list[tuple[str, TensorStats, tuple[str, int] | None]] = []
        previous: tuple[str, int] | None = None  # the tensor this rank measured just before
        for key, st in local.items():
            ident = (key, len(st.cn))
            name = self._names.get(ident)
            if name is None:
                new.append((key, st, previous))
            else:
                mine[name] = st
            previous = ident
        merged: dict[str, TensorStats] = {}
        any_new = True
        if self.layout:
            merged, any_new, self.flags = self._gather(mine, bool(new), flags)
        if any_new:
            first, self.flags = self._agree(new, flags)
            merged.update(first)
        return {name: merged[name] for name, _ in self.layout if name in merged and merged[name].numel > 0}

    def _gather(
        self, mine: dict[str, TensorStats], pending: bool, flags: Sequence[bool]
    ) -> tuple[dict[str, TensorStats], bool, tuple[bool, ...]]:
        """One ``all_gather`` of every layout tensor's block (empty where this rank has none)."""
        head = np.array([float(pending), *(float(bool(f)) for f in flags)])
        parts = [head]
        for name, channels in self.layout:
            st = mine.get(name)
            empty = np.zeros(self.collector.block_layout(name, channels).size)
            parts.append(to_block(st, channels) if st is not None else empty)
        vector = torch.from_numpy(np.concatenate(parts)).to(self.device)
        out = [torch.empty_like(vector) for _ in range(dist.get_world_size())]
        dist.all_gather(out, vector)
        self.collectives += 1
        self.bytes_sent += vector.numel() * vector.element_size()
        table = torch.stack(out).cpu().numpy()
        result: dict[str, TensorStats] = {}
        start = len(head)
        for name, channels in self.layout:
            layout = self.collector.block_layout(name, channels)
            result[name] = TensorStats.from_blocks(table[:, start : start + layout.size], channels, layout.feature_bins)
            start += layout.size
        ored = table[:, : len(head)].max(axis=0) > 0
        return result, bool(ored[0]), tuple(bool(v) for v in ored[1:])

    def _agree(
        self, new: list[tuple[str, TensorStats, tuple[str, int] | None]], flags: Sequence[bool]
    ) -> tuple[dict[str, TensorStats], tuple[bool, ...]]:
        """One ``all_gather_object``: every rank's new tensors (info, block, predecessor) and flags.

        All ranks process the gathered list in rank order, so they extend the layout and name
        the new tensors identically. A new tensor goes right after the tensor its rank measured
        before it, so the layout follows execution order (``nonfinite`` names the first tensor
        in it, and the last one is the model's output).
        """
        payload = (
            [bool(f) for f in flags],
            [(key, self.collector.info(key), to_block(st, len(st.cn)), prev) for key, st, prev in new],
        )
        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, payload)
        self.collectives += 1
        self.bytes_sent += len(pickle.dumps(payload))
        blocks: dict[str, list[np.ndarray]] = {}
        for _, entries in everyone:
            for key, info, block, prev in entries:
                channels = int(info.channels)
                name = self._names.get((key, channels))
                if name is None:
                    name = self._name_for(key)
                    self._names[(key, channels)] = name
                    self._names.setdefault((name, channels), name)  # a rank calling it ``name`` locally
                    after = self._names.get(prev) if prev is not None else None
                    at = next((i + 1 for i, (n, _) in enumerate(self.layout) if n == after), 0)
                    self.layout.insert(at, (name, channels))
                    self.collector.register(replace(info, name=name))
                blocks.setdefault(name, []).append(block)
        channels_of = dict(self.layout)
        merged = {
            name: TensorStats.from_blocks(
                np.stack(bs), channels_of[name], self.collector.block_layout(name, channels_of[name]).feature_bins
            )
            for name, bs in blocks.items()
        }
        ored = tuple(bool(any(rank_flags[i] for rank_flags, _ in everyone)) for i in range(len(flags)))
        return merged, ored

    def _name_for(self, key: str) -> str:
        """``key`` itself, or ``base@k`` when another width already took that name."""
        taken = {name for name, _ in self.layout}
        if key not in taken:
            return key
        base, at, call = key.rpartition("@")
        base = base if at and call.isdigit() else key
        k = 2
        while f"{base}@{k}" in taken:
            k += 1
        return f"{base}@{k}"
