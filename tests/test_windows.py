"""The warm-up and reference windows fitted to the run's length (``judge/windows.py``), as pure arithmetic."""

from __future__ import annotations

import math

import pytest

from lightning_normwatch.judge.windows import (
    DEFAULT_REFERENCE,
    DEFAULT_WARMUP,
    MIN_REFERENCE_LOGS,
    plan_windows,
)


@pytest.mark.parametrize("total", [60, 100, 200, 300, 500, 1000, 3000, 10**6])
@pytest.mark.parametrize("interval", [1, 5, 10, 25])
def test_fitted_windows_leave_most_of_the_run_judged(total: int, interval: int) -> None:
    w = plan_windows(total, interval)
    assert w.fitted
    assert w.warmup >= interval  # the untrained network's first logging step is never the reference
    assert w.reference_logs >= MIN_REFERENCE_LOGS
    # never later than the defaults, and from half the run when the logging interval allows it
    if (MIN_REFERENCE_LOGS + 1) * interval <= 0.25 * total:
        assert w.judged
        assert w.judged_from <= max(0.5 * total + interval, (MIN_REFERENCE_LOGS + 2) * interval)
    assert w.end <= max(DEFAULT_WARMUP + DEFAULT_REFERENCE, (MIN_REFERENCE_LOGS + 1) * interval)


def test_the_three_run_lengths_of_issue_20() -> None:
    assert [(w.warmup, w.end, w.judged_from) for w in (plan_windows(n, 10) for n in (200, 300, 1000))] == [
        (50, 100, 100),
        (75, 150, 150),
        (100, 300, 300),
    ]


def test_unknown_length_gets_the_defaults_and_is_judged() -> None:
    for total in (None, math.inf, 0, -1):
        w = plan_windows(total, 50)
        assert (w.warmup, w.reference, w.judged, w.fitted) == (DEFAULT_WARMUP, DEFAULT_REFERENCE, True, False)


def test_explicit_arguments_win_even_when_drift_is_then_not_judged() -> None:
    w = plan_windows(300, 10, warmup_steps=100, reference_steps=200)
    assert (w.warmup, w.reference, w.fitted, w.judged) == (100, 200, False, False)
    assert "would be judged from step 300" in w.describe()
    only_warmup = plan_windows(1000, 10, warmup_steps=5)
    assert only_warmup.warmup == 5 and only_warmup.reference == 200


def test_too_few_logging_steps_say_so_and_from_when() -> None:
    w = plan_windows(200, 50)  # Lightning's default log_every_n_steps on a 200-step run
    assert not w.judged
    text = w.describe()
    assert text.startswith("drift not judged") and "200 steps" in text and "every 50 steps" in text
    assert f"from step {w.judged_from}" in text and w.judged_from >= 200
    # exactly at the bound: the first judged logging step must lie inside the run
    edge = plan_windows(w.judged_from + 1, 50)
    assert edge.judged or edge.judged_from > w.judged_from
