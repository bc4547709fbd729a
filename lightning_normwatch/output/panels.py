"""TensorBoard-only output: histograms, the custom-scalars layout, the alert table and figures.

Scalars go through the trainer's loggers (any logger); this module writes what only TensorBoard
can show, through the ``SummaryWriter`` of the trainer's ``TensorBoardLogger``:

- ``normwatch/<tensor>`` histograms (Histograms and Distributions dashboards) from the counts
  already binned on the device (the fields of ``add_histogram_raw``, all tensors of a step in one
  event; runs of empty buckets merged), never from whole tensors; each tag's
  description names the layer type;
- the overview heatmaps (Images dashboard, ``normwatch/overview/*``, see ``overview.py``), every
  ``overview_every`` logging steps and at the end of the fit, each image only when it changed;
- the custom-scalars layout (one chart per tensor and figure, in short categories, see ``custom_scalars.py``);
- the alert panel, Markdown text (tag ``normwatch/alerts``): one line per alert kind, then the table;
- the watched tensors with their layer types (tag ``normwatch/watched``);
- every ``plot_every_n_steps`` steps, one figure per layer group (Images dashboard,
  ``normwatch/figures/<group>``), when matplotlib is installed.

Example:
    >>> from torch.utils.tensorboard import SummaryWriter
    >>> from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    >>> from lightning_normwatch.judge.alerts import Alert
    >>> import tempfile
    >>> panels = Panels(SummaryWriter(run := tempfile.mkdtemp()))
    >>> panels.write_alerts([], step=0)   # nothing to show: writes nothing
    >>> panels.writer.flush(); EventAccumulator(run).Reload().Tags()["tensors"]
    []
    >>> panels.write_alerts([Alert(3, "fc", "dead", "warning", 0.9, 0.5, "90% of `fc` dead")], step=3)
    >>> panels.writer.flush(); EventAccumulator(run).Reload().Tags()["tensors"]
    ['normwatch/alerts/text_summary']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..collect.info import TensorInfo
from ..config import Thresholds
from ..judge.alerts import Alert
from ..judge.evaluator import StepResult
from ..stats.figures import TensorStats
from ..stats.histogram import tensorboard_buckets_many
from . import checksum
from .custom_scalars import group_of, layout_for
from .loggers import write_summary
from .markdown import alerts_markdown, watched_markdown
from .overview import Overview, row_label
from .tags import ALERT_TAG, FIGURE_TAG, WATCHED_TAG

__all__ = ["Panels"]


def _histogram_values(
    rows: Sequence[tuple[str, Any, float, float, float, float, Any, float | None]], into: Any
) -> list[str]:
    """Histogram values added to ``into`` (a ``Summary``'s ``value`` field) from ``(tag, counts on the shared
    bins, min, max, sum, sum of squares, metadata or None, num or None)`` rows; returns their tags. Rows
    that are empty or have a bound not finite are left out.

    The same fields as ``SummaryWriter.add_histogram_raw`` writes; ``num`` defaults to the counts' sum. The
    buckets of all rows come from one ``tensorboard_buckets_many`` call per counts dtype (each row's values
    as ``tensorboard_buckets`` gives them).
    """
    shown = [r for r in rows if math.isfinite(r[2]) and math.isfinite(r[3])]
    counts = [np.asarray(r[1]) for r in shown]
    buckets: list[Any] = [None] * len(shown)
    for dtype in {c.dtype for c in counts}:  # one batch per dtype: each row's own arithmetic
        index = [i for i, c in enumerate(counts) if c.dtype == dtype]
        lo, hi = np.array([[shown[i][2], shown[i][3]] for i in index], dtype=float).T
        for i, b in zip(index, tensorboard_buckets_many(np.array([counts[i] for i in index]), lo, hi), strict=True):
            buckets[i] = b
    add, tags = into.add, []
    for (tag, _, lo, hi, total, squares, meta, num), (limits, grouped) in zip(shown, buckets, strict=True):
        if grouped:
            histo = {
                "min": float(lo),
                "max": float(hi),
                "num": float(sum(grouped) if num is None else num),
                "sum": float(total),
                "sum_squares": float(squares),
                "bucket_limit": limits,
                "bucket": grouped,
            }
            add(tag=tag, histo=histo) if meta is None else add(tag=tag, histo=histo, metadata=meta)
            tags.append(tag)
    return tags


#: at most this many rows (tensor or pre/post pair) per figure; bigger groups get several figures
_ROWS_PER_FIGURE = 8


class Panels:
    """Writes NormWatch's TensorBoard panels to one ``SummaryWriter``.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (``TensorBoardLogger.experiment``).
        plot_every_n_steps: draw the group figures when a logging step enters a new interval of
            this many steps (``None``: never).

    Example:
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> import tempfile
        >>> panels = Panels(SummaryWriter(tempfile.mkdtemp()), plot_every_n_steps=100)
        >>> panels.plot_due(0), Panels(panels.writer).plot_due(0)
        (True, False)
    """

    def __init__(
        self,
        writer: Any,
        plot_every_n_steps: int | None = None,
        thresholds: Thresholds | None = None,
        overview_every: int = 20,
    ) -> None:
        self.writer = writer
        self.plot_every_n_steps = plot_every_n_steps
        self.overview = Overview()
        #: the overview images are drawn every this many logging steps, and at the end of the fit
        self.overview_every = overview_every
        self._layout_keys: list[str] = []
        self._laid_out: set[str] = set()
        self._kinds: dict[str, tuple[str, str]] = {}
        self._last_plot_interval: int | None = None
        self._logged = 0
        self._drawn_step: int | None = None
        self.thresholds = thresholds or Thresholds()
        self._described: set[str] = set()
        self._images: dict[str, bytes] = {}  # tag -> the PNG last written under it
        checksum.install()  # TensorBoard's event checksums by a compiled CRC32C where one is installed

    def plot_due(self, step: int) -> bool:
        """Whether the group figures are drawn at this logging step.

        They are drawn at the first logging step of each interval ``[k n, (k + 1) n)`` of
        ``n = plot_every_n_steps`` steps, so the interval need not be a multiple of the logging
        interval: with logging every 2 steps and ``n = 5``, figures come at steps 0, 6, 10, 16 ...
        """
        if not self.plot_every_n_steps:
            return False
        interval = step // self.plot_every_n_steps
        return interval != self._last_plot_interval

    def write(
        self,
        result: StepResult,
        stats: dict[str, TensorStats],
        infos: Mapping[str, TensorInfo],
        active: Mapping[tuple[str, str], object],
    ) -> None:
        """Histograms, the layout (when new tensors appear) and, when due, the overview and figures of one step."""
        step = result.step
        for key in stats:
            if key not in self._kinds:
                info = infos.get(key)  # None: a tensor only another rank observed
                self._kinds[key] = (info.type_name, info.role) if info is not None else ("?", "other")
        from tensorboard.compat.proto.summary_pb2 import Summary

        histograms = Summary()
        if self._histograms(stats, histograms.value):  # one event for all: each value is its tag's histogram
            write_summary(self.writer, histograms, step)
        new = [k for k in stats if k not in self._laid_out]
        if new:
            # written once; again only if tensors appear later (TensorBoard shows the latest layout)
            self._layout_keys += new
            self._laid_out.update(new)
            self.writer.add_custom_scalars(layout_for(self._layout_keys, self._kinds))
            self.writer.add_text(WATCHED_TAG, watched_markdown(self._layout_keys, self._kinds), global_step=step)
        if result.figures:
            self.overview.add(step, result.figures, self._kinds, active)
            if self._logged % self.overview_every == 0:
                self.write_overview()
            self._logged += 1
        if stats and self.plot_due(step):
            self._last_plot_interval = step // self.plot_every_n_steps  # type: ignore[operator]
            self._figures(result, stats)

    def write_overview(self) -> None:
        """Draw the overview heatmaps of the steps recorded so far (Images tab, ``normwatch/overview/*``)."""
        steps = self.overview.steps
        if not steps or steps[-1] == self._drawn_step:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = []
        for tag, img in self.overview.images(self.thresholds).items():
            png = img.png()
            if self._images.get(tag) == png:  # the same picture as last time: TensorBoard shows that one still
                continue
            self._images[tag] = png
            image = Summary.Image(height=img.height, width=img.width, colorspace=3, encoded_image_string=png)
            values.append(Summary.Value(tag=tag, image=image))
        if values:
            write_summary(self.writer, Summary(value=values), steps[-1])
        self._drawn_step = steps[-1]

    def write_param_histograms(self, histograms: Mapping[str, Mapping[str, tuple[Any, ...]]], step: int) -> None:
        """Weight and gradient histograms per module (``params="histograms"``): ``normwatch/params/<module>/<which>``,
        from ``(counts on the shared bins, min, max, n, sum, sum of squares)`` binned on the device; one event."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        rows = [
            (f"normwatch/params/{o}/{which}", c, float(lo), float(hi), float(t), float(s), None, int(n))
            for o, kinds in histograms.items()
            for which, (c, lo, hi, n, t, s) in kinds.items()
        ]
        summary = Summary()
        if _histogram_values(rows, summary.value):
            write_summary(self.writer, summary, step)

    def _histograms(self, stats: Mapping[str, TensorStats], into: Any) -> bool:
        """Each tensor's histogram into ``into`` (none for an empty or unbounded one); the first of a tag carries
        its description (the layer type). ``add_histogram_raw`` would write one event per tensor."""
        from tensorboard.plugins.histogram.metadata import create_summary_metadata

        rows, described = [], self._described
        for key, st in stats.items():
            m = st.overall
            tag, meta = f"normwatch/{key}", None
            if key not in described:
                type_name, role = self._kinds.get(key, ("?", "other"))
                meta = create_summary_metadata(display_name=tag, description=f"{row_label(key, type_name)}, {role}")
            rows.append((tag, st.hist, st.smin, st.smax, m.n * m.mean, m.m2 + m.n * m.mean * m.mean, meta, None))
        written = _histogram_values(rows, into)
        if not described.issuperset(stats):  # some tag's first histogram: described from now on
            described.update(tag[len("normwatch/") :] for tag in written)
        return bool(written)

    def _figures(self, result: StepResult, stats: dict[str, TensorStats]) -> None:
        from .plots import PlotData, group_figure, load_matplotlib, pair_rows

        figure_cls = load_matplotlib()
        if figure_cls is None:
            return
        items: dict[str, list[PlotData]] = {}
        for key, st in stats.items():
            label, role = self._kinds.get(key, ("?", "other"))
            fig = result.figures.get(key, {})
            items.setdefault(group_of(key), []).append(
                PlotData(
                    key,
                    label,
                    role,
                    st.hist,
                    st.smin,
                    st.smax,
                    fig.get("mean", math.nan),
                    fig.get("std", math.nan),
                    fig.get("skew", math.nan),
                    fig.get("kurtosis", math.nan),
                )
            )
        for group, members in items.items():
            rows = pair_rows(members)
            for part, start in enumerate(range(0, len(rows), _ROWS_PER_FIGURE)):
                chunk = rows[start : start + _ROWS_PER_FIGURE]
                tag = f"{FIGURE_TAG}/{group}" + (f"/{part + 1}" if part else "")
                figure = group_figure(figure_cls, group, result.step, chunk)
                self.writer.add_figure(tag, figure, global_step=result.step, close=True)

    def write_alerts(self, alerts: list[Alert], step: int) -> None:
        """The alert table as a Text panel: every alert so far, rewritten when new ones are raised."""
        if alerts:
            types = {k: t for k, (t, _) in self._kinds.items()}
            self.writer.add_text(ALERT_TAG, alerts_markdown(alerts, types), global_step=step)

    def flush(self) -> None:
        """Draw the overview of the last logging step (if not drawn yet) and flush the writer."""
        self.write_overview()
        self.writer.flush()
