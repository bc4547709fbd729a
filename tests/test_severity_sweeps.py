"""Where firing starts on real training, against the documented threshold and noise floor.

Faults of growing size are planted in models and data that are not the calibration's own (``tests/sweeps.py``):
the share of dead units of a ReLU branch (threshold 50 %, ``>=``), an input shift in feature stds (effect floor
0.5 σ, noise floor 5 standard errors of the mean difference: 0.92 σ at batch 32, 0.33 σ at batch 256), an input
rescaling (effect floor x1.5, noise floor 5 standard errors of the log std ratio: x2.28 at batch 32, x1.34 at
batch 256) and the first layer's ``scale_drift`` under that rescaling (threshold x4). The default run holds one
cheap sweep per rule; the full grids (two batch sizes, two seeds, a user-set threshold) are ``slow``. Results:
docs/testing.md ("Severity sweeps").
"""

from __future__ import annotations

import pytest

from tests.sweeps import AT, dead_sweep, drift_run, first, mean_floor, scale_floor

pytestmark = pytest.mark.filterwarnings("ignore:.*the trainer has no logger.*")

DEAD_GRID = [0.40, 0.44, 0.48, 0.50, 0.52, 0.60, 0.70, 0.80, 0.90]


def test_documented_noise_floors() -> None:
    assert round(mean_floor(32), 2) == 0.92 and mean_floor(256) == 0.5
    assert round(scale_floor(32), 2) == 2.28 and scale_floor(256) == 1.5


@pytest.mark.parametrize("threshold", [None, 0.7], ids=["default", "user-set"])
def test_dead_share_fires_from_its_threshold_on(tmp_path, threshold: float | None) -> None:
    found = dead_sweep(tmp_path, DEAD_GRID, **({"dead": threshold} if threshold else {}))
    limit = threshold or 0.5
    for share, (measured, step) in found.items():
        assert measured == pytest.approx(share)  # the planted share: no healthy unit is zero on the whole batch
        assert step == (0 if share >= limit else None), (share, limit)


def test_input_shift_fires_above_the_noise_floor_at_batch_32(tmp_path) -> None:
    # 0.6 σ is above the 0.5 σ effect floor but below the 0.92 σ a batch of 32 can produce by chance: silent
    assert first(drift_run(tmp_path, 32, shift=0.6), "input", "input_drift") is None
    assert first(drift_run(tmp_path, 32, shift=1.25), "input", "input_drift") == AT + 1  # held 2 logging steps


def test_input_scale_and_layer_scale_drift_fire_from_their_thresholds(tmp_path) -> None:
    # x2 is above the x1.5 effect floor but below the x2.28 noise floor at batch 32: silent on the input
    healthy = drift_run(tmp_path, 32, scale=2.0)
    assert first(healthy, "input", "input_drift") is None and first(healthy, "net.0", "scale_drift") is None
    below, above = drift_run(tmp_path, 32, scale=3.5), drift_run(tmp_path, 32, scale=4.5)
    assert first(below, "input", "input_drift") == first(above, "input", "input_drift") == AT + 1
    assert first(below, "net.0", "scale_drift") is None  # x3.5 < x4
    assert first(above, "net.0", "scale_drift") == AT  # x4.5: at the first rescaled batch
    (value,) = [v for m, k, s, v in above if (m, k) == ("net.0", "scale_drift")]
    # a bias-free Linear: its std grows exactly x4.5, times one batch's std over the reference's (32 rows, ~7 %)
    assert value == pytest.approx(4.5, rel=0.15)


def test_healthy_run_of_the_sweep_model_raises_no_warning(tmp_path) -> None:
    assert drift_run(tmp_path, 32) == []


# ----------------------------------------------------------------------------------------------- full grids
@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("threshold", [None, 0.7], ids=["default", "user-set"])
def test_dead_share_full_grid(tmp_path, seed: int, threshold: float | None) -> None:
    shares = [round(0.40 + 0.02 * i, 2) for i in range(26)]  # 40 % to 90 %
    found = dead_sweep(tmp_path, shares, seed=seed, **({"dead": threshold} if threshold else {}))
    fired = sorted(share for share, (_, step) in found.items() if step is not None)
    assert fired == [s for s in shares if s >= (threshold or 0.5)]


SHIFTS = [0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0, 1.5, 2.0, 3.0]
SCALES = [1.25, 1.4, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.5, 6.0, 8.0]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("batch", [32, 256])
def test_input_shift_full_grid(tmp_path, batch: int, seed: int) -> None:
    onset = mean_floor(batch)
    steps = {d: first(drift_run(tmp_path, batch, shift=d, seed=seed), "input", "input_drift") for d in SHIFTS}
    assert all(steps[d] == AT + 1 for d in SHIFTS if d >= onset), steps  # from the floor on: at once
    if batch == 32:  # the noise floor governs: nothing below 2/3 of it
        assert all(steps[d] is None for d in SHIFTS if d <= 0.65 * onset), steps
    # at batch 256 the PSI floor (0.2) is crossed from about 0.4 σ, and sampling noise inflates PSI: a 0.25 σ
    # shift can be flagged a few steps late (docs/testing.md); a shift is never flagged before it happens
    assert all(s is None or s > AT for s in steps.values())


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("batch", [32, 256])
def test_scale_full_grid(tmp_path, batch: int, seed: int) -> None:
    onset = scale_floor(batch)
    runs = {k: drift_run(tmp_path, batch, scale=k, seed=seed) for k in SCALES}
    inputs = {k: first(a, "input", "input_drift") for k, a in runs.items()}
    layer = {k: first(a, "net.0", "scale_drift") for k, a in runs.items()}
    assert all(inputs[k] == AT + 1 for k in SCALES if k >= onset), inputs
    assert all(inputs[k] is None for k in SCALES if k < 0.9 * onset), inputs
    assert layer == {k: (AT if k > 4 else None) for k in SCALES}


@pytest.mark.slow
def test_user_set_input_floor_moves_the_onset(tmp_path) -> None:
    # input_mean_shift 1.5 σ (and PSI 3.0, so that the distribution test does not flag it first): at batch 256
    # 1.0 σ is silent, 2.0 σ fires
    th = {"input_mean_shift": 1.5, "input_psi": 3.0}
    assert first(drift_run(tmp_path, 256, shift=1.0, **th), "input", "input_drift") is None
    assert first(drift_run(tmp_path, 256, shift=2.0, **th), "input", "input_drift") == AT + 1
