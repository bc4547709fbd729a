"""The Images-tab overview: a bounded history of per-tensor figures, drawn as depth x step heatmaps.

``Overview.add`` keeps, for the last ``max_steps`` logging steps, each watched tensor's figures
that the heatmaps show and which alerts were active; ``Overview.images`` draws them
(``heatmap.py``): the depth profile of the latest step, then scale (log10 std), drift of the scale
(log std / reference std, the ``scale_drift`` rule's figure), shape PSI (the ``shift`` rule's),
share of zeros and share of dead units. Rows are the watched tensors in execution order, labelled
with their type; cells where an alert on that figure was active are framed in red.

Example:
    >>> ov = Overview(max_steps=3)
    >>> for step in range(5):
    ...     ov.add(step, {"net.0": {"std": 1.0 + step, "zeros": 0.0}}, {"net.0": ("Linear", "preact")}, set())
    >>> ov.steps
    [2, 3, 4]
    >>> sorted(ov.images(Thresholds()))[:2]
    ['normwatch/overview/0_depth_profile', 'normwatch/overview/1_scale_log10_std']
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from ..config import Thresholds
from ..judge.alerts import SEVERITY
from .heatmap import Image, heatmap, profile
from .tags import OVERVIEW_TAG

__all__ = ["Overview", "OVERVIEW_TAG", "row_label"]

_FIGURES = ("std", "std_log_ratio", "shape_psi", "zeros", "dead", "update_ratio")


def _pct(v: float) -> str:
    return f"{v:.0%}"


@dataclass(frozen=True)
class _Map:
    """One heatmap of the overview: its tag, figure, title, colour range and the alert kinds framing its cells."""

    tag: str
    figure: str  # a name in _FIGURES, or "log_std", "dead_units" (activations only), "log_update" (log10 update_ratio)
    title: Callable[[Thresholds], str]
    marks: tuple[str, ...]
    scale: Callable[[Thresholds], tuple[float | None, float | None]] = lambda th: (None, None)
    signed: bool = False
    legend: Callable[[float], str] = lambda v: f"{v:.3g}"


#: the heatmaps after the depth profile, in tag order (one more heatmap: one more entry)
MAPS = (
    _Map(
        "1_scale_log10_std",
        "log_std",
        lambda th: "scale: log10 std (red frame: scale_drift or outlier alert)",
        ("scale_drift", "outlier"),
        legend=lambda v: f"1e{v:+.1f}",
    ),
    _Map(
        "2_scale_drift",
        "std_log_ratio",
        lambda th: (
            f"log(std / reference std): alert beyond +-{math.log(th.scale_drift):.2f} (x{th.scale_drift:g}); "
            "grey before the reference"
        ),
        ("scale_drift",),
        scale=lambda th: (-2 * math.log(th.scale_drift), 2 * math.log(th.scale_drift)),
        signed=True,
    ),
    _Map(
        "3_shape_psi",
        "shape_psi",
        lambda th: f"shape PSI vs reference: alert above {th.shift:g} (colour bar ends at twice that)",
        ("shift",),
        scale=lambda th: (0.0, 2 * th.shift),
    ),
    _Map(
        "4_zeros",
        "zeros",
        lambda th: "share of exact zeros (red frame: dead alert)",
        ("dead",),
        scale=lambda th: (0.0, 1.0),
        legend=_pct,
    ),
    _Map(
        "5_dead_units",
        "dead_units",
        lambda th: f"share of dead units, activations only: alert at {th.dead:.0%}",
        ("dead",),
        scale=lambda th: (0.0, 1.0),
        legend=_pct,
    ),
    _Map(  # the parameter side (docs/updates.md): modules with parameters only, drawn when it was measured
        "6_update_ratio",
        "log_update",
        lambda th: f"log10 update/weight ratio per step: alert above {th.update_large:g}; ~1e-3 is usual",
        ("update_size", "vanishing_gradient", "exploding_gradient"),
        scale=lambda th: (-6.0, 0.0),
        legend=lambda v: f"1e{v:+.1f}",
    ),
)


def row_label(key: str, type_name: str) -> str:
    """``net.1 (ReLU)``; batch inputs keep their name (``input (batch)``).

    Example:
        >>> row_label("net.1", "ReLU"), row_label("input", "batch")
        ('net.1 (ReLU)', 'input (batch)')
    """
    return f"{key} ({type_name})" if type_name else key


class Overview:
    """History of the figures drawn in the overview heatmaps (the last ``max_steps`` logging steps)."""

    def __init__(self, max_steps: int = 100) -> None:
        self.max_steps = max_steps
        self.rows: list[str] = []
        self.kinds: dict[str, tuple[str, str]] = {}  # key -> (type name, role)
        self._steps: deque[int] = deque(maxlen=max_steps)
        self._values: deque[dict[str, tuple[float, ...]]] = deque(maxlen=max_steps)
        self._active: deque[set[tuple[str, str]]] = deque(maxlen=max_steps)
        #: per step, its rows and ``[figures, tensors]`` values once a drawing needed them (None before)
        self._columns: deque[tuple[list[int], np.ndarray] | None] = deque(maxlen=max_steps)

    @property
    def steps(self) -> list[int]:
        return list(self._steps)

    def add(
        self,
        step: int,
        figures: dict[str, dict[str, float]],
        kinds: dict[str, tuple[str, str]],
        active: Iterable[tuple[str, str]],
    ) -> None:
        """Record one logging step: figures per tensor, ``(type name, role)`` per tensor, active ``(module, kind)``."""
        for key in figures:
            if key not in self.kinds:
                self.rows.append(key)
            self.kinds[key] = kinds.get(key, self.kinds.get(key, ("?", "other")))
        self._steps.append(step)
        self._values.append({k: tuple(f.get(n, math.nan) for n in _FIGURES) for k, f in figures.items()})
        # information (a non-Gaussian shape) is not a fault: only warnings and errors are marked
        self._active.append({(m, k) for m, k in active if SEVERITY.get(k, "warning") != "info"})
        self._columns.append(None)

    def _history(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Each figure ``[rows, steps]`` (with ``log_std`` and ``dead_units``) and where each alert kind was active."""
        index = {k: r for r, k in enumerate(self.rows)}
        cube = np.full((len(_FIGURES), len(self.rows), len(self._steps)), np.nan)
        active: dict[str, np.ndarray] = {}
        for c, (values, alerts) in enumerate(zip(self._values, self._active, strict=True)):
            if values:
                column = self._columns[c]
                if column is None:  # converted once: rows keep their index (new tensors are appended)
                    column = self._columns[c] = ([index[k] for k in values], np.array(list(values.values())).T)
                cube[:, column[0], c] = column[1]
            for key, kind in alerts:
                if key in index:
                    active.setdefault(kind, np.zeros(cube.shape[1:], dtype=bool))[index[key], c] = True
        figures = dict(zip(_FIGURES, cube, strict=True))
        with np.errstate(divide="ignore", invalid="ignore"):  # a std of 0 is -inf: the lowest colour
            figures["log_std"] = np.where(figures["std"] >= 0, np.log10(figures["std"]), np.nan)
        roles = [self.kinds[k][1] for k in self.rows]
        applies = np.array([r in ("activation", "bounded", "other") for r in roles], dtype=bool)[:, None]
        figures["dead_units"] = np.where(applies, figures["dead"], np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):  # an update of 0 (learning rate 0): the lowest colour
            figures["log_update"] = np.where(figures["update_ratio"] >= 0, np.log10(figures["update_ratio"]), np.nan)
        return figures, active

    def _notes(self, figures: dict[str, np.ndarray], latest: set[tuple[str, str]]) -> list[str]:
        """The depth profile's note of each row: std relative to the reference, active alerts (short, to fit a card)."""
        slr = figures["std_log_ratio"][:, -1]
        notes = []
        for r, key in enumerate(self.rows):
            ratio = f"x{math.exp(slr[r]):.2g}" if math.isfinite(slr[r]) else "-"
            notes.append(f"{ratio}  {','.join(sorted(k for m, k in latest if m == key))}".rstrip())
        return notes

    def images(self, th: Thresholds) -> dict[str, Image]:
        """The overview images by tag (empty before the first ``add``): the depth profile, then ``MAPS``."""
        if not self._steps:
            return {}
        labels = [row_label(k, self.kinds[k][0]) for k in self.rows]
        latest = self._active[-1]
        alerted = [any(m == k for m, _ in latest) for k in self.rows]
        figures, active = self._history()
        title = f"std of each watched tensor at step {self.steps[-1]}, x its reference std, active alerts"
        notes = self._notes(figures, latest)
        out = {f"{OVERVIEW_TAG}/0_depth_profile": profile(figures["std"][:, -1], labels, title, notes, alerted)}
        none = np.zeros(figures["std"].shape, dtype=bool)
        for m in MAPS:
            if m.figure == "log_update" and not np.isfinite(figures["update_ratio"]).any():
                continue  # updates=False, or no optimizer step measured
            vmin, vmax = m.scale(th)
            out[f"{OVERVIEW_TAG}/{m.tag}"] = heatmap(
                figures[m.figure],
                labels,
                self.steps,
                m.title(th),
                vmin=vmin,
                vmax=vmax,
                signed=m.signed,
                marked=np.logical_or.reduce([active.get(k, none) for k in m.marks]),
                alerted_rows=alerted,
                legend=m.legend,
            )
        return out
