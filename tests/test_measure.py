"""``measure`` -> ``TensorStats.from_blocks`` -> ``figures`` against numpy/scipy on the same values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from lightning_normwatch.collect.layout import module_layout
from lightning_normwatch.collect.sampling import (
    MeasureSpec,
    measure,
    measured_channels,
    saturation_bounds_for,
)
from lightning_normwatch.stats.block import BlockLayout
from lightning_normwatch.stats.figures import TensorStats, figures


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def stats_of(x: torch.Tensor, spec: MeasureSpec | None = None, seed: int = 0) -> TensorStats:
    """Measure one tensor and merge its single block."""
    spec = spec or MeasureSpec()
    block = measure(x, spec, gen(seed)).numpy()
    assert block.dtype == np.float64 and block.shape == (BlockLayout(measured_channels(x, spec)).size,)
    return TensorStats.from_blocks(block[None], measured_channels(x, spec))


def merged(parts: list[torch.Tensor], spec: MeasureSpec | None = None) -> TensorStats:
    """Measure several tensors (calls, ranks) and merge their blocks."""
    spec = spec or MeasureSpec()
    blocks = np.stack([measure(p, spec, gen(i)).numpy() for i, p in enumerate(parts)])
    return TensorStats.from_blocks(blocks, measured_channels(parts[0], spec))


def expected(values: np.ndarray, pvalue_size: int = 5000) -> dict[str, float]:
    """The figures numpy/scipy give for the finite values (all values for ``zeros``)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    f = v[np.isfinite(v)]
    out = {
        "mean": f.mean(),
        "std": f.std(),
        "min": f.min(),
        "max": f.max(),
        "skew": stats.skew(f) if f.std() > 0 else math.nan,
        "kurtosis": stats.kurtosis(f) if f.std() > 0 else math.nan,
        "zeros": float(np.mean(v == 0)),
        "nonfinite": float(np.mean(~np.isfinite(v))),
        "numel": float(v.size),
        "sampled": float(v.size),
    }
    if 8 <= f.size <= pvalue_size:
        out["normaltest_p"] = stats.normaltest(f).pvalue
        out["jarque_bera_p"] = stats.jarque_bera(f).pvalue
    return out


def assert_figures(fig: dict[str, float], want: dict[str, float], rtol: float, atol: float) -> None:
    for name, value in want.items():
        np.testing.assert_allclose(fig[name], value, rtol=rtol, atol=atol, err_msg=name, equal_nan=True)


SHAPES = {
    "2d": (32, 6),
    "3d": (4, 7, 5),
    "4d": (3, 4, 5, 2),
    "1d": (50,),
    "0d": (),
}


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_small_tensors_figures_equal_scipy(shape: tuple[int, ...], dtype: torch.dtype, tol: float) -> None:
    x = (torch.randn(shape, generator=gen(1), dtype=torch.float64).exp() - 0.8).to(dtype)
    x.view(-1)[::7] = 0.0
    spec = MeasureSpec(channel_first=x.ndim >= 4)  # the input layout: [B, C, *spatial] from 4 dimensions
    st = stats_of(x, spec)
    assert not st.has_nonfinite
    assert_figures(figures(st), expected(x.double().numpy()), rtol=tol, atol=tol)


def test_per_channel_moments_follow_the_layout() -> None:
    g = gen(2)
    offsets = torch.arange(6.0)
    # [B, F]: features last
    x2 = torch.randn(40, 6, generator=g, dtype=torch.float64) * (1 + offsets) + offsets
    st = stats_of(x2)
    np.testing.assert_allclose(st.cmean, x2.mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(st.cm2 / st.cn, x2.var(0, correction=0).numpy(), rtol=1e-12)
    # [B, T, D]: channels last
    x3 = torch.randn(4, 9, 6, generator=g, dtype=torch.float64) + offsets
    assert module_layout(nn.Linear(2, 6), x3.shape) is False
    st = stats_of(x3, MeasureSpec(channel_first=False))
    np.testing.assert_allclose(st.cmean, x3.mean((0, 1)).numpy(), rtol=1e-12)
    assert st.cn.tolist() == [36.0] * 6
    # [B, C, L] after a Conv1d: channels in dim 1
    x3c = torch.randn(4, 6, 9, generator=g, dtype=torch.float64) + offsets[:, None]
    assert module_layout(nn.Conv1d(6, 6, 1), x3c.shape) is True
    st = stats_of(x3c, MeasureSpec(channel_first=True))
    np.testing.assert_allclose(st.cmean, x3c.mean((0, 2)).numpy(), rtol=1e-12)
    # [B, C, H, W] conv: channels in dim 1 (a Linear on [B, H, W, C] has them last: layout.py)
    assert module_layout(nn.Conv2d(6, 6, 1), (3, 6, 4, 5)) is True
    assert module_layout(nn.Linear(2, 2), (3, 4, 5, 2)) is False
    x4 = (
        torch.randn(3, 6, 4, 5, generator=g, dtype=torch.float64) * (1 + offsets[:, None, None])
        + offsets[:, None, None]
    )
    st = stats_of(x4, MeasureSpec(channel_first=True))
    np.testing.assert_allclose(st.cmean, x4.mean((0, 2, 3)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(st.cm2 / st.cn, x4.var((0, 2, 3), correction=0).numpy(), rtol=1e-12)
    # Within-channel shape = scipy on the values standardized per channel.
    per_channel = x4.transpose(0, 1).reshape(6, -1).numpy().T
    z = (per_channel - per_channel.mean(0)) / per_channel.std(0)
    fig = figures(st)
    np.testing.assert_allclose(fig["channel_skew"], stats.skew(z.ravel()), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fig["channel_kurtosis"], stats.kurtosis(z.ravel()), rtol=1e-9, atol=1e-12)
    std = per_channel.std(0)
    np.testing.assert_allclose([fig["channel_std_min"], fig["channel_std_max"]], [std.min(), std.max()], rtol=1e-12)
    rms = np.sqrt((per_channel**2).mean(0))
    np.testing.assert_allclose(fig["channel_scale_ratio"], rms.max() / rms.min(), rtol=1e-10)
    np.testing.assert_allclose(fig["channel_mean_absmax"], np.abs(per_channel.mean(0)).max(), rtol=1e-12)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_values_are_flagged_and_the_rest_still_measured(bad: float) -> None:
    x = torch.randn(20, 5, generator=gen(3), dtype=torch.float64)
    x[3, 1] = bad
    x[7, 4] = bad
    st = stats_of(x)
    assert st.has_nonfinite
    fig = figures(st)
    assert fig["nonfinite"] == pytest.approx(2 / 100)
    assert_figures(fig, expected(x.numpy()), rtol=1e-10, atol=1e-12)
    assert math.isfinite(fig["max_abs"])


def test_nonfinite_in_a_large_tensor_is_flagged_even_when_not_sampled() -> None:
    x = torch.randn(4096, 8, generator=gen(4))
    x[1234, 5] = float("nan")
    st = stats_of(x, MeasureSpec(sample_size=256))
    assert st.sampled <= 256 and st.has_nonfinite  # the full-tensor extremes see it


@pytest.mark.parametrize(
    ("shape", "channel_first"),
    [((0,), False), ((0, 4), False), ((4, 0), False), ((0, 5, 6), False), ((2, 3, 0), False), ((0, 3, 4, 4), True)],
)
def test_empty_tensor_is_measured_and_not_reported_as_nonfinite(shape: tuple[int, ...], channel_first: bool) -> None:
    st = stats_of(torch.empty(shape), MeasureSpec(channel_first=channel_first))
    assert st.numel == 0 and not st.has_nonfinite
    assert math.isnan(figures(st)["mean"])


def test_empty_and_nonempty_calls_merge() -> None:
    both = merged([torch.empty(0, 4), torch.ones(3, 4)])
    assert not both.has_nonfinite and figures(both)["mean"] == 1.0


def test_all_nonfinite_tensor_has_no_fake_extremes() -> None:
    fig = figures(stats_of(torch.full((4, 3), float("nan"))))
    assert fig["nonfinite"] == 1.0
    assert all(math.isnan(fig[k]) for k in ("mean", "std", "min", "max", "max_abs"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_upcast(dtype: torch.dtype) -> None:
    # std 100: x**4 overflows in fp16 (> 65504) unless upcast before any arithmetic.
    x = (torch.randn(64, 8, generator=gen(5)) * 100).to(dtype)
    st = stats_of(x)
    assert not st.has_nonfinite
    fig = figures(st)
    assert_figures(fig, expected(x.double().numpy()), rtol=1e-5, atol=1e-5)
    assert figures(stats_of(x.float())) == pytest.approx(fig, nan_ok=True)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_is_measured_exactly(dtype: torch.dtype) -> None:
    x = (torch.randn(64, 8, generator=gen(20)) * 3).to(dtype)
    assert_figures(figures(stats_of(x)), expected(x.double().numpy()), rtol=1e-5, atol=1e-5)


def test_large_tensor_is_subsampled_and_estimates_are_close() -> None:
    g = gen(6)
    offsets = torch.arange(16.0) * 3
    x = torch.randn(256, 64, 16, generator=g) * 2 + offsets
    spec = MeasureSpec(sample_size=4096)
    st = stats_of(x, spec)
    fig = figures(st)
    assert st.numel == x.numel() and 0 < st.sampled <= 4096
    assert fig["min"] == x.min().item() and fig["max"] == x.max().item()  # extremes are full-tensor
    truth = x.double()
    assert fig["mean"] == pytest.approx(truth.mean().item(), abs=0.1)
    assert fig["std"] == pytest.approx(truth.std().item(), rel=0.03)
    np.testing.assert_allclose(st.cmean, truth.mean((0, 1)).numpy(), atol=0.5)
    assert fig["channel_kurtosis"] == pytest.approx(0.0, abs=0.3)
    assert st.hist.sum() == st.sampled and st.pvalue.n == min(st.sampled, spec.pvalue_size)


def test_large_conv_tensor_subsampled_per_channel() -> None:
    offsets = torch.arange(8.0)[:, None, None] * 10
    x = torch.randn(64, 8, 32, 32, generator=gen(7)) + offsets
    st = stats_of(x, MeasureSpec(sample_size=8192, channel_first=True))
    assert st.sampled <= 8192 and st.cn.tolist() == [st.sampled / 8] * 8
    np.testing.assert_allclose(st.cmean, x.double().mean((0, 2, 3)).numpy(), atol=0.2)
    np.testing.assert_allclose(np.sqrt(st.cm2 / st.cn), 1.0, rtol=0.15)


def test_wide_tensor_measures_a_strided_subset_of_channels() -> None:
    x = torch.randn(4, 100, generator=gen(8)) + torch.arange(100.0)
    spec = MeasureSpec(max_channels=30)
    assert measured_channels(x, spec) == 25
    st = stats_of(x, spec)
    np.testing.assert_allclose(st.cmean, x[:, ::4].double().mean(0).numpy(), rtol=1e-6)


def test_sampling_uses_only_the_passed_generator() -> None:
    x = torch.randn(512, 64)
    spec = MeasureSpec(sample_size=1024, pvalue_size=100)
    state = torch.get_rng_state()
    a = measure(x, spec, gen(11))
    assert torch.equal(torch.get_rng_state(), state)
    b = measure(x, spec, gen(11))
    c = measure(x, spec, gen(12))
    assert torch.equal(a, b)  # same generator state: same sample
    assert not torch.equal(a, c)  # it really samples


def test_merging_halves_equals_measuring_whole() -> None:
    x = torch.randn(48, 5, generator=gen(9), dtype=torch.float64) ** 3
    x[::5, 2] = 0.0
    whole = stats_of(x)
    halves = merged([x[:20], x[20:]])
    assert halves.numel == whole.numel and halves.sampled == whole.sampled
    np.testing.assert_array_equal(halves.hist, whole.hist)
    np.testing.assert_array_equal(halves.cn, whole.cn)
    np.testing.assert_array_equal(halves.cnz, whole.cnz)
    for name in ("cmean", "cm2", "cm3", "cm4"):
        np.testing.assert_allclose(getattr(halves, name), getattr(whole, name), rtol=1e-10, atol=1e-12)
    fw, fh = figures(whole), figures(halves)
    for name, value in fw.items():
        np.testing.assert_allclose(fh[name], value, rtol=1e-9, atol=1e-12, err_msg=name)


def test_merging_halves_of_a_large_batch_is_close_to_whole() -> None:
    x = torch.randn(4096, 32, generator=gen(10)) * 3 + 1
    spec = MeasureSpec(sample_size=2048)
    fw, fh = figures(stats_of(x, spec)), figures(merged([x[:2048], x[2048:]], spec))
    assert fh["sampled"] == 2 * fw["sampled"] and fh["numel"] == fw["numel"]
    assert fh["min"] == fw["min"] == x.min().item()
    assert fh["mean"] == pytest.approx(fw["mean"], abs=0.3)
    assert fh["std"] == pytest.approx(fw["std"], rel=0.05)


def test_dead_channel_share() -> None:
    x = torch.randn(64, 8, generator=gen(12)).relu()
    x[:, [1, 3, 5]] = 0.0
    x[:32, 6] = 0.0  # zero on half the batch only: alive
    fig = figures(stats_of(x))
    assert fig["dead"] == pytest.approx(3 / 8)
    assert fig["zeros"] == pytest.approx(float((x == 0).double().mean()))
    conv = torch.randn(4, 5, 3, 3, generator=gen(13))
    conv[:, 2] = 0.0
    assert figures(stats_of(conv, MeasureSpec(channel_first=True)))["dead"] == pytest.approx(1 / 5)


@pytest.mark.parametrize(
    ("module", "lo", "hi"),
    [
        (nn.Sigmoid(), 0.0, 1.0),
        (nn.Tanh(), -1.0, 1.0),
        (nn.ReLU6(), None, 6.0),
        (nn.Hardtanh(-2.0, 3.0), -2.0, 3.0),
    ],
)
def test_saturation_counting(module: nn.Module, lo: float | None, hi: float) -> None:
    x = module(torch.randn(200, 10, generator=gen(14), dtype=torch.float64) * 4)
    bounds = saturation_bounds_for(module)
    assert bounds == (lo, hi)
    tol = 0.01 * (hi - (lo if lo is not None else 0.0))  # 1 % of the output range
    v = x.numpy()
    count = np.count_nonzero(v >= hi - tol) + (np.count_nonzero(v <= lo + tol) if lo is not None else 0)
    assert count > 0
    fig = figures(stats_of(x, MeasureSpec(bounds=bounds)))
    assert fig["saturated"] == pytest.approx(count / v.size)


def test_unbounded_modules_have_no_saturation() -> None:
    assert saturation_bounds_for(nn.ReLU()) is None and saturation_bounds_for(nn.Linear(2, 2)) is None
    x = nn.ReLU()(torch.randn(50, 4, generator=gen(15)) * 10)
    assert figures(stats_of(x, MeasureSpec(bounds=saturation_bounds_for(nn.ReLU()))))["saturated"] == 0.0


def test_few_rows_are_all_taken_once_when_subsampling() -> None:
    """Batch of 3 with many features: every row is sampled exactly once, so per-feature figures are exact."""
    x = torch.randn(3, 2000, generator=gen(16), dtype=torch.float64)
    x[:2, 7] = 0.0  # zero on 2 of the 3 rows: not dead
    x[:, 9] = 0.0  # dead
    st = stats_of(x, MeasureSpec(sample_size=1024))
    assert st.sampled == 6000 and st.cn.tolist() == [3.0] * 2000
    np.testing.assert_allclose(st.cmean, x.mean(0).numpy(), rtol=1e-12, atol=1e-15)
    assert figures(st)["dead"] == pytest.approx(1 / 2000)


@pytest.mark.parametrize("shape", [(2048, 8), (100_000, 1)])
def test_normaltest_p_is_calibrated_on_subsampled_normal_tensors(shape: tuple[int, ...]) -> None:
    """On exactly normal data, p < 0.05 about 5 % of the time (repeated values in the sample would inflate it)."""
    data, sampler = gen(17), gen(18)
    spec = MeasureSpec()
    p = []
    for _ in range(200):
        x = torch.randn(shape, generator=data)
        block = measure(x, spec, sampler).numpy()
        st = TensorStats.from_blocks(block[None], measured_channels(x, spec))
        assert st.pvalue.n == spec.pvalue_size < st.sampled < st.numel
        p.append(figures(st)["normaltest_p"])
    p = np.array(p)
    assert np.mean(p < 0.05) < 0.1
    assert 0.1 < np.mean(p < 0.25) < 0.4


@pytest.mark.parametrize(("shape", "channel_first"), [((8, 4, 16, 16), True), ((6, 50, 20), False), ((300, 30), False)])
def test_subsample_rows_are_distinct_and_keep_channels_together(shape: tuple[int, ...], channel_first: bool) -> None:
    """Each sampled row is one (batch, position) of the tensor, with its channels, and no row repeats."""
    from lightning_normwatch.collect.sampling import _as_channel_rows

    x = torch.arange(math.prod(shape), dtype=torch.float64).reshape(shape)
    spec = MeasureSpec(sample_size=512, channel_first=channel_first)
    rows, _ = _as_channel_rows(x, spec, gen(19))
    channels = shape[1] if channel_first else shape[-1]
    assert rows.shape[1] == channels and rows.shape[0] * channels <= max(512, 16 * channels)
    as_rows = (x.movedim(1, -1) if channel_first else x).reshape(-1, channels)
    index = {tuple(r.tolist()): i for i, r in enumerate(as_rows)}
    picked = [index[tuple(r.tolist())] for r in rows]  # KeyError if a row mixes positions
    assert len(set(picked)) == len(picked)
