"""TensorBoard-only output: histograms, the custom-scalars layout, the alert table and figures.

Scalars go through the trainer's loggers (any logger); this module writes what only TensorBoard
can show, through the ``SummaryWriter`` of the trainer's ``TensorBoardLogger``:

- ``normwatch/<tensor>`` histograms (Histograms and Distributions dashboards) from the counts
  already binned on the device (``add_histogram_raw``), never from whole tensors; each tag's
  description names the layer type;
- the overview heatmaps (Images dashboard, ``normwatch/overview/*``, see ``overview.py``), every
  ``overview_every`` logging steps and at the end of the fit;
- the custom-scalars layout (one chart per tensor and figure, in short categories, see ``layout_for``);
- the alert panel, Markdown text (tag ``normwatch/alerts``): one line per alert kind, then the table;
- the watched tensors with their layer types (tag ``normwatch/watched``);
- every ``plot_every_n_steps`` steps, one figure per layer group (Images dashboard,
  ``normwatch/figures/<group>``), when matplotlib is installed.

Example:
    >>> from torch.utils.tensorboard import SummaryWriter
    >>> import tempfile
    >>> panels = Panels(SummaryWriter(tempfile.mkdtemp()))
    >>> panels.write_alerts([], step=0)   # nothing to show: writes nothing
    >>> group_of("encoder.0.conv1"), group_of("net.3"), group_of("fc1"), group_of("input/x")
    ('encoder.0', 'net', 'model', 'inputs')
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from ..collect.info import TensorInfo
from ..config import Thresholds
from ..judge.alerts import Alert
from ..judge.evaluator import StepResult
from ..judge.grouping import group_alerts, group_line, named
from ..stats.figures import TensorStats
from ..stats.histogram import tensorboard_buckets
from .overview import Overview, row_label
from .tags import ALERT_COLUMNS, ALERT_TAG, FIGURE_TAG, OVERVIEW_TAG, WATCHED_TAG

__all__ = [
    "Panels",
    "alerts_markdown",
    "watched_markdown",
    "layout_for",
    "group_of",
    "group_pattern",
    "FIGURE_TAG",
    "OVERVIEW_TAG",
]

#: at most this many rows (tensor or pre/post pair) per figure; bigger groups get several figures
_ROWS_PER_FIGURE = 8


def _cell(value: object) -> str:
    text = f"{value:.3g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


#: the message column is wrapped at this many characters: TensorBoard's Text panel breaks words
#: anywhere, so without it one long message squeezes the other columns to a letter or two
_MESSAGE_WIDTH = 40


def _message_cell(message: str) -> str:
    lines = textwrap.wrap(" ".join(message.split()), _MESSAGE_WIDTH, break_long_words=False, break_on_hyphens=False)
    return "<br>".join(_cell(line) for line in lines)


def alerts_markdown(alerts: Sequence[Alert], types: Mapping[str, str] | None = None) -> str:
    """The alert Text panel: a summary line, one line per alert kind, then a Markdown table of every alert.

    The grouped lines come first so that what matters fits TensorBoard's fixed-height text box;
    the table follows: errors first, then warnings, then information; newest first within each
    severity. ``types`` maps module names to their layer type (``net.1 (ReLU)``).

    Messages are wrapped with ``<br>``; ``report.parse_alerts_markdown`` reads the table back.

    Example:
        >>> a = Alert(3, "net.1", "dead", "warning", 0.8, 0.5, "80% of units are dead")
        >>> b = Alert(5, "net.2", "nonfinite", "error", 1.0, 0.0, "NaN")
        >>> print(alerts_markdown([a, b], {"net.1": "ReLU"}))
        **2 alerts** up to step 5: 1 error, 1 warning, 0 info (details below: most severe first, then newest first)
        <BLANKLINE>
        - **nonfinite** (error) in net.2 at 1 (threshold 0)
        - **dead** (warning) in net.1 (ReLU) at 0.8 (threshold 0.5)
        <BLANKLINE>
        | step | module | kind | severity | value | threshold | message |
        |---|---|---|---|---|---|---|
        | 5 | net.2 | nonfinite | **error** | 1 | 0 | NaN |
        | 3 | net.1 (ReLU) | dead | warning | 0.8 | 0.5 | 80% of units are dead |
    """
    counts = {s: sum(a.severity == s for a in alerts) for s in ("error", "warning", "info")}
    last = max((a.step for a in alerts), default=0)
    summary = (
        f"**{len(alerts)} alert{'s' if len(alerts) != 1 else ''}** up to step {last}: "
        f"{counts['error']} error, {counts['warning']} warning, {counts['info']} info "
        "(details below: most severe first, then newest first)"
    )
    grouped = []
    for g in group_alerts(alerts):
        line = group_line(g, types)
        grouped.append("- **" + _cell(g.kind) + "**" + _cell(line[len(g.kind) :]))
    rank = {"error": 0, "warning": 1, "info": 2}
    ordered = sorted(reversed(alerts), key=lambda a: (rank.get(a.severity, 3), -a.step))
    head = "| " + " | ".join(ALERT_COLUMNS) + " |\n" + "|---" * len(ALERT_COLUMNS) + "|"
    rows = []
    for a in ordered:
        severity = f"**{a.severity}**" if a.severity == "error" else a.severity
        cells = [_cell(v) for v in (a.step, named(a.module, types), a.kind, severity, a.value, a.threshold)]
        rows.append("| " + " | ".join([*cells, _message_cell(a.message)]) + " |")
    return "\n".join([summary, "", *grouped, "", head, *rows])


def watched_markdown(keys: Sequence[str], kinds: Mapping[str, tuple[str, str]]) -> str:
    """The watched-tensors Text panel (``normwatch/watched``): tensor, layer type and role, in execution order.

    ``normwatch report`` reads the layer types back from it.

    Example:
        >>> print(watched_markdown(["input", "net.0"], {"input": ("batch", "input"), "net.0": ("Linear", "preact")}))
        **2 watched tensors** in execution order
        <BLANKLINE>
        | # | tensor | type | role |
        |---|---|---|---|
        | 0 | input | batch | input |
        | 1 | net.0 | Linear | preact |
    """
    rows = [
        f"| {i} | {_cell(k)} | {_cell(kinds.get(k, ('?', ''))[0])} | {kinds.get(k, ('', '?'))[1]} |"
        for i, k in enumerate(keys)
    ]
    head = f"**{len(keys)} watched tensor{'s' if len(keys) != 1 else ''}** in execution order"
    return "\n".join([head, "", "| # | tensor | type | role |", "|---|---|---|---|", *rows])


def group_of(key: str) -> str:
    """The layer group of a tensor key: its block, i.e. the path up to the first numeric index.

    ``encoder.0.conv1`` -> ``encoder.0`` (a block of a Sequential/ModuleList), ``net.3`` -> ``net``
    (a layer of a Sequential), ``model.layers.2.mlp.fc1`` -> ``model.layers.2``, a top-level module
    ``fc1`` -> ``model``; batch inputs -> ``inputs``. Output parts (``lstm[0]``) and repeated calls
    (``fc@2``) belong to their module's group.

    Example:
        >>> group_of("model.layers.2.mlp.fc1"), group_of("lstm[0]"), group_of("block.fc@2")
        ('model.layers.2', 'model', 'block')
    """
    if key == "input" or key.startswith("input/"):
        return "inputs"
    parts = re.split(r"[\[@]", key, maxsplit=1)[0].split(".")
    if len(parts) == 1:
        return "model"
    for i, part in enumerate(parts[:-1]):
        if part.isdigit() and i > 0:
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) if parts[-1].isdigit() else parts[0]


def group_pattern(group: str) -> str:
    """Regular expression for the tensor keys under a group (its whole subtree).

    The same group gives the same pattern whatever the model, so layouts of several runs in one
    log directory merge into one set of charts.

    Example:
        >>> import re
        >>> p = group_pattern("net")
        >>> [bool(re.fullmatch(p, k)) for k in ("net.0", "net.3[1]", "net.0.conv", "network.0", "input")]
        [True, True, True, False, False]
        >>> [bool(re.fullmatch(group_pattern("model"), k)) for k in ("fc1", "lstm[0]", "input", "net.0")]
        [True, True, False, False]
    """
    if group == "inputs":
        return r"input(/[^/]+)?"
    if group == "model":
        return r"(?!(input|thresholds|alerts)(/|$))[^/.]+"
    return re.escape(group) + r"\.[^/]*"


#: tensors per custom-scalars category: a 100-layer model gets 13 short categories, not one of 500 charts
TENSORS_PER_CATEGORY = 8


def layout_for(
    keys: Sequence[str], kinds: Mapping[str, tuple[str, str]] | None = None, per_category: int = TENSORS_PER_CATEGORY
) -> dict[str, dict[str, list[Any]]]:
    """Custom-scalars layout: one chart per tensor and figure, in categories of ``per_category`` tensors.

    TensorBoard draws every series of a run in the same colour, so no chart mixes tensors: each
    chart holds one tensor's figure, titled with the tensor and its layer type (``net.1 (ReLU)``),
    and its thresholds. Drift figures that alert on both sides are drawn with both threshold lines
    (``normwatch/thresholds/<name>_low`` and ``normwatch/thresholds/<name>``). ``dead`` is charted
    for activations, ``saturated`` for bounded activations only; inputs get their per-feature drift
    figures against the effect floors instead of the pooled drift charts. ``kinds`` maps tensors to
    ``(layer type, role)``. Every chart is a Multiline chart (TensorBoard draws Margin charts after
    all Multiline charts of a category, which would separate a tensor's charts); its regular
    expressions are matched from the start of the tag.

    Example:
        >>> layout = layout_for(["net.0", "net.1"], {"net.0": ("Linear", "preact"), "net.1": ("ReLU", "activation")})
        >>> list(layout)
        ['normwatch: alerts', 'normwatch: 1/1 net.0 (Linear) ... net.1 (ReLU)']
        >>> charts = layout["normwatch: 1/1 net.0 (Linear) ... net.1 (ReLU)"]
        >>> charts["net.1 (ReLU): log(std / reference std), alert beyond either threshold line"]
        ['Multiline', ['^normwatch/net\\\\.1/std_log_ratio$', '^normwatch/thresholds/log_scale_drift(_low)?$']]
        >>> [t for t in charts if "dead" in t]
        ['net.1 (ReLU): share of dead units, alert above the threshold line']
    """
    kinds = kinds or {}
    layout: dict[str, dict[str, list[Any]]] = {
        "normwatch: alerts": {
            "active alerts by severity": ["Multiline", [r"^normwatch/alerts/(info|warning|error)$"]],
        }
    }
    chunks = [list(keys[i : i + per_category]) for i in range(0, len(keys), per_category)]
    th = "normwatch/thresholds"
    for number, chunk in enumerate(chunks, 1):
        labels = [row_label(k, kinds.get(k, ("", ""))[0]) for k in chunk]
        span = labels[0] if len(chunk) == 1 else f"{labels[0]} ... {labels[-1]}"
        category = layout.setdefault(f"normwatch: {number}/{len(chunks)} {span}", {})
        for key, label in zip(chunk, labels, strict=True):
            base = f"normwatch/{key}"
            pattern = "^" + re.escape(base)
            role = kinds.get(key, ("", "other"))[1]
            category[f"{label}: std"] = ["Multiline", [pattern + "/std$"]]
            if role == "input":  # judged per feature (input_drift): the worst feature against its effect floor
                for figure, floor, what in (
                    ("feature_mean_shift_max", "input_mean_shift", "largest |mean shift| of a feature (reference σ)"),
                    ("feature_std_log_ratio_max", "input_log_scale", "largest |log std ratio| of a feature"),
                    ("feature_psi_max", "input_psi", "largest PSI of a feature"),
                ):
                    category[f"{label}: {what}, effect floor line"] = [
                        "Multiline",
                        [pattern + f"/{figure}$", f"^{th}/{floor}$"],
                    ]
                category[f"{label}: share of features drifted (input_drift)"] = [
                    "Multiline",
                    [pattern + "/feature_drift_share$"],
                ]
                continue
            category[f"{label}: log(std / reference std), alert beyond either threshold line"] = [
                "Multiline",
                [pattern + "/std_log_ratio$", f"^{th}/log_scale_drift(_low)?$"],
            ]
            category[f"{label}: mean shift in reference stds, alert beyond either threshold line"] = [
                "Multiline",
                [pattern + "/mean_shift$", f"^{th}/mean_drift(_low)?$"],
            ]
            category[f"{label}: shape PSI vs reference, alert above the threshold line"] = [
                "Multiline",
                [pattern + "/shape_psi$", f"^{th}/shift$"],
            ]
            if role in ("activation", "bounded", "other"):
                category[f"{label}: share of dead units, alert above the threshold line"] = [
                    "Multiline",
                    [pattern + "/dead$", f"^{th}/dead$"],
                ]
            if role == "bounded":
                category[f"{label}: share of saturated outputs, alert above the threshold line"] = [
                    "Multiline",
                    [pattern + "/saturated$", f"^{th}/saturated$"],
                ]
    return layout


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
        self._kinds: dict[str, tuple[str, str]] = {}
        self._last_plot_interval: int | None = None
        self._logged = 0
        self._drawn_step: int | None = None
        self.thresholds = thresholds or Thresholds()
        self._described: set[str] = set()

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
        for key, st in stats.items():
            self._histogram(key, st, step)
        new = [k for k in stats if k not in self._layout_keys]
        if new:
            # written once; again only if tensors appear later (TensorBoard shows the latest layout)
            self._layout_keys += new
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

        values = [
            Summary.Value(
                tag=tag,
                image=Summary.Image(height=img.height, width=img.width, colorspace=3, encoded_image_string=img.png()),
            )
            for tag, img in self.overview.images(self.thresholds).items()
        ]
        self.writer._get_file_writer().add_summary(Summary(value=values), steps[-1])
        self._drawn_step = steps[-1]

    def _histogram(self, key: str, st: TensorStats, step: int) -> None:
        limits, counts = tensorboard_buckets(st.hist, st.smin, st.smax)
        if not counts or not (math.isfinite(st.smin) and math.isfinite(st.smax)):
            return
        m = st.overall
        tag = f"normwatch/{key}"
        args = dict(
            min=float(st.smin),
            max=float(st.smax),
            num=int(sum(counts)),
            sum=float(m.n * m.mean),
            sum_squares=float(m.m2 + m.n * m.mean * m.mean),
            bucket_limit=limits,
            bucket=counts,
        )
        if key not in self._described:  # the first event of a tag carries its description: the layer type
            from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary
            from tensorboard.plugins.histogram.metadata import create_summary_metadata

            self._described.add(key)
            type_name, role = self._kinds.get(key, ("?", "other"))
            meta = create_summary_metadata(display_name=tag, description=f"{row_label(key, type_name)}, {role}")
            value = Summary.Value(tag=tag, histo=HistogramProto(**args), metadata=meta)
            self.writer._get_file_writer().add_summary(Summary(value=[value]), step)
            return
        self.writer.add_histogram_raw(
            tag,
            min=args["min"],
            max=args["max"],
            num=args["num"],
            sum=args["sum"],
            sum_squares=args["sum_squares"],
            bucket_limits=limits,
            bucket_counts=counts,
            global_step=step,
        )

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
