"""The JSON documents of the NormWatch tab's routes, built from one run's data (see ``data.py``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import grid
from .data import DRIFT, THRESHOLDS, BadRequest, RunData, Source, finite, first_step, read_histograms, read_series
from .diagnosis import FIGURE_OF_KIND, diagnosis, split_hint
from .histograms import merge, nearest, rebin, reference_normal, reference_steps
from .notes import not_measured

__all__ = ["run_summary", "heatmap", "tensor_detail", "histogram"]


def _figure_name(data: RunData, spec: grid.FigureSpec) -> str | None:
    """The first of the spec's scalar names that some tensor of the run logged."""
    logged = {f for figs in data.figures.values() for f in figs}
    return next((n for n in spec.names if n in logged), None)


def _alerts(rows: list[dict[str, Any]], types: dict[str, str]) -> list[dict[str, Any]]:
    """The diagnosis as JSON: each alert with its layer type, the heatmap figure that shows it, and its hint."""

    def clean(row: dict[str, Any]) -> dict[str, Any]:
        out = {k: (finite(v) if isinstance(v, float) else v) for k, v in row.items() if k != "followers"}
        out["figure"] = FIGURE_OF_KIND.get(row["kind"], "scale")
        out["type"] = types.get(row["module"], "")
        if not out.get("hint"):
            out["message"], out["hint"] = split_hint(str(row["message"]))
        return out

    return [dict(clean(r), followers=[clean(f) for f in r["followers"]]) for r in diagnosis(rows)]


def run_summary(src: Source, data: RunData) -> dict[str, Any]:
    """``/run``: tensors, the heatmap figures this run has, its diagnosis and the "not measured" lines."""
    first_drift = first_step(src, data, DRIFT[0])
    figures = [
        {"id": key, "label": spec.label} for key, spec in grid.FIGURES.items() if _figure_name(data, spec) is not None
    ]
    return {
        "run": data.run,
        "last_step": data.last_step,
        "tensors": [dict(t, figures=data.figures.get(t["name"], [])) for t in data.tensors],
        "figures": figures,
        "alerts": _alerts(data.alerts, data.types),
        "alert_count": len(data.alerts),
        "thresholds": {k: finite(v) for k, v in data.thresholds.items()},
        "first_drift": first_drift,
        "not_measured": not_measured(
            data.tensors, data.figures, data.last_step, first_drift, data.thresholds, data.histograms, data.alert_table
        ),
    }


def heatmap(src: Source, data: RunData, figure: str, max_columns: int, part: slice = slice(None)) -> dict[str, Any]:
    """``/heatmap``: one figure for every tensor (rows) and step bin (columns), the colour range, the alert cells.

    ``part``: the rows whose values are read (the page first asks for the rows in view); every row is
    labelled, ``values`` holds the part's rows from ``first``, ``marks`` count rows from 0.
    """
    spec = grid.FIGURES.get(figure)
    if spec is None:
        raise BadRequest(f"unknown figure {figure!r}: one of {', '.join(grid.FIGURES)}")
    name = _figure_name(data, spec)
    if name is None:
        raise BadRequest(f"figure {figure!r} was not logged in run {data.run!r}")
    names = [t["name"] for t in data.tensors]
    first, stop, _ = part.indices(len(names))
    rows = names[first:stop]
    series = read_series(src, data, [f"normwatch/{r}/{name}" for r in rows])
    empty = (np.zeros(0, np.int64), np.zeros(0))
    per_row = [series.get(f"normwatch/{r}/{name}", empty) for r in rows]
    # the same columns for any part: the first tensor's std steps (logged at every logging step, so drift's
    # missing start shows), and the figure's last step
    whole = read_series(src, data, [f"normwatch/{names[0]}/std"]).get(f"normwatch/{names[0]}/std", empty)[0]
    last = [data.series[t].max_step for r in names if (t := f"normwatch/{r}/{name}") in data.series]
    cols = grid.columns([whole, np.array(last[-1:] and [max(last)], dtype=np.int64)], max_columns)
    matrix = np.array([grid.cells(s, v, cols) for s, v in per_row]).reshape(len(rows), len(cols))
    has = np.array([grid.present(s, cols) for s, _ in per_row]).reshape(len(rows), len(cols))
    threshold = data.thresholds.get(spec.threshold) if spec.threshold else None
    lo, hi = grid.colour_range(spec, matrix, threshold)
    alerts = [a for a in data.alerts if a["module"] in set(rows)]
    values = [[finite(float(v)) if ok else None for v, ok in zip(row, hrow, strict=True)] for row, hrow in
              zip(matrix, has, strict=True)]  # fmt: skip
    return {
        "run": data.run,
        "figure": figure,
        "name": name,
        "label": spec.label,
        "scale": spec.scale,
        "range": [lo, hi],
        "threshold": None if threshold is None else finite(threshold),
        "rows": [f"{t['name']} ({t['type']})" if t["type"] else t["name"] for t in data.tensors],
        "tensors": names,
        "first": first,
        "complete": len(rows) == len(names),
        "steps": cols.tolist(),
        "values": values,
        "marks": [[r + first, c, s] for r, c, s in grid.marks(spec, rows, matrix, cols, alerts, threshold)],
    }


def tensor_detail(src: Source, data: RunData, tensor: str) -> dict[str, Any]:
    """``/tensor``: every figure of one tensor over steps, with its threshold lines, and its alerts."""
    info = data.tensor(tensor)
    names = data.figures.get(tensor, [])
    series = read_series(src, data, [f"normwatch/{tensor}/{f}" for f in names])
    figures = {}
    for f in names:
        steps, values = series.get(f"normwatch/{tensor}/{f}", (np.zeros(0), np.zeros(0)))
        high, low = THRESHOLDS.get(f, (None, None))
        lines = {k: finite(data.thresholds[n]) for k, n in (("high", high), ("low", low)) if n in data.thresholds}
        figures[f] = {"steps": steps.tolist(), "values": [finite(float(v)) for v in values], "thresholds": lines}
    alerts = [a for a in _alerts(data.alerts, data.types) if a["module"] == tensor]
    followed = [f for a in _alerts(data.alerts, data.types) for f in a["followers"] if f["module"] == tensor]
    has_hist = tensor in data.histograms
    return {"run": data.run, **info, "figures": figures, "alerts": alerts + followed, "histograms": has_hist}


def _at(series: dict[str, tuple[np.ndarray, np.ndarray]], tag: str, step: int) -> float:
    steps, values = series.get(tag, (np.zeros(0, np.int64), np.zeros(0)))
    hit = np.nonzero(steps == step)[0]
    return float(values[hit[-1]]) if len(hit) else math.nan


def histogram(src: Source, data: RunData, tensor: str, step: int, bins: int = 60) -> dict[str, Any]:
    """``/histogram``: the histogram at the logged step nearest ``step``, the reference window's, both normals."""
    data.tensor(tensor)
    steps, hists = read_histograms(src, data, tensor)
    if not steps:
        raise BadRequest(f"no histograms of {tensor!r} in run {data.run!r}")
    i = nearest(steps, step)
    base = f"normwatch/{tensor}/"
    series = read_series(src, data, [base + f for f in ("mean", "std", "std_log_ratio", "mean_shift")])
    drift_steps = series.get(base + "std_log_ratio", (np.zeros(0, np.int64), None))[0]
    ref = reference_steps(steps, int(drift_steps[0]) if len(drift_steps) else None)
    ref_hist = merge([hists[steps.index(s)] for s in ref])
    parts = [hists[i], ref_hist] if len(ref_hist) else [hists[i]]
    edges, dens = rebin(parts, bins)
    mean, std = _at(series, base + "mean", steps[i]), _at(series, base + "std", steps[i])
    drift = _at(series, base + "std_log_ratio", steps[i]), _at(series, base + "mean_shift", steps[i])
    normal = reference_normal(mean, std, *drift)
    return {
        "run": data.run,
        "tensor": tensor,
        "step": steps[i],
        "requested_step": step,
        "edges": [finite(float(e)) for e in edges],
        "density": [finite(float(d)) for d in dens[0]],
        "count": finite(float(hists[i][:, 2].sum())),
        "normal": {"mean": finite(mean), "std": finite(std)} if math.isfinite(mean + std) else None,
        "reference": None if len(ref_hist) == 0 else {
            "steps": [ref[0], ref[-1]],
            "density": [finite(float(d)) for d in dens[1]],
            "normal": None if normal is None else {"mean": finite(normal[0]), "std": finite(normal[1])},
        },
        "steps": steps,
    }  # fmt: skip
