"""The parameter side of a session: probe, reference window, rules and alert state, behind four calls.

``UpdateWatch`` joins ``collect.updates.UpdateProbe`` (device side) and ``judge.updates`` (rules) for an
adapter: ``attach(model, optimizers, ...)`` once the optimizers exist (alerts ``not_in_optimizer``),
``arm()`` at the start of a logging step, ``before_step(opt)`` / ``after_step(opt)`` around each optimizer
step (``hook_optimizers`` registers the post-hook; in a plain loop also a pre-hook), ``finish(step)`` at
its end: figures per owner (with drift against the reference window) and the alerts newly raised.

Drift figures (``update_drift``, ``grad_drift``, ``weight_drift``: log of the ratio to the mean over the
reference window, a geometric mean) are logged, not judged: a learning-rate schedule moves them on purpose.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1), nn.Linear(1, 1))
    >>> opt = torch.optim.SGD(list(model[0].parameters()) + list(model[2].parameters()), lr=0.1)
    >>> watch = UpdateWatch(warmup_steps=0, reference_steps=1)
    >>> [a.module for a in watch.attach(model, [opt], step=0)]
    ['3']
    >>> watch.hook_optimizers([opt], pre=True)
    >>> watch.arm()
    >>> model(torch.randn(8, 4)).sum().backward(); opt.step()
    >>> figs, alerts = watch.finish(0)
    >>> sorted(figs), alerts
    (['0', '2'], [])
    >>> watch.close()
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..collect.selection import Pattern
from ..collect.updates import UpdateProbe, histograms_by_owner
from ..config import Thresholds
from ..judge.alerts import REARM_WINDOW, Alert, AlertTracker
from ..judge.diagnosis import join_updates
from ..judge.updates import UpdateHistory, time_factors, unheld_alerts, update_alerts
from .cost import CostMeter, timed

__all__ = ["UpdateWatch", "DRIFT_FIGURES"]

#: figure -> its drift figure (log ratio to the reference window's geometric mean)
DRIFT_FIGURES = {"update_ratio": "update_drift", "grad_rms": "grad_drift", "weight_rms": "weight_drift"}


class UpdateWatch:
    """Update sizes, gradients and weights of the watched modules; their alerts (see module docstring).

    Args:
        warmup_steps: global steps before the reference window opens (as the activations).
        reference_steps: length of the reference window in global steps.
        thresholds: alert thresholds (``update_large``, ``update_small``, ``vanishing_gradient``,
            ``exploding_gradient``).
        expected_unused: parameters without gradient are expected (``find_unused_parameters``):
            ``no_gradient`` is info.
        histograms: also bin weights and gradients on the device (``params="histograms"``).
    """

    def __init__(
        self,
        warmup_steps: int = 100,
        reference_steps: int = 200,
        thresholds: Thresholds | None = None,
        expected_unused: bool = False,
        histograms: bool = False,
    ) -> None:
        self.warmup_steps, self.reference_steps = warmup_steps, reference_steps
        self.thresholds = thresholds or Thresholds()
        self.expected_unused = expected_unused
        self.probe = UpdateProbe(histograms)
        #: with ``histograms``: per module, weight and gradient histograms of the last logging step
        self.histograms: dict[str, dict[str, tuple[Any, ...]]] = {}
        self.history = UpdateHistory()
        self.tracker = AlertTracker()
        self.alerts: list[Alert] = []
        self.reference: dict[str, list[float]] = {}  # owner/figure -> [sum of logs, count]
        self._handles: list[RemovableHandle] = []
        self._model: nn.Module | None = None
        self._logged: list[int] = []  # the last two logging steps finished (the interval between them)
        self.large_since: dict[str, int] = {}  # module -> step its too-large updates began (last update_size raised)
        self.meter: CostMeter | None = None  # the optimizer hooks' time counts as NormWatch's work (``cost.py``)

    def attach(
        self,
        model: nn.Module,
        optimizers: Iterable[torch.optim.Optimizer],
        step: int = 0,
        modules: Sequence[Pattern] | None = None,
        exclude: Sequence[Pattern] = (),
    ) -> list[Alert]:
        """Choose the parameters; return the ``not_in_optimizer`` alerts (once per owner and run)."""
        optimizers = list(optimizers)
        self._model = model
        self.probe.attach(model, optimizers, modules, exclude)
        if not optimizers:
            return []
        by_owner = self.probe.owner_of(self.probe.unheld)
        firing = unheld_alerts(step, by_owner)
        new = self.tracker.update(firing, {(a.module, a.kind) for a in firing}, step)
        self.alerts += new
        return new

    @classmethod
    def for_config(cls, config: Any) -> UpdateWatch | None:
        """The parameter side of a session with these settings (``SessionConfig``), or None with ``updates=False``."""
        if not config.updates:
            return None
        return cls(
            config.warmup_steps, config.reference_steps, config.thresholds, histograms=config.params == "histograms"
        )

    def start(
        self,
        model: nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        step: int,
        pre_hooks: bool = False,
        unused_ok: bool = False,
        modules: Sequence[Pattern] | None = None,
        exclude: Sequence[Pattern] = (),
    ) -> list[Alert]:
        """Hook ``optimizers`` (again, when more are added) and attach; return the ``not_in_optimizer`` alerts.

        ``pre_hooks``: measure gradients in the optimizer's step pre-hook (plain loops, where ``backward`` ran
        before ``step``); otherwise the adapter calls ``before_step``. ``unused_ok``: parameters without
        gradient are expected (``find_unused_parameters``): ``no_gradient`` is info.
        """
        self.expected_unused = unused_ok
        self.close()
        self.hook_optimizers(optimizers, pre=pre_hooks)
        return self.attach(model, optimizers, step, modules, exclude)

    def hook_optimizers(self, optimizers: Iterable[torch.optim.Optimizer], pre: bool = False) -> None:
        """Register step post-hooks (the step ran: compare) and, with ``pre``, pre-hooks (snapshot).

        ``pre=True`` suits loops where ``backward`` runs before ``optimizer.step()``; Lightning computes the
        gradients inside ``step`` (a closure) and calls ``before_step`` from ``on_before_optimizer_step``.
        """
        before, after = timed(self.meter, self.before_step), timed(self.meter, self.after_step)
        for opt in optimizers:
            if pre:
                self._handles.append(opt.register_step_pre_hook(lambda o, *_: before(o)))
            self._handles.append(opt.register_step_post_hook(lambda o, *_: after(o)))

    def close(self) -> None:
        """Remove the optimizer hooks (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.probe.close()

    @property
    def armed(self) -> bool:
        return self.probe.armed

    def arm(self) -> None:
        self.probe.arm()

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.probe.armed:
            self.probe.before_step(optimizer)

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.probe.after_step(optimizer)

    def measure(self) -> tuple[dict[str, dict[str, float]], dict[str, Any], dict[str, list[float]]]:
        """The device side of the logging step's end (the training thread): host figures per owner (one
        transfer; ends the step), with ``histograms`` the histograms per owner, and the time profiles."""
        hist = histograms_by_owner(self.probe.entries, self.probe.hist_parts.values()) if self.probe.histograms else {}
        return self.probe.collect(), hist, self.probe.time_profiles

    def finish(self, step: int, measured: Any = None) -> tuple[dict[str, dict[str, float]], list[Alert]]:
        """Figures per owner of this logging step and the alerts newly raised (nothing when no step ran);
        ``measured``: what ``measure`` returned on the training thread (None: measure now)."""
        figures, hist, time_profiles = measured if measured is not None else self.measure()
        if self.probe.histograms:
            self.histograms = hist
        if not figures:
            return {}, []
        self._logged = [*self._logged[-1:], step]
        self._drift(step, figures)
        profiles = {k: v for k, v in time_profiles.items() if k in figures}
        for owner, profile in profiles.items():  # through time (recurrent layers): see judge.updates.time_alerts
            figures[owner]["time_vanishing"], figures[owner]["time_exploding"] = time_factors(profile)
        firing, evaluated = update_alerts(
            step, figures, self.probe.matrix_owners, self.thresholds, self.history, self.expected_unused,
            self.tracker.active, profiles,
        )  # fmt: skip
        new = self.tracker.update(firing, evaluated, step)
        self.alerts += new
        return figures, new

    def add_to(
        self, step: int, result: Any, panels: Any = None, evaluator: Any = None, measured: Any = None
    ) -> list[Alert]:
        """``finish`` the logging step into a ``StepResult``: figures merged per module, active counts and
        alerts added, histograms to ``panels`` (``params="histograms"``); returns the new alerts.

        ``evaluator`` (the activations' ``Evaluator``): its active alerts that a too-large update explains become
        followers of the ``update_size`` alert (``join``). ``measured``: what ``measure`` returned (None: now)."""
        mine, new = self.finish(step, measured)
        if evaluator is not None:
            new = self.join(step, new, result, evaluator)
        if panels is not None and self.histograms:
            panels.write_param_histograms(self.histograms, step)
        for owner, fig in mine.items():
            result.figures.setdefault(owner, {}).update(fig)
        for severity, count in self.active_counts().items():
            result.active[severity] = result.active.get(severity, 0) + count
        result.alerts += new
        return new

    def join(self, step: int, new: list[Alert], result: Any, evaluator: Any) -> list[Alert]:
        """The two halves joined (``judge.diagnosis.join_updates``): activation alerts on a layer whose updates
        were too large within the last ``REARM_WINDOW`` logging steps, or after it, that started with or after those
        updates are marked as followers of the ``update_size`` alert, in ``evaluator.alerts`` and ``result.alerts``;
        an ``update_size`` alert raised now (in ``new``, returned) says so in one sentence, a follower raised
        later in its note."""
        large = [a for a in new if a.kind == "update_size" and a.threshold == self.thresholds.update_large]
        for a in large:
            self.large_since[a.module] = self.history.since.get(a.module, a.step)
        latest = {a.module: a for a in self.alerts if a.kind == "update_size"}
        episodes = {m: self.tracker.episodes.get((m, "update_size"), [0, -math.inf]) for m in self.large_since}
        roots = {
            m: latest[m]
            for m, episode in episodes.items()
            if m in latest and latest[m].threshold == self.thresholds.update_large
            and self.tracker.updates - episode[1] <= REARM_WINDOW
        }  # fmt: skip
        if not roots:
            return new
        interval = self._logged[-1] - self._logged[-2] if len(self._logged) > 1 else 0
        started = {key: int(episode[0]) for key, episode in evaluator.tracker.episodes.items()}
        replaced, joined = join_updates(
            roots, self.large_since, new, evaluator.alerts, evaluator.tracker.active, evaluator.order,
            evaluator.collector.edges, started, interval,
        )  # fmt: skip
        self.alerts = [joined.get(id(a), a) for a in self.alerts]
        for alerts in (evaluator.alerts, result.alerts):
            alerts[:] = [replaced.get(id(a), a) for a in alerts]
        return [joined.get(id(a), a) for a in new]

    def _drift(self, step: int, figures: dict[str, dict[str, float]]) -> None:
        start = self.warmup_steps
        in_window = start <= step < start + self.reference_steps
        done = step >= start + self.reference_steps
        for owner, fig in figures.items():
            for name, drift in DRIFT_FIGURES.items():
                value = fig.get(name, math.nan)
                if not (math.isfinite(value) and value > 0):
                    continue
                ref = self.reference.setdefault(f"{owner}/{name}", [0.0, 0.0])
                if in_window:
                    ref[0] += math.log(value)
                    ref[1] += 1
                elif done and ref[1] > 0:
                    fig[drift] = math.log(value) - ref[0] / ref[1]

    def active_counts(self) -> dict[str, int]:
        """Active alerts by severity (to add to the activations' counts)."""
        severity = {(a.module, a.kind): a.severity for a in self.alerts}
        out: dict[str, int] = {}
        for key in self.tracker.active:
            s = severity.get(key, "warning")
            out[s] = out.get(s, 0) + 1
        return out

    def state_dict(self) -> dict[str, Any]:
        """Plain values for a checkpoint."""
        return {
            "history": self.history.state(),
            "active": self.tracker.state(),
            "episodes": self.tracker.episode_state(),
            "reference": {k: list(v) for k, v in self.reference.items()},
            "large_since": dict(self.large_since),
            "alerts": [a.to_dict() for a in self.alerts],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.load(state.get("history", {}))
        self.tracker.load(state.get("active", []))
        self.tracker.load_episodes(state.get("episodes", {}))
        self.reference = {str(k): [float(x) for x in v] for k, v in state.get("reference", {}).items()}
        self.large_since = {str(k): int(v) for k, v in state.get("large_since", {}).items()}
        self.alerts = [Alert(**a) for a in state.get("alerts", [])]
