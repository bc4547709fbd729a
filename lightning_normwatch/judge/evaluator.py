"""``Evaluator``: one logging step's statistics -> figures, reference, drift and the alerts that hold.

It reads what the ``Collector`` knows of each tensor (role, layer type, module) and keeps what lasts
over training: the reference of every tensor, the input features' state (``InputTracker``), and the
alert state (``AlertTracker``). The same on every rank.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_normwatch.collect.collector import Collector
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    >>> config = SessionConfig(warmup_steps=0, reference_steps=1)
    >>> evaluator = Evaluator(config, collector := Collector(config))
    >>> collector.attach(model)
    ['0', '1', '2']
    >>> collector.arm()
    >>> collector.observe("input", x := torch.randn(32, 8), role="input")
    >>> _ = model(x)
    >>> collector.disarm()
    >>> result = evaluator.evaluate(0, collector.collect())
    >>> sorted(result.figures), result.alerts
    (['0', '1', '2', 'input'], [])
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

from torch import nn

from ..collect.collector import Collector
from ..collect.info import TensorInfo
from ..config import SessionConfig
from ..stats.drift_rows import drift_many
from ..stats.feature_drift import FeatureStats
from ..stats.figures import TensorStats, figures, figures_many
from ..stats.reference import Reference
from .alerts import SEVERITY, Alert, AlertTracker
from .collapse import collapse_alerts
from .depth import depth_alerts, rms_of, small_growth
from .diagnosis import diagnose
from .input_drift import InputTracker
from .overflow import first_exploded, overflow_alert
from .resume import FORMAT, ResumePlan, made_for, plan_resume
from .rules import CLEAR_FRACTION, evaluate, nonfinite_alert

__all__ = ["Evaluator", "StepResult"]


@lru_cache(maxsize=4096)
def _module_name(key: str) -> str:
    """The module a watched tensor's name belongs to (``name#k``, ``name@k``, ``name[i]`` -> ``name``).

    Example:
        >>> _module_name("net.3.attn[0]"), _module_name("fc#2@2"), _module_name("fc")
        ('net.3.attn', 'fc', 'fc')
    """
    return re.split(r"[#@\[]", key, maxsplit=1)[0]


@dataclass
class StepResult:
    """What one logging step produced.

    Attributes:
        step: global step.
        figures: per watched tensor, figure name to value (drift figures included once the
            reference is complete).
        alerts: alerts newly raised at this step.
        active: active alert count by severity (``info``, ``warning``, ``error``).
    """

    step: int
    figures: dict[str, dict[str, float]]
    alerts: list[Alert]
    active: dict[str, int]


class Evaluator:
    """Judges the statistics of each logging step; keeps references and alert state over training."""

    def __init__(self, config: SessionConfig, collector: Collector) -> None:
        self.config = config
        self.collector = collector
        self.alerts: list[Alert] = []
        self.tracker = AlertTracker()
        self.references: dict[str, Reference] = {}
        self.nonfinite_active = False
        self.nonfinite_from_loss = False  # the active non-finite episode was found by the loss check
        self.alive: set[str] = set()  # tensors whose units were judged alive at some logging step
        self.last_rms: dict[str, float] = {}  # RMS of each tensor at the last logging step (finite ones)
        self.order: list[str] = []  # watched tensors in execution order at the last logging step
        self._steps: list[int] = []  # the last two logging steps evaluated (the diagnosis window)
        # input features: per-input anchors, references and recent windows
        self.input_tracker = InputTracker(config.warmup_steps + config.reference_steps)
        self._notes: list[Alert] = []
        self.interval = config.interval(None)  # the session sets the interval in use (part of ``made_for``)

    def _info(self, key: str) -> TensorInfo | None:
        return self.collector.infos.get(key)

    def _is_input(self, key: str) -> bool:
        info = self._info(key)
        return info is not None and info.role == "input"

    # ----------------------------------------------------------- reference window
    def in_reference_window(self, step: int, reference: Reference | None = None) -> bool:
        """Whether this logging step goes into the reference: inside the window, or the first logging
        step after the warm-up when none fell inside it (a logging interval longer than the window)."""
        start = self.config.warmup_steps
        if start <= step < start + self.config.reference_steps:
            return True
        return step >= start and reference is not None and reference.steps == 0

    def reference_ready(self, step: int) -> bool:
        return step >= self.config.warmup_steps + self.config.reference_steps

    # ----------------------------------------------------------- which tensors a rule skips
    def prediction_keys(self, stats: dict[str, TensorStats]) -> set[str]:
        """The model's output: the last tensor in execution order and, when that one is an activation
        (softmax, log-softmax, sigmoid ...), the logits before it."""
        order = [k for k in stats if not self._is_input(k)]
        if not order:
            return set()
        last = order[-1]
        info = self._info(last)
        if len(order) > 1 and (info is None or info.role != "preact"):
            return {last, order[-2]}
        return {last}

    def _head_inputs(self, stats: dict[str, TensorStats], prediction: set[str]) -> set[str]:
        """The representation the prediction head reads: the tensors right before the prediction made by
        parameter-free modules (the pooler's tanh, a global pool and flatten): their shape changes as the
        model learns, so ``shift`` does not judge them (scale and mean drift still do)."""
        modules = dict(self.collector.watched)
        order = [k for k in stats if k not in prediction and not self._is_input(k)]
        out: set[str] = set()
        for key in reversed(order):
            module = modules.get(_module_name(key))
            if module is None or next(module.parameters(recurse=False), None) is not None:
                break
            out.add(key)
        return out

    def _recurrent_keys(self, stats: dict[str, TensorStats]) -> set[str]:
        """Outputs of recurrent modules (GRU, LSTM, RNN): their values are bounded by tanh and their shape moves
        as the units learn to use their range, so ``shift`` does not judge them (as the head's input); their
        scale and mean drift still do, and the tensors they feed keep every rule."""
        modules = dict(self.collector.watched)
        return {k for k in stats if isinstance(modules.get(_module_name(k)), nn.RNNBase)}

    # ----------------------------------------------------------- one logging step
    def evaluate(self, step: int, stats: dict[str, TensorStats]) -> StepResult:
        """Figures, reference update, drift and alerts for one logging step (same on every rank)."""
        th = self.config.thresholds
        self._finish_discovery(step)
        all_figures: dict[str, dict[str, float]] = {}
        firing: list[Alert] = []
        checked: set[tuple[str, str]] = set()
        prediction = self.prediction_keys(stats)
        head_inputs = self._head_inputs(stats, prediction) | self._recurrent_keys(stats)
        previous_rms = dict(self.last_rms)
        self.order = list(stats) or self.order
        self._steps = [*self._steps[-1:], step]
        computed = dict(zip(stats, figures_many(list(stats.values())), strict=True))  # all tensors at once
        drifts = self._reference_and_drift(stats, step)  # all tensors at once
        for key, st in stats.items():
            info = self._info(key) or TensorInfo(key, "other", "?", len(st.cn))
            fig = computed[key]
            if info.role == "input":
                fig.update(self._input_figures(key, st, step, firing, checked))
            d = drifts.get(key)
            if d is not None:
                fig.update(d)
            all_figures[key] = fig
            if math.isfinite(rms := rms_of(fig)):
                self.last_rms[key] = rms
            # The model's prediction drifts because it learns: that is not covariate shift. Inputs are
            # judged per feature (input_drift), which supersedes the pooled tensor's drift rules.
            judged = None if key in prediction or info.role == "input" else d
            if judged is not None and key in head_inputs:
                judged = {k: v for k, v in judged.items() if k != "shape_psi"}
            a, c = evaluate(info, fig, judged, th, step, alive_before=key in self.alive)
            firing += a
            checked |= c
            if fig.get("dead", math.nan) < CLEAR_FRACTION * th.dead:
                self.alive.add(key)
        if any(a.kind == "scale_drift" for a in firing):  # small_growth judges only these
            reference_rms = {
                k: math.hypot(r.moments.mean, r.moments.std)
                for k, r in self.references.items()
                if r.steps > 0 and r.moments.n > 0 and not self._is_input(k)
            }
            learning = small_growth(firing, all_figures, reference_rms)
            firing = [a for a in firing if a not in learning]
        a, c = self._depth_alerts(stats, all_figures, prediction, step, previous_rms)
        firing += a
        checked |= c
        new = self._notes + self.diagnose(self.tracker.update(firing, checked, step))
        self._notes = []
        first = self.collector.first_nonfinite(stats)
        if first is not None:
            new = self.raise_nonfinite(step, *first, "the logging-step sample") + new
        elif stats:
            self.nonfinite_active = self.nonfinite_from_loss = False
        self.alerts.extend(a for a in new if a.kind != "nonfinite")
        return StepResult(step, all_figures, new, self.active_counts())

    def _reference_and_drift(self, stats: dict[str, TensorStats], step: int) -> dict[str, dict[str, float]]:
        """Add this step to each tensor's reference inside the window; the drift figures of the tensors whose
        reference is complete (``drift_many``: all tensors at once, the figures of ``drift``)."""
        ready = []
        for key, st in stats.items():
            ref = self.references.setdefault(key, Reference())
            overall = st.overall
            if not st.has_nonfinite and self.in_reference_window(step, ref) and overall.n > 0:
                ref.add(overall, st.hist)
            if self.reference_ready(step) and ref.steps > 0:
                ready.append((key, (ref, overall, st.hist)))
        return dict(zip((key for key, _ in ready), drift_many([item for _, item in ready]), strict=True))

    def _finish_discovery(self, step: int) -> None:
        first = self.collector.discovery.finish()
        if first is None:
            return
        self._notes.append(
            Alert(
                step,
                first,
                "integer_inputs",
                SEVERITY["integer_inputs"],
                0.0,
                0.0,
                f"The model's first module `{first}` receives integer ids (token ids) and no float batch tensor "
                "reaches a module: there are no float input features to watch, so input scale and drift are "
                f"not measured; the outputs of `{first}` (embeddings) are the first watched tensors.",
            )
        )

    def diagnose(self, new: list[Alert], also_active: set[tuple[str, str]] = frozenset()) -> list[Alert]:  # type: ignore[assignment]
        """``new`` alerts marked as roots or followers (``diagnosis.py``) against the active ones: execution order
        and data flow of the last logging step, start steps from the tracker, a window of one logging interval.
        ``also_active``: (module, kind) of alerts active outside the tracker (model checks)."""
        if not new:
            return new
        latest = {(a.module, a.kind): a for a in self.alerts}
        active = [latest[key] for key in self.tracker.active | set(also_active) if key in latest]
        started = {key: int(episode[0]) for key, episode in self.tracker.episodes.items()}
        window = self._steps[-1] - self._steps[-2] if len(self._steps) > 1 else 0
        return diagnose(new, active, self.order, self.collector.edges, started, window)

    def _depth_alerts(
        self,
        stats: dict[str, TensorStats],
        all_figures: dict[str, dict[str, float]],
        prediction: set[str],
        step: int,
        previous: dict[str, float] | None = None,
    ) -> tuple[list[Alert], set[tuple[str, str]]]:
        """``vanishing``/``exploding``/``collapse`` across the watched tensors in execution order (no reference)."""
        sequence = []
        for key in stats:
            info = self._info(key)
            if info is not None and info.role != "input" and key not in prediction and not stats[key].has_nonfinite:
                sequence.append((info, all_figures[key]))
        alerts, checked = depth_alerts(sequence, self.config.thresholds, step, self.tracker.active, previous)
        more, also = collapse_alerts(sequence, self.config.thresholds, step, self.tracker.active)
        return alerts + more, checked | also

    def _input_figures(
        self, key: str, st: TensorStats, step: int, firing: list[Alert], checked: set[tuple[str, str]]
    ) -> dict[str, float]:
        """Feature scales on recent batches, per-feature drift, and the ``input_drift`` alert if it holds."""
        fig = self.input_tracker.scale_figures(key, st.cn, st.cmean, st.cm2, st.cm3, st.cm4)
        if st.fhist is None or st.has_nonfinite:
            return fig
        th = self.config.thresholds
        current = FeatureStats(st.cn, st.cmean, st.cm2, st.cm3, st.cm4, st.fhist, st.fitems)
        labels = self._feature_labels(key, len(st.cn))
        floors = (th.input_mean_shift, th.input_scale, th.input_psi)
        drift_fig, verdict = self.input_tracker.update(key, step, current, floors, th.input_noise_z, labels)
        if "feature_drift_worst" in drift_fig:  # the worst feature's index in the input, not in the strided sample
            drift_fig["feature_drift_worst"] *= self.collector.feature_stride.get(key, 1)
        fig.update(drift_fig)
        if not drift_fig or self.config.input_drift == "off":
            return fig
        checked.add((key, "input_drift"))
        if verdict is not None:
            end = self.input_tracker.reference_end
            firing.append(
                Alert(
                    step,
                    key,
                    "input_drift",
                    self.severity("input_drift"),
                    verdict.score,
                    1.0,
                    f"Input features of `{key}` drifted from their reference (logging steps before step {end}): "
                    f"{verdict.message}. Each change exceeds its effect floor (mean {th.input_mean_shift:g} σ, "
                    f"scale x{th.input_scale:g}, PSI {th.input_psi:g}) and {th.input_noise_z:g} standard errors of "
                    "what a batch this size produces by chance, on 2 consecutive logging steps; usual causes: a "
                    "normalization step skipped or applied twice, changed units, a broken, constant or reordered "
                    "column. If the data changes on purpose, pass input_drift='info' or 'off'.",
                )
            )
        return fig

    def _feature_labels(self, key: str, channels: int) -> list[str]:
        stride = self.collector.feature_stride.get(key, 1)
        names = self.config.feature_names
        out = []
        for i in range(channels):
            j = i * stride
            out.append(f"`{names[j]}`" if names is not None and j < len(names) else f"feature {j}")
        return out

    # ----------------------------------------------------------- alerts from outside the rules
    def severity(self, kind: str) -> str:
        """The severity of an alert kind here (``input_drift`` follows ``SessionConfig.input_drift``)."""
        if kind == "input_drift" and self.config.input_drift == "info":
            return "info"
        return SEVERITY[kind]

    def loss_checked(self, finite: bool) -> bool:
        """A loss read on the host: True when nothing is to be done (finite, or a non-finite episode is active),
        False for a new non-finite episode, which the caller locates and raises. A finite loss ends an episode
        that a non-finite loss began, so a second episode between logging steps is raised again.

        Example:
            >>> ev = Evaluator(SessionConfig(warmup_steps=0, reference_steps=1), None)
            >>> ev.loss_checked(False), ev.raise_nonfinite(3, "fc", 1.0, 0, "replay")[0].step, ev.loss_checked(False)
            (False, 3, True)
            >>> ev.loss_checked(True), ev.nonfinite_active, ev.loss_checked(False)
            (True, False, False)
        """
        if finite:
            if self.nonfinite_from_loss:
                self.nonfinite_active = self.nonfinite_from_loss = False
            return True
        if self.nonfinite_active:
            return True
        self.nonfinite_from_loss = True
        return False

    def raise_nonfinite(self, step: int, origin: str, share: float, downstream: int, source: str) -> list[Alert]:
        """Record the run's ``nonfinite`` alert unless one is active; returns the new alert (or nothing)."""
        if self.nonfinite_active:
            return []
        self.nonfinite_active = True
        alert = nonfinite_alert(step, origin, share, downstream, source)
        self.alerts.append(alert)
        return [alert]

    def raise_overflow(self, step: int, stats: dict[str, TensorStats]) -> list[Alert] | None:
        """When the loss is non-finite but the replayed forward (``stats``) is finite: the ``nonfinite``
        alert naming the first module whose scale exploded (None when no module's did)."""
        order, baseline = [], {}
        for key, st in stats.items():
            info = self._info(key)
            if info is None or info.role == "input":
                continue
            order.append((key, rms_of(figures(st))))
            ref = self.references.get(key)
            if ref is not None and ref.steps > 0 and ref.moments.n > 0:
                baseline[key] = math.hypot(ref.moments.mean, ref.moments.std)
            elif key in self.last_rms:
                baseline[key] = self.last_rms[key]
        found = first_exploded(order, baseline)
        if found is None:
            return None
        if self.nonfinite_active:
            return []
        self.nonfinite_active = True
        name, factor, basis = found
        alert = overflow_alert(step, name, self.collector.infos[name].type_name, dict(order)[name], factor, basis)
        self.alerts.append(alert)
        return [alert]

    def active_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("info", "warning", "error"), 0)
        for _, kind in self.tracker.active:
            counts[self.severity(kind)] += 1
        counts["error"] += int(self.nonfinite_active)
        return counts

    # ----------------------------------------------------------- state
    def state_dict(self) -> dict[str, object]:
        """Plain values for a checkpoint, with the state ``format`` and what it was ``made_for``."""
        return {
            "format": FORMAT,
            "made_for": made_for(self.config, dict(self.collector.watched), self.references, self.interval),
            "references": {k: r.state() for k, r in self.references.items()},
            "active": self.tracker.state(),
            "episodes": self.tracker.episode_state(),
            "nonfinite_active": self.nonfinite_active,
            "nonfinite_from_loss": self.nonfinite_from_loss,  # a finite loss ends that episode (``loss_checked``)
            "alerts": [a.to_dict() for a in self.alerts],
            "inputs": self.input_tracker.state(),
        }

    def load_state_dict(self, state: dict[str, object]) -> ResumePlan:
        """Load what of ``state`` still fits this run (``judge/resume.py``); returns what was kept and reset."""
        now = made_for(self.config, dict(self.collector.watched), (), self.interval)
        # a collector not attached yet (a state loaded before the run starts) has nothing to compare with
        plan = plan_resume(state, now) if self.collector.watched else ResumePlan()
        references = state.get("references", {})
        kept = {k: v for k, v in references.items() if plan.keeps_reference(k)}  # type: ignore[union-attr]
        self.references = {k: Reference.from_state(v) for k, v in kept.items()}
        if not plan.reset_alerts:
            active = [(m, k) for m, k in state.get("active", []) if plan.keeps(m)]  # type: ignore[union-attr]
            self.tracker.load(active)
            episodes = dict(state.get("episodes", {}))  # type: ignore[call-overload]
            episodes["episodes"] = [r for r in episodes.get("episodes", []) if plan.keeps(r[0])]
            self.tracker.load_episodes(episodes)
        self.nonfinite_active = bool(state.get("nonfinite_active", False))
        self.nonfinite_from_loss = self.nonfinite_active and bool(state.get("nonfinite_from_loss", False))
        self.alerts = [Alert.from_dict(a) for a in state.get("alerts", [])]  # type: ignore[union-attr]
        if not plan.reset_references:
            self.input_tracker.load(state.get("inputs", {}))  # type: ignore[arg-type]
        return plan
