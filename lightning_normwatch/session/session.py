"""``Session``: one training run watched by NormWatch, whatever drives it (a Lightning ``Trainer``, a plain
loop, Fabric). The adapters translate their hooks into these calls and pass what they know as plain values.

Per step: ``begin_step(step, batch)`` before the forward pass, ``before_backward(loss)`` with the loss,
``end_step(step)`` after the optimizer stepped. Around a run: ``start(model, ...)`` and ``close()``;
``state_dict``/``load_state_dict`` for checkpoints. A ``Session`` owns input discovery, the compiled
model's replay, locating NaN/Inf, the hand-off to the ``Evaluator``, and emitting alerts and figures.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    >>> from lightning_normwatch.output.loggers import Recorder
    >>> seen = []
    >>> session = Session(SessionConfig(every_n_steps=2))
    >>> session.start(model, loggers=[Recorder(seen)])
    >>> for step in range(4):
    ...     x = torch.randn(16, 4)
    ...     session.begin_step(step, x)
    ...     loss = model(x).pow(2).mean()
    ...     session.before_backward(loss, step)
    ...     session.end_step(step)
    >>> session.close()
    >>> [step for step, _ in seen], "normwatch/0/std" in seen[0][1]
    ([0, 2], True)
"""

from __future__ import annotations

import functools
import math
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from ..collect.collector import Collector
from ..collect.exchange import Exchange
from ..collect.info import TensorInfo
from ..collect.inputs import InputSpec, find_inputs
from ..collect.replay import RngState, is_compiled
from ..collect.selection import Pattern, validate_patterns
from ..config import SessionConfig
from ..judge.alerts import Alert, NormWatchAlertError
from ..judge.evaluator import Evaluator, StepResult
from ..judge.model_checks import ModelChecks
from ..judge.windows import plan_windows, rules_ran
from ..output import console
from ..output.guarded import Guard
from . import checkpoint
from .cost import Cost, CostMeter, timed, timed_method
from .judging import PANELS, judge, post, role, take
from .pipeline import Pipeline
from .replays import locate_nonfinite, measure_compiled
from .updates import UpdateWatch

__all__ = ["Session"]

log = console.log


class Session:
    """One watched training run (see the module docstring).

    Args:
        config: the settings (``SessionConfig``).
        modules: ``None`` watches every leaf module (except identity/dropout); otherwise glob patterns of
            qualified names and/or ``nn.Module`` classes.
        exclude: patterns/classes to skip.
        inputs: the batch's input features: ``True`` (what the modules consume), ``False``, a key, an index
            or a callable ``batch -> tensor | dict``.

    Raises:
        ValueError: a bad ``modules``, ``exclude`` or ``inputs`` (the message names it).
    """

    def __init__(
        self,
        config: SessionConfig,
        modules: Sequence[Pattern] | Pattern | None = None,
        exclude: Sequence[Pattern] | Pattern = (),
        inputs: InputSpec = True,
    ) -> None:
        self.modules = None if modules is None else validate_patterns("modules", modules)
        self.exclude = validate_patterns("exclude", exclude)
        if not (isinstance(inputs, (bool, str, int)) or callable(inputs)):
            raise ValueError(f"NormWatch: inputs must be a bool, a key, an index or a callable, got {inputs!r}")
        self.inputs = inputs
        self.config = config
        self.interval = config.interval(None)
        self.windows = plan_windows(config.total_steps, self.interval, config.warmup_steps, config.reference_steps)
        self._fresh(self._resolved(config))
        self.earlier_alerts: list[Alert] = []
        self.checks_state: dict[str, Any] | None = None  # loaded before ``start`` made the checks
        self.is_global_zero = True
        self.loggers: list[Any] = []
        self.panels: Any = None
        self.exchange: Exchange | None = None
        self.guard = Guard()  # sink failures: one error line (rate-limited), never an exception into training
        self.pipeline = Pipeline(config.pipeline, self.interval, self.meter)  # judging and writing of logging steps
        self.outbox: deque[tuple[Any, dict[str, float], int]] = deque()  # logger rows the worker left (judging.py)

    def _resolved(self, config: SessionConfig) -> SessionConfig:
        """``config`` with the windows this run uses (the user's explicit values, else the fitted ones)."""
        return replace(config, warmup_steps=self.windows.warmup, reference_steps=self.windows.reference)

    def _fresh(self, config: SessionConfig) -> None:
        self.collector = Collector(config)
        self.evaluator = Evaluator(config, self.collector)
        self.evaluator.interval = self.interval
        self.collector.anchors = self.evaluator.input_tracker.anchor
        self.latest: StepResult | None = None  # set by the judging (judging.py)
        self.checks: ModelChecks | None = None
        self.model: nn.Module | None = None
        self.compiled = False
        self._collecting = False
        self._step_at_start = -1
        self._batch: Any = None
        self._batch_idx = 0
        self._rng: RngState | None = None
        self.bad_loss: Tensor | None = None
        self._replayed = False  # this batch's forward was already replayed for measurement (compiled model)
        self._warned_manual = False
        self.anchors_pending = False  # the queued judging places input anchors: the next hooks wait for it
        self.updates = UpdateWatch.for_config(config)  # the parameter side (None: updates=False)
        self.meter = CostMeter(self.interval)  # what NormWatch's own work costs this run (``cost.py``)
        self.collector.timing = functools.partial(timed, self.meter)  # no lambda: a session pickles (ddp_spawn)
        self.collector.device_wait = self.meter.device
        if self.updates is not None:
            self.updates.meter = self.meter

    @property
    def alerts(self) -> list[Alert]:
        """Every alert raised so far, in order, over every run this session took part in (judged so far)."""
        self.drain()
        return self.earlier_alerts + self.evaluator.alerts

    @property
    def last_result(self) -> StepResult | None:
        """Figures and alerts of the latest logging step judged (waits for the pipeline)."""
        self.drain()
        return self.latest

    @property
    def cost(self) -> Cost | None:
        """What NormWatch's own work costs this run so far (``session/cost.py``); None before it was measured."""
        return self.meter.cost()

    def drain(self) -> None:
        """Wait until every logging step submitted is judged and written (``pipeline.py``)."""
        self.pipeline.drain()
        post(self)

    # ------------------------------------------------------------------ a run
    def start(
        self,
        model: nn.Module,
        *,
        loggers: Sequence[Any] = (),
        panels: Any = None,
        world_size: int = 1,
        is_global_zero: bool = True,
        device: torch.device | None = None,
        trainer_interval: int | None = None,
        sinks_described: str | None = None,
        total_steps: float | None = None,
    ) -> None:
        """Start a run on ``model``: fresh collection and judgement (a checkpoint's state is loaded after).

        ``total_steps``: the run's length in global steps when the adapter knows it (else ``config.total_steps``;
        inf or None: unknown); the windows not given explicitly are fitted to it (``judge/windows.py``).
        """
        config = self.config
        self.pipeline.close()  # the previous run's judging finishes first
        self.interval = config.interval(trainer_interval)
        total = total_steps if total_steps is not None else config.total_steps
        self.windows = plan_windows(total, self.interval, config.warmup_steps, config.reference_steps)
        self.earlier_alerts += self.evaluator.alerts
        self._fresh(replace(self._resolved(config), world_size=max(1, world_size)))
        self.pipeline = Pipeline(config.pipeline, self.interval, self.meter)
        self.loggers, self.panels, self.is_global_zero = list(loggers), panels, is_global_zero
        self.exchange = Exchange.for_process_group(self.collector, world_size, device)
        names = self.collector.attach(model, self.modules, self.exclude)
        self.checks = ModelChecks(dict(self.collector.watched), dict(model.named_modules()))
        self.model = model
        self.compiled = is_compiled(model)
        if not names and self.inputs is False:
            self._warn("NormWatch: no module matches `modules`/`exclude` and inputs=False: nothing to watch.")
        if is_global_zero:
            where = sinks_described or console.describe_sinks(self.loggers, panels is not None)
            line = console.start_line(
                len(names), self.inputs is not False, self.interval, self.windows.describe(), where
            )
            log.info("%s", line)

    def watch_optimizers(
        self, optimizers: Sequence[Any], step: int, pre: bool = False, unused_ok: bool = False
    ) -> None:
        """The run's optimizers are known (Lightning: at train start): see ``UpdateWatch.start``."""
        if self.updates is not None and self.model is not None:
            self.drain()
            self.record(self.updates.start(self.model, optimizers, step, pre, unused_ok, self.modules, self.exclude))

    @timed_method
    def before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients are final (unscaled under AMP) and ``optimizer`` is about to step (``UpdateWatch.before_step``)."""
        if self.updates is not None:
            self.updates.before_step(optimizer)

    def _warn(self, message: str) -> None:
        if self.is_global_zero:
            warnings.warn(message, UserWarning, stacklevel=3)

    def training_starts(self, model: nn.Module, step: int) -> None:
        """Model checks that need the model in its training state (frozen norm layers)."""
        if self.checks is not None:
            self.drain()
            self.record(self.evaluator.diagnose(self.checks.frozen(model, step)))

    def record(self, alerts: list[Alert]) -> None:
        """Alerts raised outside the rules (model checks): kept with the others, then emitted."""
        self.drain()
        self.evaluator.alerts.extend(alerts)
        self.emit(alerts)

    def stop(self) -> None:
        """Remove every hook, forget the current batch, finish the queued judging and end its thread (idempotent)."""
        self.pipeline.close()
        post(self)
        self.collector.disarm()
        self._collecting = False
        self._batch = None
        self._rng = None
        if self.updates is not None:
            self.updates.close()

    def finish(self) -> None:
        """The run ended normally: hooks removed, everything judged (``on_alert="raise"``: a pending alert is
        raised), the end-of-fit summary logged."""
        self.stop()
        self.pipeline.raise_pending()
        if self.is_global_zero and self.last_result is not None:
            figures = self.last_result.figures
            roles = {key: role(self.collector.infos, key) for key in figures}
            step = self.last_result.step
            rules = rules_ran(self.windows, step)
            cost = self.meter.cost()
            rules = rules if cost is None else cost.line() + "\n" + rules
            console.log_summary(figures, self.types(), self.alerts, step, roles=roles, rules=rules)

    def close(self) -> None:
        """Hooks removed, the last overview drawn and the panels flushed (idempotent)."""
        self.stop()
        if self.panels is not None:
            self.guard.call(PANELS, self.panels.flush)

    def pause(self) -> bool:
        """Hooks off (e.g. validation inside a logging step); returns whether they were on."""
        was = self.collector.armed
        self.collector.pause()
        return was

    def resume(self) -> None:
        self.collector.resume()

    # ------------------------------------------------------------------ per step
    def is_logging_step(self, step: int) -> bool:
        return step % self.interval == 0

    @timed_method
    def begin_step(self, step: int, batch: Any, batch_idx: int = 0) -> None:
        """Before the forward pass of global step ``step`` (every batch, accumulated ones too)."""
        logging_step = self.is_logging_step(step)
        self.meter.step(step, logging_step)
        post(self)
        self.pipeline.boundary(wait=self.config.on_alert == "raise")  # an alert the worker found stops training
        self._replayed = False
        if self.config.check_nonfinite or (logging_step and self.compiled):
            self._batch, self._batch_idx = batch, batch_idx
            self._rng = RngState.capture(torch_only=True)
        if not logging_step:
            return
        notice = self.meter.notice()
        if notice is not None and self.is_global_zero:  # INFO: the WARNING level keeps only alerts (console.py)
            log.info("%s", notice)
        if self.anchors_pending:  # the hooks bin inputs by anchors the queued judging places
            self.drain()
            self.anchors_pending = False
        automatic = self._automatic_inputs()
        if automatic:  # the collector's hooks find the features the modules consume during the forward
            self.collector.expect_inputs(batch)
        if not self._collecting or step != self._step_at_start:
            self.collector.arm()
            if self.updates is not None:
                self.updates.arm()
            if self.compiled:
                # No hook may be seen by compiled code (dynamo would trace it into the graph, recompile,
                # and under fullgraph=True fail): the layers are measured by an eager replay of the batch.
                self.collector.pause()
            self._collecting = True
            self._step_at_start = step
        self.collector.next_pass()  # call sites (act, act#2) counted per batch: accumulated batches merge
        if not automatic:
            for name, tensor in find_inputs(batch, self.inputs):
                self.collector.observe(name, tensor, role="input")

    def _automatic_inputs(self) -> bool:
        return self.inputs is True and not self.collector.discovery.failed

    @timed_method
    def before_backward(self, loss: Tensor, step: int, replay: Callable[[Any, int], Any] | None = None) -> None:
        """With the step's loss, before backward: measure a compiled model's layers on a logging step, and
        check the loss. ``replay(batch, batch_idx)`` re-runs the step's forward (None: it cannot be replayed)."""
        if self.compiled and self._collecting and not self._replayed and self._batch is not None:
            measure_compiled(self, replay)
        if not self.config.check_nonfinite or self._batch is None:
            return
        loss = loss.detach()
        if loss.device.type != "cpu":  # no host sync on CUDA: accumulate, read at the next logging step
            if not self.evaluator.nonfinite_active:
                self.flag_loss(loss)
            return
        # a 1-element loss is read directly: 1 us, where isfinite().all() costs 20-100 us every step
        finite = math.isfinite(loss.item()) if loss.numel() == 1 else bool(torch.isfinite(loss).all())
        if finite and not self.evaluator.nonfinite_from_loss:  # only this thread sets it: nothing to do
            return
        self.drain()  # the earlier logging steps judged first (references, the active nonfinite alert)
        if self.evaluator.loss_checked(finite):  # finite, or a non-finite episode already raised
            return
        if replay is not None:
            locate_nonfinite(self, step, replay)
            return
        # Without a replay (manual optimization would repeat its optimizer toggling and backward calls):
        # report the loss without locating the origin.
        source = "the loss check; no replay under manual optimization"
        self.emit(self.evaluator.raise_nonfinite(step, "loss", math.nan, 0, source))

    def flag_loss(self, loss: Tensor) -> None:
        """Note a non-finite loss without a host sync: read (OR-ed over ranks) at the next logging step."""
        bad = ~torch.isfinite(loss.detach()).all()
        self.bad_loss = bad if self.bad_loss is None else self.bad_loss | bad

    @timed_method
    def end_step(self, step: int) -> None:
        """After the optimizer stepped at global step ``step`` (or after an accumulated batch)."""
        self._batch = None
        if not self._collecting or step == self._step_at_start:
            return  # not a logging step, or still accumulating gradients for it
        self.collector.disarm()
        self._collecting = False
        self._finish_step(self._step_at_start)

    def _finish_step(self, step: int) -> None:
        """The transfer and copies of live state here; judging and writing on the pipeline (``judging.py``)."""
        taken = take(self, step)
        self.pipeline.submit(lambda: judge(self, taken))

    def types(self, infos: dict[str, TensorInfo] | None = None) -> dict[str, str]:
        """Layer type by watched tensor (``net.1`` -> ``ReLU``), for what is printed."""
        infos = self.collector.infos if infos is None else infos  # a tensor only another rank observed: no type
        return {
            key: infos[key].type_name for key in (self.last_result.figures if self.last_result else ()) if key in infos
        }

    def emit(self, alerts: list[Alert], infos: dict[str, TensorInfo] | None = None) -> None:
        """New alerts to the panels and the console (rank zero); ``on_alert="raise"`` raises on a warning."""
        if not alerts:
            return
        if self.panels is not None and self.is_global_zero:
            self.guard.call(PANELS, self.panels.write_alerts, self.evaluator.alerts, alerts[-1].step)
        if self.config.on_alert != "ignore" and self.is_global_zero:
            for level, line in console.alert_lines(alerts, self.types(infos)):
                log.log(level, "%s", line)
        if self.config.on_alert == "raise":
            for alert in alerts:
                if alert.severity != "info":
                    raise NormWatchAlertError(alert)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Everything judged so far, as plain values and CPU tensors: loads with ``torch.load(weights_only=True)``."""
        self.drain()
        return checkpoint.session_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """What of ``state`` fits this run is kept, the rest reset, with one warning saying which."""
        self.drain()
        message = checkpoint.load_session_state(self, state)
        if message is not None:
            self._warn(message)
