"""Read NormWatch's TensorBoard event files back: latest figures per tensor and the alerts of each run.

Event files are read with TensorBoard's own reader (``EventMultiplexer``, one ``EventAccumulator``
per run directory). A run's figures are the scalars ``normwatch/<tensor>/<figure>`` at the tensor's
latest logging step; its alerts are the last alert table written to the Text panel
(``normwatch/alerts``), parsed back from Markdown. This module imports neither torch nor Lightning,
so that ``normwatch report`` stays light.

Example:
    >>> rows = parse_alerts_markdown(
    ...     "| step | module | kind | severity | value | threshold | message |\\n|---|---|---|---|---|---|---|\\n"
    ...     "| 7 | net.1 | dead | warning | 0.9 | 0.5 | a \\\\| b |"
    ... )
    >>> rows[0]["step"], rows[0]["module"], rows[0]["value"], rows[0]["message"]
    (7, 'net.1', 0.9, 'a | b')
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..output.tags import ALERT_COLUMNS, ALERT_TAG, OLD_ALERT_COLUMNS, WATCHED_TAG
from .report_alerts import _num, _table, alert_lines

__all__ = [
    "ALERT_TAG",
    "WATCHED_TAG",
    "ALERT_COLUMNS",
    "TABLE_FIGURES",
    "NoNormWatchData",
    "RunReport",
    "load_reports",
    "parse_alerts_markdown",
    "parse_watched_markdown",
    "split_tag",
    "format_reports",
    "reports_json",
    "exit_code",
    "exit_reason",
]

#: Text-panel tag of the alert table (``SummaryWriter.add_text`` stores it as ``<tag>/text_summary``)
#: Text-panel tag of the watched-tensors table (tensor, layer type, role)
#: columns of the alert table, in order
#: figures shown in the printed table (``--json`` has every logged figure)
TABLE_FIGURES = ("mean", "std", "zeros", "dead", "std_log_ratio", "mean_shift", "shape_psi", "update_ratio")
#: ``normwatch/<name>/...`` scalars that are not watched tensors
_NOT_TENSORS = ("thresholds", "alerts")
SEVERITIES = ("error", "warning", "info")


class NoNormWatchData(Exception):
    """The directory holds no TensorBoard event file with NormWatch scalars."""


@dataclass
class RunReport:
    """What one run's event files say.

    Attributes:
        run: run directory, relative to the log directory (``"."`` for the directory itself).
        step: latest logging step with NormWatch scalars.
        tensors: per watched tensor, ``{"step": its latest step, <figure>: value}``; a figure not
            logged at that step (e.g. NaN skew, drift before the reference is complete) is ``None``.
        alerts: every alert of the run (dicts with ``ALERT_COLUMNS`` keys), oldest first.
        active: alerts active at the latest step, by severity (``normwatch/alerts/<severity>``).
        peak_active: the largest number of active alerts of each severity over the run.
        types: layer type per watched tensor (from the ``normwatch/watched`` Text panel; empty for older runs).
    """

    run: str
    step: int
    tensors: dict[str, dict[str, float | None]]
    alerts: list[dict[str, Any]] = field(default_factory=list)
    active: dict[str, int] = field(default_factory=dict)
    peak_active: dict[str, int] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)

    def raised(self, severity: str) -> int:
        """How many alerts of ``severity`` were raised (at least one if any was ever active)."""
        listed = sum(a["severity"] == severity for a in self.alerts)
        return max(listed, 1 if self.peak_active.get(severity, 0) > 0 else 0)


def parse_alerts_markdown(text: str) -> list[dict[str, Any]]:
    """Rows of the alert table written by ``output.markdown.alerts_markdown`` (other lines are ignored).

    Returns dicts with ``ALERT_COLUMNS`` keys in the order they were raised (by step; the table
    lists the most severe first);
    ``step`` is an int, ``value`` and ``threshold`` floats, ``message`` one line, ``caused_by``
    ``[kind, module]`` of the root alert a follower follows, or None for a root (and for every row of
    a table written before the column existed).

    Example:
        >>> rows = parse_alerts_markdown(
        ...     "| step | module | kind | severity | value | threshold | caused by | message |\\n"
        ...     "|---|---|---|---|---|---|---|---|\\n"
        ...     "| 9 | net.43 (ReLU) | dead | warning | 0.6 | 0.5 | vanishing in net.41 | m |"
        ... )
        >>> rows[0]["module"], rows[0]["caused_by"]
        ('net.43', ['vanishing', 'net.41'])
    """
    rows: list[dict[str, Any]] = []
    header_seen = False
    columns: tuple[str, ...] = ALERT_COLUMNS
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            continue
        cells = [
            " ".join(c.replace("\\|", "|").replace("<br>", " ").split()) for c in re.split(r"(?<!\\)\|", line)[1:-1]
        ]
        if not header_seen:
            header_seen = tuple(cells) in (ALERT_COLUMNS, OLD_ALERT_COLUMNS)
            columns = tuple(cells)
            continue
        if len(cells) != len(columns) or set(line) <= set("|- :"):
            continue
        row: dict[str, Any] = dict(zip(columns, cells, strict=True))
        cause = row.pop("caused by", "-")
        kind, sep, module = cause.partition(" in ")
        row["caused_by"] = [kind, module] if sep and kind and module else None
        row["severity"] = row["severity"].strip("*")
        row["module"] = re.sub(
            r" \(\w+\)$", "", row["module"]
        )  # "net.1 (ReLU)": the layer type is not part of the name
        try:
            row["step"] = int(row["step"])
        except ValueError:
            continue
        for key in ("value", "threshold"):
            try:
                row[key] = float(row[key])
            except ValueError:
                row[key] = math.nan
        rows.append(row)
    return sorted(rows[::-1], key=lambda r: r["step"])


def parse_watched_markdown(text: str) -> list[tuple[str, str, str]]:
    """Rows ``(tensor, layer type, role)`` of the watched-tensors table (``panels.watched_markdown``), in order.

    Example:
        >>> parse_watched_markdown("| # | tensor | type | role |\\n|---|---|---|---|\\n"
        ...                        "| 0 | input | batch | input |\\n| 1 | net.0 | Linear | preact |")
        [('input', 'batch', 'input'), ('net.0', 'Linear', 'preact')]
    """
    rows = []
    for line in text.splitlines():
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == 4 and cells[0].isdigit():
            rows.append((cells[1], cells[2], cells[3]))
    return rows


def split_tag(tag: str) -> tuple[str, str] | None:
    """``normwatch/<tensor>/<figure>`` -> ``(tensor, figure)``; None for other tags."""
    if not tag.startswith("normwatch/"):
        return None
    tensor, _, figure = tag[len("normwatch/") :].rpartition("/")
    if not tensor or tensor in _NOT_TENSORS:
        return None
    return tensor, figure


def _run_report(run: str, acc: Any) -> RunReport | None:
    tags = acc.Tags()
    latest: dict[str, dict[str, tuple[int, float]]] = {}
    active: dict[str, int] = {}
    peak: dict[str, int] = {}
    for tag in tags.get("scalars", []):
        events = acc.Scalars(tag)
        if not events:
            continue
        if tag.startswith("normwatch/alerts/") and tag.rsplit("/", 1)[1] in SEVERITIES:
            severity = tag.rsplit("/", 1)[1]
            active[severity] = int(events[-1].value)
            peak[severity] = int(max(e.value for e in events))
            continue
        parts = split_tag(tag)
        if parts is not None:
            latest.setdefault(parts[0], {})[parts[1]] = (events[-1].step, events[-1].value)
    if not latest:
        return None
    tensors: dict[str, dict[str, float | None]] = {}
    for tensor, figs in latest.items():
        step = max(s for s, _ in figs.values())
        values: dict[str, float | None] = {"step": step}
        values.update({name: (v if s == step else None) for name, (s, v) in sorted(figs.items())})
        tensors[tensor] = values
    alerts: list[dict[str, Any]] = []
    text = _last_text(acc, tags, ALERT_TAG)
    if text is not None:
        alerts = parse_alerts_markdown(text)
    types = {name: type_name for name, type_name, _ in parse_watched_markdown(_last_text(acc, tags, WATCHED_TAG) or "")}
    step = int(max(v["step"] for v in tensors.values()))  # type: ignore[type-var]
    return RunReport(run, step, tensors, alerts, active, peak, types)


def _readable(run: str, mux: Any) -> RunReport | None:
    """One run's report; a run that cannot be read is skipped with a warning, never the whole report.

    TensorBoard's reader already stops at a truncated or damaged record (a killed run's last event
    file): what was written before it is read.
    """
    try:
        return _run_report(run, mux.GetAccumulator(run))
    except Exception as exc:
        logging.getLogger("lightning_normwatch").warning("normwatch report: run %s could not be read (%r)", run, exc)
        return None


def latest_text(records: Iterable[Any], value: Callable[[Any], Any]) -> str | None:
    """The text of the last written of ``records`` (events or plugin data: ``wall_time``, ``step``; ``value(r)``
    its tensor), or None: the latest wall time wins, then the step (a run restarted in the same folder logs lower
    steps). Shared by ``normwatch report`` and the TensorBoard tab, so both show the same text.

    Example:
        >>> from types import SimpleNamespace as R
        >>> latest_text([R(wall_time=2.0, step=1, v=b"new"), R(wall_time=1.0, step=9, v=b"old")], lambda r: r.v)
        'new'
    """
    best = None
    for record in records:
        if best is None or (record.wall_time, record.step) >= (best.wall_time, best.step):
            best = record
    if best is None:
        return None
    text = value(best)
    text = text.reshape(-1)[0] if hasattr(text, "reshape") else text
    return text.decode("utf-8") if isinstance(text, bytes) else str(text)


def _last_text(acc: Any, tags: dict[str, Any], tag: str) -> str | None:
    """The latest text written to a Text-panel tag (``tag`` or ``tag/text_summary``), or None."""
    from tensorboard.util import tensor_util

    names = [t for t in tags.get("tensors", []) if t in (tag, f"{tag}/text_summary")]
    events = (event for name in names for event in acc.Tensors(name))
    return latest_text(events, lambda event: tensor_util.make_ndarray(event.tensor_proto))


def load_reports(logdir: str | os.PathLike[str]) -> list[RunReport]:
    """One ``RunReport`` per run directory under ``logdir`` holding NormWatch scalars, sorted by run.

    Raises:
        NoNormWatchData: ``logdir`` is not a directory, or no event file under it has NormWatch scalars.

    Example:
        >>> import tempfile
        >>> load_reports(tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        lightning_normwatch.view.report.NoNormWatchData: no NormWatch data under ...
    """
    path = os.fspath(logdir)
    if not os.path.isdir(path):
        raise NoNormWatchData(f"{path} is not a directory")
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.backend.event_processing import event_multiplexer

    guidance = {ea.SCALARS: 0, ea.TENSORS: 1, ea.HISTOGRAMS: 1, ea.COMPRESSED_HISTOGRAMS: 1, ea.IMAGES: 1}
    tb_log = logging.getLogger("tensorboard")
    level = tb_log.level
    tb_log.setLevel(logging.ERROR)  # the reader logs every file it opens
    try:
        mux = event_multiplexer.EventMultiplexer(size_guidance=guidance)
        mux.AddRunsFromDirectory(path)
        mux.Reload()
        reports = [r for run in sorted(mux.Runs()) if (r := _readable(run, mux)) is not None]
    finally:
        tb_log.setLevel(level)
    if not reports:
        raise NoNormWatchData(
            f"no NormWatch data under {path}: no TensorBoard event file there has normwatch/<tensor>/<figure> "
            "scalars (train with the NormWatch callback and a TensorBoardLogger, and pass its save_dir or log_dir)"
        )
    return reports


def format_reports(reports: Sequence[RunReport], all_alerts: bool = False, width: int | None = None) -> str:
    """The human-readable report: per run, a table of the latest figures, then the alerts.

    Alerts are listed root first (the oldest root first, most severe first), each with the alerts that
    follow it folded into one line. ``all_alerts`` (``--all-alerts``) lists every follower with its
    message, and the alerts of severity ``info`` (otherwise only counted). Alert messages are wrapped
    to ``width`` columns (default: the terminal's width).

    Example:
        >>> r = RunReport("version_0", 9, {"net.0": {"step": 9, "mean": 0.1, "std": 1.0}}, types={"net.0": "Linear"})
        >>> print(format_reports([r]))  # doctest: +NORMALIZE_WHITESPACE
        run version_0: latest step 9, 1 watched tensor, no alerts
        tensor  type    step  mean  std  zeros  dead  std_log_ratio  mean_shift  shape_psi  update_ratio
        ------  ------  ----  ----  ---  -----  ----  -------------  ----------  ---------  ------------
        net.0   Linear     9   0.1    1      -     -              -           -          -             -
    """
    import shutil

    width = width or shutil.get_terminal_size((100, 24)).columns
    out: list[str] = []
    for r in reports:
        counts = ", ".join(f"{r.raised(s)} {s}" for s in SEVERITIES)
        n = len(r.tensors)
        alerts = f"{len(r.alerts)} alert{'s' if len(r.alerts) != 1 else ''} ({counts})" if r.alerts else "no alerts"
        if not r.alerts and r.raised("error"):
            alerts = f"no alert table, but {counts} were active"
        out.append(f"run {r.run}: latest step {r.step}, {n} watched tensor{'s' if n != 1 else ''}, {alerts}")
        rows = [
            [name, r.types.get(name, "?"), str(v["step"]), *(_num(v.get(f)) for f in TABLE_FIGURES)]
            for name, v in r.tensors.items()
        ]
        out += _table(["tensor", "type", "step", *TABLE_FIGURES], rows, left=(0, 1))
        shown = [a for a in r.alerts if all_alerts or a["severity"] != "info"]
        hidden = len(r.alerts) - len(shown)
        if shown:
            out += alert_lines(shown, r.types, all_alerts, width)
        if hidden:
            out.append(f"({hidden} info alert{'s' if hidden != 1 else ''} not listed: --all-alerts lists them)")
        out.append("")
    return "\n".join(out).rstrip("\n")


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def reports_json(reports: Sequence[RunReport], logdir: str, fail_on: str = "error") -> dict[str, Any]:
    """The ``--json`` document (NaN and infinities become ``null``).

    Example:
        >>> doc = reports_json([RunReport(".", 0, {"x": {"step": 0, "mean": float("nan")}})], "logs")
        >>> doc["runs"][0]["tensors"]["x"]["mean"] is None, doc["exit_code"]
        (True, 0)
    """
    runs = []
    for r in reports:
        runs.append(
            {
                "run": r.run,
                "step": r.step,
                "tensors": {k: {f: _finite_or_none(v) for f, v in figs.items()} for k, figs in r.tensors.items()},
                "alerts": [{k: _finite_or_none(v) for k, v in a.items()} for a in r.alerts],
                "raised": {s: r.raised(s) for s in SEVERITIES},
                "active": {s: r.active.get(s, 0) for s in SEVERITIES},
            }
        )
    return {"logdir": logdir, "runs": runs, "fail_on": fail_on, "exit_code": exit_code(reports, fail_on)}


def exit_code(reports: Sequence[RunReport], fail_on: str = "error") -> int:
    """1 when an alert of severity ``fail_on`` or worse was raised in any run, else 0.

    ``fail_on`` is ``"error"``, ``"warning"``, ``"info"`` or ``"never"``.

    Example:
        >>> ok = RunReport(".", 0, {}, alerts=[{"severity": "warning"}])
        >>> exit_code([ok]), exit_code([ok], fail_on="warning")
        (0, 1)
    """
    if fail_on == "never":
        return 0
    levels = SEVERITIES[: SEVERITIES.index(fail_on) + 1]
    return int(any(r.raised(s) for r in reports for s in levels))


def exit_reason(reports: Sequence[RunReport], fail_on: str = "error") -> str | None:
    """Why ``exit_code`` is 1 (one line), or None when it is 0.

    Example:
        >>> r = RunReport("version_0", 0, {}, alerts=[{"severity": "warning"}, {"severity": "warning"}])
        >>> exit_reason([r], "warning")
        'exit status 1: 2 warning alerts were raised in run version_0 (--fail-on warning fails on warning or worse)'
        >>> exit_reason([r]) is None
        True
    """
    if not exit_code(reports, fail_on):
        return None
    levels = SEVERITIES[: SEVERITIES.index(fail_on) + 1]
    parts = []
    for r in reports:
        counts = [f"{r.raised(s)} {s}" for s in levels if r.raised(s)]
        if counts:
            n = sum(r.raised(s) for s in levels)
            parts.append(f"{' and '.join(counts)} alert{'s' if n != 1 else ''} were raised in run {r.run}")
    worst = "or worse" if fail_on != "error" else "alerts"
    return f"exit status 1: {'; '.join(parts)} (--fail-on {fail_on} fails on {fail_on} {worst})"
