"""Which dimension of a module's output holds its channels: decided by the module, not by ``ndim``.

A ``Linear``, ``LayerNorm`` or ``RMSNorm`` applied to ``[B, H, W, C]`` (ConvNeXt's MLP, vision
transformers) has its channels last; a convolution, batch norm or pooling layer has them in
dimension 1. Parameter-free modules (activations, dropout, padding ...) say nothing: their output
inherits the layout of the tensor they transform (``Flow`` remembers the layout of every tensor
the watched modules produced during one forward pass).

Example:
    >>> from torch import nn
    >>> module_layout(nn.Linear(8, 16), (2, 5, 5, 16)), module_layout(nn.Conv2d(3, 16, 3), (2, 16, 5, 5))
    (False, True)
    >>> module_layout(nn.ReLU(), (2, 16, 5, 5)) is None   # inherits from its input
    True
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.pooling import (
    _AdaptiveAvgPoolNd,
    _AdaptiveMaxPoolNd,
    _AvgPoolNd,
    _LPPoolNd,
    _MaxPoolNd,
    _MaxUnpoolNd,
)

__all__ = ["module_layout", "Flow"]

#: channels in dimension 1 (``[B, C, *spatial]``) whatever the number of dimensions
#: norm layers with running statistics (BatchNorm*, SyncBatchNorm, InstanceNorm*); torch's common base class
#: of these (``_NormBase``) is private, so the public classes are listed
RUNNING_NORMS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LazyBatchNorm1d,
    nn.LazyBatchNorm2d,
    nn.LazyBatchNorm3d,
    nn.LazyInstanceNorm1d,
    nn.LazyInstanceNorm2d,
    nn.LazyInstanceNorm3d,
)
_CHANNEL_FIRST = (
    _ConvNd,
    *RUNNING_NORMS,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    _MaxPoolNd,
    _AvgPoolNd,
    _AdaptiveAvgPoolNd,
    _AdaptiveMaxPoolNd,
    _LPPoolNd,
    _MaxUnpoolNd,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Upsample,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
)

#: channels in the last dimension (``[..., C]``)
_CHANNEL_LAST = (
    nn.Linear,
    nn.Bilinear,
    nn.LayerNorm,
    nn.RMSNorm,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.MultiheadAttention,
    nn.RNNBase,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)


def module_layout(module: nn.Module | None, shape: Sequence[int]) -> bool | None:
    """``True``: channels in dimension 1; ``False``: channels last; ``None``: the module does not say.

    Known layers decide by type. An unknown module with parameters of its own (a custom norm,
    ``transformers``' ``Conv1D``) decides by its 1-d parameters (bias, norm weight): the output
    dimension whose size they share is the channel dimension. Parameter-free modules (activations)
    return ``None``: their output takes the layout of their input.

    Example:
        >>> from torch import nn
        >>> class ChannelsFirstNorm(nn.Module):   # ConvNeXt's LayerNorm(data_format="channels_first")
        ...     def __init__(self): super().__init__(); self.weight = nn.Parameter(torch.ones(16))
        >>> import torch
        >>> module_layout(ChannelsFirstNorm(), (2, 16, 7, 7)), module_layout(ChannelsFirstNorm(), (2, 7, 7, 16))
        (True, False)
    """
    if len(shape) < 3:
        return False
    if isinstance(module, _CHANNEL_FIRST):
        return True
    if isinstance(module, _CHANNEL_LAST):
        return False
    if module is None:
        return None
    sizes = {p.shape[0] for p in module.parameters(recurse=False) if p.ndim == 1}
    sizes |= {b.shape[0] for b in module.buffers(recurse=False) if b is not None and b.ndim == 1}
    if not sizes:
        # e.g. transformers' Conv1D keeps weight [in, out] and bias [out]; a bias-free one still has its weight
        weights = [p for p in module.parameters(recurse=False) if p.ndim == 2]
        sizes = {w.shape[1] for w in weights} | {w.shape[0] for w in weights}
    first, last = shape[1] in sizes, shape[-1] in sizes
    if last and not first:
        return False
    if first and not last:
        return True
    return None


@dataclass
class _Seen:
    ref: weakref.ReferenceType
    channel_first: bool
    producer: str


class Flow:
    """Layout and producer of the tensors watched modules output during one forward pass.

    Tensors are remembered by identity (through weak references, so nothing is kept alive): when
    a module's input is the very tensor another watched module output, its layout and producer
    are known exactly. ``reset`` at the start of every forward pass.

    Example:
        >>> import torch
        >>> flow, t = Flow(), torch.zeros(2, 3, 4, 5)
        >>> flow.record(t, channel_first=False, producer="fc")
        >>> flow.lookup(t), flow.lookup(t.clone())
        ((False, 'fc'), None)
    """

    def __init__(self) -> None:
        self._seen: dict[int, _Seen] = {}
        self.last: tuple[tuple[int, ...], bool] | None = None  # shape and layout of the latest tensor

    def reset(self) -> None:
        self._seen = {}
        self.last = None

    def record(self, tensor: Tensor, channel_first: bool, producer: str) -> None:
        try:
            ref = weakref.ref(tensor)
        except TypeError:  # pragma: no cover - tensor subclasses without weakref support
            return
        self._seen[id(tensor)] = _Seen(ref, channel_first, producer)
        self.last = (tuple(tensor.shape), channel_first)

    def lookup(self, tensor: object) -> tuple[bool, str] | None:
        """(layout, producer) of a tensor a watched module output in this pass, else None."""
        if not isinstance(tensor, Tensor):
            return None
        seen = self._seen.get(id(tensor))
        if seen is None or seen.ref() is not tensor:
            return None
        return seen.channel_first, seen.producer

    def inherited(self, source: object, shape: Sequence[int]) -> bool | None:
        """Layout for a parameter-free module's output: its input's, else the latest tensor's of that shape."""
        known = self.lookup(source)
        if known is not None and tuple(source.shape) == tuple(shape):  # type: ignore[union-attr]
            return known[0]
        if self.last is not None and self.last[0] == tuple(shape) and len(shape) >= 3:
            return self.last[1]
        return None
