"""``NormWatch``: the Lightning callback, a thin layer over ``Monitor``.

Example:
    >>> import pytorch_lightning as pl
    >>> cb = NormWatch(modules=["encoder.*"], every_n_steps=10)
    >>> cb.alerts
    []
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from ..output import console
from ..judge.alerts import Alert, NormWatchAlertError
from ..config import Thresholds, check_choice, check_positive_int
from ..collect.exchange import Exchange
from ..judge.model_checks import ModelChecks
from ..session.monitor import Monitor, MonitorConfig, StepResult
from ..collect.replay import RngState, preserved
from ..output.scalars import ALL_SCALARS, SCALAR_SETS, scalar_metrics, threshold_metrics
from ..collect.selection import Pattern, named_tensors, validate_patterns

__all__ = ["NormWatch"]

from ..output.console import log

InputSpec = bool | str | int | Callable[[Any], Any]

#: every figure that can be logged as a scalar ``normwatch/<tensor>/<figure>`` (``scalars="all"``)
SCALARS = ALL_SCALARS


_NOT_FEATURES = ("mask", "label", "target", "weight", "ids")


def find_inputs(batch: Any, spec: InputSpec) -> list[tuple[str, Tensor]]:
    """The batch's input features to watch when they are named explicitly: ``[(name, tensor)]``.

    A string: that key of a dict batch; an int: that position of a tuple/list batch; a callable:
    called with the batch, returning a tensor or a dict of tensors. ``True`` (automatic) is resolved
    by the monitor from what the model's modules consume (``Monitor.expect_inputs``); only where that
    is impossible (no module ran through its hooks, e.g. a compiled model) does it fall back to the
    batch: the first floating-point tensor (of a tuple: its first element) whose key does not name a
    mask, label, target, weight or ids.
    """
    if spec is False:
        return []
    if callable(spec) and not isinstance(spec, bool):
        chosen = spec(batch)
        if isinstance(chosen, Mapping):
            return [(f"input/{k}", v) for k, v in chosen.items() if isinstance(v, Tensor) and v.is_floating_point()]
        return [("input", chosen)] if isinstance(chosen, Tensor) and chosen.is_floating_point() else []
    if isinstance(spec, str):
        value = batch.get(spec) if isinstance(batch, Mapping) else None
        return [(f"input/{spec}", value)] if isinstance(value, Tensor) and value.is_floating_point() else []
    if isinstance(spec, int) and not isinstance(spec, bool):
        value = batch[spec] if isinstance(batch, (tuple, list)) and -len(batch) <= spec < len(batch) else None
        return [("input", value)] if isinstance(value, Tensor) and value.is_floating_point() else []
    if isinstance(batch, Mapping):
        for key, value in batch.items():
            if isinstance(value, Tensor) and value.is_floating_point() and not _names_no_feature(str(key)):
                return [(f"input/{key}", value)]
        return []
    first = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    for _, tensor in named_tensors(first, "input"):
        return [("input", tensor)]
    return []


def _names_no_feature(key: str) -> bool:
    key = key.lower()
    return any(word in key for word in _NOT_FEATURES)


def is_compiled(model: torch.nn.Module) -> bool:
    """Whether ``torch.compile`` wraps the model or one of its submodules.

    ``trainer.fit(torch.compile(model))`` unwraps the module and compiles its ``forward`` and
    ``training_step`` (``_compiler_ctx``); ``self.net = torch.compile(net)`` leaves an ``OptimizedModule``
    in the tree.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2))
        >>> is_compiled(net), is_compiled(torch.nn.Sequential(torch.compile(net)))
        (False, True)
    """
    if getattr(model, "_compiler_ctx", None):
        return True
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # pragma: no cover - torch without dynamo
        return False
    return any(isinstance(m, OptimizedModule) for m in model.modules())


@contextmanager
def _silenced(pl_module: pl.LightningModule) -> Iterator[None]:
    """``self.log``/``self.log_dict`` do nothing inside (a replayed ``training_step`` must not log twice)."""
    originals = {name: pl_module.__dict__.get(name) for name in ("log", "log_dict")}
    try:
        pl_module.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
        pl_module.log_dict = lambda *args, **kwargs: None  # type: ignore[method-assign]
        yield
    finally:
        for name, value in originals.items():
            if value is None:
                pl_module.__dict__.pop(name, None)
            else:
                pl_module.__dict__[name] = value


def log_scalars(logger: Any, metrics: dict[str, float], step: int) -> None:
    """``logger.log_metrics(metrics, step)``, with all scalars in one event for a ``TensorBoardLogger``.

    ``TensorBoardLogger.log_metrics`` writes one event per scalar, about 0.1 ms each in the training
    thread (a protobuf, then a queue of 10 shared with a writer thread that checksums in pure Python):
    25 ms for the 240 scalars of an 8-layer model. One event holding every value costs 0.3 ms and
    reads back the same (TensorBoard, ``EventAccumulator``).
    """
    from ..output.loggers import log_scalars as _log_scalars  # both Lightning packages; MLflow-safe keys

    _log_scalars(logger, metrics, step)


class NormWatch(Callback):
    """Watch the scale, shape and drift of inputs and activations; alert when something is wrong.

    Args:
        modules: ``None`` watches every leaf module (except identity/dropout); otherwise glob patterns
            of qualified names (``"encoder.*"``) and/or ``nn.Module`` classes.
        exclude: patterns/classes to skip.
        inputs: watch the batch's input features: ``True`` (the batch tensors the model's modules consume:
            not masks or targets; see ``inputs.py``), ``False``, a dict key, a tuple index, or a callable
            ``batch -> tensor | dict``.
        every_n_steps: logging interval in global steps; ``None`` uses the trainer's ``log_every_n_steps``.
        sample_size: values sampled per tensor per logging step (the bound on the cost per layer).
        pvalue_size: values the normality p-values are computed on (same for every layer).
        warmup_steps: global steps before the reference window opens.
        reference_steps: length of the reference window (global steps); drift is measured after it.
        thresholds: ``Thresholds`` or a dict of overrides.
        on_alert: ``"warn"`` (log), ``"raise"`` (stop training with ``NormWatchAlertError`` on a warning
            or error), or ``"ignore"`` (only collect in ``.alerts``).
        check_nonfinite: check the loss every step and, when it is NaN/Inf, replay the batch to name the
            first module that produced non-finite values (CPU: every step; CUDA: checked without host
            sync and reported at the next logging step).
        seed: seed of the callback's own sampling generator.
        tensorboard: write histograms, the custom-scalars layout and the alert table when a
            ``TensorBoardLogger`` is present.
        plot_every_n_steps: write Q-Q/histogram figures every this many steps (``None``: never).
        input_drift: per-feature input drift alerts: ``"warn"``, ``"info"`` (for data that changes on
            purpose: a curriculum, a domain schedule) or ``"off"`` (figures only).
        feature_names: names of the input features (columns, or channels of images), used in alerts.
        scalars: ``"default"``: per tensor the figures a person reads and the rules compare, only those
            that apply to its role (6 to 8 scalars, see ``lightning_normwatch.output.scalars``); ``"all"``: every figure.

    Raises:
        ValueError: a parameter has a bad value (the message names it).

    Example:
        >>> cb = NormWatch(exclude=["head"], thresholds={"dead": 0.8}, on_alert="ignore")
        >>> cb.thresholds.dead
        0.8
    """

    def __init__(
        self,
        modules: Sequence[Pattern] | Pattern | None = None,
        exclude: Sequence[Pattern] | Pattern = (),
        inputs: InputSpec = True,
        every_n_steps: int | None = None,
        *,
        sample_size: int = 8192,
        pvalue_size: int = 5000,
        warmup_steps: int = 100,
        reference_steps: int = 200,
        thresholds: Thresholds | dict[str, float] | None = None,
        on_alert: str = "warn",
        check_nonfinite: bool = True,
        seed: int = 0,
        tensorboard: bool = True,
        plot_every_n_steps: int | None = None,
        input_drift: str = "warn",
        feature_names: Sequence[str] | None = None,
        scalars: str = "default",
    ) -> None:
        self.modules = None if modules is None else validate_patterns("modules", modules)
        self.exclude = validate_patterns("exclude", exclude)
        if not (isinstance(inputs, (bool, str, int)) or callable(inputs)):
            raise ValueError(f"NormWatch: inputs must be a bool, a key, an index or a callable, got {inputs!r}")
        self.inputs = inputs
        check_positive_int("every_n_steps", every_n_steps, allow_none=True)
        check_positive_int("sample_size", sample_size, minimum=16)
        check_positive_int("pvalue_size", pvalue_size, minimum=8)
        check_positive_int("warmup_steps", warmup_steps, minimum=0)
        check_positive_int("reference_steps", reference_steps)
        check_choice("on_alert", on_alert, ("warn", "raise", "ignore"))
        check_positive_int("plot_every_n_steps", plot_every_n_steps, allow_none=True)
        check_choice("input_drift", input_drift, ("warn", "info", "off"))
        if feature_names is not None and (
            isinstance(feature_names, str) or not all(isinstance(n, str) for n in feature_names)
        ):
            raise ValueError(f"NormWatch: feature_names must be a sequence of strings or None, got {feature_names!r}")
        check_choice("scalars", scalars, SCALAR_SETS)
        if not isinstance(check_nonfinite, bool):
            raise ValueError(f"NormWatch: check_nonfinite must be a bool, got {check_nonfinite!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"NormWatch: seed must be an int, got {seed!r}")
        if not isinstance(tensorboard, bool):
            raise ValueError(f"NormWatch: tensorboard must be a bool, got {tensorboard!r}")
        self.every_n_steps = every_n_steps
        self.thresholds = Thresholds.coerce(thresholds)
        self.on_alert = on_alert
        self.check_nonfinite = check_nonfinite
        self.tensorboard = tensorboard
        self.plot_every_n_steps = plot_every_n_steps
        self.scalars = scalars
        self.config = MonitorConfig(
            sample_size=sample_size,
            pvalue_size=pvalue_size,
            warmup_steps=warmup_steps,
            reference_steps=reference_steps,
            thresholds=self.thresholds,
            seed=seed,
            input_drift=input_drift,
            feature_names=None if feature_names is None else tuple(feature_names),
        )
        self.monitor = Monitor(self.config)
        self.last_result: StepResult | None = None
        self._exchange: Exchange | None = None
        self._panels: Any = None
        self._interval = every_n_steps or 50
        self._collecting = False
        self._step_at_start = -1
        self._batch: Any = None
        self._batch_idx = 0
        self._rng: RngState | None = None
        self._bad_loss: Tensor | None = None
        self._resume_after_validation = False
        self._checks: ModelChecks | None = None
        self._checked_model: torch.nn.Module | None = None
        self._checks_state: dict[str, Any] | None = None  # loaded before ``setup`` made ``_checks``
        self._earlier_alerts: list[Alert] = []
        self._compiled = False
        self._replayed = False  # this batch's forward was already replayed for measurement (compiled model)
        self._warned_manual = False

    @property
    def exchange(self) -> Exchange | None:
        """How statistics are collected (``collectives`` and ``bytes_sent`` tell the cost under DDP)."""
        return self._exchange

    @property
    def alerts(self) -> list[Alert]:
        """Every alert raised so far, in order, over every ``trainer.fit`` this callback took part in
        (each fit starts a fresh monitor; the alerts of earlier fits are kept in front)."""
        return self._earlier_alerts + self.monitor.alerts

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(modules=repr(self.modules), exclude=repr(self.exclude))

    # ------------------------------------------------------------------ set-up / tear-down
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._interval = self.every_n_steps or trainer.log_every_n_steps or 50
        # A fresh monitor for every fit: references, alert state and tensor names of an earlier fit with
        # this callback must not leak into this one. Lightning restores a checkpoint's state after setup.
        from dataclasses import replace

        self._earlier_alerts += self.monitor.alerts
        self.monitor = Monitor(replace(self.config, world_size=max(1, trainer.world_size)))
        self.last_result = None
        self._bad_loss = None
        self._exchange = Exchange.for_trainer(trainer, self.monitor)
        names = self.monitor.attach(pl_module, self.modules, self.exclude)
        self._checks = ModelChecks(dict(self.monitor.watched), dict(pl_module.named_modules()))
        self._checked_model = pl_module
        self._compiled = is_compiled(pl_module)
        if not names and self.inputs is False:
            rank_zero_warn("NormWatch: no module matches `modules`/`exclude` and inputs=False: nothing to watch.")
        if not trainer.loggers:
            rank_zero_warn("NormWatch: the trainer has no logger; figures are not logged, alerts still are.")
        if self.tensorboard:
            from ..output.panels import Panels

            self._panels = Panels.for_trainer(trainer, self.plot_every_n_steps)
        if trainer.is_global_zero:
            console.log_start(self, trainer, len(names))

    def _stop(self) -> None:
        self.monitor.disarm()
        self._collecting = False
        self._batch = None
        self._rng = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._checks is not None:
            self._record(trainer, self._checks.frozen(pl_module, trainer.global_step))

    def _record(self, trainer: pl.Trainer, alerts: list[Alert]) -> None:
        """Alerts raised outside the monitor's rules (model checks): kept with the others, then emitted."""
        self.monitor.alerts.extend(alerts)
        self._emit(trainer, alerts)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop()
        if trainer.is_global_zero and self.last_result is not None:
            roles = {key: self._role(key) for key in self.last_result.figures}
            console.log_summary(
                self.last_result.figures, self._types(), self.alerts, self.last_result.step, roles=roles
            )

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._stop()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._stop()
        if self._panels is not None:
            self._panels.flush()

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # validation inside a logging step (gradient accumulation) is not training data
        self._resume_after_validation = self.monitor.armed
        self.monitor.pause()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._resume_after_validation:
            self.monitor.resume()
        self._resume_after_validation = False

    # ------------------------------------------------------------------ per step
    def is_logging_step(self, step: int) -> bool:
        return step % self._interval == 0

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        logging_step = self.is_logging_step(step)
        self._replayed = False
        if self.check_nonfinite or (logging_step and self._compiled):
            self._batch, self._batch_idx = batch, batch_idx
            self._rng = RngState.capture(torch_only=True)
        if logging_step:
            automatic = self._automatic_inputs()
            if automatic:  # the monitor's hooks find the features the modules consume during the forward
                self.monitor.expect_inputs(batch)
            if not self._collecting or step != self._step_at_start:
                self.monitor.arm()
                if self._compiled:
                    # No hook may be seen by compiled code (dynamo would trace it into the graph, recompile,
                    # and under fullgraph=True fail): the layers are measured by an eager replay of the batch.
                    self.monitor.pause()
                self._collecting = True
                self._step_at_start = step
            self.monitor.next_pass()  # call sites (act, act#2) counted per batch: accumulated batches merge
            if not automatic:
                for name, tensor in find_inputs(batch, self.inputs):
                    self.monitor.observe(name, tensor, role="input")

    def _automatic_inputs(self) -> bool:
        return self.inputs is True and not self.monitor.discovery_failed

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        if self._compiled and self._collecting and not self._replayed and self._batch is not None:
            self._measure_compiled(pl_module)
        if not self.check_nonfinite or self.monitor.nonfinite_active or self._batch is None:
            return
        loss = loss.detach()
        if loss.device.type != "cpu":  # no host sync on CUDA: accumulate, read at the next logging step
            bad = ~torch.isfinite(loss).all()
            self._bad_loss = bad if self._bad_loss is None else self._bad_loss | bad
            return
        # a 1-element loss is read directly: 1 us, where isfinite().all() costs 20-100 us every step
        if math.isfinite(loss.item()) if loss.numel() == 1 else bool(torch.isfinite(loss).all()):
            return
        if pl_module.automatic_optimization:
            self._locate_nonfinite(trainer, pl_module)
            return
        # Under manual optimization a replay of training_step would repeat its optimizer toggling and
        # backward calls (breaking e.g. toggle_optimizer): report the loss without locating the origin.
        source = "the loss check; no replay under manual optimization"
        self._emit(trainer, self.monitor.raise_nonfinite(trainer.global_step, "loss", math.nan, 0, source))

    def _eager(self) -> Any:
        """Compiled code runs eagerly inside (hooks fire normally; nothing is traced or recompiled)."""
        return torch.compiler.set_stance("force_eager") if self._compiled else nullcontext()

    def _measure_compiled(self, pl_module: pl.LightningModule) -> None:
        """Measure the layers of a compiled model on a logging step: replay the batch's ``training_step``
        eagerly, without gradient, from the batch-start RNG state and on copies of the buffers, with hooks.

        The compiled training step itself never meets a hook, so it runs the same graphs (no graph break,
        no recompilation) and trains exactly as without NormWatch; the cost is one eager forward pass per
        logging step. Under manual optimization ``training_step`` cannot be replayed (it steps the
        optimizers): the layers are then not measured (the inputs and the loss still are).
        """
        self._replayed = True
        if not pl_module.automatic_optimization:
            if not self._warned_manual:
                rank_zero_warn("NormWatch: compiled model under manual optimization: layers are not measured.")
                self._warned_manual = True
            return
        self.monitor.resume()
        try:
            with _silenced(pl_module), self._eager(), preserved(pl_module, self._rng):
                pl_module.training_step(self._batch, self._batch_idx)
        except Exception as exc:  # best effort: never break training for it
            log.debug("NormWatch: replay of a compiled model's batch failed: %r", exc)
        finally:
            self.monitor.pause()

    def _locate_nonfinite(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Replay this batch's forward with hooks armed to name the first module with NaN/Inf."""
        batch, self._batch = self._batch, None  # a backward inside training_step must not replay again
        try:
            automatic = self._automatic_inputs()
            if automatic:
                self.monitor.expect_inputs(batch)
            with _silenced(pl_module), self._eager(), self.monitor.separate_collection():
                try:
                    with preserved(pl_module, self._rng):
                        if not automatic:
                            for name, tensor in find_inputs(batch, self.inputs):
                                self.monitor.observe(name, tensor, role="input")
                        pl_module.training_step(batch, self._batch_idx)
                except Exception as exc:  # the replay is best effort: never break training for it
                    # what the forward measured before the failure (e.g. manual_backward under no_grad) still counts
                    log.debug("NormWatch: replay for non-finite values failed: %r", exc)
                stats = self.monitor.collect()
        finally:
            self._batch = batch
        first = self.monitor.first_nonfinite(stats)
        if first is None:  # a finite forward and a non-finite loss: the loss overflowed; name where it grew
            overflowed = self.monitor.raise_overflow(trainer.global_step, stats)
            if overflowed is not None:
                self._emit(trainer, overflowed)
                return
        origin, share, downstream = first if first is not None else ("loss", math.nan, 0)
        new = self.monitor.raise_nonfinite(trainer.global_step, origin, share, downstream, "replaying the batch")
        self._emit(trainer, new)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batch = None
        if not self._collecting or trainer.global_step == self._step_at_start:
            return  # not a logging step, or still accumulating gradients for it
        self.monitor.disarm()
        self._collecting = False
        self._finish_step(trainer, self._step_at_start)

    def _finish_step(self, trainer: pl.Trainer, step: int) -> None:
        assert self._exchange is not None
        bad_loss = self._bad_loss is not None and bool(self._bad_loss)
        stats = self._exchange.collect(flags=(bad_loss,))  # OR-ed over ranks: every rank raises the same alert
        result = self.monitor.evaluate(step, stats)
        if self._exchange.flags[0] and not self.monitor.nonfinite_active:
            result.alerts[:0] = self.monitor.raise_nonfinite(step, "loss", math.nan, 0, "the loss check")
        self._bad_loss = None
        if self._checks is not None and self._checked_model is not None:
            infos = {key: self.monitor.info(key).role for key in stats if key in self.monitor._infos}
            checks = self._checks.at_logging_step(
                self._checked_model, step, list(stats), self.monitor.called, self.monitor.edges, infos
            )
            self.monitor.alerts.extend(checks)
            result.alerts += checks
        self.last_result = result
        if trainer.is_global_zero:
            self._log_figures(trainer, result)
            if self._panels is not None:
                self._panels.write(result, stats, self.monitor)
        self._emit(trainer, result.alerts)

    def _log_figures(self, trainer: pl.Trainer, result: StepResult) -> None:
        metrics: dict[str, float] = {}
        for key, fig in result.figures.items():
            metrics.update(scalar_metrics(key, self._role(key), fig, self.scalars))
        metrics.update(threshold_metrics(self.thresholds, metrics))
        for severity, count in result.active.items():
            metrics[f"normwatch/alerts/{severity}"] = float(count)
        for logger in trainer.loggers:
            log_scalars(logger, metrics, result.step)

    def _types(self) -> dict[str, str]:
        """Layer type by watched tensor (``net.1`` -> ``ReLU``), for what is printed."""
        out = {}
        for key in self.last_result.figures if self.last_result else ():
            with contextlib.suppress(KeyError):  # a tensor only another rank observed has no type here
                out[key] = self.monitor.info(key).type_name
        return out

    def _role(self, key: str) -> str:
        try:
            return self.monitor.info(key).role
        except KeyError:  # a tensor only another rank observed
            return "other"

    def _emit(self, trainer: pl.Trainer, alerts: list[Alert]) -> None:
        if not alerts:
            return
        if self._panels is not None and trainer.is_global_zero:
            self._panels.write_alerts(self.monitor.alerts, alerts[-1].step)
        if self.on_alert != "ignore" and trainer.is_global_zero:
            for level, line in console.alert_lines(alerts, self._types()):
                log.log(level, "%s", line)
        if self.on_alert == "raise":
            for alert in alerts:
                if alert.severity != "info":
                    raise NormWatchAlertError(alert)

    # ------------------------------------------------------------------ checkpoint
    @override
    def state_dict(self) -> dict[str, Any]:
        state = self.monitor.state_dict()
        checks = self._checks.state() if self._checks is not None else self._checks_state
        if checks is not None:
            state["model_checks"] = checks
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.monitor.load_state_dict(state_dict)
        loaded = set(self.monitor.alerts)  # resuming this callback's own earlier fit: no alert twice
        self._earlier_alerts = [a for a in self._earlier_alerts if a not in loaded]
        self._checks_state = state_dict.get("model_checks")
        if self._checks is not None and self._checks_state is not None:
            self._checks.load(self._checks_state)


# Fabric(callbacks=[NormWatch()]) calls hooks with its own arguments: say to use LoopWatch instead.
from .guard import trainer_hooks_only  # noqa: E402

trainer_hooks_only(NormWatch)
