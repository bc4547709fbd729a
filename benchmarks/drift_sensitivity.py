"""How sensitive NormWatch's per-feature input drift is, beside Evidently's documented per-column defaults.

A stationary stream of 32 features (half normal, a quarter log-normal, a quarter uniform) feeds a
reference of 20 batches; then batches with one change each. For every change the table shows
NormWatch's figure, whether NormWatch alerts within 3 logging steps (the same ``InputTracker`` and
``feature_drift`` code the callback runs, with the default thresholds), and what Evidently's
defaults flag on the same batches, re-implemented from its documentation (no dependency): per
numerical column, with more than 1,000 reference rows, the Wasserstein distance normed by the
reference std, drift at >= 0.1 (KS p < 0.05 at <= 1,000 rows); dataset drift when >= 50 % of the
columns drift. Then the false-alarm rate per feature and logging step on stationary streams.

Run: ``.venv/bin/python benchmarks/drift_sensitivity.py`` (about a minute; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from scipy import stats

from lightning_normwatch.config import Thresholds
from lightning_normwatch.judge.input_drift import InputTracker
from lightning_normwatch.stats.feature_drift import FeatureStats

F = 32
REFERENCE_STEPS = 20


def stream(rng: np.random.Generator, n: int) -> np.ndarray:
    """Standardized features of three shapes (so that shape changes and permutations are visible)."""
    a = rng.normal(size=(n, F // 2))
    b = (rng.lognormal(0, 0.5, size=(n, F // 4)) - np.exp(0.125)) / np.sqrt((np.exp(0.25) - 1) * np.exp(0.25))
    c = (rng.uniform(size=(n, F - F // 2 - F // 4)) - 0.5) * np.sqrt(12)
    return np.concatenate([a, b, c], 1)


def uniform_like(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Same mean and std per column, uniform shape."""
    return x.mean(0) + x.std(0) * (rng.uniform(size=x.shape) - 0.5) * np.sqrt(12)


def bimodal_like(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Same mean and std per column, two modes at +-0.95 std."""
    z = np.where(rng.uniform(size=x.shape) < 0.5, -0.95, 0.95) + 0.31 * rng.normal(size=x.shape)
    return x.mean(0) + x.std(0) * z


def one(col: int, fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    def change(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = x.copy()
        x[:, col] = fn(x[:, col])
        return x

    return change


CHANGES: list[tuple[str, Callable[[np.ndarray, np.random.Generator], np.ndarray], int]] = [
    ("none (stationary)", lambda x, r: x, 0),
    ("all: mean +0.25 σ", lambda x, r: x + 0.25, F),
    ("all: mean +0.5 σ", lambda x, r: x + 0.5, F),
    ("all: mean +1 σ", lambda x, r: x + 1.0, F),
    ("all: mean +2.5 σ", lambda x, r: x + 2.5, F),
    ("all: mean +6 σ", lambda x, r: x + 6.0, F),
    ("all: scale x1.25", lambda x, r: x * 1.25, F),
    ("all: scale x1.5", lambda x, r: x * 1.5, F),
    ("all: scale x2", lambda x, r: x * 2.0, F),
    ("all: scale x4", lambda x, r: x * 4.0, F),
    ("all: shape -> uniform, same mean/std", uniform_like, F),
    ("all: shape -> bimodal, same mean/std", bimodal_like, F),
    ("one: constant", one(3, lambda c: np.full_like(c, 0.3)), 1),
    ("one: scale x10", one(3, lambda c: c * 10), 1),
    ("one: mean +6 σ", one(3, lambda c: c + 6), 1),
    ("one: mean +0.5 σ", one(3, lambda c: c + 0.5), 1),
    ("two columns swapped (normal <-> log-normal)", lambda x, r: x[:, [*range(15), 16, 15, *range(17, F)]], 2),
]


def evidently_flags(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Evidently's default per-column drift test for numerical columns (documented defaults)."""
    out = np.zeros(ref.shape[1], dtype=bool)
    for j in range(ref.shape[1]):
        if len(ref) <= 1000:
            out[j] = stats.ks_2samp(ref[:, j], cur[:, j]).pvalue < 0.05
        else:
            std = ref[:, j].std()
            w = stats.wasserstein_distance(ref[:, j], cur[:, j]) / (std if std > 0 else 1.0)
            out[j] = w >= 0.1
    return out


def tracker_after_reference(rng: np.random.Generator, batch: int) -> tuple[InputTracker, np.ndarray]:
    tracker = InputTracker(reference_end=REFERENCE_STEPS)
    rows = []
    for step in range(REFERENCE_STEPS):
        x = stream(rng, batch)
        rows.append(x)
        feed(tracker, step, x)
    return tracker, np.concatenate(rows)


def feed(tracker: InputTracker, step: int, x: np.ndarray):  # noqa: ANN201
    th = Thresholds()
    anchor = tracker.anchor("input")
    stats_ = FeatureStats.of(x, anchor)
    return tracker.update("input", step, stats_, (th.input_mean_shift, th.input_scale, th.input_psi), th.input_noise_z)


def sensitivity(batch: int, seed: int = 0) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, change, expected in CHANGES:
        rng = np.random.default_rng(seed)
        tracker, reference = tracker_after_reference(rng, batch)
        alerted_at, flagged, figs = None, np.zeros(F, dtype=bool), {}
        ev_cols = []
        for k in range(3):
            x = change(stream(rng, batch), rng)
            figs, verdict = feed(tracker, REFERENCE_STEPS + k, x)
            ev_cols.append(evidently_flags(reference, x))
            if verdict is not None and alerted_at is None:
                alerted_at, flagged = k + 1, verdict.flagged
        figure = (
            f"shift {figs['feature_mean_shift_max']:.2f} σ, |log std| {figs['feature_std_log_ratio_max']:.2f}, "
            f"PSI {figs.get('feature_psi_max', float('nan')):.2f}"
        )
        nw = f"yes (step {alerted_at}, {int(flagged.sum())} features)" if alerted_at else "no"
        ev = np.mean(ev_cols, axis=0)
        dataset = np.mean([c.mean() >= 0.5 for c in ev_cols])
        evidently = f"{(ev > 0.5).sum()} columns; dataset drift {dataset:.0%} of batches"
        rows.append((name, figure, nw, evidently))
        del expected
    return rows


def false_alarms(batch: int, steps: int, seed: int = 1) -> tuple[float, float, int]:
    rng = np.random.default_rng(seed)
    tracker, reference = tracker_after_reference(rng, batch)
    nw = ev = 0
    alerts = 0
    ev_steps = min(steps, 200 if batch < 4096 else 50)  # Evidently's per-column tests cost more: a sample of steps
    for k in range(steps):
        x = stream(rng, batch)
        _, verdict = feed(tracker, REFERENCE_STEPS + k, x)
        if verdict is not None:
            nw += int(verdict.flagged.sum())
            alerts += 1
        if k < ev_steps:
            ev += int(evidently_flags(reference, x).sum())
    return nw / (steps * F), ev / (ev_steps * F), alerts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    t0 = time.time()
    batch = 256
    print(f"## Sensitivity: {F} features, batch {batch}, reference {REFERENCE_STEPS} batches, 3 changed batches\n")
    print("| change | NormWatch figure (3rd changed batch) | NormWatch alerts | Evidently defaults flag |")
    print("|---|---|---|---|")
    for row in sensitivity(batch):
        print("| " + " | ".join(row) + " |")
    print("\n## False alarms on stationary streams (per feature and logging step)\n")
    print("| batch | logging steps | NormWatch | NormWatch alerts | Evidently defaults (first 200 / 50 steps) |")
    print("|---:|---:|---:|---:|---:|")
    for b in (16, 256, 4096):
        steps = 100 if args.quick else (1000 if b < 4096 else 300)
        nw, ev, alerts = false_alarms(b, steps)
        print(f"| {b} | {steps} | {nw:.2e} | {alerts} | {ev:.3f} |")
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
