"""The Markdown text panels: the alert table (one line per alert kind, then every alert) and the watched
tensors with their layer types. ``view/report.py`` parses the alert table back.

Example:
    >>> from lightning_normwatch.judge.alerts import Alert
    >>> text = alerts_markdown([Alert(3, "net.1", "dead", "warning", 0.9, 0.5, "90% of units output zero")])
    >>> "| 3 | net.1 | dead | warning | 0.9 | 0.5 |" in text
    True
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

from ..judge.alerts import Alert
from ..judge.grouping import group_alerts, group_line, named
from .tags import ALERT_COLUMNS

__all__ = ["alerts_markdown", "watched_markdown"]


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
