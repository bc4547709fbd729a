"""Device-side measurement of one tensor into a packed float64 block.

Called inside forward hooks on logging steps. It never synchronises with the host, never keeps
a reference to the tensor, and reads only a bounded random subsample drawn with the collector's own
generator (the training RNG is untouched):

- rows: up to ``sample_size`` values as ``[rows, channels]`` positions (all of them when the
  tensor is that small, so the figures are then exact);
- per channel: count, mean, M2, M3, M4 and non-zero count (what batch norm acts on, and what
  merges exactly);
- a fixed-size subsample of the rows for p-values;
- counts on the shared histogram bins; full-tensor min and max; saturated count.

Example:
    >>> import torch
    >>> spec = MeasureSpec(sample_size=64, pvalue_size=64)
    >>> block = measure(torch.randn(4, 3), spec, torch.Generator().manual_seed(0))
    >>> from lightning_normwatch.stats.block import BlockLayout
    >>> layout = BlockLayout(channels=3)
    >>> float(layout.unpack(block.numpy())["numel"])
    12.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..stats.histogram import bin_counts, bin_edges
from ..stats.moments import channel_moments

__all__ = [
    "MeasureSpec",
    "Sampled",
    "measure",
    "take_sample",
    "measure_sampled",
    "saturation_bounds_for",
]

# (lower, upper) limits at which a bounded activation's gradient vanishes; None: not counted.
# ReLU6's lower limit is plain ReLU sparsity, not saturation.
_BOUNDED: tuple[tuple[type[nn.Module], float | None, float | None], ...] = (
    (nn.Sigmoid, 0.0, 1.0),
    (nn.Tanh, -1.0, 1.0),
    (nn.Hardsigmoid, 0.0, 1.0),
    (nn.Softsign, -1.0, 1.0),
    (nn.ReLU6, None, 6.0),
)


def saturation_bounds_for(module: nn.Module | None) -> tuple[float | None, float | None] | None:
    """The limits of a bounded activation, or None if the module is not one."""
    if isinstance(module, nn.Hardtanh) and not isinstance(module, nn.ReLU6):
        return float(module.min_val), float(module.max_val)
    for cls, lo, hi in _BOUNDED:
        if isinstance(module, cls):
            return lo, hi
    return None


@dataclass(frozen=True)
class MeasureSpec:
    """What to measure for one tensor.

    Attributes:
        sample_size: values sampled per tensor (rows x channels), the bound on the work per tensor.
        pvalue_size: values used for p-values (per rank under DDP, so the merged size stays fixed).
        min_rows: rows sampled at least, so that per-channel figures have some support.
        max_channels: channels measured at most; wider tensors are measured on an evenly strided subset.
        channel_first: channels in dimension 1 (else the last dimension).
        bounds: saturation limits of a bounded activation, or None.
        saturation_tolerance: share of the output range within which a value counts as at its limit.
    """

    sample_size: int = 8192
    pvalue_size: int = 5000
    min_rows: int = 16
    max_channels: int = 2048
    channel_first: bool = False
    bounds: tuple[float | None, float | None] | None = None
    saturation_tolerance: float = 0.01


_MEMORY_ROWS: dict[tuple, Tensor] = {}  # (shape, dimension order, device) -> memory row of each logical row


def _rows_in_memory_order(x: Tensor) -> tuple[Tensor, Tensor] | None:
    """For a channels-last ``x`` whose rows are dense in memory in another order than its logical one (the
    transposed output of a ``batch_first`` attention): its rows as a ``[rows, C]`` view in memory order, and
    for each logical row its row there. None if its memory is not such rows (then it is copied).

    Example:
        >>> x = torch.arange(24.0).reshape(3, 2, 4).transpose(0, 1)   # [2, 3, 4], not viewable as [6, 4]
        >>> dense, where = _rows_in_memory_order(x)
        >>> torch.equal(dense.index_select(0, where), x.reshape(6, 4))
        True
    """
    lead = x.shape[:-1]
    if x.stride(-1) != 1 or not lead:
        return None
    order = sorted(range(len(lead)), key=lambda d: x.stride(d), reverse=True)
    dense = x.permute(*order, x.ndim - 1)
    if not dense.is_contiguous():
        return None
    key = (tuple(x.shape), tuple(order), x.device)
    where = _MEMORY_ROWS.get(key)
    if where is None:
        if len(_MEMORY_ROWS) >= 64:
            _MEMORY_ROWS.clear()
        inverse = sorted(range(len(order)), key=order.__getitem__)
        rows = torch.arange(math.prod(lead), device=x.device).reshape([lead[d] for d in order])
        where = _MEMORY_ROWS[key] = rows.permute(*inverse).reshape(-1)
    return dense.reshape(-1, x.shape[-1]), where


def _chosen_rows(x: Tensor, rows: int, channels: int, chosen: Tensor) -> Tensor:
    """``x.reshape(rows, channels)[chosen]`` (a copy) without copying all of a non-contiguous ``x`` first."""
    if x.is_contiguous():
        return x.view(rows, channels).index_select(0, chosen)
    found = _rows_in_memory_order(x)
    if found is None:
        return x.reshape(rows, channels).index_select(0, chosen)
    dense, where = found
    return dense.index_select(0, where.index_select(0, chosen))


def _as_channel_rows(x: Tensor, spec: MeasureSpec, generator: torch.Generator) -> tuple[Tensor, bool]:
    """A ``[rows, channels]`` sample of ``x`` (all rows when ``x`` has at most ``sample_size`` values), and
    whether it is a copy for sure (else it may be a view of ``x``)."""
    if x.ndim >= 2 and not (spec.channel_first and x.ndim >= 3) and x.shape[-1] <= spec.max_channels:
        # channels last, all of them: the rows are the leading positions (the general path below, with fewer ops)
        rows, channels = math.prod(x.shape[:-1]), x.shape[-1]
        if rows * channels > spec.sample_size:
            want = min(rows, max(spec.min_rows, spec.sample_size // channels))
            if rows <= 32 * want:
                r = torch.randperm(rows, device=x.device, generator=generator)[:want]
            else:
                r = torch.randint(rows, (want,), device=x.device, generator=generator)
            return _chosen_rows(x, rows, channels, r), True
    if x.ndim == 0:
        x = x.reshape(1, 1)
    elif x.ndim == 1:
        x = x.reshape(-1, 1)
    # Explicit sizes (no -1): an empty tensor such as a batch of 0 would make -1 ambiguous.
    if spec.channel_first and x.ndim >= 3:
        view = x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))  # [B, C, P]
    else:
        view = x.reshape(math.prod(x.shape[:-1]), x.shape[-1], 1)  # [N, C, 1]
    channels = view.shape[1]
    if channels > spec.max_channels:
        view = view[:, :: math.ceil(channels / spec.max_channels)]
        channels = view.shape[1]
    batch, positions = view.shape[0], view.shape[2]
    rows = batch * positions
    if rows * channels <= spec.sample_size:
        return view.permute(0, 2, 1).reshape(rows, channels), False
    want = min(rows, max(spec.min_rows, spec.sample_size // channels))
    if rows <= 32 * want:
        # Without replacement: repeated rows would inflate the p-values' test statistics (and could miss
        # rows of a small batch). O(rows), so only here; above, repeats are under 1/64 of the sample.
        r = torch.randperm(rows, device=x.device, generator=generator)[:want]
        # index_select copies the chosen rows as advanced indexing does, a third of its dispatch cost on CPU
        return (view[:, :, 0].index_select(0, r) if positions == 1 else view[r // positions, :, r % positions]), True
    b = torch.randint(batch, (want,), device=x.device, generator=generator)
    if positions == 1:
        return view[:, :, 0].index_select(0, b), True
    p = torch.randint(positions, (want,), device=x.device, generator=generator)
    return view[b, :, p], True


def measured_channels(x: Tensor, spec: MeasureSpec) -> int:
    """How many channels ``measure`` reports for ``x`` (the block layout's ``channels``)."""
    if x.ndim <= 1:
        return 1
    c = x.shape[1] if (spec.channel_first and x.ndim >= 3) else x.shape[-1]
    return len(range(0, c, math.ceil(c / spec.max_channels))) if c > spec.max_channels else c


@dataclass(frozen=True)
class Sampled:
    """What ``measure`` keeps of a tensor from the hook to the arithmetic (``measure_sampled``).

    Attributes:
        sample: ``[rows, channels]`` in the work dtype (float32/float64), in its own storage.
        pvalues: the fixed-size subsample of ``sample``'s values for p-values.
        fmin, fmax: full-tensor extremes (0-d, NaN for an empty tensor).
        numel: values in the full tensor.
        spec: how the tensor is measured.
    """

    sample: Tensor
    pvalues: Tensor
    fmin: Tensor
    fmax: Tensor
    numel: int
    spec: MeasureSpec


def take_sample(x: Tensor, spec: MeasureSpec, generator: torch.Generator) -> Sampled:
    """The hook's part of ``measure``: draw the samples (all random draws) and the full-tensor extremes.

    Copies what it keeps (never a view of ``x``: a later in-place op may overwrite ``x``). Deferring
    the arithmetic to ``measure_sampled`` lets the collector run it for all layers in a row after the
    forward pass, with warm caches: about twice as fast on CPU as between the layers' kernels. Every
    operation reads the detached ``x``, so no autograd graph is recorded (no ``no_grad`` needed).
    """
    x = x.detach()
    if x.element_size() == 1:  # float8: most kernels (aminmax ...) are missing; bfloat16 holds its values exactly
        x = x.to(torch.bfloat16)
    sample, copied = _as_channel_rows(x, spec, generator)
    if x.dtype != torch.float64 and x.dtype != torch.float32:
        sample = sample.to(torch.float32)  # the work dtype: float64 stays, everything else is measured in float32
    elif not copied and sample.numel() and sample.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
        sample = sample.clone()  # small tensors are taken whole, as a view
    if x.numel() > 0:
        fmin, fmax = torch.aminmax(x)  # over all dimensions: no copy of a non-contiguous tensor
    else:
        fmin = fmax = torch.full((), math.nan, device=x.device)
    flat = sample.reshape(-1)
    if flat.numel() > spec.pvalue_size:
        chosen = torch.randperm(flat.numel(), device=x.device, generator=generator)[: spec.pvalue_size]
        flat = flat.index_select(0, chosen)
    return Sampled(sample, flat, fmin, fmax, x.numel(), spec)


@torch.no_grad()
def measure_sampled(taken: Sampled) -> Tensor:
    """The arithmetic of ``measure`` on what ``take_sample`` kept: a float64 block (``BlockLayout``)."""
    sample, spec, device = taken.sample, taken.spec, taken.sample.device
    work_dtype = sample.dtype
    # extremes of the finite values (nan_to_num: float ops only, faster than an isfinite mask)
    smin = sample.nan_to_num(math.inf, math.inf, math.inf).amin() if sample.numel() else taken.fmin
    smax = sample.nan_to_num(-math.inf, -math.inf, -math.inf).amax() if sample.numel() else taken.fmax
    saturated = torch.zeros((), device=device, dtype=work_dtype)
    if spec.bounds is not None:
        lo, hi = spec.bounds
        span = (hi if hi is not None else 1.0) - (lo if lo is not None else 0.0)
        tol = spec.saturation_tolerance * span
        if lo is not None:
            saturated = saturated + (sample <= lo + tol).sum()
        if hi is not None:
            saturated = saturated + (sample >= hi - tol).sum()
    pn, pmean, pm2, pm3, pm4, _ = channel_moments(taken.pvalues.reshape(-1, 1))
    head = torch.stack(
        [
            torch.full((), float(taken.numel), device=device, dtype=work_dtype),
            torch.full((), float(sample.numel()), device=device, dtype=work_dtype),
            taken.fmin.to(work_dtype),
            taken.fmax.to(work_dtype),
            smin.to(work_dtype),
            smax.to(work_dtype),
            saturated.to(work_dtype),
        ]
    ).to(torch.float64)
    head = torch.cat([head, torch.stack([pn[0], pmean[0], pm2[0], pm3[0], pm4[0]])])  # moments: float64 already
    hist = bin_counts(sample, bin_edges(device, work_dtype))
    per_channel = channel_moments(sample)
    return torch.cat([head, hist.to(torch.float64), *per_channel])


def measure(x: Tensor, spec: MeasureSpec, generator: torch.Generator) -> Tensor:
    """Measure a floating-point tensor into a float64 block laid out as ``BlockLayout``.

    Runs on ``x``'s device; ``generator`` must live on that device. Half-precision input is
    upcast to float32 before any arithmetic. Same as ``measure_sampled(take_sample(x, ...))``.
    """
    return measure_sampled(take_sample(x, spec, generator))
