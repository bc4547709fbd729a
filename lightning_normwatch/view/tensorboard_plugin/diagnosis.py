"""The diagnosis list of the NormWatch tab: root alerts in the order they started, followers folded under them.

The alerts are the rows of the alert table (``report.parse_alerts_markdown``). When the table has a
``caused_by`` column, a row whose cell names an earlier alert (its kind and module, in any wording:
``dead in net.23``, ``(dead, net.23)``) follows that alert's root; an empty cell (or ``-``, ``None``,
``root``) makes a root. Without the column every alert is its own root.

Example:
    >>> rows = [
    ...     {"step": 5, "module": "net.23", "kind": "dead", "severity": "warning", "caused_by": ""},
    ...     {"step": 6, "module": "net.25", "kind": "dead", "severity": "warning", "caused_by": "(dead, net.23)"},
    ...     {"step": 2, "module": "input", "kind": "feature_scale", "severity": "warning"},
    ... ]
    >>> [(r["module"], [f["module"] for f in r["followers"]]) for r in diagnosis(rows)]
    [('input', []), ('net.23', ['net.25'])]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["diagnosis", "root_of", "split_hint", "FIGURE_OF_KIND"]

#: cells of a ``caused_by`` column that mean "no cause: a root alert"
_NO_CAUSE = frozenset({"", "-", "—", "none", "null", "root", "nan"})
#: the heatmap figure that shows each alert kind best (the tab switches to it when the alert is clicked)
FIGURE_OF_KIND = {
    "dead": "dead",
    "saturated": "saturated",
    "scale_drift": "scale_drift",
    "mean_drift": "mean_drift",
    "shift": "shape_psi",
    "frozen_norm": "scale_drift",
    "update_size": "update",  # the parameter-side alerts, on ``update_ratio`` scalars
    "vanishing_gradient": "update",
    "exploding_gradient": "update",
}


_HINT = re.compile(r"^(?P<finding>.*?)[;:,.]?\s+(?P<hint>(?:the )?usual causes?:?\s.*)$", re.IGNORECASE | re.DOTALL)


def split_hint(message: str) -> tuple[str, str]:
    """A message's finding and its hint (the "usual causes" part NormWatch's messages end with), or ``(message, "")``.

    Example:
        >>> split_hint("The std of `net.3` shrank 9x (threshold 4x); usual causes: a vanishing signal.")
        ('The std of `net.3` shrank 9x (threshold 4x)', 'usual causes: a vanishing signal.')
        >>> split_hint("NaN in net.1")
        ('NaN in net.1', '')
    """
    m = _HINT.match(message)
    return (m["finding"], m["hint"]) if m else (message, "")


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"[\w./\[\]@-]+", text))


def root_of(cause: str, earlier: Sequence[Mapping[str, Any]]) -> int | None:
    """Index in ``earlier`` of the alert that a ``caused_by`` cell names (kind and module), or None.

    The latest matching alert wins; a cell naming only a module matches that module's latest alert.

    Example:
        >>> earlier = [{"kind": "dead", "module": "net.1"}, {"kind": "scale_drift", "module": "net.1"}]
        >>> root_of("dead in net.1", earlier), root_of("net.1", earlier), root_of("-", earlier), root_of("x", earlier)
        (0, 1, None, None)
    """
    if cause.strip().lower() in _NO_CAUSE:
        return None
    tokens = _tokens(cause)
    module_only = None
    for i in range(len(earlier) - 1, -1, -1):
        row = earlier[i]
        if row["module"] in tokens:
            if row["kind"] in tokens:
                return i
            if module_only is None:
                module_only = i
    return module_only


def _cause_text(row: Mapping[str, Any]) -> str:
    cause = row.get("caused_by")
    if cause is None:
        return ""
    if isinstance(cause, (tuple, list)):
        return " ".join(str(c) for c in cause)
    return str(cause)


def diagnosis(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Root alerts ordered by the step they started (errors before warnings before info at one step).

    Each root is a copy of its row with ``followers`` (its followers' rows, by step, also those of
    followers of followers) and ``id`` (the row's position in the input: a stable handle for the page).
    A follower whose cause names no alert of the table, or that ends in a cycle, is a root.

    Example:
        >>> rows = [{"step": 4, "module": "net.3", "kind": "dead", "severity": "warning", "caused_by": "dead in net.1"},
        ...         {"step": 4, "module": "net.1", "kind": "dead", "severity": "warning", "caused_by": None}]
        >>> [(r["module"], [f["module"] for f in r["followers"]]) for r in diagnosis(rows)]
        [('net.1', ['net.3'])]
    """
    rank = {"error": 0, "warning": 1, "info": 2}
    items = [dict(row, id=i) for i, row in enumerate(rows)]
    ordered = sorted(items, key=lambda r: (r["step"], rank.get(r["severity"], 3), r["id"]))
    parent: dict[int, int | None] = {}
    for row in ordered:
        others = [r for r in ordered if r["id"] != row["id"]]
        found = root_of(_cause_text(row), others)
        parent[row["id"]] = None if found is None else others[found]["id"]

    def top(i: int) -> int | None:
        seen = set()
        while parent[i] is not None:
            if i in seen:
                return None  # a cycle: no root
            seen.add(i)
            i = parent[i]  # type: ignore[assignment]
        return i

    roots: dict[int, dict[str, Any]] = {}
    for row in ordered:
        root = top(row["id"])
        if root is None or root == row["id"]:
            roots[row["id"]] = dict(row, followers=[])
    for row in ordered:
        root = top(row["id"])
        if row["id"] not in roots and root in roots:
            roots[root]["followers"].append(row)
    return sorted(roots.values(), key=lambda r: (r["step"], rank.get(r["severity"], 3), r["id"]))
