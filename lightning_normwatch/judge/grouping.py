"""Alerts grouped by kind: one line for "dead in 17 layers" instead of 17 near-identical lines.

Used by the alert Text panel (its first lines) and by the training log. ``Alert`` objects are not
changed: ``NormWatch.alerts`` keeps one per module; only what is printed is grouped.

Example:
    >>> alerts = [Alert(5, f"net.{i}", "dead", "warning", 0.5 + i / 100, 0.5, "m") for i in (1, 3, 5, 7, 9, 11)]
    >>> types = {f"net.{i}": "ReLU" for i in range(12)}
    >>> print(group_line(group_alerts(alerts)[0], types))  # doctest: +NORMALIZE_WHITESPACE
    dead (warning) in 6 tensors: net.1 (ReLU), net.3 (ReLU), net.5 (ReLU) ... net.11 (ReLU);
    worst net.11 (ReLU) at 0.61 (threshold 0.5)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .alerts import Alert
from .diagnosis import roots_first

__all__ = ["AlertGroup", "folded", "group_alerts", "group_line", "named", "natural_key", "ordered_roots"]

_RANK = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class AlertGroup:
    """Alerts of one kind.

    Attributes:
        kind: the alert kind.
        severity: its severity.
        alerts: one per module (the latest when a module was alerted several times), in natural
            order of the module names (``net.2`` before ``net.10``: usually the execution order).
        worst: the alert with the largest value (figures are oriented so that larger is worse).
    """

    kind: str
    severity: str
    alerts: tuple[Alert, ...]
    worst: Alert

    @property
    def modules(self) -> list[str]:
        return [a.module for a in self.alerts]


def group_alerts(alerts: Sequence[Alert]) -> list[AlertGroup]:
    """Alerts grouped by kind, most severe first, then the largest groups.

    Example:
        >>> a = Alert(1, "x", "shift", "warning", 3.0, 2.5, "")
        >>> b = Alert(2, "y", "nonfinite", "error", 1.0, 0.0, "")
        >>> [g.kind for g in group_alerts([a, b])]
        ['nonfinite', 'shift']
    """
    by_kind: dict[str, dict[str, Alert]] = {}
    for a in alerts:
        by_kind.setdefault(a.kind, {})[a.module] = a
    groups = []
    for kind, per_module in by_kind.items():
        members = tuple(sorted(per_module.values(), key=lambda a: natural_key(a.module)))
        worst = max(members, key=lambda a: (a.value if a.value == a.value else float("inf"), a.step))
        groups.append(AlertGroup(kind, members[0].severity, members, worst))
    return sorted(groups, key=lambda g: (_RANK.get(g.severity, 3), -len(g.alerts)))


def natural_key(name: str) -> tuple[object, ...]:
    """Sort key that orders numbers by value: ``net.2`` before ``net.10``; the batch input first.

    Example:
        >>> sorted(["net.10", "net.2", "input", "net.2.fc"], key=natural_key)
        ['input', 'net.2', 'net.2.fc', 'net.10']
    """
    parts = re.split(r"(\d+)", name)
    return (
        name != "input" and not name.startswith("input/"),
        *((int(p), "") if p.isdigit() else (-1, p) for p in parts),
    )


def named(module: str, types: Mapping[str, str] | None) -> str:
    """``net.1 (ReLU)`` when the module's type is known, else the name.

    Example:
        >>> named("net.1", {"net.1": "ReLU"}), named("loss", {})
        ('net.1 (ReLU)', 'loss')
    """
    kind = (types or {}).get(module)
    return f"{module} ({kind})" if kind else module


def group_line(group: AlertGroup, types: Mapping[str, str] | None = None, listed: int = 3) -> str:
    """One line for a group: kind, severity, how many tensors, which (first ``listed`` ... last), the worst."""
    names = [named(m, types) for m in group.modules]
    n = len(names)
    shown = ", ".join(names[:listed]) + " ... " + names[-1] if n > listed + 1 else ", ".join(names)
    worst = group.worst
    where = f"in {n} tensors: {shown}; worst {named(worst.module, types)}" if n > 1 else f"in {shown}"
    return f"{group.kind} ({group.severity}) {where} at {worst.value:.3g} (threshold {worst.threshold:.3g})"


def ordered_roots(alerts: Sequence[Alert]) -> list[tuple[Alert, list[Alert]]]:
    """Root alerts with their followers: most severe first, then the oldest root, then execution order
    (natural order of the names); followers in natural order. A follower whose root is not among
    ``alerts`` is listed as a root.

    Example:
        >>> r = Alert(150, "net.41", "vanishing", "warning", 9.0, 8.0, "m")
        >>> f = Alert(150, "net.43", "dead", "warning", 0.6, 0.5, "m", caused_by=("vanishing", "net.41"))
        >>> old = Alert(0, "net.9", "dead", "warning", 0.5, 0.5, "m")
        >>> [(root.module, len(followers)) for root, followers in ordered_roots([f, r, old])]
        [('net.9', 0), ('net.41', 1)]
    """
    groups = [(root, sorted(followers, key=lambda a: natural_key(a.module))) for root, followers in roots_first(alerts)]
    return sorted(groups, key=lambda g: (_RANK.get(g[0].severity, 3), g[0].step, natural_key(g[0].module)))


def folded(followers: Sequence[Alert], types: Mapping[str, str] | None = None, listed: int = 3) -> str:
    """The followers of a root in one phrase: how many, then by kind (first ``listed`` ... last).

    Example:
        >>> cause = ("vanishing", "net.41")
        >>> fs = [Alert(150, f"net.{i}", "dead", "warning", 0.6, 0.5, "", cause) for i in (43, 45, 47, 49, 51)]
        >>> folded(fs + [Alert(150, "net.42", "shift", "warning", 3.0, 2.5, "", ("vanishing", "net.41"))])
        'and 6 tensors after it: dead in net.43, net.45, net.47 ... net.51; shift in net.42'
    """
    if not followers:
        return ""
    by_kind: dict[str, list[str]] = {}
    for a in followers:
        by_kind.setdefault(a.kind, []).append(named(a.module, types))
    parts = []
    for kind, names in by_kind.items():
        shown = ", ".join(names[:listed]) + " ... " + names[-1] if len(names) > listed + 1 else ", ".join(names)
        parts.append(f"{kind} in {shown}")
    n = len({a.module for a in followers})
    return f"and {n} tensor{'s' if n != 1 else ''} after it: " + "; ".join(parts)
