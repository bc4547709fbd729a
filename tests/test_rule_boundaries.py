"""Every rule pinned at its threshold: the exact alert just above it, nothing just below, for the default
threshold and a user-set one; hysteresis (an active alert clears only below 80 % of its threshold); a
condition that clears and returns later alerts again.

The rule functions are called directly with figures (``judge/rules.py``, ``judge/depth.py``,
``judge/alerts.py``); end-to-end firing on real training is in ``tests/test_alerts.py``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from lightning_normwatch.collect.info import TensorInfo
from lightning_normwatch.config import Thresholds
from lightning_normwatch.judge.alerts import REARM_WINDOW, SEVERITY, Alert, AlertTracker
from lightning_normwatch.judge.depth import MIN_SPAN, depth_alerts
from lightning_normwatch.judge.rules import CLEAR_FRACTION, MIN_DEAD_ROWS, MIN_SHAPE_ROWS, evaluate
from lightning_normwatch.stats.feature_drift import FEATURE_BINS, FeatureReference, FeatureStats, feature_drift

ABOVE, BELOW = 1.0001, 0.9999
USER = {  # a user-set threshold per rule, far from the default so that ignoring it would show
    "dead": 0.8,
    "saturated": 0.2,
    "outlier": 50.0,
    "feature_scale": 20.0,
    "scale_drift": 2.0,
    "mean_drift": 1.5,
    "shift": 0.7,
}


def _info(role: str, name: str = "net.3", dtype: str = "float32") -> TensorInfo:
    return TensorInfo(name, role, "Layer", 64, dtype)


def _case(kind: str, value: float) -> tuple[TensorInfo, dict[str, float], dict[str, float] | None]:
    """(info, figures, drift) whose figure for ``kind`` is ``value``."""
    if kind == "dead":
        return _info("activation"), {"dead": value, "channel_rows": MIN_DEAD_ROWS}, None
    if kind == "saturated":
        return _info("bounded"), {"saturated": value}, None
    if kind == "outlier":  # max |x| / median |x| with max |x| above the absolute floor
        return _info("activation"), {"abs_median": 1.0, "max_abs": value, "sampled": 1000}, None
    if kind == "feature_scale":
        return _info("input", "input"), {"feature_rms_ratio": value, "feature_rms_max": 1.0}, None
    if kind == "scale_drift":
        return _info("preact"), {"numel": 1e4}, {"std_log_ratio": math.log(value)}
    if kind == "mean_drift":
        return _info("preact"), {"numel": 1e4}, {"mean_shift": -value}
    if kind == "shift":
        return _info("preact"), {"numel": 1e4}, {"shape_psi": value}
    raise AssertionError(kind)


def _alerts(kind: str, value: float, th: Thresholds) -> tuple[list[Alert], set[tuple[str, str]]]:
    info, fig, drift = _case(kind, value)
    alerts, checked = evaluate(info, fig, drift, th, step=7)
    return [a for a in alerts if a.kind == kind], checked


#: rules that fire from the threshold on (>=); the others only above it (>)
INCLUSIVE = {"dead", "saturated"}


@pytest.mark.parametrize("user", [False, True], ids=["default", "user-set"])
@pytest.mark.parametrize("kind", sorted(USER))
def test_rule_fires_just_above_its_threshold_and_not_below(kind: str, user: bool) -> None:
    th = Thresholds(**{kind: USER[kind]}) if user else Thresholds()
    limit = getattr(th, kind)
    fired, checked = _alerts(kind, limit * ABOVE, th)
    assert len(fired) == 1, (kind, limit)
    a = fired[0]
    assert (a.kind, a.module, a.step, a.severity) == (kind, _case(kind, 1)[0].name, 7, SEVERITY[kind])
    assert a.value == pytest.approx(limit * ABOVE, rel=1e-9) and a.threshold == limit
    assert (a.module, kind) in checked
    below, _ = _alerts(kind, limit * BELOW, th)
    assert below == []
    at, _ = _alerts(kind, limit, th)
    assert len(at) == (1 if kind in INCLUSIVE else 0), "at the threshold itself"


@pytest.mark.parametrize("kind", sorted(USER))
def test_hysteresis_holds_between_the_clearing_level_and_the_threshold(kind: str) -> None:
    th = Thresholds()
    limit = getattr(th, kind)
    name = _case(kind, 1)[0].name
    _, checked = _alerts(kind, limit * (CLEAR_FRACTION + 1) / 2, th)  # below the threshold, above 80 %
    assert (name, kind) not in checked, "an active alert must not clear here"
    _, checked = _alerts(kind, limit * CLEAR_FRACTION * BELOW, th)
    assert (name, kind) in checked, "below 80 % of the threshold the condition clears"


@pytest.mark.parametrize("kind", sorted(USER))
def test_message_names_the_tensor_its_figure_and_the_threshold(kind: str) -> None:
    th = Thresholds()
    (alert,), _ = _alerts(kind, getattr(th, kind) * 1.5, th)
    name = _case(kind, 1)[0].name
    assert f"`{name}`" in alert.message and ("threshold" in alert.message or "limit" in alert.message)
    assert (f"`{name}` (Layer)" in alert.message) == (kind != "feature_scale")
    shown = {"dead": "75%", "saturated": "75%", "scale_drift": "6.0x", "mean_drift": "-6.0", "shift": "3.75"}
    if kind in shown:
        assert shown[kind] in alert.message


def test_scale_drift_says_grew_or_shrank() -> None:
    up, _ = evaluate(_info("preact"), {"numel": 1e4}, {"std_log_ratio": math.log(5)}, Thresholds(), step=1)
    down, _ = evaluate(_info("preact"), {"numel": 1e4}, {"std_log_ratio": -math.log(5)}, Thresholds(), step=1)
    assert " grew 5.0x" in up[0].message and " shrank 5.0x" in down[0].message


def test_scale_drift_fires_on_shrinking_too() -> None:
    th = Thresholds()
    alerts, _ = evaluate(_info("preact"), {"numel": 1e4}, {"std_log_ratio": -math.log(4.1)}, th, step=1)
    assert [(a.kind, round(a.value, 6)) for a in alerts] == [("scale_drift", 4.1)]
    alerts, _ = evaluate(_info("preact"), {"numel": 1e4}, {"std_log_ratio": -math.log(3.9)}, th, step=1)
    assert alerts == []


def test_mean_drift_reports_the_absolute_shift() -> None:
    alerts, _ = evaluate(_info("preact"), {"numel": 1e4}, {"mean_shift": -4.5}, Thresholds(), step=1)
    assert [(a.kind, a.value, a.threshold) for a in alerts] == [("mean_drift", 4.5, 4.0)]
    assert "-4.5 reference stds" in alerts[0].message


def test_outlier_needs_the_absolute_floor_too() -> None:
    th = Thresholds(outlier_min_abs=10.0)
    # ratio 600 > 500, but max |x| = 6 is below the user's floor of 10: not massive
    alerts, _ = evaluate(_info("activation"), {"abs_median": 0.01, "max_abs": 6.0, "sampled": 1000}, None, th, 1)
    assert alerts == []
    alerts, _ = evaluate(_info("activation"), {"abs_median": 0.01, "max_abs": 10.0, "sampled": 1000}, None, th, 1)
    assert [(a.kind, a.value) for a in alerts] == [("outlier", pytest.approx(1000.0))]
    # too few sampled values: not judged
    alerts, _ = evaluate(_info("activation"), {"abs_median": 1.0, "max_abs": 1e4, "sampled": 99}, None, th, 1)
    assert alerts == []


def test_feature_scale_fires_on_the_largest_rms_alone() -> None:
    fig = {"feature_rms_ratio": 1.2, "feature_rms_max": 183.0}
    alerts, _ = evaluate(_info("input", "input"), fig, None, Thresholds(), step=3)
    assert [(a.kind, a.module, a.value, a.threshold) for a in alerts] == [("feature_scale", "input", 183.0, 100.0)]
    alerts, _ = evaluate(_info("preact"), fig, None, Thresholds(), step=3)  # not an input: not judged
    assert not [a for a in alerts if a.kind == "feature_scale"]


@pytest.mark.parametrize("dtype, limit", [("float16", 6550.4), ("bfloat16", 3.3895e36), ("float32", 3.40282e36)])
def test_near_overflow_at_the_dtype_mark(dtype: str, limit: float) -> None:
    info = _info("activation", dtype=dtype)
    alerts, _ = evaluate(info, {"max_abs": limit * 1.001}, None, Thresholds(), step=2)
    fired = [a for a in alerts if a.kind == "near_overflow"]
    assert len(fired) == 1 and fired[0].threshold == pytest.approx(limit, rel=1e-4)
    alerts, _ = evaluate(info, {"max_abs": limit * 0.999}, None, Thresholds(), step=2)
    assert not [a for a in alerts if a.kind == "near_overflow"]


@pytest.mark.parametrize("skew, kurtosis", [(2.0, 4.0), (1.0, 10.0)])
def test_non_normal_at_user_set_skew_and_kurtosis(skew: float, kurtosis: float) -> None:
    th = Thresholds(skew=skew, kurtosis=kurtosis)
    base = {"numel": 1e4, "channel_rows": MIN_SHAPE_ROWS}

    def fired(g1: float, g2: float, role: str = "preact") -> list[Alert]:
        alerts, _ = evaluate(_info(role), {**base, "channel_skew": g1, "channel_kurtosis": g2}, None, th, step=4)
        return [a for a in alerts if a.kind == "non_normal"]

    assert [a.severity for a in fired(-skew * ABOVE, 0.0)] == ["info"]
    assert fired(skew * BELOW, kurtosis * BELOW) == []
    assert [round(a.value, 6) for a in fired(0.0, kurtosis * 1.5)] == [1.5]
    assert fired(5 * skew, 5 * kurtosis, role="activation") == []  # never for post-activation outputs


def test_dead_is_not_judged_on_few_rows_or_on_linear_outputs() -> None:
    th = Thresholds()
    few = {"dead": 1.0, "channel_rows": MIN_DEAD_ROWS - 1}
    assert evaluate(_info("activation"), few, None, th, step=1)[0] == []
    assert evaluate(_info("preact"), {"dead": 1.0, "channel_rows": 64}, None, th, step=1)[0] == []


def test_dead_message_fits_when_the_units_were_alive_before() -> None:
    fig = {"dead": 0.9, "channel_rows": 64}
    (first,), _ = evaluate(_info("activation"), fig, None, Thresholds(), step=1)
    (later,), _ = evaluate(_info("activation"), fig, None, Thresholds(), step=1, alive_before=True)
    assert "dead from the first logging step" in first.message
    assert "died during training" in later.message


# ------------------------------------------------------------------ depth rules
def _stack(factor: float, before: int = 2, after: int = MIN_SPAN, up: bool = False) -> list:
    """``before`` tensors of RMS 1, then ``after`` tensors ``factor`` times smaller (larger with ``up``)."""
    low = factor if up else 1 / factor
    scales = [1.0] * before + [low] * after
    return [(TensorInfo(f"net.{i}", "preact", "Linear", 32), {"mean": 0.0, "std": s}) for i, s in enumerate(scales)]


@pytest.mark.parametrize(
    "kind, user", [("vanishing", None), ("vanishing", 3.0), ("exploding", None), ("exploding", 5.0)]
)
def test_depth_rules_at_their_thresholds(kind: str, user: float | None) -> None:
    th = Thresholds(**{kind: user}) if user else Thresholds()
    limit = getattr(th, kind)
    alerts, checked = depth_alerts(_stack(limit * 1.01, up=kind == "exploding"), th, step=9)
    assert [(a.kind, a.module, a.step) for a in alerts] == [(kind, "net.2", 9)]
    assert alerts[0].value == pytest.approx(limit * 1.01) and alerts[0].threshold == limit
    assert ("net.0", kind) in checked and ("net.2", kind) in checked
    assert depth_alerts(_stack(limit * 0.99, up=kind == "exploding"), th, step=9)[0] == []


def test_depth_rules_need_the_signal_to_stay_out_of_range() -> None:
    th = Thresholds()
    short = _stack(100.0, after=MIN_SPAN - 1)  # too few tensors after the drop
    assert depth_alerts(short, th, step=1)[0] == []
    restored = _stack(100.0) + [(TensorInfo("head", "preact", "Linear", 32), {"mean": 0.0, "std": 1.0})]
    assert depth_alerts(restored, th, step=1)[0] == []  # a later layer restores the scale: not vanishing


# ------------------------------------------------------------------ alert state over training
def _dead(step: int, value: float = 0.6) -> Alert:
    return Alert(step, "fc", "dead", "warning", value, 0.5, "dead")


def test_a_condition_that_clears_and_returns_after_the_window_alerts_again() -> None:
    tracker = AlertTracker()
    assert len(tracker.update([_dead(0)], {("fc", "dead")}, 0)) == 1
    for step in range(1, REARM_WINDOW + 2):  # cleared for longer than the window
        assert tracker.update([], {("fc", "dead")}, step) == []
    again = tracker.update([_dead(REARM_WINDOW + 2)], {("fc", "dead")}, REARM_WINDOW + 2)
    assert [(a.step, a.message) for a in again] == [(REARM_WINDOW + 2, "dead")]


def test_a_returning_condition_within_the_window_alerts_only_when_worse() -> None:
    tracker = AlertTracker()
    tracker.update([_dead(0, 0.6)], {("fc", "dead")}, 0)
    tracker.update([], {("fc", "dead")}, 1)
    assert tracker.update([_dead(2, 0.7)], {("fc", "dead")}, 2) == []  # back, but not materially worse
    tracker.update([], {("fc", "dead")}, 3)
    worse = tracker.update([_dead(4, 0.75)], {("fc", "dead")}, 4)
    assert len(worse) == 1 and "worse than its 0.6 at step 0" in worse[0].message


def test_an_alert_not_evaluated_keeps_its_state() -> None:
    tracker = AlertTracker()
    tracker.update([_dead(0)], {("fc", "dead")}, 0)
    tracker.update([], set(), 1)  # the module did not run: nothing evaluated
    assert ("fc", "dead") in tracker.active
    assert tracker.update([_dead(2)], {("fc", "dead")}, 2) == []


def test_a_second_nonfinite_episode_alerts_again() -> None:
    import torch
    from torch import nn

    from lightning_normwatch.collect.collector import Collector
    from lightning_normwatch.config import SessionConfig
    from lightning_normwatch.judge.evaluator import Evaluator

    config = SessionConfig(warmup_steps=0, reference_steps=1)
    collector = Collector(config)
    evaluator = Evaluator(config, collector)
    collector.attach(nn.Sequential(nn.Linear(4, 4)))

    def step(values: torch.Tensor, at: int) -> list[Alert]:
        collector.arm()
        collector.observe("x", values)
        collector.disarm()
        return [a for a in evaluator.evaluate(at, collector.collect()).alerts if a.kind == "nonfinite"]

    bad = torch.randn(64, 4)
    bad[3, 1] = math.nan
    assert [(a.module, a.step) for a in step(bad, 0)] == [("x", 0)]
    assert step(bad, 1) == []  # the same episode: not raised again
    assert step(torch.randn(64, 4), 2) == [] and not evaluator.nonfinite_active  # cleared
    assert [(a.module, a.step) for a in step(bad, 3)] == [("x", 3)]  # a second episode alerts again


def test_thresholds_are_validated_per_field() -> None:
    with pytest.raises(ValueError, match="thresholds.vanishing"):
        Thresholds(vanishing=1.0)
    assert replace(Thresholds(), dead=0.9).dead == 0.9


# ------------------------------------------------------------------ user-set thresholds of the other rules
def test_collapse_at_a_user_set_threshold() -> None:
    from lightning_normwatch.judge.collapse import collapse_alerts

    def spreads(drop: float) -> list:
        values = [0.8, 0.8, 0.7] + [0.8 / drop] * 4
        fig = [{"batch_spread": s, "numel": 4096} for s in values]
        return [(TensorInfo(f"fc{i}", "preact", "Linear", 64), f) for i, f in enumerate(fig)]

    th = Thresholds(collapse=50.0)
    (a,) = collapse_alerts(spreads(50.0 * ABOVE), th, step=6)[0]
    assert (a.module, a.kind, a.step, a.threshold) == ("fc3", "collapse", 6, 50.0)
    assert a.value == pytest.approx(50.0 * ABOVE, rel=1e-9)
    assert collapse_alerts(spreads(50.0 * BELOW), th, step=6)[0] == []
    assert collapse_alerts(spreads(100.0), Thresholds(), step=6)[0] == []  # x100: under the default x1000


def _flow(kind: str, factor: float, th: Thresholds) -> list[Alert]:
    """Gradient-flow alerts after ``PERSIST`` logging steps with the three layers nearest the input ``factor``
    times out of range (below for vanishing, above for exploding) of the three after them."""
    from lightning_normwatch.judge.updates import PERSIST, UpdateHistory, update_alerts

    figs = {f"fc{i}": {"update_ratio": 1e-3, "grad_rms": 1e-2, "lr": 1e-3, "has_grad": 1.0} for i in range(6)}
    for i in range(3):
        figs[f"fc{i}"]["grad_rms"] = 1e-2 / factor if kind == "vanishing_gradient" else 1e-2 * factor
    history, alerts = UpdateHistory(), []
    for step in range(0, 5 * PERSIST, 5):
        alerts, _ = update_alerts(step, figs, list(figs), th, history)
    return alerts


@pytest.mark.parametrize("kind", ["vanishing_gradient", "exploding_gradient"])
def test_gradient_flow_at_a_user_set_threshold(kind: str) -> None:
    th = Thresholds(**{kind: 20.0})
    (a,) = _flow(kind, 20.0 * 1.001, th)
    assert (a.module, a.kind, a.step, a.threshold) == ("fc2", kind, 5, 20.0)
    assert a.value == pytest.approx(20.0 * 1.001, rel=1e-6)
    assert _flow(kind, 20.0 * 0.999, th) == []
    assert _flow(kind, 100.0, Thresholds()) == []  # x100: under the default x1000


def _feature(n: float, mean: float = 0.0, std: float = 1.0, hist: list[float] | None = None) -> FeatureStats:
    """Statistics of one input feature: ``n`` batch items, normal moments (excess kurtosis 0)."""
    import numpy as np

    h = np.zeros((1, FEATURE_BINS)) if hist is None else np.asarray([hist], dtype=np.float64)
    arr = lambda v: np.array([float(v)])  # noqa: E731
    return FeatureStats(arr(n), arr(mean), arr(n * std**2), arr(0.0), arr(3 * n * std**4), h, float(n))


def _changed(current: FeatureStats, th: Thresholds, reference: FeatureStats | None = None) -> bool:
    ref = FeatureReference()
    ref.add(reference or _feature(1e8))
    floors = (th.input_mean_shift, th.input_scale, th.input_psi)
    return bool(feature_drift(ref, current, *floors, noise_z=th.input_noise_z).changed[0])


@pytest.mark.parametrize("user", [False, True], ids=["default", "user-set"])
def test_input_mean_shift_floor(user: bool) -> None:
    th = Thresholds(input_mean_shift=1.2) if user else Thresholds()
    floor = th.input_mean_shift  # 1e8 items on both sides: the noise floor is far below it
    assert _changed(_feature(1e8, mean=floor * ABOVE), th) and _changed(_feature(1e8, mean=-floor * ABOVE), th)
    assert not _changed(_feature(1e8, mean=floor * BELOW), th)


@pytest.mark.parametrize("user", [False, True], ids=["default", "user-set"])
def test_input_scale_floor(user: bool) -> None:
    th = Thresholds(input_scale=2.5) if user else Thresholds()
    floor = th.input_scale
    assert _changed(_feature(1e8, std=floor * ABOVE), th) and _changed(_feature(1e8, std=1 / (floor * ABOVE)), th)
    assert not _changed(_feature(1e8, std=floor * BELOW), th)
    assert not _changed(_feature(1e8, std=1 / (floor * BELOW)), th)


@pytest.mark.parametrize("z", [5.0, 8.0], ids=["default", "user-set"])
def test_input_noise_floor(z: float) -> None:
    # 64 batch items against a reference of 1e8: the standard error of the mean shift is 1/8 of a std, so
    # z standard errors (0.625 or 1.0 std) are above the 0.5 std effect floor and decide
    th = Thresholds(input_noise_z=z)
    noise = z * math.sqrt(1 / 64 + 1e-8)
    assert _changed(_feature(64, mean=noise * ABOVE), th)
    assert not _changed(_feature(64, mean=noise * BELOW), th)


def _moved(psi: float) -> FeatureStats:
    """1e6 items whose anchor-bin counts moved from the lower nine bins to the upper nine by ``t`` (each bin
    x(1 - t) or x(1 + t)) against the even reference of ``_changed``: PSI = t * atanh(t), solved for ``psi``;
    the moments stay the reference's, so only the distribution test can fire."""
    import numpy as np
    from scipy.optimize import brentq

    t = brentq(lambda t: t * math.atanh(t) - psi, 1e-9, 1 - 1e-9, xtol=1e-15)
    even = np.full(FEATURE_BINS, 1e6 / FEATURE_BINS)
    return _feature(1e6, hist=list(even * np.r_[np.full(9, 1 - t), np.full(9, 1 + t)]))


@pytest.mark.parametrize("user", [False, True], ids=["default", "user-set"])
def test_input_psi_floor(user: bool) -> None:
    import numpy as np

    th = Thresholds(input_psi=0.5) if user else Thresholds()
    reference = _feature(1e6, hist=list(np.full(FEATURE_BINS, 1e6 / FEATURE_BINS)))
    current = _moved(th.input_psi * ABOVE)
    p, q = reference.hist[0] / 1e6, current.hist[0] / 1e6
    assert float(((q - p) * np.log(q / p)).sum()) == pytest.approx(th.input_psi * ABOVE, rel=1e-9)  # by hand
    assert _changed(current, th, reference)
    assert not _changed(_moved(th.input_psi * BELOW), th, reference)


#: where each ``Thresholds`` field is tested with a user-set value (this file unless named)
USER_SET_TESTS = {
    **dict.fromkeys(USER, "test_rule_fires_just_above_its_threshold_and_not_below"),
    "outlier_min_abs": "test_outlier_needs_the_absolute_floor_too",
    "skew": "test_non_normal_at_user_set_skew_and_kurtosis",
    "kurtosis": "test_non_normal_at_user_set_skew_and_kurtosis",
    "vanishing": "test_depth_rules_at_their_thresholds",
    "exploding": "test_depth_rules_at_their_thresholds",
    "collapse": "test_collapse_at_a_user_set_threshold",
    "input_mean_shift": "test_input_mean_shift_floor",
    "input_scale": "test_input_scale_floor",
    "input_psi": "test_input_psi_floor",
    "input_noise_z": "test_input_noise_floor",
    "update_large": "tests/test_updates.py::test_update_size_large_at_its_threshold",
    "update_small": "tests/test_updates.py::test_update_size_small_at_its_threshold_and_only_for_a_low_learning_rate",
    "vanishing_gradient": "test_gradient_flow_at_a_user_set_threshold",
    "exploding_gradient": "test_gradient_flow_at_a_user_set_threshold",
}


def test_every_threshold_has_a_user_set_boundary_test() -> None:
    from dataclasses import fields
    from pathlib import Path

    assert set(USER_SET_TESTS) == {f.name for f in fields(Thresholds)}
    root = Path(__file__).resolve().parent.parent
    for name, where in USER_SET_TESTS.items():
        path, test = where.split("::") if "::" in where else ("tests/test_rule_boundaries.py", where)
        assert f"def {test}(" in (root / path).read_text(), (name, where)


def test_a_loss_episode_survives_a_checkpoint_and_a_finite_loss_still_ends_it(tmp_path) -> None:
    import torch
    from torch import nn

    from lightning_normwatch.collect.collector import Collector
    from lightning_normwatch.config import SessionConfig
    from lightning_normwatch.judge.evaluator import Evaluator

    config = SessionConfig(warmup_steps=0, reference_steps=1)

    def evaluator() -> Evaluator:
        collector = Collector(config)
        collector.attach(nn.Sequential(nn.Linear(4, 4)))
        return Evaluator(config, collector)

    before = evaluator()
    assert before.loss_checked(False) is False  # a non-finite loss: a new episode, located and raised
    before.raise_nonfinite(7, "loss", math.nan, 0, "the loss check")
    torch.save(before.state_dict(), tmp_path / "state.pt")
    after = evaluator()
    after.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert after.nonfinite_active and after.loss_checked(False) is True  # the same episode: not raised again
    assert after.loss_checked(True) is True and not after.nonfinite_active  # a finite loss ends it, as before
    assert after.loss_checked(False) is False  # so the next non-finite loss is a new episode
    # a checkpoint written before the flag was saved: the episode stays active until a logging step clears it
    old = before.state_dict()
    del old["nonfinite_from_loss"]
    legacy = evaluator()
    legacy.load_state_dict(old)
    assert legacy.loss_checked(True) is True and legacy.nonfinite_active
