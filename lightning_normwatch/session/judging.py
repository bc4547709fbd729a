"""The end of a logging step in two halves: ``take`` on the training thread, ``judge`` on the pipeline's worker.

``take`` does what must happen where the model lives: the one transfer (DDP: one collective) of the
statistics, the loss flag, the update-size norms moved to the host, the model checks (they read the live
model: training mode, layers), and copies of what the judging reads of the collector (``CollectorView``:
tensor infos, data-flow edges, feature strides, the input discovery's finding). ``judge`` does the rest
from those values only: figures, references, rules, diagnosis, update rules, scalars, panels, alert lines.
Run one after the other on one thread, they do exactly what one synchronous step did.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_normwatch.config import SessionConfig
    >>> from lightning_normwatch.session.session import Session
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    >>> session = Session(SessionConfig(every_n_steps=1, pipeline="sync"))
    >>> session.start(model)
    >>> session.begin_step(0, x := torch.randn(16, 4)); _ = model(x); session.collector.disarm()
    >>> taken = take(session, 0)
    >>> sorted(taken.stats), sorted(taken.view.infos)
    (['0', '1', 'input'], ['0', '1', 'input'])
    >>> judge(session, taken); session.latest.step
    0
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from ..collect.collector import Collector
from ..collect.info import TensorInfo
from ..judge.alerts import Alert
from ..judge.evaluator import StepResult
from ..output.loggers import is_tensorboard_logger, log_scalars
from ..output.scalars import scalar_metrics, threshold_metrics
from ..stats.figures import TensorStats

if TYPE_CHECKING:
    from .session import Session

__all__ = ["CollectorView", "Taken", "take", "judge", "post", "role", "thread_safe", "PANELS"]

PANELS = "the TensorBoard panels"


class _Found:
    """The input discovery's finding of this step, as ``InputDiscovery.finish`` returned it."""

    def __init__(self, first: str | None) -> None:
        self.first = first

    def finish(self) -> str | None:
        return self.first


@dataclass
class CollectorView:
    """What the evaluator reads of the ``Collector``, copied at the end of a logging step."""

    watched: list[tuple[str, nn.Module]]  # set once at attach; modules are only asked their type and parameters
    infos: dict[str, TensorInfo]
    edges: dict[str, str]
    feature_stride: dict[str, int]
    discovery: _Found

    @classmethod
    def of(cls, collector: Collector) -> CollectorView:
        c = collector
        return cls(c.watched, dict(c.infos), dict(c.edges), dict(c.feature_stride), _Found(c.discovery.finish()))

    first_nonfinite = staticmethod(Collector.first_nonfinite)  # reads only the statistics


@dataclass
class Taken:
    """One logging step as the training thread left it for the judging (plain values)."""

    step: int
    stats: dict[str, TensorStats]
    bad_loss: bool  # a non-finite loss since the last logging step, OR-ed over ranks
    view: CollectorView
    checks: list[Alert] | None  # the model checks' new alerts (not diagnosed yet)
    reported: set[tuple[str, str]]  # the model checks' alerts reported so far
    updates: tuple[Any, ...] | None  # UpdateWatch.measure()


def take(session: Session, step: int) -> Taken:
    """Training thread: the statistics' transfer and copies of the live state (see the module docstring)."""
    assert session.exchange is not None
    bad_loss = session.bad_loss is not None and _device_read(session, session.bad_loss)
    stats = session.exchange.collect(flags=(bad_loss,))  # OR-ed over ranks: every rank raises the same alert
    session.bad_loss = None
    c = session.collector
    view = CollectorView.of(c)
    checks, reported = None, set()
    if session.checks is not None and session.model is not None:
        roles = {key: view.infos[key].role for key in stats if key in view.infos}
        checks = session.checks.at_logging_step(session.model, step, list(stats), c.called, c.edges, roles)
        reported = set(session.checks.reported)
    updates = session.updates.measure() if session.updates is not None else None
    session.anchors_pending = _anchors_change(session, stats, view)
    return Taken(step, stats, bool(session.exchange.flags[0]), view, checks, reported, updates)


def _device_read(session: Session, flag: Tensor) -> bool:
    """``bool(flag)``: on a GPU a host synchronisation, which waits for the kernels queued before it (the
    training's): that wait is told to the cost meter as the device's (as the collector does for the transfer)."""
    if flag.device.type == "cpu":
        return bool(flag)
    started = time.perf_counter()
    value = bool(flag)
    session.meter.device(time.perf_counter() - started)
    return value


def _anchors_change(session: Session, stats: dict[str, TensorStats], view: CollectorView) -> bool:
    """Whether judging this step places an input's feature anchors anew (the next logging step's hooks bin
    by them, so it must wait for this judging: the same bins as the synchronous path)."""
    anchor = session.evaluator.input_tracker.anchor
    for key, st in stats.items():
        info = view.infos.get(key)
        if info is not None and info.role == "input":
            current = anchor(key)
            if current is None or len(current.center) != len(st.cn):
                return True
    return False


def judge(session: Session, taken: Taken) -> None:
    """Worker (or inline): judge, write and emit one logging step from what ``take`` left."""
    ev, step = session.evaluator, taken.step
    live, ev.collector = ev.collector, taken.view  # type: ignore[assignment]
    try:
        result = ev.evaluate(step, taken.stats)
        if taken.bad_loss and not ev.nonfinite_active:
            result.alerts[:0] = ev.raise_nonfinite(step, "loss", math.nan, 0, "the loss check")
        if taken.checks is not None:
            checks = ev.diagnose(taken.checks, taken.reported)
            ev.alerts.extend(checks)
            result.alerts += checks
    finally:
        ev.collector = live
    panels = session.panels if session.is_global_zero else None
    if session.updates is not None:  # the parameter side: same on every rank, no collective (docs/updates.md)
        ev.alerts.extend(session.updates.add_to(step, result, panels, ev, taken.updates))
    session.latest = result
    infos = taken.view.infos
    if session.is_global_zero:
        _log_figures(session, result, infos)
        if panels is not None:
            session.guard.call(PANELS, panels.write, result, taken.stats, infos, ev.tracker.active)
    session.emit(result.alerts, infos)


def role(infos: dict[str, TensorInfo], key: str) -> str:
    """The role of a watched tensor; ``"other"`` for a tensor only another rank observed."""
    info = infos.get(key)
    return info.role if info is not None else "other"


def _log_figures(session: Session, result: StepResult, infos: dict[str, TensorInfo]) -> None:
    metrics: dict[str, float] = {}
    for key, fig in result.figures.items():
        metrics.update(scalar_metrics(key, role(infos, key), fig, session.config.scalars))
    metrics.update(threshold_metrics(session.config.thresholds, metrics))
    for severity, count in result.active.items():
        metrics[f"normwatch/alerts/{severity}"] = float(count)
    for logger in session.loggers:
        if session.pipeline.on_worker() and not thread_safe(logger):
            session.outbox.append((logger, metrics, result.step))  # written by the training thread (post)
        else:
            session.guard.call(f"logger {type(logger).__name__}", log_scalars, logger, metrics, result.step)


def post(session: Session) -> None:
    """Training thread: write the logger rows the worker left (loggers not safe across threads)."""
    while session.outbox and not session.pipeline.on_worker():
        logger, metrics, step = session.outbox.popleft()
        session.guard.call(f"logger {type(logger).__name__}", log_scalars, logger, metrics, step)


def thread_safe(logger: Any) -> bool:
    """Whether the worker may write to ``logger`` while the training thread writes to it too: a
    ``TensorBoardLogger`` (its ``SummaryWriter`` queues events under a lock) or a sink marked ``thread_safe``.
    Others (a ``CSVLogger`` clears its rows after writing them: a row added meanwhile is lost; user callables)
    get their rows from the training thread, at the next step or drain.

    Example:
        >>> from pytorch_lightning.loggers import CSVLogger
        >>> thread_safe(CSVLogger("logs"))
        False
    """
    return is_tensorboard_logger(logger) or getattr(logger, "thread_safe", False) is True
