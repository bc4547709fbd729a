"""Merging every rank's statistics into global figures with one collective per logging step.

Each rank merges its own calls on the host, packs one fixed-size block per watched tensor in an
agreed layout (the same tensor names, channel counts and order on every rank), and a single
``all_gather`` moves all tensors of all layers at once. Blocks merge exactly (moments by the
Pébay formulas, histograms by adding counts over shared edges, extremes by min/max), so the
figures equal those of one process that saw the global batch. A rank whose forward skipped a
module sends an empty block for it: every rank makes the same calls in the same order.

The layout is agreed once (first logging step) with an extra ``all_gather_object``; later, when
a rank meets a tensor not yet in the layout (a branch taken for the first time), the data
collective carries a flag and all ranks agree on the new names in the same step.

Example:
    >>> from lightning_normwatch.monitor import Monitor, MonitorConfig
    >>> ex = Exchange(Monitor(MonitorConfig()))   # single process: no collective
    >>> ex.collect()
    {}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .measure import BlockLayout
from .monitor import Monitor
from .summary import TensorStats

__all__ = ["Exchange", "to_block"]


def to_block(stats: TensorStats, channels: int) -> np.ndarray:
    """Pack merged statistics back into one block (the inverse of ``TensorStats.from_blocks``)."""
    layout = BlockLayout(channels)
    block = np.zeros(layout.size, dtype=np.float64)
    f = layout.unpack(block)
    p = stats.pvalue
    for name, value in (
        ("numel", stats.numel),
        ("sampled", stats.sampled),
        ("fmin", stats.vmin),
        ("fmax", stats.vmax),
        ("smin", stats.smin),
        ("smax", stats.smax),
        ("saturated", stats.saturated),
        ("pn", p.n),
        ("pmean", p.mean),
        ("pm2", p.m2),
        ("pm3", p.m3),
        ("pm4", p.m4),
    ):
        block[list(f).index(name)] = value
    for name in ("hist", "cn", "cmean", "cm2", "cm3", "cm4", "cnz"):
        f[name][...] = getattr(stats, name)
    return block


class Exchange:
    """Collects the monitor's per-step statistics, merged over ranks when training is distributed."""

    def __init__(self, monitor: Monitor, device: torch.device | None = None, distributed: bool = False) -> None:
        self.monitor = monitor
        self.device = device or torch.device("cpu")
        self.distributed = distributed
        self.layout: list[tuple[str, int]] = []
        self.collectives = 0  # collective calls made (for tests and the README's cost statement)

    @classmethod
    def for_trainer(cls, trainer: Any, monitor: Monitor) -> Exchange:
        distributed = trainer.world_size > 1 and dist.is_available() and dist.is_initialized()
        device = trainer.strategy.root_device if distributed else None
        if distributed and dist.get_backend() == "gloo":
            device = torch.device("cpu")
        return cls(monitor, device, distributed)

    def collect(self) -> dict[str, TensorStats]:
        """This step's statistics: local, or merged over all ranks (same result on every rank)."""
        local = self.monitor.collect()
        if not self.distributed:
            return local
        known = {key for key, _ in self.layout}
        pending = any(key not in known for key in local)
        merged: dict[str, TensorStats] = {}
        if self.layout:
            gathered = self._gather(self.layout, local, float(pending))
            merged.update(gathered[0])
            pending = gathered[1]
        if pending or not self.layout:
            new = self._agree_new_keys(local, known)
            if new:
                merged.update(self._gather(new, local, 0.0)[0])
        order = [key for key, _ in self.layout]
        return {key: merged[key] for key in order if key in merged and merged[key].numel > 0}

    def _gather(
        self, layout: list[tuple[str, int]], local: dict[str, TensorStats], flag: float
    ) -> tuple[dict[str, TensorStats], bool]:
        parts = [np.array([flag])]
        for key, channels in layout:
            st = local.get(key)
            parts.append(to_block(st, channels) if st is not None else np.zeros(BlockLayout(channels).size))
        vector = torch.from_numpy(np.concatenate(parts)).to(self.device)
        world = dist.get_world_size()
        out = [torch.empty_like(vector) for _ in range(world)]
        dist.all_gather(out, vector)
        self.collectives += 1
        table = torch.stack(out).cpu().numpy()
        result, start = {}, 1
        for key, channels in layout:
            size = BlockLayout(channels).size
            result[key] = TensorStats.from_blocks(table[:, start : start + size], channels)
            start += size
        return result, bool(table[:, 0].max() > 0)

    def _agree_new_keys(self, local: dict[str, TensorStats], known: set[str]) -> list[tuple[str, int]]:
        mine = [(key, self.monitor.info(key)) for key in local if key not in known]
        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        self.collectives += 1
        new: list[tuple[str, int]] = []
        seen = set(known)
        for rank_keys in everyone:
            for key, info in rank_keys:
                if key not in seen:
                    seen.add(key)
                    self.monitor.register(info)  # a rank that never ran this module learns what it is
                    new.append((key, int(info.channels)))
        self.layout += new
        return new
