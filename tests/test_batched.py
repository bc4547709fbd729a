"""``batched.measure_all`` (all tensors of a step at once) gives the blocks of ``measure_sampled`` (one at a time)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_normwatch.collect.batched import measure_all
from lightning_normwatch.collect.sampling import (
    MeasureSpec,
    Sampled,
    measure_sampled,
    saturation_bounds_for,
    take_sample,
)
from lightning_normwatch.stats.figures import TensorStats, figures, figures_many

# Tolerance of the batched path against the per-tensor one: the column reductions are the same
# kernels, but concatenating columns may change the order in which a reduction adds them.
RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}
ATOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def ragged_samples(dtype: torch.dtype, seed: int = 0) -> list[Sampled]:
    """Samples as a step of a real model takes them: linear and conv layouts, different widths, NaN/Inf, bounds."""
    g = torch.Generator().manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(shape, generator=g) * scale).to(dtype)

    relu = rnd(64, 512).clamp_min(0)
    relu[:, :7] = 0  # dead channels
    bad = rnd(8, 16, 6, 6)  # conv layout with NaN and Inf
    bad[0, 3, 1, 1] = float("nan")
    bad[2, 5] = float("inf")
    bad[1, 1, 0, 0] = -float("inf")
    tensors: list[tuple[torch.Tensor, MeasureSpec]] = [
        (rnd(256, 256), MeasureSpec()),  # linear, subsampled (16+ rows of 256)
        (relu, MeasureSpec()),
        (rnd(256, 10, scale=30.0), MeasureSpec()),  # narrow: all rows
        (rnd(16, 32, 128), MeasureSpec()),  # [B, T, C]
        (rnd(16, 32, 256), MeasureSpec(pvalue_size=1000)),
        (rnd(4, 3, 32, 32), MeasureSpec(channel_first=True)),  # conv, 3 channels
        (bad, MeasureSpec(channel_first=True)),
        (torch.sigmoid(rnd(32, 64, scale=4.0)), MeasureSpec(bounds=saturation_bounds_for(nn.Sigmoid()))),
        (torch.tanh(rnd(32, 40, scale=4.0)), MeasureSpec(bounds=saturation_bounds_for(nn.Tanh()))),
        (rnd(40, 4, 12).clamp(0, 6), MeasureSpec(channel_first=True, bounds=saturation_bounds_for(nn.ReLU6()))),
        (rnd(0, 20), MeasureSpec()),  # empty batch
        (torch.full((10, 5), float("nan"), dtype=dtype), MeasureSpec()),  # nothing finite
        (rnd(50), MeasureSpec()),  # 1-d
        (rnd(), MeasureSpec()),  # 0-d
        (rnd(16, 3000), MeasureSpec(max_channels=2048)),  # strided channel subset
    ]
    return [take_sample(x, spec, gen) for x, spec in tensors]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_blocks_equal_per_tensor_blocks(dtype: torch.dtype) -> None:
    items = ragged_samples(dtype)
    single = [measure_sampled(s).numpy() for s in items]
    together = [b.numpy() for b in measure_all(items)]
    assert [b.shape for b in together] == [b.shape for b in single]
    for i, (a, b) in enumerate(zip(together, single, strict=True)):
        assert a.dtype == np.float64
        np.testing.assert_allclose(a, b, rtol=RTOL[dtype], atol=ATOL[dtype], equal_nan=True, err_msg=f"item {i}")
    # the same again with the cached plan and other values (a second logging step)
    items = ragged_samples(dtype, seed=5)
    for i, (a, s) in enumerate(zip(measure_all(items), items, strict=True)):
        b = measure_sampled(s).numpy()
        np.testing.assert_allclose(a.numpy(), b, rtol=RTOL[dtype], atol=ATOL[dtype], equal_nan=True, err_msg=f"{i}")


def test_batched_blocks_count_what_they_should() -> None:
    """Independent of ``measure_sampled``: histogram totals, counts and extremes against numpy."""
    items = ragged_samples(torch.float32)
    for s, block in zip(items, measure_all(items), strict=True):
        values = s.sample.double().numpy().ravel()
        finite = values[np.isfinite(values)]
        from lightning_normwatch.stats.block import BlockLayout

        f = BlockLayout(s.sample.shape[1]).unpack(block.numpy())
        assert f["sampled"] == values.size
        assert f["hist"].sum() == finite.size
        assert f["cn"].sum() == finite.size
        if finite.size:
            assert f["smin"] == finite.min() and f["smax"] == finite.max()
            np.testing.assert_allclose(f["cmean"] @ f["cn"] / f["cn"].sum(), finite.mean(), rtol=1e-5, atol=1e-6)


def test_same_shapes_in_another_dtype_get_their_own_plan() -> None:
    for dtype in (torch.float32, torch.float64, torch.float32):
        items = ragged_samples(dtype, seed=7)
        for s, block in zip(items, measure_all(items), strict=True):
            tol = RTOL[dtype]
            np.testing.assert_allclose(block.numpy(), measure_sampled(s).numpy(), rtol=tol, atol=tol, equal_nan=True)


def test_mixed_dtypes_are_grouped() -> None:
    a = ragged_samples(torch.float32)[:3]
    b = ragged_samples(torch.float64)[3:6]
    items = [a[0], b[0], a[1], b[1], a[2], b[2]]
    for s, block in zip(items, measure_all(items), strict=True):
        tol = RTOL[s.sample.dtype]
        np.testing.assert_allclose(block.numpy(), measure_sampled(s).numpy(), rtol=tol, atol=tol, equal_nan=True)


def test_host_figures_of_all_tensors_equal_per_tensor_figures() -> None:
    """``figures_many`` (numpy over all tensors) gives ``figures`` (one tensor at a time), merged calls included."""
    items = ragged_samples(torch.float64) + ragged_samples(torch.float32, seed=3)
    blocks = [b.numpy() for b in measure_all(items)]
    stats = [TensorStats.from_blocks(b[None], s.sample.shape[1]) for s, b in zip(items, blocks, strict=True)]
    stats.append(TensorStats.from_blocks(np.stack([blocks[0], blocks[0] * 0]), items[0].sample.shape[1]))
    stats.append(TensorStats.from_blocks(np.stack([blocks[6], blocks[6]]), items[6].sample.shape[1]))
    expected = [figures(TensorStats(**{k: getattr(st, k) for k in TensorStats.__dataclass_fields__})) for st in stats]
    for i, (got, want) in enumerate(zip(figures_many(stats), expected, strict=True)):
        assert got.keys() == want.keys()
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=f"{i} {name}")


def test_take_sample_keeps_exactly_the_drawn_rows_and_pvalue_positions() -> None:
    """The sample is the rows the generator drew, the p-value subsample the drawn positions of it (index_select
    in place of advanced indexing must not change a value)."""
    from lightning_normwatch.collect.sampling import MeasureSpec, take_sample

    x = torch.randn(300, 64, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(3)
    replay = torch.Generator()
    replay.set_state(g.get_state())
    taken = take_sample(x, MeasureSpec(sample_size=1024, pvalue_size=500), g)
    rows = torch.randperm(300, generator=replay)[:16]  # 1024 values / 64 channels
    assert torch.equal(taken.sample, x[rows])
    positions = torch.randperm(16 * 64, generator=replay)[:500]
    assert torch.equal(taken.pvalues, x[rows].reshape(-1)[positions])
