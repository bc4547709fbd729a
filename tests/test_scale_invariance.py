"""Scale invariance: the shape figures, normality tests and moment-based drift of ``c * x`` equal those of ``x``.

Moments are computed on each column divided by a power of two near its largest ``|x|`` and scaled back
exactly in float64 (``stats/moments.py``), so no power overflows or underflows: before, Gaussian data
times 1e12 gave an infinite kurtosis, times 1e18 NaN, and times 1e9 a false ``outlier`` warning.
Histogram figures need values inside the shared bins (1e-6 to 1e6): outside, the median magnitude and
the distance to the normal are NaN (unknown), never wrong, so no rule fires on them.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_normwatch.collect.batched import measure_all
from lightning_normwatch.collect.sampling import MeasureSpec, take_sample
from lightning_normwatch.config import Thresholds
from lightning_normwatch.judge.rules import TensorInfo, evaluate
from lightning_normwatch.stats.figures import TensorStats, figures_many
from lightning_normwatch.stats.moments import Moments
from lightning_normwatch.stats.reference import Reference, drift

SHAPE = ("skew", "kurtosis", "channel_skew", "channel_kurtosis", "normaltest_p", "jarque_bera_p", "batch_spread")
#: the largest |c| keeping the sample's values (|x| < 8) finite, and the smallest keeping them normal numbers
RANGE = {torch.float32: (1e-30, 1e30), torch.bfloat16: (1e-30, 1e30), torch.float16: (2.0**-10, 2.0**12)}


def _sample(dtype: torch.dtype) -> torch.Tensor:
    """Skewed, heavy-tailed data (shape figures far from 0) with a non-zero mean, exactly in ``dtype``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 24, generator=g)
    x = torch.exp(0.5 * x) - 0.5 + 0.1 * torch.randn(512, 24, generator=g)
    return x.clamp(-7.9, 7.9).to(dtype)


def _figures(x: torch.Tensor) -> tuple[dict[str, float], TensorStats]:
    item = take_sample(x, MeasureSpec(), torch.Generator().manual_seed(1))
    block = measure_all([item])[0].numpy()
    stats = TensorStats.from_blocks(block[None], x.shape[-1])
    return figures_many([stats])[0], stats


def _close(a: float, b: float, rel: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rel, abs_tol=rel)


@pytest.mark.parametrize("dtype", list(RANGE), ids=str)
@settings(max_examples=25, deadline=None)
@given(exponent=st.integers(-99, 99), sign=st.sampled_from([1.0, -1.0]))
def test_shape_figures_of_power_of_two_multiples_are_exact(dtype: torch.dtype, exponent: int, sign: float) -> None:
    """``c = ±2**k`` multiplies every value exactly (float16 values below 6e-5 are subnormal and lose digits):
    the figures must agree to float64 rounding."""
    lo, hi = RANGE[dtype]
    c = sign * 2.0**exponent
    if not lo <= abs(c) <= hi:
        return
    x = _sample(dtype)
    base, _ = _figures(x)
    scaled, _ = _figures(x * c)
    assert torch.isfinite(x * c).all()
    rel = 1e-4 if dtype == torch.float16 else 1e-9  # float16: the smallest values of c * x may be subnormal
    for name in SHAPE:
        want = base[name] * (-1 if sign < 0 and name in ("skew", "channel_skew") else 1)
        assert _close(scaled[name], want, rel), (name, c, scaled[name], want)
    assert math.isclose(scaled["std"], base["std"] * abs(c), rel_tol=rel)
    assert math.isclose(scaled["mean"], base["mean"] * c, rel_tol=rel)


@settings(max_examples=40, deadline=None)
@given(c=st.floats(1e-30, 1e30))
def test_shape_figures_of_any_float32_multiple_agree(c: float) -> None:
    """Any ``c`` in the float32 range: equal up to the rounding of ``c * x`` to float32 (about 1e-7)."""
    x = _sample(torch.float32)
    base, _ = _figures(x)
    scaled, _ = _figures(x * c)
    for name in SHAPE:
        assert _close(scaled[name], base[name], 1e-4), (name, c, scaled[name], base[name])


@pytest.mark.parametrize("c", [1e-30, 1e-12, 1e9, 1e12, 1e18, 1e30])
def test_large_and_small_scales_were_broken_and_are_not(c: float) -> None:
    """The measured failures of issue 20: kurtosis inf at 1e12, NaN at 1e18, false outlier at 1e9."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4096, 16, generator=g)
    base, _ = _figures(x)
    scaled, _ = _figures(x * c)
    for name in ("kurtosis", "channel_kurtosis", "skew", "normaltest_p"):
        assert math.isfinite(scaled[name]) and _close(scaled[name], base[name], 1e-4), (name, scaled[name])
    info = TensorInfo("layer", "preact", "Linear", 16)
    alerts, _ = evaluate(info, scaled, None, Thresholds(), step=0)
    assert [a.kind for a in alerts if a.kind in ("outlier", "non_normal")] == []


@pytest.mark.parametrize("dtype", list(RANGE), ids=str)
@pytest.mark.parametrize("exponent", [-90, -20, 0, 30, 90])
def test_moment_drift_and_alerts_of_scaled_runs_agree(dtype: torch.dtype, exponent: int) -> None:
    """A reference of four steps and a step with a shifted mean: the same drift figures and alerts at any scale."""
    lo, hi = RANGE[dtype]
    c = 2.0**exponent
    if not lo <= c <= hi:
        pytest.skip("scale outside the dtype's range")
    g = torch.Generator().manual_seed(4)
    steps = [torch.randn(256, 8, generator=g) for _ in range(4)] + [torch.randn(256, 8, generator=g) + 6.0]
    results = []
    for scale in (1.0, c):
        ref = Reference()
        out = None
        for i, x in enumerate(steps):
            fig, stats = _figures((x * scale).to(dtype))
            m: Moments = stats.overall
            if i < 4:
                ref.add(m, stats.hist)
            else:
                d = drift(ref, m, stats.hist)
                alerts, _ = evaluate(TensorInfo("fc", "preact", "Linear", 8), fig, d, Thresholds(), step=i)
                out = (d, sorted(a.kind for a in alerts if a.kind in ("mean_drift", "scale_drift", "non_normal")))
        results.append(out)
    (d1, a1), (d2, a2) = results
    assert a1 == a2 == ["mean_drift"]
    for name in ("std_log_ratio", "mean_shift"):
        assert math.isclose(d1[name], d2[name], rel_tol=1e-9), name


@pytest.mark.parametrize("c", [1e-20, 1e9, 1e18, 1e30])
def test_a_real_model_fed_scaled_inputs_gets_the_same_figures_and_alerts(c: float) -> None:
    """A bias-free ReLU network is positively homogeneous: every activation of ``c * x`` is ``c`` times that of
    ``x``, so every scale-free figure and alert must be the same (``feature_scale`` and ``near_overflow`` judge
    absolute sizes on purpose and are left out); equal up to the float32 rounding of ``c * x``."""
    from lightning_normwatch import LoopWatch

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 64, bias=False), nn.ReLU(), nn.Linear(64, 64, bias=False), nn.ReLU())
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(5))
    runs = []
    for scale in (1.0, c):
        watch = LoopWatch(net, every_n_steps=1, on_alert="ignore", warmup_steps=0, reference_steps=2)
        with watch, torch.no_grad():
            for _ in range(3):
                with watch.step(x * scale):
                    net(x * scale)
        kinds = sorted((a.module, a.kind) for a in watch.alerts if a.kind not in ("feature_scale", "near_overflow"))
        runs.append((kinds, watch.last_result.figures))  # type: ignore[union-attr]
    (kinds1, fig1), (kinds2, fig2) = runs
    assert kinds1 == kinds2
    for key in fig1:
        for name in (*SHAPE, "std_log_ratio", "mean_shift", "dead", "zeros"):
            if name in fig1[key]:
                assert _close(fig2[key][name], fig1[key][name], 1e-4), (key, name, fig1[key][name], fig2[key][name])
