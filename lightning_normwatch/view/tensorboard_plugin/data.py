"""What the NormWatch tab reads, through TensorBoard's data provider only (never the event files).

- scalars ``normwatch/<tensor>/<figure>`` and ``normwatch/thresholds/*`` (plugin ``scalars``);
- histograms ``normwatch/<tensor>`` (plugin ``histograms``; their description names the layer type);
- the Text panels ``normwatch/alerts`` and ``normwatch/watched`` (plugin ``text``), parsed with
  ``report.parse_alerts_markdown`` / ``report.parse_watched_markdown``.

Every function takes a ``Source`` (the provider, the request context and the experiment id).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...output.tags import ALERT_TAG, WATCHED_TAG
from ..report import latest_text, parse_alerts_markdown, parse_watched_markdown, split_tag

__all__ = ["Source", "BadRequest", "RunData", "normwatch_runs", "load_run", "read_series", "read_histograms"]

#: threshold scalars drawn on each figure's chart: (upper, lower) names under ``normwatch/thresholds/``
THRESHOLDS = {
    "std_log_ratio": ("log_scale_drift", "log_scale_drift_low"),
    "mean_shift": ("mean_drift", "mean_drift_low"),
    "shape_psi": ("shift", None),
    "dead": ("dead", None),
    "saturated": ("saturated", None),
    "feature_mean_shift_max": ("input_mean_shift", None),
    "feature_std_log_ratio_max": ("input_log_scale", None),
    "feature_psi_max": ("input_psi", None),
}
#: drift figures: they start once the reference window is complete
DRIFT = ("std_log_ratio", "mean_shift", "shape_psi")
#: every stored point is read (TensorBoard's reservoir already bounds how many it keeps)
_ALL = 1_000_000


class BadRequest(ValueError):
    """A request parameter that names nothing in the log directory, or is malformed (HTTP 400)."""


@dataclass(frozen=True)
class Source:
    """Where data comes from: ``context.data_provider``, the request's context and experiment id."""

    provider: Any
    ctx: Any
    eid: str

    def list(self, plugin: str, runs: Sequence[str] | None = None, kind: str = "scalars") -> dict[str, dict[str, Any]]:
        from tensorboard.data import provider as p

        fn = self.provider.list_scalars if kind == "scalars" else self.provider.list_tensors
        filt = p.RunTagFilter(runs=list(runs)) if runs is not None else None
        return fn(self.ctx, experiment_id=self.eid, plugin_name=plugin, run_tag_filter=filt)

    def read(
        self, plugin: str, run: str, tags: Sequence[str], kind: str = "scalars", downsample: int = _ALL
    ) -> dict[str, list[Any]]:
        from tensorboard.data import provider as p

        if not tags:
            return {}
        fn = self.provider.read_scalars if kind == "scalars" else self.provider.read_tensors
        filt = p.RunTagFilter(runs=[run], tags=list(tags))
        out = fn(self.ctx, experiment_id=self.eid, plugin_name=plugin, downsample=downsample, run_tag_filter=filt)
        return out.get(run, {})


@dataclass
class RunData:
    """One run's index: tensors in execution order, their figures, alert rows and thresholds."""

    run: str
    tensors: list[dict[str, str]]  # {"name", "type", "role"} in execution order
    figures: dict[str, list[str]]  # tensor -> logged figures
    series: dict[str, Any]  # tag -> ScalarTimeSeries (max_step ...)
    alerts: list[dict[str, Any]]
    thresholds: dict[str, float]
    histograms: set[str]  # tensors with histograms
    alert_table: bool

    @property
    def types(self) -> dict[str, str]:
        return {t["name"]: t["type"] for t in self.tensors}

    @property
    def last_step(self) -> int:
        return max((s.max_step for s in self.series.values()), default=0)

    def tensor(self, name: str) -> dict[str, str]:
        for t in self.tensors:
            if t["name"] == name:
                return t
        known = ", ".join(t["name"] for t in self.tensors[:8])
        raise BadRequest(f"unknown tensor {name!r} in run {self.run!r} (watched: {known} ...)")


def normwatch_runs(src: Source, runs: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """``{run: {tag: time series}}`` of the runs (all, or those named) with NormWatch scalars, tags in listing order."""
    out = {}
    for run, tags in src.list("scalars", runs).items():
        mine = {t: s for t, s in tags.items() if t.startswith("normwatch/")}
        if any(split_tag(t) for t in mine):
            out[run] = mine
    return out


def check_run(runs: dict[str, Any], run: str | None) -> str:
    """``run`` when it has NormWatch data, else ``BadRequest`` listing the runs that have."""
    if not run:
        raise BadRequest("missing parameter 'run'")
    if run not in runs:
        names = ", ".join(sorted(runs)[:10]) or "none"
        raise BadRequest(f"unknown run {run!r}: runs with NormWatch data are {names}")
    return run


def last_text(src: Source, run: str, tag: str, listing: dict[str, Any]) -> str | None:
    """The latest text written to a Text-panel tag (``tag`` or ``tag/text_summary``), or None (``latest_text``: the
    same choice as ``normwatch report``)."""
    names = [t for t in listing if t in (tag, f"{tag}/text_summary")]
    data = (datum for series in src.read("text", run, names, kind="tensors").values() for datum in series)
    return latest_text(data, lambda datum: np.asarray(datum.numpy))


_DESCRIBED = re.compile(r"^(?P<name>.+?)(?: \((?P<type>[^()]+)\))?, (?P<role>\w+)$")


def _tensors(watched: str | None, figures: dict[str, list[str]], hists: dict[str, Any]) -> list[dict[str, str]]:
    """Tensors in execution order: the watched panel's order, else the order the scalars were first logged."""
    rows = parse_watched_markdown(watched or "")
    known = {name: (type_name, role) for name, type_name, role in rows}
    order = [name for name, _, _ in rows] + [t for t in figures if t not in known]
    out = []
    for name in order:
        if name not in figures:
            continue
        type_name, role = known.get(name, ("", ""))
        if not type_name and f"normwatch/{name}" in hists:  # older runs: the histogram's description
            m = _DESCRIBED.match(hists[f"normwatch/{name}"].description or "")
            if m:
                type_name, role = m["type"] or "", m["role"]
        out.append({"name": name, "type": type_name, "role": role or "other"})
    return out


def load_run(src: Source, run: str, series: dict[str, Any]) -> RunData:
    """Index one run: its tensors, figures, thresholds (latest values), alerts and histogram tags."""
    figures: dict[str, list[str]] = {}
    for tag in series:
        parts = split_tag(tag)
        if parts:
            figures.setdefault(parts[0], []).append(parts[1])
    texts = src.list("text", [run], kind="tensors").get(run, {})
    hists = src.list("histograms", [run], kind="tensors").get(run, {})
    alert_text = last_text(src, run, ALERT_TAG, texts)
    tensors = _tensors(last_text(src, run, WATCHED_TAG, texts), figures, hists)
    th_tags = [t for t in series if t.startswith("normwatch/thresholds/")]
    thresholds = {}
    for tag, data in src.read("scalars", run, th_tags).items():
        if data:
            thresholds[tag.rsplit("/", 1)[1]] = float(data[-1].value)
    return RunData(
        run=run,
        tensors=tensors,
        figures=figures,
        series=series,
        alerts=parse_alerts_markdown(alert_text or ""),
        thresholds=thresholds,
        histograms={t[len("normwatch/") :] for t in hists if t.startswith("normwatch/")},
        alert_table=alert_text is not None,
    )


def read_series(
    src: Source, data: RunData, tags: Sequence[str], downsample: int = _ALL
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{tag: (steps, values)}`` as numpy arrays, for the tags the run has (at most ``downsample`` points each)."""
    present = [t for t in tags if t in data.series]
    out = {}
    for tag, points in src.read("scalars", data.run, present, downsample=downsample).items():
        steps = np.fromiter((p.step for p in points), dtype=np.int64, count=len(points))
        values = np.fromiter((p.value for p in points), dtype=np.float64, count=len(points))
        order = np.argsort(steps, kind="stable")
        out[tag] = (steps[order], values[order])
    return out


def read_histograms(src: Source, data: RunData, tensor: str) -> tuple[list[int], list[np.ndarray]]:
    """One tensor's histograms: the steps and, per step, rows ``[left, right, count]``."""
    points = src.read("histograms", data.run, [f"normwatch/{tensor}"], kind="tensors").get(f"normwatch/{tensor}", [])
    points = sorted(points, key=lambda p: p.step)
    return [p.step for p in points], [np.asarray(p.numpy, dtype=np.float64).reshape(-1, 3) for p in points]


def first_step(src: Source, data: RunData, figure: str) -> int | None:
    """The first step at which ``figure`` was logged, read on the first tensor that has it (None if none did).

    The drift figures of all tensors start at the same step (the end of the reference window).
    """
    for t in data.tensors:
        if figure in data.figures.get(t["name"], ()):
            steps, _ = read_series(src, data, [f"normwatch/{t['name']}/{figure}"]).get(
                f"normwatch/{t['name']}/{figure}", (np.zeros(0), None)
            )
            return int(steps[0]) if len(steps) else None
    return None


def finite(value: float) -> float | str:
    """A JSON-safe number: 4 significant digits; ``"NaN"`` / ``"Infinity"`` / ``"-Infinity"`` as strings.

    Example:
        >>> finite(0.123456), finite(float("nan")), finite(float("-inf"))
        (0.1235, 'NaN', '-Infinity')
    """
    if math.isfinite(value):
        return float(f"{value:.4g}")
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
