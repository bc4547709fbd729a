"""The start and end-of-fit lines of the window plan (``judge/windows.py``): what they say about when drift is
judged, checked directly (they were guarded only by doctests, which ``make mutate`` does not run)."""

from __future__ import annotations

from lightning_normwatch.judge.windows import Windows, plan_windows, rules_ran

EVERY = "depth, collapse, dead units, saturation, outliers and shape at every logging step"


def test_describe_fitted_explicit_and_too_short() -> None:
    assert plan_windows(200, 10).describe() == (
        "drift judged from step 100 (reference window steps 50-100, fitted to a run of 200 steps)"
    )
    explicit = plan_windows(1000, 10, warmup_steps=30, reference_steps=40)
    assert explicit.describe() == "drift judged from step 70 (reference window steps 30-70)"
    short = Windows(warmup=150, reference=0, interval=50, total_steps=100, fitted=True)
    assert short.reference_logs == 0
    assert short.describe().startswith(
        "drift not judged: the run (100 steps) is shorter than the reference window "
        "needs (1 logging steps every 50 steps after a warm-up: drift would be judged "
        "from step 150)"
    )


def test_rules_ran_says_why_drift_was_not_judged() -> None:
    w = plan_windows(200, 10)
    assert rules_ran(w, 190) == f"rules: {w.describe()}; {EVERY}"
    assert rules_ran(w, 100) == f"rules: {w.describe()}; {EVERY}"  # stopped at the first judged step
    assert rules_ran(w, 99) == (
        f"rules: drift not judged: the run stopped at step 99, before the reference window ended at step 100; {EVERY}"
    )
    short = plan_windows(200, 50)  # never judged: the plan says why, whatever the last step
    assert not short.judged and rules_ran(short, 10) == f"rules: {short.describe()}; {EVERY}"


def test_plan_windows_edges() -> None:
    assert plan_windows(1000, 0).interval == 1 and plan_windows(200, 1).interval == 1
    one = plan_windows(1, 1)  # a run of one step is a known length
    assert (one.total_steps, one.fitted) == (1, True)
    unknown = plan_windows(None, 50, warmup_steps=20, reference_steps=30)
    assert (unknown.warmup, unknown.reference, unknown.interval, unknown.total_steps) == (20, 30, 50, None)
    assert not unknown.fitted and plan_windows(float("inf"), 50).interval == 50
    # the reference is extended to hold MIN_REFERENCE_LOGS logging steps: 50, 100, 150, 200 -> ends at 201
    w = plan_windows(200, 50)
    assert (w.warmup, w.reference, w.reference_logs) == (50, 151, 4)
    assert plan_windows(1000, 10, warmup_steps=500).fitted  # the reference window is still fitted
    assert not plan_windows(1000, 10, warmup_steps=500, reference_steps=100).fitted
