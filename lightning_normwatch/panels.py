"""TensorBoard-only output: histograms, the custom-scalars layout, the alert table and figures.

Scalars go through the trainer's loggers (any logger); this module writes what only TensorBoard
can show, through the ``SummaryWriter`` of the trainer's ``TensorBoardLogger``:

- ``normwatch/<tensor>`` histograms (Histograms and Distributions dashboards) from the counts
  already binned on the device (``add_histogram_raw``), never from whole tensors;
- the custom-scalars layout (one category per layer group, see ``layout_for``);
- the alert table, a Markdown Text panel (tag ``normwatch/alerts``);
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
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from pytorch_lightning.utilities import rank_zero_warn

from .alerts import Alert
from .histogram import tensorboard_buckets
from .monitor import Monitor, StepResult
from .report import ALERT_COLUMNS, ALERT_TAG
from .summary import TensorStats

__all__ = ["Panels", "alerts_markdown", "layout_for", "group_of", "group_pattern", "FIGURE_TAG"]

#: figures are written as images ``normwatch/figures/<group>``
FIGURE_TAG = "normwatch/figures"
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


def alerts_markdown(alerts: Sequence[Alert]) -> str:
    """The alert Text panel: a one-line summary, then a Markdown table of every alert.

    Errors come first, then warnings, then information; newest first within each severity.

    Messages are wrapped with ``<br>``; ``report.parse_alerts_markdown`` reads the table back.

    Example:
        >>> a = Alert(3, "net.1", "dead", "warning", 0.8, 0.5, "80% of units are dead")
        >>> b = Alert(5, "net.2", "nonfinite", "error", 1.0, 0.0, "NaN")
        >>> print(alerts_markdown([a, b]))
        **2 alerts** up to step 5: 1 error, 1 warning, 0 info (most severe first, then newest first)
        <BLANKLINE>
        | step | module | kind | severity | value | threshold | message |
        |---|---|---|---|---|---|---|
        | 5 | net.2 | nonfinite | **error** | 1 | 0 | NaN |
        | 3 | net.1 | dead | warning | 0.8 | 0.5 | 80% of units are dead |
    """
    counts = {s: sum(a.severity == s for a in alerts) for s in ("error", "warning", "info")}
    last = max((a.step for a in alerts), default=0)
    summary = (
        f"**{len(alerts)} alert{'s' if len(alerts) != 1 else ''}** up to step {last}: "
        f"{counts['error']} error, {counts['warning']} warning, {counts['info']} info "
        "(most severe first, then newest first)"
    )
    rank = {"error": 0, "warning": 1, "info": 2}
    ordered = sorted(reversed(alerts), key=lambda a: (rank.get(a.severity, 3), -a.step))
    head = "| " + " | ".join(ALERT_COLUMNS) + " |\n" + "|---" * len(ALERT_COLUMNS) + "|"
    rows = []
    for a in ordered:
        severity = f"**{a.severity}**" if a.severity == "error" else a.severity
        cells = [_cell(v) for v in (a.step, a.module, a.kind, severity, a.value, a.threshold)]
        rows.append("| " + " | ".join([*cells, _message_cell(a.message)]) + " |")
    return "\n".join([summary, "", head, *rows])


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


def _groups(keys: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key in keys:
        out.setdefault(group_of(key), []).append(key)
    return out


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


def layout_for(keys: Sequence[str]) -> dict[str, dict[str, list[Any]]]:
    """Custom-scalars layout: an overview across depth, then one category per layer group.

    Multiline charts take regular expressions (TensorBoard matches them from the start of the tag);
    Margin charts take exactly three existing tags (value, lower, upper). Every series is one the
    callback logs: ``normwatch/<tensor>/<figure>``, ``normwatch/thresholds/*``, ``normwatch/alerts/*``.

    Per group: the std of each of its tensors in one chart; each drift figure that an alert compares
    with a threshold (``std_log_ratio``, ``mean_shift``, ``shape_psi``) against that threshold (a
    flat line); per tensor, mean ± std (Margin) and skew with excess kurtosis.

    Example:
        >>> layout = layout_for(["net.0", "net.1"])
        >>> list(layout)
        ['normwatch: overview', 'normwatch: net']
        >>> layout["normwatch: net"]["net.0: mean ± std"]
        ['Margin', ['normwatch/net.0/mean', 'normwatch/net.0/mean_minus_std', 'normwatch/net.0/mean_plus_std']]
    """
    layout: dict[str, dict[str, list[Any]]] = {
        "normwatch: overview": {
            "std of every watched tensor (scale across depth)": ["Multiline", [r"normwatch/.+/std$"]],
            "share of exact zeros in every watched tensor": ["Multiline", [r"normwatch/.+/zeros$"]],
            "active alerts by severity": ["Multiline", [r"normwatch/alerts/(info|warning|error)$"]],
        }
    }
    for group, members in _groups(keys).items():
        category = layout.setdefault(f"normwatch: {group}", {})
        sub = f"normwatch/({group_pattern(group)})"
        category[f"{group}: std of each tensor"] = ["Multiline", [rf"{sub}/std$"]]
        category[f"{group}: shape PSI vs reference (alert above the threshold line)"] = [
            "Multiline",
            [rf"{sub}/shape_psi$", r"normwatch/thresholds/shift$"],
        ]
        category[f"{group}: log(std / reference std) (alert beyond ± threshold)"] = [
            "Multiline",
            [rf"{sub}/std_log_ratio$", r"normwatch/thresholds/log_scale_drift$"],
        ]
        category[f"{group}: mean shift in reference stds (alert beyond ± threshold)"] = [
            "Multiline",
            [rf"{sub}/mean_shift$", r"normwatch/thresholds/mean_drift$"],
        ]
        for key in members:
            base = f"normwatch/{key}"
            category[f"{key}: mean ± std"] = [
                "Margin",
                [f"{base}/mean", f"{base}/mean_minus_std", f"{base}/mean_plus_std"],
            ]
            category[f"{key}: skew and excess kurtosis"] = ["Multiline", [rf"{re.escape(base)}/(skew|kurtosis)$"]]
    return layout


def _is_tensorboard_logger(logger: Any) -> bool:
    """A ``TensorBoardLogger`` of ``pytorch_lightning`` or of the unified ``lightning`` package."""
    from pytorch_lightning.loggers import TensorBoardLogger

    if isinstance(logger, TensorBoardLogger):
        return True
    unified = sys.modules.get("lightning.pytorch.loggers")
    return unified is not None and isinstance(logger, unified.TensorBoardLogger)


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

    def __init__(self, writer: Any, plot_every_n_steps: int | None = None) -> None:
        self.writer = writer
        self.plot_every_n_steps = plot_every_n_steps
        self._layout_keys: list[str] = []
        self._last_plot_interval: int | None = None

    @classmethod
    def for_trainer(cls, trainer: Any, plot_every_n_steps: int | None = None) -> Panels | None:
        """Panels on every ``TensorBoardLogger`` of the trainer; None (with one warning) without one.

        With ``logger=False`` nothing is written and the callback itself warns that there is no logger.
        """
        from .adapters.loggers import tensorboard_writer  # every TensorBoardLogger's writer, as one

        if any(_is_tensorboard_logger(logger) for logger in trainer.loggers):
            return cls(tensorboard_writer(trainer.loggers), plot_every_n_steps) if trainer.is_global_zero else None
        if trainer.loggers:
            names = ", ".join(type(lg).__name__ for lg in trainer.loggers)
            rank_zero_warn(
                f"NormWatch: no TensorBoardLogger among the trainer's loggers ({names}); the scalars "
                "normwatch/<tensor>/<figure> go to these loggers, but the TensorBoard-only panels (histograms, "
                "custom-scalars layout, alert table" + (", figures" if plot_every_n_steps else "") + ") are skipped."
            )
        return None

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

    def write(self, result: StepResult, stats: dict[str, TensorStats], monitor: Monitor) -> None:
        """Histograms, the layout (when new tensors appear) and, when due, the figures of one logging step."""
        step = result.step
        for key, st in stats.items():
            self._histogram(key, st, step)
        new = [k for k in stats if k not in self._layout_keys]
        if new:
            # written once; again only if tensors appear later (TensorBoard shows the latest layout)
            self._layout_keys += new
            self.writer.add_custom_scalars(layout_for(self._layout_keys))
        if stats and self.plot_due(step):
            self._last_plot_interval = step // self.plot_every_n_steps  # type: ignore[operator]
            self._figures(result, stats, monitor)

    def _histogram(self, key: str, st: TensorStats, step: int) -> None:
        limits, counts = tensorboard_buckets(st.hist, st.smin, st.smax)
        if not counts or not (math.isfinite(st.smin) and math.isfinite(st.smax)):
            return
        m = st.overall
        self.writer.add_histogram_raw(
            f"normwatch/{key}",
            min=float(st.smin),
            max=float(st.smax),
            num=int(sum(counts)),
            sum=float(m.n * m.mean),
            sum_squares=float(m.m2 + m.n * m.mean * m.mean),
            bucket_limits=limits,
            bucket_counts=counts,
            global_step=step,
        )

    def _figures(self, result: StepResult, stats: dict[str, TensorStats], monitor: Monitor) -> None:
        from .plots import PlotData, group_figure, load_matplotlib, pair_rows

        figure_cls = load_matplotlib()
        if figure_cls is None:
            return
        items: dict[str, list[PlotData]] = {}
        for key, st in stats.items():
            try:
                info = monitor.info(key)
                label, role = info.type_name, info.role
            except KeyError:
                label, role = "?", "other"
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
            self.writer.add_text(ALERT_TAG, alerts_markdown(alerts), global_step=step)

    def flush(self) -> None:
        self.writer.flush()
