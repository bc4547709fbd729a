"""What NormWatch prints: a start line, grouped alert lines, and an end-of-fit summary.

Everything goes through the ``lightning_normwatch`` logger and respects its level (``logging.
getLogger("lightning_normwatch").setLevel(logging.WARNING)`` keeps only alerts). Like Lightning's
own logger, it gets a stream handler at level INFO when the application has not configured logging.
The summary is a ``rich`` table when ``rich`` is installed and the log goes to a terminal, plain
text otherwise.

Example:
    >>> when = "drift judged from step 300 (reference window steps 100-300)"
    >>> print(start_line(49, True, 10, when, "TensorBoard at logs/version_0"))  # doctest: +NORMALIZE_WHITESPACE
    NormWatch: watching 49 modules and the batch input every 10 steps; drift judged from step 300 (reference
    window steps 100-300); panels: TensorBoard at logs/version_0
"""

from __future__ import annotations

import io
import logging
import math
import shutil
import sys
from collections.abc import Mapping, Sequence

from ..judge.alerts import Alert
from ..judge.grouping import folded, group_alerts, group_line, named
from .loggers import is_tensorboard_logger

__all__ = ["log", "start_line", "alert_lines", "summary_rows", "summary_text", "SUMMARY_COLUMNS"]

log = logging.getLogger("lightning_normwatch")
if log.level == logging.NOTSET:
    log.setLevel(logging.INFO)
if not logging.getLogger().hasHandlers() and not log.handlers:  # as Lightning does for its own logger
    log.addHandler(logging.StreamHandler())
    log.propagate = False

_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
SUMMARY_COLUMNS = ("tensor", "type", "std", "skew", "kurt", "drift", "dead", "alerts")
_RANK = {"error": 100, "warning": 10, "info": 1}


def start_line(modules: int, inputs: bool, interval: int, drift: str, panels: str) -> str:
    """The line logged when a fit starts; ``drift`` says when drift is judged, or why not (``Windows.describe``)."""
    what = f"{modules} module{'s' if modules != 1 else ''}" + (" and the batch input" if inputs else "")
    return f"NormWatch: watching {what} every {interval} steps; {drift}; panels: {panels}"


def alert_lines(alerts: Sequence[Alert], types: Mapping[str, str] | None = None) -> list[tuple[int, str]]:
    """``(logging level, line)``: root alerts first, each with its followers folded; then followers of roots
    raised earlier, one line per root. Roots of one kind share a line (the full message for one module).

    Example:
        >>> a = [Alert(9, f"net.{i}", "dead", "warning", 0.9, 0.5, "...") for i in (1, 3)]
        >>> print(alert_lines(a, {"net.1": "ReLU", "net.3": "ReLU"})[0][1])  # doctest: +NORMALIZE_WHITESPACE
        NormWatch [dead] warning at step 9 in 2 tensors: net.1 (ReLU), net.3 (ReLU);
        worst net.1 (ReLU) at 0.9 (threshold 0.5); ...
        >>> root = Alert(9, "net.1", "vanishing", "warning", 40.0, 8.0, "lost at net.1")
        >>> f = Alert(9, "net.3", "dead", "warning", 0.9, 0.5, "...", caused_by=("vanishing", "net.1"))
        >>> alert_lines([f, root])[0]
        (30, 'NormWatch [vanishing] net.1: lost at net.1 (and 1 tensor after it: dead in net.3)')
        >>> alert_lines([f])[0]
        (30, 'NormWatch [dead] warning at step 9 in net.3, after the vanishing alert on net.1: ...')
    """
    keys = {(a.kind, a.module) for a in alerts if a.caused_by is None}
    followers: dict[tuple[str, str], list[Alert]] = {}
    roots, late = [], []
    for a in alerts:
        if a.caused_by is None:
            roots.append(a)
        elif a.caused_by in keys:
            followers.setdefault(a.caused_by, []).append(a)
        else:
            late.append(a)
    out = []
    for g in group_alerts(roots):
        level = _LEVELS.get(g.severity, logging.WARNING)
        after = [f for r in g.alerts for f in followers.get((r.kind, r.module), [])]
        tail = f" ({folded(after, types)})" if after else ""
        if len(g.alerts) == 1:
            a = g.alerts[0]
            out.append((level, f"NormWatch [{a.kind}] {named(a.module, types)}: {a.message}{tail}"))
        else:
            step = max(a.step for a in g.alerts)
            line = group_line(g, types).replace(f"{g.kind} ({g.severity}) in", f"{g.severity} at step {step} in", 1)
            out.append((level, f"NormWatch [{g.kind}] {line}; {g.worst.message}{tail}"))
    by_root: dict[tuple[str, str], list[Alert]] = {}
    for a in late:
        by_root.setdefault(a.caused_by, []).append(a)  # type: ignore[arg-type]
    for (kind, module), these in by_root.items():
        for g in group_alerts(these):
            level = _LEVELS.get(g.severity, logging.WARNING)
            where = ", ".join(named(m, types) for m in g.modules)
            n = len(g.alerts)
            where = f"in {n} tensors: {where}" if n > 1 else f"in {where}"
            step = max(a.step for a in g.alerts)
            text = f"NormWatch [{g.kind}] {g.severity} at step {step} {where}, after the {kind} alert on {module}"
            out.append((level, text + f": {g.worst.message.split(' (Follows the ')[0]}"))
    return out


def _num(value: float | None, fmt: str = "{:.3g}") -> str:
    return "-" if value is None or not math.isfinite(value) else fmt.format(value)


def summary_rows(
    figures: Mapping[str, Mapping[str, float]],
    types: Mapping[str, str],
    alerts: Sequence[Alert],
    max_rows: int = 15,
    roles: Mapping[str, str] | None = None,
) -> tuple[list[list[str]], int]:
    """Rows of the end-of-fit summary, worst first, and how many healthy rows were folded away.

    Tensors with the most severe alerts come first; among them, tensors with a root alert before those
    whose alerts all follow a root (shown as ``after kind@module``), then the one alerted earliest, then
    the first in execution order (so the origin of a cascade leads: a layer that died before the layers
    after it collapsed); then tensors without alerts, the largest scale drift first. Only tensors
    without alerts are folded. With ``roles``, ``dead`` is
    shown for activations only.

    Example:
        >>> figs = {"net.0": {"std": 1.0}, "net.1": {"std": 0.5, "dead": 0.9, "std_log_ratio": -0.7}}
        >>> dead = Alert(3, "net.1", "dead", "warning", 0.9, 0.5, "")
        >>> rows, folded = summary_rows(figs, {"net.0": "Linear", "net.1": "ReLU"}, [dead])
        >>> rows[0]
        ['net.1', 'ReLU', '0.5', '-', '-', 'x0.5', '90%', '1 warning (dead)']
        >>> folded
        0
    """
    per: dict[str, list[Alert]] = {}
    for a in alerts:
        per.setdefault(a.module, []).append(a)
    order = {k: i for i, k in enumerate(figures)}

    def badness(key: str) -> tuple[float, bool, float, float, int]:
        these = per.get(key, [])
        worst = max((_RANK.get(a.severity, 1) for a in these), default=0)
        top = [a for a in these if _RANK.get(a.severity, 1) == worst]
        root = any(a.caused_by is None for a in top) or not top
        first = min((a.step for a in top), default=0)
        slr = figures[key].get("std_log_ratio", math.nan)
        return (-worst, not root, first, -abs(slr) if math.isfinite(slr) else 0.0, order[key])

    keys = sorted(figures, key=badness)
    alerted = [k for k in keys if k in per]
    shown = keys[: max(max_rows, len(alerted))]
    rows = []
    for key in shown:
        f = figures[key]
        slr = f.get("std_log_ratio", math.nan)
        these = per.get(key, [])
        dead = f.get("dead") if roles is None or roles.get(key) in ("activation", "bounded", "other") else None
        worst = min((a.severity for a in these), key=lambda s: -_RANK.get(s, 1), default="")
        top = [a for a in these if a.severity == worst]
        kinds = ", ".join(sorted({a.kind for a in top}))
        causes = sorted({a.caused_by for a in top if a.caused_by is not None})
        if causes and all(a.caused_by is not None for a in top):
            kinds += ", after " + ", ".join(f"{k}@{m}" for k, m in causes)
        rows.append(
            [
                key,
                types.get(key, "?"),
                _num(f.get("std")),
                _num(f.get("channel_skew", f.get("skew"))),
                _num(f.get("channel_kurtosis", f.get("kurtosis"))),
                _num(math.exp(slr) if math.isfinite(slr) else None, "x{:.2g}"),
                _num(dead, "{:.0%}"),
                f"{sum(a.severity == worst for a in these)} {worst} ({kinds})" if these else "",
            ]
        )
    return rows, len(keys) - len(shown)


def summary_text(rows: Sequence[Sequence[str]], folded: int, title: str, rich: bool = False) -> str:
    """The summary as aligned plain text, or rendered by ``rich`` (with colours, for a terminal)."""
    tail = f"... {folded} more tensors without alerts (normwatch report LOGDIR lists them all)" if folded else ""
    if rich:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left", header_style="bold")
        for i, column in enumerate(SUMMARY_COLUMNS):
            table.add_column(column, justify="left" if i in (0, 1, 7) else "right")
        for row in rows:
            table.add_row(*row, style="red" if "error" in row[7] else ("yellow" if "warning" in row[7] else None))
        buffer = io.StringIO()
        width = shutil.get_terminal_size((120, 24)).columns
        Console(file=buffer, force_terminal=True, width=width).print(table)
        return buffer.getvalue().rstrip("\n") + (f"\n{tail}" if tail else "")
    widths = [max(len(str(x)) for x in col) for col in zip(SUMMARY_COLUMNS, *rows, strict=True)]
    lines = [title]
    for row in [list(SUMMARY_COLUMNS), ["-" * w for w in widths], *rows]:
        cells = [c.ljust(w) if i in (0, 1, 7) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines + ([tail] if tail else []))


def _use_rich() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    streams = [getattr(h, "stream", None) for h in (log.handlers or logging.getLogger().handlers)]
    streams = [s for s in streams if s is not None] or [sys.stderr]
    return all(getattr(s, "isatty", lambda: False)() for s in streams)


def log_summary(
    figures: Mapping[str, Mapping[str, float]],
    types: Mapping[str, str],
    alerts: Sequence[Alert],
    step: int,
    max_rows: int = 15,
    roles: Mapping[str, str] | None = None,
    rules: str | None = None,
) -> None:
    """Log the end-of-fit summary (INFO) through the ``lightning_normwatch`` logger; ``rules`` (which rules
    ran, ``windows.rules_ran``) ends it."""
    if not figures or not log.isEnabledFor(logging.INFO):
        return
    rows, folded = summary_rows(figures, types, alerts, max_rows, roles)
    n = len(alerts)
    title = (
        f"NormWatch summary at step {step}: {len(figures)} watched tensors, {n} alert{'s' if n != 1 else ''}"
        " (worst first, roots before their followers)"
    )
    text = summary_text(rows, folded, title, rich=_use_rich())
    log.info("%s", text + ("\n" + rules if rules else ""))


def describe_sinks(loggers: Sequence[object], panels: bool) -> str:
    """Where figures go, for the start line: TensorBoard (with panels), other loggers, or nowhere."""
    tb = next((lg for lg in loggers if is_tensorboard_logger(lg)), None)
    if tb is not None and panels:
        return f"TensorBoard at {tb.log_dir} (Images: normwatch/overview, Custom Scalars, Text: normwatch/alerts)"
    if loggers:
        return "scalars normwatch/<tensor>/<figure> to " + ", ".join(type(lg).__name__ for lg in loggers)
    return "none (no logger; alerts are still logged here)"
