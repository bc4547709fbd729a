"""``NormWatch``: the Lightning callback, a thin adapter over ``Session``.

Each Trainer hook becomes one call on the session; what the session needs from the trainer (step,
world size, rank, device, loggers) is passed as plain values, and the batch's ``training_step`` is
handed over as the replay the session runs to measure a compiled model or to locate NaN/Inf.

Example:
    >>> cb = NormWatch(modules=["encoder.*"], every_n_steps=10)
    >>> cb.alerts, cb.config.every_n_steps
    ([], 10)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from ..collect.exchange import Exchange
from ..collect.inputs import InputSpec
from ..collect.selection import Pattern
from ..config import SessionConfig, Thresholds
from ..judge.alerts import Alert
from ..judge.evaluator import StepResult
from ..judge.windows import Windows
from ..session.cost import Cost
from ..session.session import Session
from .guard import trainer_hooks_only
from .trainer import panels_for, run_length

__all__ = ["NormWatch"]

_D = SessionConfig  # the defaults, defined once there


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


def _replay(pl_module: pl.LightningModule) -> Callable[[Any, int], Any] | None:
    """The batch's ``training_step`` without logging; None under manual optimization (a replay would repeat
    its optimizer toggling and backward calls)."""
    if not pl_module.automatic_optimization:
        return None

    def run(batch: Any, batch_idx: int) -> Any:
        with _silenced(pl_module):
            return pl_module.training_step(batch, batch_idx)

    return run


class NormWatch(Callback):
    """Watch the scale, shape and drift of inputs and activations; alert when something is wrong.

    Args:
        modules: ``None`` watches every leaf module (except identity/dropout); otherwise glob patterns
            of qualified names (``"encoder.*"``) and/or ``nn.Module`` classes.
        exclude: patterns/classes to skip.
        inputs: the batch's input features: ``True`` (the batch tensors the model's modules consume:
            not masks or targets), ``False``, a dict key, a tuple index, or a callable ``batch -> tensor | dict``.
        every_n_steps: logging interval in global steps; ``None`` uses the trainer's ``log_every_n_steps``.
        sample_size, pvalue_size, warmup_steps, reference_steps, thresholds, on_alert, check_nonfinite, seed,
            tensorboard, plot_every_n_steps, input_drift, feature_names, scalars, updates, params, pipeline: see
            ``SessionConfig`` (``lightning_normwatch.config``), where each is documented and its default defined.

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
        sample_size: int = _D.sample_size,
        pvalue_size: int = _D.pvalue_size,
        warmup_steps: int | None = _D.warmup_steps,
        reference_steps: int | None = _D.reference_steps,
        thresholds: Thresholds | dict[str, float] | None = None,
        on_alert: str = _D.on_alert,
        check_nonfinite: bool = _D.check_nonfinite,
        seed: int = _D.seed,
        tensorboard: bool = _D.tensorboard,
        plot_every_n_steps: int | None = _D.plot_every_n_steps,
        input_drift: str = _D.input_drift,
        feature_names: Sequence[str] | None = None,
        scalars: str = _D.scalars,
        updates: bool = _D.updates,
        params: str = _D.params,
        pipeline: str = _D.pipeline,
    ) -> None:
        config = SessionConfig(
            every_n_steps=every_n_steps, sample_size=sample_size, pvalue_size=pvalue_size,
            warmup_steps=warmup_steps, reference_steps=reference_steps, thresholds=thresholds,  # type: ignore[arg-type]
            on_alert=on_alert, check_nonfinite=check_nonfinite, seed=seed, tensorboard=tensorboard,
            plot_every_n_steps=plot_every_n_steps, input_drift=input_drift, feature_names=feature_names,  # type: ignore[arg-type]
            scalars=scalars, updates=updates, params=params, pipeline=pipeline,
        )  # fmt: skip
        self.session = Session(config, modules, exclude, inputs)
        self._resume_after_validation = False

    # ------------------------------------------------------------------ what the session knows
    @property
    def config(self) -> SessionConfig:
        return self.session.config

    @property
    def every_n_steps(self) -> int | None:
        return self.session.config.every_n_steps

    @property
    def on_alert(self) -> str:
        return self.session.config.on_alert

    @property
    def thresholds(self) -> Thresholds:
        return self.session.config.thresholds

    @property
    def modules(self) -> list[Pattern] | None:
        return self.session.modules

    @property
    def exclude(self) -> list[Pattern]:
        return self.session.exclude

    @property
    def inputs(self) -> InputSpec:
        return self.session.inputs

    @property
    def alerts(self) -> list[Alert]:
        """Every alert raised so far, in order, over every ``trainer.fit`` this callback took part in
        (each fit starts afresh; the alerts of earlier fits are kept in front)."""
        return self.session.alerts

    @property
    def cost(self) -> Cost | None:
        """What NormWatch's own work costs this run so far (``Cost``: ms per logging step, share of training time)."""
        return self.session.cost

    @property
    def last_result(self) -> StepResult | None:
        """Figures and alerts of the latest logging step."""
        return self.session.last_result

    @property
    def exchange(self) -> Exchange | None:
        """How statistics are collected (``collectives`` and ``bytes_sent`` tell the cost under DDP)."""
        return self.session.exchange

    @functools.cached_property
    @override
    def state_key(self) -> str:  # Lightning reads it at every hook call: built once (the patterns never change)
        return self._generate_state_key(modules=repr(self.modules), exclude=repr(self.exclude))

    # ------------------------------------------------------------------ set-up / tear-down
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not trainer.loggers:
            rank_zero_warn("NormWatch: the trainer has no logger; figures are not logged, alerts still are.")
        self.session.start(
            pl_module,
            loggers=trainer.loggers,
            panels=panels_for(trainer, self.config),
            world_size=trainer.world_size,
            is_global_zero=trainer.is_global_zero,
            device=trainer.strategy.root_device,
            trainer_interval=trainer.log_every_n_steps,
            total_steps=run_length(trainer),
        )

    @property
    def windows(self) -> Windows:
        """The warm-up and reference windows of this run (fitted to its length unless given explicitly)."""
        return self.session.windows

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.session.training_starts(pl_module, trainer.global_step)
        strategy = type(trainer.strategy).__name__
        if self.config.updates and ("FSDP" in strategy or "DeepSpeed" in strategy):  # a rank holds a shard
            rank_zero_warn(f"NormWatch: update sizes are not measured under {strategy} (sharded parameters).")
            return
        unused_ok = bool(getattr(trainer.strategy.model, "find_unused_parameters", False))  # DDP's own flag
        self.session.watch_optimizers(trainer.optimizers, trainer.global_step, unused_ok=unused_ok)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self.session.before_optimizer_step(optimizer)  # gradients final: accumulated, DDP-reduced, unscaled

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.session.finish()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.session.close()  # a KeyboardInterrupt skips teardown

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.session.close()

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # validation inside a logging step (gradient accumulation) is not training data
        self._resume_after_validation = self.session.pause()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._resume_after_validation:
            self.session.resume()
        self._resume_after_validation = False

    # ------------------------------------------------------------------ per step
    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.session.begin_step(trainer.global_step, batch, batch_idx)

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        self.session.before_backward(loss, trainer.global_step, _replay(pl_module))

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.session.end_step(trainer.global_step)

    # ------------------------------------------------------------------ checkpoint
    @override
    def state_dict(self) -> dict[str, Any]:
        return self.session.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.session.load_state_dict(state_dict)


# Fabric(callbacks=[NormWatch()]) calls hooks with its own arguments: say to use LoopWatch instead.
trainer_hooks_only(NormWatch)
