"""``LoopWatch``: NormWatch in a hand-written PyTorch loop or with Lightning Fabric.

A thin adapter over the same ``Session`` the Lightning callback uses (same sampling, figures, drift,
alerts and TensorBoard panels): you mark each training step, alerts go to the ``lightning_normwatch``
logger (and ``.alerts``), figures and panels to a sink. It imports neither ``pytorch_lightning`` nor
``lightning``.

Sinks: a ``torch.utils.tensorboard.SummaryWriter`` (scalars in one event per step, histograms,
custom-scalars layout, alert table, figures); a logger with ``log_metrics(metrics, step)`` (any
Lightning or Fabric logger; a ``TensorBoardLogger``'s writer also gets the panels); a callable
``sink(metrics: dict[str, float], step: int)``; or ``None`` (alerts only).

Under ``torch.distributed`` (DDP, Fabric's ``ddp``) every rank calls ``step`` at the same steps;
statistics are merged with one collective per logging step (``collect.exchange.Exchange``) and rank 0
writes. Wrappers (Fabric's ``_FabricModule``, ``DistributedDataParallel``, ``torch.compile``) are
looked through, so names are the model's own (``net.0``, never ``_forward_module.net.0``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    >>> seen = []
    >>> with LoopWatch(model, sink=lambda metrics, step: seen.append(step), every_n_steps=2) as watch:
    ...     for step in range(4):
    ...         x = torch.randn(16, 4)
    ...         with watch.step(x):
    ...             loss = model(x).pow(2).mean()
    >>> seen, watch.watched
    ([0, 2], ['0', '1', '2'])
    >>> [h for m in model.modules() for h in m._forward_hooks]   # every hook removed on exit
    []
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..collect.inputs import InputSpec
from ..collect.selection import Pattern
from ..config import SessionConfig
from ..judge.alerts import Alert
from ..judge.evaluator import StepResult
from ..judge.windows import Windows
from ..output.loggers import is_tensorboard_logger, write_scalars
from ..output.panels import Panels
from ..session.cost import Cost
from ..session.session import Session

__all__ = ["LoopWatch", "unwrap"]

Sink = Any  # SummaryWriter | logger with log_metrics | Callable[[dict[str, float], int], None] | None


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside Fabric's ``_FabricModule``, ``DistributedDataParallel``/``DataParallel``
    and ``torch.compile`` wrappers (hooks go on its submodules, names carry no wrapper prefix).

    Example:
        >>> inner = nn.Linear(2, 2)
        >>> unwrap(nn.DataParallel(inner)) is inner
        True
    """
    while True:
        if hasattr(model, "_forward_module") and isinstance(getattr(model, "_original_module", None), nn.Module):
            model = model._original_module  # Fabric
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # torch.compile
        else:
            return model


class _CallableLogger:
    """A Lightning-style logger over a ``SummaryWriter`` or a callable."""

    def __init__(self, sink: Any, writer: Any) -> None:
        self.sink, self.writer = sink, writer
        self.thread_safe = writer is not None  # a SummaryWriter: the pipeline's worker writes to it directly

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.writer is not None:
            write_scalars(self.writer, metrics, int(step or 0))
        else:
            self.sink(dict(metrics), int(step or 0))


def _sinks(sink: Sink) -> tuple[list[Any], Any]:
    """The loggers figures go to, and the ``SummaryWriter`` the panels go to (or None)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = sink if isinstance(sink, SummaryWriter) else None
    if sink is None:
        return [], None
    if writer is not None or (callable(sink) and not hasattr(sink, "log_metrics")):
        return [_CallableLogger(sink, writer)], writer
    if hasattr(sink, "log_metrics"):
        if type(sink).__name__ == "TensorBoardLogger" and isinstance(sink.experiment, SummaryWriter):
            writer = sink.experiment  # Lightning's or Fabric's TensorBoardLogger: panels too
            if not is_tensorboard_logger(sink):  # Fabric's: its scalars in one event too
                return [_CallableLogger(sink, writer)], writer
        return [sink], writer
    raise ValueError(
        "LoopWatch: sink must be a SummaryWriter, a logger with log_metrics, a callable (metrics, step) "
        f"or None, got {sink!r}"
    )


class LoopWatch:
    """Watch a model trained by your own loop (plain PyTorch, Fabric); a context manager.

    Args:
        model: the model (Fabric/DDP/compile wrappers are looked through).
        sink: where figures and panels go: a ``SummaryWriter``, a logger with ``log_metrics``, a callable
            ``sink(metrics, step)``, or ``None`` (alerts only: ``.alerts`` and the ``lightning_normwatch`` logger).
        modules, exclude, inputs: as ``NormWatch``.
        optimizers: the optimizers that train ``model``: with them, update sizes, gradients and weights are
            measured around ``optimizer.step()`` on logging steps (call it inside ``with watch.step(...)``), and
            trainable parameters that none holds are alerted (``not_in_optimizer``). More can be added later
            with ``watch_optimizers``. Without them the parameter side is not watched.
        **options: the settings of ``SessionConfig`` (``every_n_steps`` (default 50), ``thresholds``,
            ``on_alert``, ``warmup_steps``, ``plot_every_n_steps`` ...); ``total_steps=`` (the run's length)
            fits the drift windows to the run, as the Lightning adapter does from the trainer.

    Raises:
        ValueError: a bad option (as ``NormWatch``), or ``sink`` of an unsupported kind.

    Mark each training step with ``with watch.step(inputs):`` around the forward pass (``inputs``: the
    batch, or what of it the model consumes; ``inputs=`` in the options chooses the tensor). Leaving
    the ``with LoopWatch(...)`` block (or ``close()``) removes every hook and flushes the sink.
    """

    def __init__(
        self,
        model: nn.Module,
        sink: Sink = None,
        modules: Pattern | list[Pattern] | None = None,
        exclude: Pattern | list[Pattern] = (),
        inputs: InputSpec = True,
        optimizers: Sequence[torch.optim.Optimizer] = (),
        **options: Any,
    ) -> None:
        config = SessionConfig(**options)
        self.session = Session(config, modules, exclude, inputs)
        self.model = unwrap(model)
        self.sink = sink
        loggers, writer = _sinks(sink)
        distributed = dist.is_available() and dist.is_initialized()
        parameter = next(self.model.parameters(), None)
        self._global_zero = not distributed or dist.get_rank() == 0
        panels = None
        if config.tensorboard and writer is not None and self._global_zero:
            panels = Panels(writer, config.plot_every_n_steps, config.thresholds)
        self.session.start(
            self.model,
            loggers=loggers,
            panels=panels,
            world_size=dist.get_world_size() if distributed else 1,
            is_global_zero=self._global_zero,
            device=parameter.device if parameter is not None else torch.device("cpu"),
        )
        self._next = 0
        self._closed = False
        self._optimizers: list[torch.optim.Optimizer] = []
        self._unused_ok = bool(getattr(model, "find_unused_parameters", False))  # DDP's own flag
        if optimizers:
            self.watch_optimizers(*optimizers)

    def watch_optimizers(self, *optimizers: torch.optim.Optimizer) -> None:
        """Measure the updates of these optimizers too (``optimizer.step()`` inside ``with watch.step(...)``).

        Example:
            >>> model = nn.Sequential(nn.Linear(2, 1))
            >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
            >>> with LoopWatch(model, every_n_steps=1) as watch:
            ...     watch.watch_optimizers(opt)
            ...     x = torch.randn(8, 2)
            ...     with watch.step(x):
            ...         model(x).sum().backward(); opt.step(); opt.zero_grad()
            >>> watch.last_result.figures["0"]["lr"], watch.last_result.figures["0"]["update_ratio"] > 0
            (0.1, True)
        """
        fabric = [getattr(o, "optimizer", o) for o in optimizers]  # Fabric's _FabricOptimizer wraps one
        self._optimizers += [o for o in fabric if all(o is not p for p in self._optimizers)]
        self.session.watch_optimizers(self._optimizers, self._next, pre=True, unused_ok=self._unused_ok)

    @property
    def watched(self) -> list[str]:
        """Names of the watched modules."""
        return [name for name, _ in self.session.collector.watched]

    @property
    def windows(self) -> Windows:
        """The warm-up and reference windows of this run (fitted to ``total_steps`` unless given explicitly)."""
        return self.session.windows

    @property
    def alerts(self) -> list[Alert]:
        """Every alert raised so far, in order."""
        return self.session.alerts

    @property
    def cost(self) -> Cost | None:
        """What NormWatch's own work costs this run so far (``Cost``: ms per logging step, share of training time)."""
        return self.session.cost

    @property
    def last_result(self) -> StepResult | None:
        """Figures and alerts of the latest logging step."""
        return self.session.last_result

    @contextmanager
    def step(self, inputs: Any = None, step: int | None = None) -> Iterator[None]:
        """Mark one training step: run its forward pass inside (the backward may be inside too).

        Args:
            inputs: the batch (or the model's input); its input features are watched per ``inputs=``.
            step: the global step (default: one more than the last one, from 0).
        """
        if self._closed:
            raise RuntimeError("LoopWatch: step() after close(); create a new LoopWatch")
        current = self._next if step is None else int(step)
        self.session.begin_step(current, inputs, current)
        try:
            yield
        except BaseException:
            self.session.stop()
            raise
        finally:
            self._next = current + 1
        self.session.end_step(current + 1)

    def check_loss(self, loss: Tensor) -> None:
        """Raise the ``nonfinite`` alert when ``loss`` is NaN/Inf (CUDA: read at the next logging step)."""
        loss = loss.detach()
        if loss.device.type != "cpu":  # no host sync: as the callback, OR-ed over ranks at the next logging step
            self.session.flag_loss(loss)
            return
        if not bool(torch.isfinite(loss).all()):
            self.session.drain()  # the earlier logging steps judged first
            step = max(self._next - 1, 0)
            self.session.emit(self.session.evaluator.raise_nonfinite(step, "loss", float("nan"), 0, "the loss check"))

    def close(self) -> None:
        """Finish the judging, remove every hook and flush the sink (idempotent); ``on_alert="raise"``: raise
        an alert judged after the last step."""
        self._close(raise_alert=True)

    def _close(self, raise_alert: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self.session.close()
        flush = getattr(self.sink, "flush", None)  # a SummaryWriter; a logger is finalized by its owner
        if callable(flush) and self._global_zero:
            flush()
        if raise_alert:
            self.session.pipeline.raise_pending()

    def __enter__(self) -> LoopWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close(raise_alert=exc[0] is None)  # an exception in flight is not replaced by an alert

    def state_dict(self) -> dict[str, Any]:
        """The session's state (references, active alerts, generators), to save with your checkpoint."""
        return self.session.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.session.load_state_dict(state)
