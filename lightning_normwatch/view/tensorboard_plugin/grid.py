"""The depth x step heatmap of one figure: columns, cell values, colour range and outlined alert cells (pure numpy).

Rows are tensors in execution order; a column is a step bin ``(previous column's step, its step]``
holding each row's last value in the bin, so a run of any length fits ``max_columns`` columns and
series TensorBoard sampled at different steps still line up.

Example:
    >>> import numpy as np
    >>> cols = columns([np.array([0, 10, 20, 30])], max_columns=2)
    >>> cols.tolist()
    [0, 30]
    >>> cells(np.array([0, 10, 20, 30]), np.array([1.0, 2.0, 3.0, 4.0]), cols).tolist()
    [1.0, 4.0]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FigureSpec", "FIGURES", "columns", "cells", "colour_range", "marks"]


@dataclass(frozen=True)
class FigureSpec:
    """One heatmap figure: the logged scalar(s) it shows, its colour scale and the alerts it outlines."""

    label: str
    names: tuple[str, ...]  # scalar figure names, the first one logged is used
    scale: str  # "log" (log10 of the value), "diverging" (around 0), "unit" ([0, 1]), "sequential"
    threshold: str | None  # the threshold scalar (normwatch/thresholds/<name>)
    kinds: tuple[str, ...]  # alert kinds whose cells beyond the threshold are outlined


FIGURES: dict[str, FigureSpec] = {
    "scale": FigureSpec("scale: log10 std", ("std",), "log", None, ("vanishing", "exploding", "outlier")),
    "scale_drift": FigureSpec(
        "scale drift: ln(std / reference std)", ("std_log_ratio",), "diverging", "log_scale_drift", ("scale_drift",)
    ),
    "mean_drift": FigureSpec(
        "mean drift: mean shift in reference stds", ("mean_shift",), "diverging", "mean_drift", ("mean_drift",)
    ),
    "shape_psi": FigureSpec("shape PSI against the reference", ("shape_psi",), "sequential", "shift", ("shift",)),
    "zeros": FigureSpec("share of exact zeros", ("zeros",), "unit", None, ()),
    "dead": FigureSpec("share of dead units", ("dead",), "unit", "dead", ("dead",)),
    "saturated": FigureSpec("share of saturated outputs", ("saturated",), "unit", "saturated", ("saturated",)),
    "update": FigureSpec("update size: ‖ΔW‖ / ‖W‖ of the optimizer step", ("update_ratio",), "log", None, ()),
}


def columns(step_arrays: Sequence[np.ndarray], max_columns: int) -> np.ndarray:
    """The column steps: every logged step, or ``max_columns`` of them evenly spaced (the last one kept)."""
    steps = np.unique(np.concatenate([np.asarray(s, dtype=np.int64) for s in step_arrays] or [np.zeros(0, np.int64)]))
    if len(steps) <= max_columns:
        return steps
    idx = np.unique(np.round(np.linspace(len(steps) - 1, 0, max_columns)[::-1]).astype(int))
    return steps[idx]


def cells(steps: np.ndarray, values: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Each column's value: the row's last value at a step in ``(previous column, column]`` (NaN if none).

    Measured NaN stays NaN too; the page tells the two apart with ``present``.
    """
    out = np.full(len(cols), np.nan)
    if not len(steps):
        return out
    pos = np.searchsorted(steps, cols, side="right") - 1  # last logged step <= column step
    prev = np.concatenate([[-np.inf], cols[:-1]])
    ok = (pos >= 0) & (steps[np.clip(pos, 0, None)] > prev)
    out[ok] = values[pos[ok]]
    return out


def present(steps: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Whether each column holds a logged value of the row."""
    if not len(steps):
        return np.zeros(len(cols), bool)
    pos = np.searchsorted(steps, cols, side="right") - 1
    prev = np.concatenate([[-np.inf], cols[:-1]])
    return (pos >= 0) & (steps[np.clip(pos, 0, None)] > prev)


def colour_range(spec: FigureSpec, matrix: np.ndarray, threshold: float | None) -> tuple[float, float]:
    """The values at the two ends of the colour bar (in the shown unit: log10 for ``log`` figures).

    Example:
        >>> spec = FIGURES["scale_drift"]
        >>> colour_range(spec, np.array([[0.1, -6.0]]), 1.386)
        (-2.772, 2.772)
    """
    finite = matrix[np.isfinite(matrix)]
    known = threshold is not None and math.isfinite(threshold) and threshold > 0
    if spec.scale == "unit":
        return 0.0, 1.0
    if spec.scale == "diverging":  # saturates at twice the threshold: what crosses it stands out
        limit = 2 * abs(threshold) if known else (float(np.percentile(np.abs(finite), 99)) if len(finite) else 1.0)
        limit = round(limit or 1.0, 3)
        return -limit, limit
    if spec.scale == "log":
        finite = np.log10(finite[finite > 0])
    if not len(finite):
        return 0.0, 1.0
    lo, hi = float(np.percentile(finite, 1)), float(np.percentile(finite, 99))
    if spec.scale == "sequential":
        lo = 0.0
        if known:
            hi = 2 * threshold
    if hi <= lo:
        hi = lo + 1.0
    return round(lo, 3), round(hi, 3)


def _beyond(value: float, threshold: float, two_sided: bool) -> bool:
    if not (math.isfinite(value) and math.isfinite(threshold)):
        return False
    return abs(value) > threshold if two_sided else value > threshold


def marks(
    spec: FigureSpec,
    rows: Sequence[str],
    matrix: np.ndarray,
    cols: np.ndarray,
    alerts: Sequence[Mapping[str, Any]],
    threshold: float | None,
) -> list[list[Any]]:
    """Outlined cells ``[row, column, severity]``: each alert's first cell, and, from there on, the
    cells of a row with an alert of this figure's kinds where the figure is beyond its threshold.

    Example:
        >>> spec = FIGURES["dead"]
        >>> m = np.array([[0.0, 0.9, 0.2, 0.8]])
        >>> marks(spec, ["net.1"], m, np.array([0, 1, 2, 3]), [{"module": "net.1", "kind": "dead", "step": 1,
        ...       "severity": "warning"}], 0.5)
        [[0, 1, 'warning'], [0, 3, 'warning']]
    """
    index = {name: i for i, name in enumerate(rows)}
    out: dict[tuple[int, int], str] = {}
    two_sided = spec.scale == "diverging"
    for alert in alerts:
        row = index.get(alert["module"])
        if row is None or not len(cols):
            continue
        start = min(int(np.searchsorted(cols, alert["step"])), len(cols) - 1)
        out.setdefault((row, start), alert["severity"])
        if threshold is None or alert["kind"] not in spec.kinds:
            continue
        for col in range(start + 1, len(cols)):
            if _beyond(float(matrix[row, col]), threshold, two_sided):
                out.setdefault((row, col), alert["severity"])
    return [[r, c, s] for (r, c), s in sorted(out.items())]
