"""The packed float64 block one watched tensor becomes on a logging step: field names and offsets.

A block is what crosses from the device to the host (and between DDP ranks): a head of full-tensor
and sampled figures, the shared-bin histogram counts, then per-channel moments, and for input
features a tail of per-feature anchor-bin counts.

Example:
    >>> layout = BlockLayout(channels=3)
    >>> layout.size == len(HEAD) + num_bins() + 6 * 3
    True
    >>> BlockLayout(channels=2, feature_bins=18).tail
    37
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .histogram import num_bins

__all__ = ["HEAD", "CHANNEL_FIELDS", "BlockLayout"]

HEAD = ("numel", "sampled", "fmin", "fmax", "smin", "smax", "saturated", "pn", "pmean", "pm2", "pm3", "pm4")
CHANNEL_FIELDS = ("cn", "cmean", "cm2", "cm3", "cm4", "cnz")


@dataclass(frozen=True)
class BlockLayout:
    """Offsets of the fields in a packed block for a tensor with ``channels`` measured channels.

    Input features carry a tail (``feature_bins > 0``): the batch items sampled, then per-feature
    counts on the anchor bins (``stats.feature_drift.feature_histogram``), ``channels * feature_bins`` values.
    """

    channels: int
    feature_bins: int = 0

    @property
    def tail(self) -> int:
        return 1 + self.channels * self.feature_bins if self.feature_bins else 0

    @property
    def size(self) -> int:
        return len(HEAD) + num_bins() + len(CHANNEL_FIELDS) * self.channels + self.tail

    def unpack(self, block: np.ndarray) -> dict[str, np.ndarray]:
        """Split a block (numpy, any leading dims) into named fields (views)."""
        out: dict[str, np.ndarray] = {name: block[..., i] for i, name in enumerate(HEAD)}
        start = len(HEAD)
        out["hist"] = block[..., start : start + num_bins()]
        start += num_bins()
        for name in CHANNEL_FIELDS:
            out[name] = block[..., start : start + self.channels]
            start += self.channels
        if self.feature_bins:
            out["fitems"] = block[..., start]
            out["fhist"] = block[..., start + 1 : start + self.tail].reshape(
                *block.shape[:-1], self.channels, self.feature_bins
            )
        return out
