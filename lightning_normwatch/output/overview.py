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
from collections.abc import Iterable

import numpy as np

from ..config import Thresholds
from ..judge.alerts import SEVERITY
from .heatmap import Image, heatmap, profile
from .tags import OVERVIEW_TAG

__all__ = ["Overview", "OVERVIEW_TAG", "row_label"]

_FIGURES = ("std", "std_log_ratio", "shape_psi", "zeros", "dead", "update_ratio")
#: alert kinds whose active state frames the cells of each figure
_MARKS = {
    "std": ("scale_drift", "outlier"),
    "std_log_ratio": ("scale_drift",),
    "shape_psi": ("shift",),
    "zeros": ("dead",),
    "dead": ("dead",),
    "update_ratio": ("update_size", "vanishing_gradient", "exploding_gradient"),
}


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

    def _matrix(self, figure: str) -> np.ndarray:
        i = _FIGURES.index(figure)
        out = np.full((len(self.rows), len(self._steps)), np.nan)
        index = {k: r for r, k in enumerate(self.rows)}
        for c, values in enumerate(self._values):
            for key, v in values.items():
                out[index[key], c] = v[i]
        return out

    def _marks(self, figure: str) -> np.ndarray:
        kinds = _MARKS[figure]
        out = np.zeros((len(self.rows), len(self._steps)), dtype=bool)
        for r, key in enumerate(self.rows):
            for c, active in enumerate(self._active):
                out[r, c] = any((key, k) in active for k in kinds)
        return out

    def _update_image(
        self, labels: list[str], steps: list[int], alerted: list[bool], th: Thresholds
    ) -> dict[str, Image]:
        """The update-ratio heatmap, when the parameter side was measured (modules with parameters only)."""
        updates = self._matrix("update_ratio")
        if not np.isfinite(updates).any():
            return {}
        with np.errstate(divide="ignore", invalid="ignore"):
            log_updates = np.where(updates >= 0, np.log10(updates), np.nan)
        title = (
            f"log10 update/weight ratio per step: alert above {th.update_large:g} (red frame: update_size, "
            "vanishing/exploding gradient); ~1e-3 is usual"
        )
        image = heatmap(
            log_updates, labels, steps, title, vmin=-6.0, vmax=0.0, marked=self._marks("update_ratio"),
            alerted_rows=alerted, legend=lambda v: f"1e{v:+.1f}",
        )  # fmt: skip
        return {f"{OVERVIEW_TAG}/6_update_ratio": image}

    def images(self, th: Thresholds) -> dict[str, Image]:
        """The overview images by tag (empty before the first ``add``)."""
        if not self._steps:
            return {}
        labels = [row_label(k, self.kinds[k][0]) for k in self.rows]
        latest = self._active[-1]
        alerted = [any(m == k for m, _ in latest) for k in self.rows]
        steps = self.steps
        std = self._matrix("std")
        with np.errstate(divide="ignore", invalid="ignore"):
            log_std = np.where(std >= 0, np.log10(std), np.nan)  # a std of 0 is -inf: the lowest colour
        slr, psi, zeros, dead = (self._matrix(f) for f in ("std_log_ratio", "shape_psi", "zeros", "dead"))
        images = self._update_image(labels, steps, alerted, th)
        bound = 2 * math.log(th.scale_drift)
        notes = []
        for r in range(len(self.rows)):
            parts = []
            if math.isfinite(slr[r, -1]):
                parts.append(f"x{math.exp(slr[r, -1]):.2g} of ref")
            if math.isfinite(dead[r, -1]):
                parts.append(f"dead {dead[r, -1]:.0%}")
            kinds = sorted(k for m, k in latest if m == self.rows[r])
            if kinds:
                parts.append("ALERT " + ",".join(kinds))
            notes.append("  ".join(parts))
        tag = OVERVIEW_TAG
        return images | {
            f"{tag}/0_depth_profile": profile(
                std[:, -1], labels, f"std of each watched tensor at step {steps[-1]} (input at the top)", notes, alerted
            ),
            f"{tag}/1_scale_log10_std": heatmap(
                log_std,
                labels,
                steps,
                "scale: log10 std (red frame: scale_drift or outlier alert)",
                marked=self._marks("std"),
                alerted_rows=alerted,
                legend=lambda v: f"1e{v:+.1f}",
            ),
            f"{tag}/2_scale_drift": heatmap(
                slr,
                labels,
                steps,
                f"log(std / reference std): alert beyond +-{bound / 2:.2f} (x{th.scale_drift:g}); "
                "grey before the reference",
                vmin=-bound,
                vmax=bound,
                signed=True,
                marked=self._marks("std_log_ratio"),
                alerted_rows=alerted,
            ),
            f"{tag}/3_shape_psi": heatmap(
                psi,
                labels,
                steps,
                f"shape PSI vs reference: alert above {th.shift:g} (colour bar ends at twice that)",
                vmin=0.0,
                vmax=2 * th.shift,
                marked=self._marks("shape_psi"),
                alerted_rows=alerted,
            ),
            f"{tag}/4_zeros": heatmap(
                zeros,
                labels,
                steps,
                "share of exact zeros (red frame: dead alert)",
                vmin=0.0,
                vmax=1.0,
                marked=self._marks("zeros"),
                alerted_rows=alerted,
                legend=lambda v: f"{v:.0%}",
            ),
            f"{tag}/5_dead_units": heatmap(
                dead,
                labels,
                steps,
                f"share of dead units, activations only: alert at {th.dead:.0%}",
                vmin=0.0,
                vmax=1.0,
                marked=self._marks("dead"),
                alerted_rows=alerted,
                legend=lambda v: f"{v:.0%}",
            ),
        }
