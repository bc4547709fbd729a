"""The Markdown text panels: the alert table (one line per root alert, then every alert) and the watched
tensors with their layer types. ``view/report.py`` parses the alert table back.

Example:
    >>> from lightning_normwatch.judge.alerts import Alert
    >>> text = alerts_markdown([Alert(3, "net.1", "dead", "warning", 0.9, 0.5, "90% of units output zero")])
    >>> "| 3 | net.1 | dead | warning | 0.9 | 0.5 | - |" in text
    True
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

from ..judge.alerts import Alert
from ..judge.grouping import folded, named, ordered_roots
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
    """The alert Text panel: a summary line, one line per root alert (followers folded), then the table.

    The root lines come first (most severe first, then the oldest root: where a fault started), each
    with the alerts that follow it folded ("and 11 tensors after it"), so that what matters fits
    TensorBoard's fixed-height text box; the table follows, every alert: most severe first, then
    each root (oldest first) followed by its followers. ``types`` maps module names to their layer
    type (``net.1 (ReLU)``). The "caused by" column names the root alert a follower follows.

    Messages are wrapped with ``<br>``; ``report.parse_alerts_markdown`` reads the table back.

    Example:
        >>> a = Alert(3, "net.1", "dead", "warning", 0.8, 0.5, "80% of units are dead")
        >>> b = Alert(5, "net.2", "nonfinite", "error", 1.0, 0.0, "NaN")
        >>> c = Alert(3, "net.3", "dead", "warning", 0.6, 0.5, "60%", caused_by=("dead", "net.1"))
        >>> print(alerts_markdown([a, b, c], {"net.1": "ReLU"}))
        **3 alerts** up to step 5: 1 error, 2 warning, 0 info; 2 root alerts (most severe, then oldest first)
        <BLANKLINE>
        - **nonfinite** (error) in net.2 at 1 (threshold 0)
        - **dead** (warning) in net.1 (ReLU) at 0.8 (threshold 0.5), step 3; and 1 tensor after it: dead in net.3
        <BLANKLINE>
        | step | module | kind | severity | value | threshold | caused by | message |
        |---|---|---|---|---|---|---|---|
        | 5 | net.2 | nonfinite | **error** | 1 | 0 | - | NaN |
        | 3 | net.1 (ReLU) | dead | warning | 0.8 | 0.5 | - | 80% of units are dead |
        | 3 | net.3 | dead | warning | 0.6 | 0.5 | dead in net.1 | 60% |
    """
    counts = {s: sum(a.severity == s for a in alerts) for s in ("error", "warning", "info")}
    last = max((a.step for a in alerts), default=0)
    groups = ordered_roots(alerts)
    summary = (
        f"**{len(alerts)} alert{'s' if len(alerts) != 1 else ''}** up to step {last}: "
        f"{counts['error']} error, {counts['warning']} warning, {counts['info']} info; {len(groups)} root "
        f"alert{'s' if len(groups) != 1 else ''} (most severe, then oldest first)"
    )
    lines, rows = [], []
    for root, followers in groups:
        line = f"- **{_cell(root.kind)}** ({root.severity}) in {_cell(named(root.module, types))} at {root.value:.3g} "
        line += f"(threshold {root.threshold:.3g})" + (
            f", step {root.step}; {_cell(folded(followers))}" if followers else ""
        )
        lines.append(line)
        for a in (root, *followers):
            severity = f"**{a.severity}**" if a.severity == "error" else a.severity
            cause = f"{a.caused_by[0]} in {a.caused_by[1]}" if a.caused_by else "-"
            cells = [_cell(v) for v in (a.step, named(a.module, types), a.kind, severity, a.value, a.threshold, cause)]
            rows.append("| " + " | ".join([*cells, _message_cell(a.message)]) + " |")
    head = "| " + " | ".join(ALERT_COLUMNS) + " |\n" + "|---" * len(ALERT_COLUMNS) + "|"
    return "\n".join([summary, "", *lines, "", head, *rows])


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
