"""Edges of the per-tensor rules (``judge/rules.py``) that mutation testing (``make mutate``) found unpinned:
the minimum counts at which a rule starts judging, exact equality at the clearing level and the marks,
figures that are missing or NaN, the roles a rule applies to, and the figures in the messages."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_normwatch.collect.info import TensorInfo
from lightning_normwatch.config import Thresholds
from lightning_normwatch.judge.rules import (
    CLEAR_FRACTION,
    MIN_DEAD_ROWS,
    MIN_DISTRIBUTION_VALUES,
    MIN_SHAPE_ROWS,
    evaluate,
    feature_scale_message,
    near_overflow_limit,
    nonfinite_alert,
)

TH = Thresholds()


def _info(role: str, name: str = "net.3", dtype: str = "float32", channels: int = 64) -> TensorInfo:
    return TensorInfo(name, role, "Layer", channels, dtype)


def _kinds(role: str, fig: dict[str, float], drift: dict[str, float] | None = None, **kw) -> list[str]:
    alerts, _ = evaluate(_info(role, **kw), fig, drift, TH, step=5)
    return sorted(a.kind for a in alerts)


def test_near_overflow_limit_is_a_share_of_the_dtypes_largest_value() -> None:
    assert near_overflow_limit("float16") == 0.1 * 65504.0
    assert near_overflow_limit("bfloat16") == 1e-2 * float(torch.finfo(torch.bfloat16).max)
    assert near_overflow_limit("float64") == 1e-2 * float(torch.finfo(torch.float64).max)
    # an integer dtype (finfo raises TypeError) or an unknown name: float32's mark
    float32 = 1e-2 * float(torch.finfo(torch.float32).max)
    assert near_overflow_limit("int64") == float32 and near_overflow_limit("no_such_dtype") == float32


def test_near_overflow_fires_above_the_float16_mark_only() -> None:
    limit = 0.1 * 65504.0
    assert _kinds("activation", {"max_abs": limit}, dtype="float16") == []  # at the mark: not above it
    alerts, checked = evaluate(_info("activation", dtype="float16"), {"max_abs": 7000.0}, None, TH, step=5)
    (a,) = alerts
    assert (a.kind, a.module, a.step, a.value, a.threshold) == ("near_overflow", "net.3", 5, 7000.0, limit)
    assert "values of 7e+03" in a.message and "largest float16 (6.55e+03" in a.message
    assert ("net.3", "near_overflow") in checked


def test_nonfinite_alert_carries_the_share_and_names_what_found_it() -> None:
    a = nonfinite_alert(9, "net.2", 0.25, 3, "the replay")
    assert (a.step, a.module, a.kind, a.severity, a.value, a.threshold) == (9, "net.2", "nonfinite", "error", 0.25, 0.0)
    assert "first appear in `net.2` at step 9 (25.0% of sampled values, found by the replay; 3 later" in a.message
    none_after = nonfinite_alert(9, "net.2", 0.25, 0, "hooks")
    assert "later watched" not in none_after.message and "found by hooks)" in none_after.message
    for share, value in ((math.nan, 1.0), (math.inf, 1.0), (0.0, 0.0)):
        b = nonfinite_alert(1, "fc", share, 0, "hooks")
        assert b.value == value and "(NaN/Inf values, found by hooks)" in b.message


@pytest.mark.parametrize(
    "ratio, largest, problem",
    [
        (101.0, 101.0, "far from unit scale and not on comparable scales"),
        (100.0, 101.0, "far from unit scale:"),  # the ratio at the limit is within it
        (101.0, 100.0, "not on comparable scales:"),  # the size at the limit is within it
    ],
)
def test_feature_scale_message_names_the_limit_crossed(ratio: float, largest: float, problem: str) -> None:
    message = feature_scale_message("input", ratio, largest, TH)
    assert f"Input features of `input` are {problem}" in message
    if largest > 100:
        assert "the largest feature RMS 101 exceeds the absolute limit 100" in message
    if ratio > 100:
        assert "the largest feature RMS is 101x the median feature's, above the ratio limit 100x" in message
    if largest <= 100:
        assert "(the largest RMS 100 is within the absolute limit 100)" in message
    if ratio <= 100:
        assert "(it is 100x the median feature's, within the ratio limit 100x)" in message


def test_an_alert_at_exactly_the_clearing_level_stays_active() -> None:
    level = CLEAR_FRACTION * TH.dead  # 0.4 exactly
    _, checked = evaluate(_info("activation"), {"dead": level, "channel_rows": 64}, None, TH, step=1)
    assert ("net.3", "dead") not in checked
    _, checked = evaluate(_info("activation"), {"dead": level * 0.999, "channel_rows": 64}, None, TH, step=1)
    assert ("net.3", "dead") in checked


def test_drift_and_shape_are_judged_from_min_distribution_values_on() -> None:
    drift = {"mean_shift": 9.0}
    enough = {"numel": MIN_DISTRIBUTION_VALUES, "channel_skew": 9.0}
    few = {"numel": MIN_DISTRIBUTION_VALUES - 1, "channel_skew": 9.0}
    assert _kinds("input", enough, drift) == ["mean_drift", "non_normal"]
    assert _kinds("input", few, drift) == []


def test_constant_rows_keep_only_the_scale_drift_and_no_shape() -> None:
    """Every row identical (std across rows 0 at 1e-6 of max |x| or below): no mean or shape drift, no shape."""
    drift = {"std_log_ratio": math.log(5.0), "mean_shift": 9.0, "shape_psi": 9.0}
    fig = {"numel": 1e4, "max_abs": 2.0, "channel_skew": 9.0}
    at_limit = {**fig, "channel_std_max": 1e-6 * 2.0}
    assert _kinds("input", at_limit, drift) == ["scale_drift"]
    above = {**fig, "channel_std_max": 1e-5 * 2.0}
    assert _kinds("input", above, drift) == ["mean_drift", "non_normal", "scale_drift", "shift"]
    # constant rows without a scale figure: nothing to judge, no crash
    assert _kinds("input", at_limit, {"mean_shift": 9.0}) == []
    # without the figures, rows are not taken as constant
    assert _kinds("input", {"numel": 1e4}, {"mean_shift": 9.0}) == ["mean_drift"]


@pytest.mark.parametrize("role", ["activation", "bounded", "other"])
def test_dead_is_judged_on_activation_like_roles(role: str) -> None:
    assert "dead" in _kinds(role, {"dead": 1.0, "channel_rows": MIN_DEAD_ROWS})


def test_dead_needs_four_units_and_known_rows() -> None:
    fig = {"dead": 1.0, "channel_rows": MIN_DEAD_ROWS}
    assert _kinds("activation", fig, channels=4) == ["dead"]
    assert _kinds("activation", fig, channels=3) == []
    assert _kinds("activation", {"dead": 1.0}) == []  # rows unknown: not judged
    assert _kinds("activation", {"dead": math.nan, "channel_rows": 64}) == []


def test_saturated_only_for_bounded_outputs_with_a_finite_share() -> None:
    assert _kinds("bounded", {"saturated": 0.99}) == ["saturated"]
    assert _kinds("activation", {"saturated": 0.99}) == []
    assert _kinds("bounded", {"saturated": math.nan}) == []


def test_outlier_edges_sampled_count_and_zero_median() -> None:
    fig = {"abs_median": 1.0, "max_abs": 1e4}
    assert _kinds("activation", {**fig, "sampled": 100}) == ["outlier"]
    assert _kinds("activation", {**fig, "sampled": 99}) == []
    assert _kinds("activation", fig) == []  # sample size unknown: not judged
    assert _kinds("activation", {**fig, "abs_median": 0.0, "sampled": 1000}) == []
    (a,), _ = evaluate(_info("activation"), {**fig, "sampled": 1000}, None, TH, step=5)
    assert "max |x| = 1e+04 is 10000x its median non-zero |x| 1 (threshold 500x)" in a.message


def test_feature_scale_needs_both_figures() -> None:
    assert _kinds("input", {"feature_rms_max": 500.0}) == []
    assert _kinds("input", {"feature_rms_ratio": 500.0}) == []
    assert _kinds("input", {"feature_rms_ratio": 500.0, "feature_rms_max": 1.0}) == ["feature_scale"]


def test_non_normal_edges() -> None:
    # exactly at the skew threshold (value 1.0): not above it
    assert _kinds("input", {"numel": 1e4, "channel_skew": TH.skew}) == []
    # a NaN skewness does not hide a large kurtosis
    alerts, _ = evaluate(_info("input"), {"channel_skew": math.nan, "channel_kurtosis": 8.0}, None, TH, step=5)
    assert [(a.kind, a.value, a.threshold) for a in alerts] == [("non_normal", 2.0, 1.0)]
    assert "(within-channel skewness nan, excess kurtosis 8.00; thresholds |2| and 4)" in alerts[0].message
    # a small skewness and a NaN kurtosis: clearly normal, so the condition clears
    _, checked = evaluate(_info("input"), {"channel_skew": 0.2, "channel_kurtosis": math.nan}, None, TH, step=5)
    assert ("net.3", "non_normal") in checked
    # a NaN skewness and a small kurtosis: the condition clears too
    _, checked = evaluate(_info("input"), {"channel_skew": math.nan, "channel_kurtosis": 0.4}, None, TH, step=5)
    assert ("net.3", "non_normal") in checked
    # pre-activations from MIN_SHAPE_ROWS rows per channel on
    assert _kinds("preact", {"channel_rows": MIN_SHAPE_ROWS, "channel_skew": 9.0}) == ["non_normal"]
    assert _kinds("preact", {"channel_rows": MIN_SHAPE_ROWS - 1, "channel_skew": 9.0}) == []
    assert _kinds("preact", {"channel_skew": 9.0}) == []


def test_scale_drift_message_direction_for_a_factor_below_e() -> None:
    th = Thresholds(scale_drift=2.0)
    (up,), _ = evaluate(_info("preact"), {"numel": 1e4}, {"std_log_ratio": math.log(2.5)}, th, step=5)
    (down,), _ = evaluate(_info("preact"), {"numel": 1e4}, {"std_log_ratio": -math.log(2.5)}, th, step=5)
    assert " grew 2.5x from its reference (threshold 2x)" in up.message
    assert " shrank 2.5x from its reference (threshold 2x)" in down.message


def test_shift_message_carries_its_psi() -> None:
    (a,), _ = evaluate(_info("preact"), {"numel": 1e4}, {"shape_psi": 3.25}, TH, step=5)
    assert (a.kind, a.value, a.threshold) == ("shift", 3.25, 2.5)
    assert "PSI 3.25 after standardizing both (threshold 2.5)" in a.message
