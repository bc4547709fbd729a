"""TensorBoard-only output: histograms, the custom-scalars layout and the alert table.

Scalars go through the trainer's loggers (any logger); this module writes what only TensorBoard
can show, through the ``SummaryWriter`` of the trainer's ``TensorBoardLogger``. Histograms come
from counts already binned on the device (``add_histogram_raw``), never from whole tensors.

Example:
    >>> from torch.utils.tensorboard import SummaryWriter
    >>> import tempfile
    >>> panels = Panels(SummaryWriter(tempfile.mkdtemp()))
    >>> panels.write_alerts([], step=0)   # nothing to show: writes nothing
"""

from __future__ import annotations

import re
from typing import Any

from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_warn

from .alerts import Alert
from .histogram import tensorboard_buckets
from .monitor import Monitor, StepResult
from .summary import TensorStats

__all__ = ["Panels", "alerts_markdown", "layout_for"]

ALERT_TAG = "normwatch/alerts"


def _cell(value: object) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def alerts_markdown(alerts: list[Alert]) -> str:
    """A Markdown table of alerts (newest last)."""
    head = "| step | module | kind | severity | value | threshold | message |\n|---|---|---|---|---|---|---|\n"
    rows = (
        "| "
        + " | ".join(_cell(v) for v in (a.step, a.module, a.kind, a.severity, a.value, a.threshold, a.message))
        + " |"
        for a in alerts
    )
    return head + "\n".join(rows)


def _group_of(key: str) -> str:
    """Layers are grouped by their top-level parent (``encoder.0.conv`` -> ``encoder``)."""
    if key.startswith("input"):
        return "inputs"
    return re.split(r"[.\[@]", key, maxsplit=1)[0] if "." in key or "[" in key else "layers"


def layout_for(keys: list[str], thresholds: Any) -> dict[str, dict[str, list[Any]]]:
    """Custom-scalars layout: one category per layer group, plus an overview across depth."""
    esc = re.escape
    layout: dict[str, dict[str, list[Any]]] = {
        "normwatch: overview": {
            "std of every watched tensor (scale across depth)": ["Multiline", [r"normwatch/.*/std$"]],
            "excess kurtosis of every watched tensor": ["Multiline", [r"normwatch/.*/kurtosis$"]],
            "active alerts by severity": ["Multiline", [r"normwatch/alerts/(info|warning|error)$"]],
        }
    }
    for key in keys:
        category = layout.setdefault(f"normwatch: {_group_of(key)}", {})
        base = f"normwatch/{key}"
        category[f"{key}: mean ± std"] = ["Margin", [f"{base}/mean", f"{base}/mean_minus_std", f"{base}/mean_plus_std"]]
        category[f"{key}: skew and kurtosis"] = [
            "Multiline",
            [rf"^{esc(base)}/(skew|kurtosis|channel_skew|channel_kurtosis)$"],
        ]
        category[f"{key}: drift vs thresholds"] = [
            "Multiline",
            [
                rf"^{esc(base)}/(psi|std_log_ratio|mean_shift)$",
                r"^normwatch/thresholds/(shift|log_scale_drift|mean_drift)$",
            ],
        ]
    del thresholds
    return layout


class Panels:
    """Writes NormWatch's TensorBoard panels to one ``SummaryWriter``."""

    def __init__(self, writer: Any, plot_every_n_steps: int | None = None) -> None:
        self.writer = writer
        self.plot_every_n_steps = plot_every_n_steps
        self._layout_written = False

    @classmethod
    def for_trainer(cls, trainer: Any, plot_every_n_steps: int | None = None) -> Panels | None:
        """Panels on the trainer's first ``TensorBoardLogger``; None (with one warning) without one."""
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return cls(logger.experiment, plot_every_n_steps) if trainer.is_global_zero else None
        if trainer.loggers:
            rank_zero_warn(
                "NormWatch: no TensorBoardLogger among the trainer's loggers; scalars go to the loggers there are, "
                "histograms, the custom-scalars layout and the alert table are skipped."
            )
        return None

    def write(self, result: StepResult, stats: dict[str, TensorStats], monitor: Monitor) -> None:
        """Histograms (and, once, the layout) for one logging step."""
        step = result.step
        for key, st in stats.items():
            limits, counts = tensorboard_buckets(st.hist, st.smin, st.smax)
            if not counts:
                continue
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
        if not self._layout_written and stats:
            self.writer.add_custom_scalars(layout_for(list(stats), monitor.config.thresholds))
            self._layout_written = True

    def write_alerts(self, alerts: list[Alert], step: int) -> None:
        """The alert table as a Text panel (all alerts so far)."""
        if alerts:
            self.writer.add_text(ALERT_TAG, alerts_markdown(alerts), global_step=step)

    def flush(self) -> None:
        self.writer.flush()
