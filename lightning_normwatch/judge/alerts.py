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
from dataclasses import asdict, dataclass, replace

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
    "vanishing": "warning",
    "exploding": "warning",
    "collapse": "warning",
    "near_overflow": "warning",
    "frozen_norm": "warning",
    "non_normal": "info",
    "not_run": "info",
    "norm_placement": "info",
    "redundant_bias": "info",
    "input_drift": "warning",
    "integer_inputs": "info",
    "update_size": "warning",
    "vanishing_gradient": "warning",
    "exploding_gradient": "warning",
    "no_gradient": "warning",
    "not_in_optimizer": "warning",
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
        caused_by: ``None`` for a root alert (where a fault starts); for a follower, the ``(kind, module)``
            of the root alert it follows (a change propagating downstream, one cause behind many norm
            layers; see ``judge/diagnosis.py``).
    """

    step: int
    module: str
    kind: str
    severity: str
    value: float
    threshold: float
    message: str
    caused_by: tuple[str, str] | None = None

    def to_dict(self) -> dict[str, object]:
        """Plain values (``caused_by`` as a ``[kind, module]`` list or ``None``), for checkpoints.

        Example:
            >>> a = Alert(3, "net.5", "dead", "warning", 1.0, 0.5, "m", caused_by=("vanishing", "net.3"))
            >>> Alert.from_dict(a.to_dict()) == a, a.to_dict()["caused_by"]
            (True, ['vanishing', 'net.3'])
        """
        out = asdict(self)
        out["caused_by"] = None if self.caused_by is None else list(self.caused_by)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> Alert:
        """An alert from ``to_dict`` values; older checkpoints without ``caused_by`` load as roots.

        Example:
            >>> Alert.from_dict({"step": 1, "module": "fc", "kind": "dead", "severity": "warning",
            ...                  "value": 0.9, "threshold": 0.5, "message": "m"}).caused_by is None
            True
        """
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        cause = known.pop("caused_by", None)
        return cls(**known, caused_by=None if cause is None else (str(cause[0]), str(cause[1])))  # type: ignore[arg-type,index]


class NormWatchAlertError(RuntimeError):
    """Raised with ``on_alert="raise"``; ``.alert`` is the alert that stopped training. The message names the
    logging step the alert refers to (with the pipeline it is raised up to one step later).

    Example:
        >>> str(NormWatchAlertError(Alert(40, "net.1", "dead", "warning", 0.9, 0.5, "Most units are dead.")))
        'NormWatch alert at step 40 (dead on `net.1`): Most units are dead.'
    """

    def __init__(self, alert: Alert) -> None:
        super().__init__(f"NormWatch alert at step {alert.step} ({alert.kind} on `{alert.module}`): {alert.message}")
        self.alert = alert


#: logging steps within which an alert that cleared and comes back is the same problem (not raised again)
REARM_WINDOW = 25


def _worse(value: float, worst: float, threshold: float) -> bool:
    """Materially worse: twice as far beyond the threshold, and at least 25 % larger, than before.

    Example:
        >>> _worse(0.62, 0.6, 0.5), _worse(0.75, 0.6, 0.5), _worse(12.0, 5.0, 4.0)
        (False, True, True)
    """
    return value - threshold >= 2 * (worst - threshold) and value >= 1.25 * worst


class AlertTracker:
    """Raises each (module, kind) once per problem, not once per crossing of its threshold.

    A condition clears when it is evaluated and found false; conditions not evaluated at a step
    (e.g. a module that did not run) keep their state. An alert that clears and comes back within
    ``REARM_WINDOW`` logging steps is the same problem (figures swinging around the clearing level
    after a learning-rate jump): it is raised again only when materially worse than its worst value
    so far, with a note saying since when the problem lasts.

    Example:
        >>> tracker = AlertTracker()
        >>> def at(step, value): return Alert(step, "fc", "dead", "warning", value, 0.5, "dead")
        >>> [len(tracker.update([at(s, 0.6)] if s % 2 == 0 else [], {("fc", "dead")}, s)) for s in range(6)]
        [1, 0, 0, 0, 0, 0]
        >>> tracker.update([at(6, 0.9)], {("fc", "dead")}, 6)[0].message
        'dead (Raised again: worse than its 0.6 at step 0; the problem has come and gone for 6 steps.)'
    """

    def __init__(self) -> None:
        self.active: set[tuple[str, str]] = set()
        self.updates = 0  # logging steps evaluated
        # (module, kind) -> [step first raised, update index last firing, worst value raised, step of it]
        self.episodes: dict[tuple[str, str], list[float]] = {}

    def update(self, firing: Iterable[Alert], evaluated: set[tuple[str, str]], step: int | None = None) -> list[Alert]:
        """Return the alerts that are new; record which conditions hold now."""
        firing = list(firing)
        self.updates += 1
        now = {(a.module, a.kind) for a in firing}
        self.active -= evaluated - now
        new = []
        for alert in firing:
            key = (alert.module, alert.kind)
            episode = self.episodes.get(key)
            if key in self.active and episode is not None:
                episode[1] = self.updates
                continue
            if episode is not None and self.updates - episode[1] <= REARM_WINDOW:
                episode[1] = self.updates
                if _worse(alert.value, episode[2], alert.threshold):
                    lasted = alert.step - int(episode[0])
                    note = (
                        f" (Raised again: worse than its {episode[2]:.3g} at step {int(episode[3])}; "
                        f"the problem has come and gone for {lasted} steps.)"
                    )
                    new.append(replace(alert, message=alert.message + note))
                    episode[2], episode[3] = alert.value, alert.step
                continue
            self.episodes[key] = [alert.step, self.updates, alert.value, alert.step]
            new.append(alert)
        self.active |= now
        return new

    def state(self) -> list[list[str]]:
        return sorted([m, k] for m, k in self.active)

    def load(self, state: Iterable[Iterable[str]]) -> None:
        self.active = {(str(m), str(k)) for m, k in state}

    def episode_state(self) -> dict[str, object]:
        """Plain values for a checkpoint: ``{"updates": n, "episodes": [[module, kind, first, last, worst, at]]}``."""
        rows = [[m, k, *map(float, v)] for (m, k), v in sorted(self.episodes.items())]
        return {"updates": self.updates, "episodes": rows}

    def load_episodes(self, state: dict[str, object]) -> None:
        self.updates = int(state.get("updates", 0))  # type: ignore[arg-type]
        self.episodes = {(str(r[0]), str(r[1])): [float(v) for v in r[2:]] for r in state.get("episodes", [])}  # type: ignore[union-attr]
