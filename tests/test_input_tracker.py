"""``InputTracker`` (``judge/input_drift.py``) called directly with generated batches: the reference phase,
persistence before a verdict, the drift figures, the recent window of feature scales, widths that change,
and its checkpoint state."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_normwatch.config import Thresholds
from lightning_normwatch.judge.input_drift import InputTracker, _drift_figures
from lightning_normwatch.stats.feature_drift import FeatureDrift, FeatureStats

TH = Thresholds()
FLOORS = (TH.input_mean_shift, TH.input_scale, TH.input_psi)
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """The same batches whichever tests run (``make mutate`` runs a subset, in a forked process)."""
    global RNG
    RNG = np.random.default_rng(0)


def _batch(rows: int = 2000, c: int = 4, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    x = RNG.standard_normal((rows, c))
    x[:, 1] = x[:, 1] * scale + shift
    return x


def _feed(tracker: InputTracker, step: int, x: np.ndarray, key: str = "input"):
    return tracker.update(key, step, FeatureStats.of(x, tracker.anchor(key)), FLOORS, TH.input_noise_z)


def test_reference_then_a_persistent_shift_is_flagged_on_its_second_logging_step() -> None:
    tracker = InputTracker(reference_end=30)
    assert tracker.anchor("input") is None
    for step in (0, 10, 20):
        assert _feed(tracker, step, _batch()) == ({}, None)
    anchor = tracker.anchor("input")
    assert anchor is not None and anchor.center.shape == (4,)
    assert tracker.inputs["input"].reference.steps == 3
    figures, verdict = _feed(tracker, 30, _batch())  # healthy: figures, no verdict
    assert verdict is None and figures["feature_drift_share"] == 0.0 and figures["feature_changed_share"] == 0.0
    figures, verdict = _feed(tracker, 40, _batch(shift=3.0))  # changed once: not yet persistent
    assert verdict is None and figures["feature_changed_share"] == 0.25 and figures["feature_drift_share"] == 0.0
    assert figures["feature_drift_worst"] == 1.0 and figures["feature_mean_shift_max"] == pytest.approx(3.0, abs=0.2)
    figures, verdict = _feed(tracker, 50, _batch(shift=3.0))
    assert verdict is not None and verdict.flagged.tolist() == [False, True, False, False]
    assert figures["feature_drift_share"] == 0.25 and "feature_psi_max" in figures
    assert verdict.score == pytest.approx(float(verdict.drift.score[1])) and verdict.score > 3.0 / 0.5 * 0.9
    assert verdict.message.startswith("feature 1 shifted by +3")
    _, verdict = _feed(tracker, 60, _batch())  # back to normal: the count restarts
    assert verdict is None and tracker.inputs["input"].persist.tolist() == [0, 0, 0, 0]


def test_persistence_of_one_flags_at_once_and_names_are_used() -> None:
    tracker = InputTracker(reference_end=10, persistence=1)
    _feed(tracker, 0, _batch())
    stats = FeatureStats.of(_batch(scale=4.0), tracker.anchor("input"))
    figures, verdict = tracker.update("input", 10, stats, FLOORS, TH.input_noise_z, ["a", "b", "c", "d"])
    assert verdict is not None and verdict.message.startswith("b rescaled x")
    assert figures["feature_std_log_ratio_max"] == pytest.approx(np.log(4.0), abs=0.1)


def test_without_a_step_before_the_end_the_first_one_is_the_reference() -> None:
    tracker = InputTracker(reference_end=0, persistence=1)
    assert _feed(tracker, 5, _batch()) == ({}, None)
    assert tracker.inputs["input"].reference.steps == 1
    figures, verdict = _feed(tracker, 6, _batch(shift=3.0))
    assert verdict is not None and figures["feature_drift_share"] == 0.25


def test_another_width_resets_anchor_reference_and_persistence() -> None:
    tracker = InputTracker(reference_end=10, persistence=1)
    _feed(tracker, 0, _batch())
    _feed(tracker, 10, _batch(shift=3.0))
    assert tracker.inputs["input"].persist is not None
    wider = FeatureStats.of(_batch(c=6))
    assert tracker.update("input", 20, wider, FLOORS, TH.input_noise_z) == ({}, None)  # a new reference
    state = tracker.inputs["input"]
    assert state.anchor.center.shape == (6,) and state.persist is None and state.reference.steps == 1


def test_drift_figures_pick_the_worst_feature() -> None:
    z = np.zeros(3)
    changed = np.array([False, True, True])
    d = FeatureDrift(
        np.array([0.1, -2.0, np.nan]),
        np.array([np.nan, 0.3, -0.7]),
        np.array([np.nan, 0.5, 0.2]),
        changed,
        np.array([0.0, 4.0, 6.0]),
        ~changed,
        changed,
        z.astype(bool),
    )
    out = _drift_figures(d, np.array([False, False, True]))
    assert out == {
        "feature_drift_share": pytest.approx(1 / 3),
        "feature_changed_share": pytest.approx(2 / 3),
        "feature_drift_worst": 2.0,
        "feature_mean_shift_max": 2.0,
        "feature_std_log_ratio_max": 0.7,
        "feature_psi_max": 0.5,
    }
    # no score anywhere: the largest mean shift names the worst; no PSI: no PSI figure
    d = FeatureDrift(np.array([0.1, -0.4, 0.2]), z, np.full(3, np.nan), ~changed, z, ~changed, ~changed, ~changed)
    out = _drift_figures(d, np.zeros(3, dtype=bool))
    assert out["feature_drift_worst"] == 1.0 and "feature_psi_max" not in out and out["feature_drift_share"] == 0.0


def _moments(x: np.ndarray) -> tuple[np.ndarray, ...]:
    s = FeatureStats.of(x)
    return s.n, s.mean, s.m2, s.m3, s.m4


def test_a_window_of_two_batches_is_judged_on_both() -> None:
    """Two batches of 150 rows (min_rows 256): the figures are those of their 300 rows taken together."""
    first, second = _batch(rows=150), _batch(rows=150, scale=3.0)
    tracker = InputTracker(reference_end=10, min_rows=256, window=3)
    assert tracker.scale_figures("input", *_moments(first)) == {}
    two = tracker.scale_figures("input", *_moments(second))
    assert len(tracker.inputs["input"].recent) == 2
    together = InputTracker(reference_end=10, min_rows=256, window=3).scale_figures(
        "input", *_moments(np.concatenate([first, second]))
    )
    assert two.keys() == together.keys() and two
    for name, value in together.items():
        assert two[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name
    # feature 1 has std 3 in the second batch only: its RMS over both is sqrt((1 + 9) / 2)
    assert two["feature_rms_max"] == pytest.approx(np.sqrt(5.0), rel=0.1)


def test_feature_scales_on_the_recent_window() -> None:
    tracker = InputTracker(reference_end=10, min_rows=256, window=3)
    assert tracker.scale_figures("input", *_moments(_batch(rows=100))) == {}  # 100 rows: too few
    assert tracker.scale_figures("input", *_moments(_batch(rows=100))) == {}  # 200
    fig = tracker.scale_figures("input", *_moments(_batch(rows=100)))  # a full window of 3: judged on 300 rows
    assert fig["feature_rms_max"] == pytest.approx(1.0, abs=0.15) and len(tracker.inputs["input"].recent) == 3
    # a unit change: the window keeps only the latest steps that hold min_rows rows
    fig = tracker.scale_figures("input", *_moments(_batch(rows=300, scale=50.0)))
    assert len(tracker.inputs["input"].recent) == 1 and fig["feature_rms_max"] == pytest.approx(50.0, rel=0.15)
    assert fig["feature_rms_ratio"] == pytest.approx(50.0, rel=0.2)
    # exactly min_rows on the latest step: that step alone
    tracker.scale_figures("input", *_moments(_batch(rows=256)))
    assert len(tracker.inputs["input"].recent) == 1
    # another width: the window restarts
    tracker.scale_figures("input", *_moments(_batch(rows=10, c=2)))
    assert [len(m[0]) for m in tracker.inputs["input"].recent] == [2]


def test_a_window_of_one_small_batch_per_step_is_judged_on_what_it_holds() -> None:
    tracker = InputTracker(reference_end=10, min_rows=256, window=1)
    assert tracker.scale_figures("input", *_moments(_batch(rows=50)))["feature_rms_max"] > 0
    tracker = InputTracker(reference_end=10, min_rows=256, window=2)
    assert tracker.scale_figures("input", *_moments(_batch(rows=50))) == {}


def test_state_round_trip() -> None:
    tracker = InputTracker(reference_end=10, persistence=1)
    _feed(tracker, 0, _batch())
    _feed(tracker, 10, _batch(shift=3.0))
    tracker.scale_figures("input", *_moments(_batch(rows=300)))
    tracker.inputs["other"] = type(tracker.inputs["input"])()  # an input with nothing yet
    again = InputTracker(reference_end=10, persistence=1)
    again.load(tracker.state())
    a, b = tracker.inputs["input"], again.inputs["input"]
    assert np.array_equal(a.anchor.center, b.anchor.center) and np.array_equal(a.anchor.scale, b.anchor.scale)
    assert np.array_equal(a.persist, b.persist) and b.persist.dtype == np.int64
    assert b.reference.steps == a.reference.steps == 1 and len(b.recent) == len(a.recent) == 1
    assert np.allclose(a.recent[0][2], b.recent[0][2])
    assert again.inputs["other"].anchor is None and again.inputs["other"].persist is None
    x = _batch(shift=3.0)
    figures, verdict = _feed(again, 20, x)
    assert verdict is not None and figures == _feed(tracker, 20, x)[0]


def test_the_window_counts_rows_over_steps_and_holds_at_most_window_steps() -> None:
    tracker = InputTracker(reference_end=10, min_rows=256, window=8)
    for _ in range(5):
        tracker.scale_figures("input", *_moments(_batch(rows=100)))
    assert len(tracker.inputs["input"].recent) == 3  # 300 rows from the latest three steps
    small = InputTracker(reference_end=10, min_rows=256, window=3)
    for _ in range(4):
        small.scale_figures("input", *_moments(_batch(rows=10)))
    assert len(small.inputs["input"].recent) == 3


def test_moments_are_merged_in_float64() -> None:
    moments = _moments(_batch(rows=300))
    as32 = [np.asarray(m, dtype=np.float32) for m in moments]
    a = InputTracker(reference_end=10).scale_figures("input", *as32)
    b = InputTracker(reference_end=10).scale_figures("input", *(np.asarray(m, dtype=np.float64) for m in as32))
    assert a == b


def test_default_window_256_rows_or_8_logging_steps() -> None:
    tracker = InputTracker(reference_end=10)
    assert tracker.scale_figures("input", *_moments(_batch(rows=256)))  # 256 rows on one step: judged
    tracker = InputTracker(reference_end=10)
    for _ in range(9):
        tracker.scale_figures("input", *_moments(_batch(rows=10)))
    assert len(tracker.inputs["input"].recent) == 8


def test_user_set_floors_and_noise_level_are_used() -> None:
    def verdict_for(floors: tuple[float, float, float], noise_z: float) -> bool:
        tracker = InputTracker(reference_end=10, persistence=1)
        _feed(tracker, 0, _batch())
        stats = FeatureStats.of(_batch(shift=1.0), tracker.anchor("input"))
        return tracker.update("input", 10, stats, floors, noise_z)[1] is not None

    assert verdict_for(FLOORS, TH.input_noise_z)  # a 1 sigma shift on 2,000 rows: beyond the 0.5 sigma floor
    assert not verdict_for((2.0, 1.5, 5.0), TH.input_noise_z)  # the user's floors: 2 sigma, PSI 5
    assert not verdict_for(FLOORS, 1e6)  # a noise level no shift exceeds


def test_a_change_on_the_first_judged_step_still_needs_persistence() -> None:
    tracker = InputTracker(reference_end=10)
    _feed(tracker, 0, _batch())
    figures, verdict = _feed(tracker, 10, _batch(shift=3.0))
    assert verdict is None and figures["feature_changed_share"] == 0.25 and figures["feature_drift_share"] == 0.0
    assert _feed(tracker, 20, _batch(shift=3.0))[1] is not None


def test_the_anchor_holds_the_first_steps_mean_and_std() -> None:
    tracker = InputTracker(reference_end=10)
    x = 3.0 * _batch() + 5.0
    _feed(tracker, 0, x)
    anchor = tracker.anchor("input")
    assert np.allclose(anchor.center, x.mean(0)) and np.allclose(anchor.scale, x.std(0))


def test_drift_figures_ignore_non_finite_shifts() -> None:
    z = np.zeros(2, dtype=bool)
    d = FeatureDrift(np.array([np.nan, 0.2]), np.array([np.inf, 0.1]), np.full(2, np.nan), z, np.zeros(2), z, z, z)
    out = _drift_figures(d, z)
    assert out["feature_mean_shift_max"] == 0.2 and out["feature_std_log_ratio_max"] == 0.1
    assert out["feature_drift_worst"] == 1.0
