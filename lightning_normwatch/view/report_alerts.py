"""The alerts of one run as ``normwatch report`` prints them: each root alert with its message, its
followers folded into one line under it (or each with its message: ``--all-alerts``), oldest root first.

Example:
    >>> rows = [{"step": 5, "module": "b", "kind": "dead", "severity": "warning", "value": 0.6, "threshold": 0.5,
    ...          "message": "b died", "caused_by": ["vanishing", "a"]},
    ...         {"step": 5, "module": "a", "kind": "vanishing", "severity": "warning", "value": 40.0, "threshold": 8.0,
    ...          "message": "lost at a", "caused_by": None}]
    >>> print("\\n".join(alert_lines(rows, {}, False, 80)))  # doctest: +NORMALIZE_WHITESPACE
    alerts: 1 root alert, oldest first, each with the alerts that follow it
      step  severity  kind       module  value  threshold  (message below each alert)
      ----  --------  ---------  ------  -----  ---------
         5  warning   vanishing  a          40          8
          lost at a
          and 1 tensor after it: dead in b (--all-alerts lists them)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["alert_lines", "root_groups"]

SEVERITIES = ("error", "warning", "info")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int] = (0,)) -> list[str]:
    """Aligned plain-text table lines: header, rule, rows (columns in ``left`` left-aligned)."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i in left else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def root_groups(alerts: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Alert rows as (root, followers): most severe first, then the oldest root; a follower whose root is not
    listed counts as a root.

    Example:
        >>> rows = [{"step": 5, "module": "b", "kind": "dead", "severity": "warning", "caused_by": ["vanishing", "a"]},
        ...         {"step": 5, "module": "a", "kind": "vanishing", "severity": "warning", "caused_by": None}]
        >>> [(root["module"], [f["module"] for f in followers]) for root, followers in root_groups(rows)]
        [('a', ['b'])]
    """
    keys = {(a["kind"], a["module"]) for a in alerts if not a.get("caused_by")}
    groups: dict[tuple[str, ...], tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for a in alerts:
        cause = a.get("caused_by")
        if not cause or tuple(cause) not in keys:
            key = (a["kind"], a["module"]) if not cause else (a["kind"], a["module"], str(a["step"]))
            groups.setdefault(key, (a, []))
    for a in alerts:
        cause = a.get("caused_by")
        if cause and tuple(cause) in keys:
            groups[tuple(cause)][1].append(a)
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(groups.values(), key=lambda g: (rank.get(g[0]["severity"], 3), g[0]["step"]))


def alert_lines(alerts: Sequence[dict[str, Any]], types: dict[str, str], every: bool, width: int) -> list[str]:
    """The alerts of a run: each root with its message, then its followers (folded into one line, or each with
    its message when ``every``)."""
    import textwrap

    def name(a: dict[str, Any]) -> str:
        return f"{a['module']} ({types[a['module']]})" if a["module"] in types else a["module"]

    place = {name: i for i, name in enumerate(types)}  # the watched-tensors panel: execution order
    groups = [(root, sorted(fs, key=lambda a: place.get(a["module"], len(place)))) for root, fs in root_groups(alerts)]
    listed = [a for root, followers in groups for a in ([root, *followers] if every else [root])]
    rows = [[str(a["step"]), a["severity"], a["kind"], name(a), _num(a["value"]), _num(a["threshold"])] for a in listed]
    table = _table(["step", "severity", "kind", "module", "value", "threshold"], rows, left=(1, 2, 3))
    n_roots = len(groups)
    out = [
        f"alerts: {n_roots} root alert{'s' if n_roots != 1 else ''}, oldest first, each with the alerts that follow it"
    ]
    out.append("  " + table[0] + "  (message below each alert)")
    out.append("  " + table[1])
    lines = iter(table[2:])
    for root, followers in groups:
        out.append("  " + next(lines))
        out += textwrap.wrap(root["message"], width, initial_indent="      ", subsequent_indent="      ")
        if not followers:
            continue
        if every:
            for a in followers:
                out.append("    " + next(lines) + "  <- follows it")
                out += textwrap.wrap(a["message"], width, initial_indent="        ", subsequent_indent="        ")
            continue
        kinds: dict[str, list[str]] = {}
        for a in followers:
            kinds.setdefault(a["kind"], []).append(name(a))
        parts = [
            f"{k} in " + (", ".join(v[:3]) + " ... " + v[-1] if len(v) > 4 else ", ".join(v)) for k, v in kinds.items()
        ]
        n = len({a["module"] for a in followers})
        text = f"and {n} tensor{'s' if n != 1 else ''} after it: " + "; ".join(parts) + " (--all-alerts lists them)"
        out += textwrap.wrap(text, width, initial_indent="      ", subsequent_indent="        ")
    return out
