"""Input features over training: their scales on recent batches and their per-feature drift.

``InputTracker`` keeps, per input: the anchor its feature bins are placed by, the input reference,
how many consecutive logging steps each feature has changed, and the recent window of batches.

**Feature scales** (``feature_scale``): on a *recent* window of batches (at least ``min_rows`` rows
from the latest logging steps, so that a unit change mid-run is seen within a few logging steps).
**Per-feature drift** against the input reference (``stats.feature_drift.feature_drift``): inputs
need no warm-up, so their reference holds every logging step before ``warmup_steps + reference_steps``.

Example:
    >>> tracker = InputTracker(reference_end=10)
    >>> tracker.anchor("input") is None
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..stats.feature_drift import Anchor, FeatureDrift, FeatureReference, FeatureStats, describe_drift, feature_drift
from ..stats.figures import feature_figures
from ..stats.moments import merge_groups

__all__ = ["InputTracker", "DriftVerdict"]


@dataclass
class DriftVerdict:
    """The per-feature drift of one input at one step, with the features persistently drifted."""

    drift: FeatureDrift
    flagged: np.ndarray
    message: str
    score: float


@dataclass
class _Input:
    anchor: Anchor | None = None
    reference: FeatureReference = field(default_factory=FeatureReference)
    persist: np.ndarray | None = None
    recent: list[tuple[np.ndarray, ...]] = field(default_factory=list)


class InputTracker:
    """Per-input state over training: anchors, references, persistence counters, recent moments.

    Args:
        reference_end: logging steps before this global step form the input reference.
        persistence: consecutive logging steps a feature must have changed to count as drifted.
        min_rows: rows the recent window for feature scales holds at least.
        window: logging steps the recent window holds at most.
    """

    def __init__(self, reference_end: int, persistence: int = 2, min_rows: int = 256, window: int = 8) -> None:
        self.reference_end = reference_end
        self.persistence = persistence
        self.min_rows = min_rows
        self.window = window
        self.inputs: dict[str, _Input] = {}

    def anchor(self, key: str) -> Anchor | None:
        state = self.inputs.get(key)
        return state.anchor if state is not None else None

    def scale_figures(self, key: str, n: np.ndarray, mean: np.ndarray, m2, m3, m4) -> dict[str, float]:  # noqa: ANN001
        """Feature scales and within-feature shape on the recent window of batches."""
        state = self.inputs.setdefault(key, _Input())
        if state.recent and len(state.recent[-1][0]) != len(n):
            state.recent = []
        state.recent.append(tuple(np.asarray(a, dtype=np.float64) for a in (n, mean, m2, m3, m4)))
        # keep the latest steps that hold min_rows rows (at most `window` steps)
        rows, keep = 0.0, 0
        for moments in reversed(state.recent):
            keep += 1
            rows += float(moments[0].max()) if len(moments[0]) else 0.0
            if rows >= self.min_rows or keep >= self.window:
                break
        state.recent = state.recent[-keep:]
        merged = merge_groups(*(np.stack(parts) for parts in zip(*state.recent, strict=True)))
        # a full window of small batches is judged on what it holds
        return feature_figures(*merged, min_rows=min(self.min_rows, rows) if keep >= self.window else self.min_rows)

    def update(
        self,
        key: str,
        step: int,
        current: FeatureStats,
        floors: tuple[float, float, float],
        noise_z: float,
        names: list[str] | None = None,
    ) -> tuple[dict[str, float], DriftVerdict | None]:
        """Anchor, reference and drift for one input at one logging step.

        Returns the drift figures (empty before the reference is complete) and, once some features
        have changed on ``persistence`` consecutive logging steps, the verdict naming them.
        """
        state = self.inputs.setdefault(key, _Input())
        if state.anchor is None or len(state.anchor.center) != len(current.n):
            with np.errstate(invalid="ignore", divide="ignore"):
                state.anchor = Anchor.of(current.mean, np.sqrt(current.m2 / np.maximum(current.n, 1)))
            state.reference, state.persist = FeatureReference(), None
        if step < self.reference_end:
            state.reference.add(current)
            return {}, None
        if state.reference.stats is None or state.reference.steps == 0:
            state.reference.add(current)  # no logging step fell before the end: the first one is the reference
            return {}, None
        d = feature_drift(state.reference, current, *floors, noise_z=noise_z)
        persist = state.persist if state.persist is not None and len(state.persist) == len(d.changed) else None
        persist = np.where(d.changed, (persist if persist is not None else 0) + 1, 0)
        state.persist = persist
        flagged = persist >= self.persistence
        figures = _drift_figures(d, flagged)
        if not flagged.any():
            return figures, None
        message = describe_drift(d, flagged, current.mean, names)
        return figures, DriftVerdict(d, flagged, message, float(d.score[flagged].max()))

    def state(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for key, s in self.inputs.items():
            out[key] = {
                "anchor": None if s.anchor is None else [s.anchor.center.tolist(), s.anchor.scale.tolist()],
                "reference": s.reference.state(),
                "persist": None if s.persist is None else s.persist.tolist(),
                "recent": [[a.tolist() for a in moments] for moments in s.recent],
            }
        return out

    def load(self, state: dict[str, Any]) -> None:
        self.inputs = {}
        for key, s in state.items():
            anchor = None if s["anchor"] is None else Anchor(*(np.asarray(a, dtype=np.float64) for a in s["anchor"]))
            self.inputs[key] = _Input(
                anchor,
                FeatureReference.from_state(s["reference"]),
                None if s["persist"] is None else np.asarray(s["persist"], dtype=np.int64),
                [tuple(np.asarray(a, dtype=np.float64) for a in moments) for moments in s["recent"]],
            )


def _drift_figures(d: FeatureDrift, flagged: np.ndarray) -> dict[str, float]:
    """Scalars of one input's per-feature drift: share drifted, worst feature and its figures."""
    with np.errstate(invalid="ignore"):
        abs_shift = np.where(np.isfinite(d.mean_shift), np.abs(d.mean_shift), 0.0)
        abs_log = np.where(np.isfinite(d.std_log_ratio), np.abs(d.std_log_ratio), 0.0)
    worst = int(np.argmax(d.score)) if d.score.max() > 0 else int(np.argmax(abs_shift))
    out = {
        "feature_drift_share": float(flagged.mean()) if len(flagged) else math.nan,
        "feature_changed_share": float(d.changed.mean()) if len(flagged) else math.nan,
        "feature_drift_worst": float(worst),
        "feature_mean_shift_max": float(abs_shift.max()) if len(abs_shift) else math.nan,
        "feature_std_log_ratio_max": float(abs_log.max()) if len(abs_log) else math.nan,
    }
    if np.isfinite(d.psi).any():
        out["feature_psi_max"] = float(np.nanmax(d.psi))
    return out
