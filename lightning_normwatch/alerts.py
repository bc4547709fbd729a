"""Alerts: what they carry, their vocabulary, and when each is raised again.

Example:
    >>> tracker = AlertTracker()
    >>> a = Alert(3, "fc1", "dead", "warning", 0.8, 0.5, "80% of fc1's units are dead")
    >>> [x.step for x in tracker.update([a], evaluated={("fc1", "dead")})]
    [3]
    >>> tracker.update([a], evaluated={("fc1", "dead")})   # still active: not raised again
    []
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

__all__ = ["Alert", "AlertTracker", "NormWatchAlertError", "KINDS", "SEVERITY"]

#: Alert kinds and their severity (part of the public API).
SEVERITY: dict[str, str] = {
    "nonfinite": "error",
    "dead": "warning",
    "saturated": "warning",
    "scale_drift": "warning",
    "mean_drift": "warning",
    "shift": "warning",
    "feature_scale": "warning",
    "outlier": "warning",
    "non_normal": "info",
    "input_drift": "warning",
    "integer_inputs": "info",
}
KINDS: tuple[str, ...] = tuple(SEVERITY)


@dataclass(frozen=True)
class Alert:
    """Something wrong (or worth knowing) about one watched tensor.

    Attributes:
        step: trainer global step at which it was raised.
        module: qualified module name as in ``named_modules()`` (with ``[i]``/``.key`` for parts of
            tuple/dict outputs), or ``"input"`` / ``"input/<key>"`` for batch features.
        kind: one of ``KINDS``.
        severity: ``"info"``, ``"warning"`` or ``"error"``.
        value: the measured figure.
        threshold: the threshold it crossed.
        message: one sentence naming the module, the figure, the threshold and the usual cause.
    """

    step: int
    module: str
    kind: str
    severity: str
    value: float
    threshold: float
    message: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class NormWatchAlertError(RuntimeError):
    """Raised with ``on_alert="raise"``; ``.alert`` is the alert that stopped training."""

    def __init__(self, alert: Alert) -> None:
        super().__init__(alert.message)
        self.alert = alert


class AlertTracker:
    """Raises each (module, kind) once until its condition clears.

    A condition clears when it is evaluated and found false; conditions not evaluated at a step
    (e.g. a module that did not run) keep their state.
    """

    def __init__(self) -> None:
        self.active: set[tuple[str, str]] = set()

    def update(self, firing: Iterable[Alert], evaluated: set[tuple[str, str]]) -> list[Alert]:
        """Return the alerts that are new; record which conditions hold now."""
        firing = list(firing)
        now = {(a.module, a.kind) for a in firing}
        self.active -= evaluated - now
        new = [a for a in firing if (a.module, a.kind) not in self.active]
        self.active |= now
        return new

    def state(self) -> list[list[str]]:
        return sorted([m, k] for m, k in self.active)

    def load(self, state: Iterable[Iterable[str]]) -> None:
        self.active = {(str(m), str(k)) for m, k in state}
