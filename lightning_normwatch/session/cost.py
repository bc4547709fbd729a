"""``CostMeter``: what NormWatch's own work costs a run, measured while it runs, and the interval that keeps it small.

A monitor that doubles the step time without saying so breaks the first promise of "one line to add". Logging
every step on a small model costs NormWatch about as much as the step itself (``docs/performance.md``, where
``benchmarks/floor.py`` shows that even four scalars per layer cost an 8 ms MLP step about 10 %); at the default
interval it costs a few percent. So the session times its own work and says what it costs:

- on the training thread: the session's step methods, the forward hooks and the optimizer hooks (sections may
  nest: a compiled model's replay runs the hooks inside ``before_backward``; only the outermost counts), minus
  the time spent waiting for the worker (its job is counted on the worker) and, on a GPU, the logging step's
  host synchronisations (the loss flag and the one transfer), which wait for the step's queued kernels (counted
  as training: the device was running the forward and backward; the measurement kernels queued just before the
  transfer count as training too, so on a GPU the figure reads somewhat low);
- on the worker thread: each logging step's job (judging and writing), in the thread's CPU time (its waits for
  the GIL while the training thread runs are not its cost);
- per global step, its wall time from one step's start to the next: the training's own step time is that minus
  NormWatch's training-thread share (medians over the recent steps, so a compile or a checkpoint does not count).

``cost()`` gives the figures (``Cost``); ``notice()`` gives, once, a line (logged at INFO: the WARNING level
keeps only alerts) when NormWatch's work takes more than ``WARN_SHARE`` of the training time, with the interval
that would bring it to ``TARGET_SHARE``; the end-of-fit summary carries ``Cost.line()`` before its rules line.
Nothing of it reaches the event files, the alerts or checkpoints: the figures depend on the machine and its load,
and those must not.

Example:
    >>> clock = iter([0.0, 0.0, 0.004, 0.010, 0.010, 0.0105, 0.020]).__next__
    >>> meter = CostMeter(interval=2, clock=clock, warm_logging_steps=0)
    >>> meter.step(0, logging=True); meter.enter(); meter.leave()  # 4 ms of NormWatch's work at step 0
    >>> meter.step(1, logging=False); meter.enter(); meter.leave()  # 0.5 ms at step 1
    >>> meter.step(2, logging=True)
    >>> cost = meter.cost()
    >>> round(cost.logging_ms, 3), round(cost.other_ms, 3), round(cost.step_ms, 3), round(cost.share, 3)
    (4.0, 0.5, 7.75, 0.29)
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["Cost", "CostMeter", "WARN_SHARE", "TARGET_SHARE", "timed", "timed_method"]

#: a one-off notice when NormWatch's work takes more than this share of the training time
WARN_SHARE = 0.20
#: the share the suggested interval keeps NormWatch's work under (``make bench``'s target for the default)
TARGET_SHARE = 0.02
#: recent values the medians are taken over
_RECENT = 64


@dataclass(frozen=True)
class Cost:
    """NormWatch's own work against the training's, per step (milliseconds, medians over recent steps).

    Attributes:
        logging_ms: NormWatch's work per logging step, training thread and worker together.
        worker_ms: the part of ``logging_ms`` done on the worker thread (judging, writing).
        other_ms: NormWatch's work on a step that is not a logging step (NaN: none measured yet).
        step_ms: the training's own time per step (step wall time minus NormWatch's training-thread work).
        interval: the logging interval in steps.
        logging_steps: logging steps measured.

    Example:
        >>> cost = Cost(logging_ms=10.0, worker_ms=4.0, other_ms=0.1, step_ms=10.0, interval=50, logging_steps=3)
        >>> round(cost.share, 4), cost.interval_for(0.02)
        (0.0298, 99)
    """

    logging_ms: float
    worker_ms: float
    other_ms: float
    step_ms: float
    interval: int
    logging_steps: int

    @property
    def _other(self) -> float:
        """``other_ms``, 0 when no other step was measured (every step logged: they do not occur)."""
        return 0.0 if math.isnan(self.other_ms) else self.other_ms

    def share_at(self, interval: int) -> float:
        """NormWatch's work as a share of the training time when logging every ``interval`` steps."""
        return (self.logging_ms + (interval - 1) * self._other) / (interval * self.step_ms)

    @property
    def share(self) -> float:
        """The share at this run's interval."""
        return self.share_at(self.interval)

    def interval_for(self, share: float = TARGET_SHARE) -> int | None:
        """The shortest logging interval at which NormWatch's work stays under ``share`` of the training time;
        None when its work on the other steps alone is above it."""
        budget = share * self.step_ms - self._other
        if budget <= 0:
            return None
        return max(1, math.ceil((self.logging_ms - self._other) / budget))

    def line(self) -> str:
        """One line for the end-of-fit summary."""
        other = "" if math.isnan(self.other_ms) else f" and {self.other_ms:.2f} ms per other step"
        worker = f" ({self.worker_ms:.1f} of them on its worker thread)" if self.worker_ms else ""
        text = (
            f"cost: NormWatch's own work took {self.logging_ms:.1f} ms per logging step{worker}{other}, "
            f"against {self.step_ms:.1f} ms of training per step: about "
            f"{_percent(self.share)} of the training time, logging every {_steps(self.interval)}"
        )
        return text + self._advice()

    def _advice(self) -> str:
        """Above ``WARN_SHARE``: the interval that brings the share to ``TARGET_SHARE``, or, when the hooks on the
        other steps alone cost more than half of that, to twice what they cost (the least at any interval)."""
        if self.share <= WARN_SHARE:
            return ""
        least = self._other / self.step_ms
        better = self.interval_for(max(TARGET_SHARE, 2 * least)) or 1
        advice = f"; every_n_steps={better} would bring it to about {_percent(self.share_at(better))}"
        if 2 * least <= TARGET_SHARE:
            return advice
        return f"; its hooks on the other steps alone cost {_percent(least)}{advice}"


class CostMeter:
    """Times NormWatch's work in a run (see the module docstring). The training thread calls ``step``, ``enter``,
    ``leave`` and ``waited``; the worker thread calls ``worker``.

    Args:
        interval: the logging interval in steps.
        clock: seconds (``time.perf_counter``).
        warm_logging_steps: logging steps not counted at the start (the first builds its plans and caches).
    """

    def __init__(self, interval: int, clock: Callable[[], float] = time.perf_counter, warm_logging_steps: int = 1):
        self.interval = interval
        self.clock = clock
        self._warm = warm_logging_steps
        self._depth = 0
        self._since = 0.0
        self._own = 0.0  # training-thread seconds of the current step in NormWatch's sections
        self._wait = 0.0  # of which waiting for the worker
        self._device = 0.0  # of which waiting for the device to finish the step's queued work (training's)
        self._step: int | None = None
        self._logging = False
        self._started = 0.0
        self._counted = False  # the current step counts (after the warm-up logging steps)
        self._steps: deque[float] = deque(maxlen=_RECENT)  # the training's own seconds per step
        self._logging_own: deque[float] = deque(maxlen=_RECENT)
        self._other_own: deque[float] = deque(maxlen=_RECENT)
        self._jobs: deque[float] = deque(maxlen=_RECENT)
        self._noticed = False

    def step(self, step: int, logging: bool) -> None:
        """A batch of global step ``step`` starts (accumulated batches of one step count as one step)."""
        if step == self._step:
            return
        now = self.clock()
        if self._step is not None and self._counted:
            # the step's training time: its wall time minus the sections (waits for the worker included: they
            # delay training but are counted as the worker's job); NormWatch's own work: the sections minus waits
            self._steps.append(max(now - self._started - self._own + self._device, 0.0))
            own = self._own - self._wait - self._device
            (self._logging_own if self._logging else self._other_own).append(max(own, 0.0))
        if logging and self._warm > 0:
            self._warm -= 1  # a warm-up logging step: counting starts at the next one
        elif logging:
            self._counted = True
        self._step, self._logging, self._started = step, logging, now
        self._own = self._wait = self._device = 0.0

    def enter(self) -> None:
        """A section of NormWatch's work on the training thread starts."""
        if self._depth == 0:
            self._since = self.clock()
        self._depth += 1

    def leave(self) -> None:
        """The section ends."""
        self._depth -= 1
        if self._depth == 0:
            self._own += self.clock() - self._since

    def waited(self, seconds: float) -> None:
        """The training thread waited ``seconds`` for the worker inside a section: not NormWatch's work there (the
        job is counted on the worker), nor training (a wait outside any section, e.g. reading ``alerts``, is
        training's time to the meter)."""
        if self._depth:
            self._wait += seconds

    def device(self, seconds: float) -> None:
        """The training thread waited ``seconds`` inside a section for the device (a GPU) to finish the work queued
        before it, the training's forward and backward first: training's time, not NormWatch's (a logging step's
        host synchronisations: the loss flag and the one transfer)."""
        if self._depth:
            self._device += seconds

    def worker(self, seconds: float) -> None:
        """A logging step's job took ``seconds`` on the worker thread."""
        if self._counted:
            self._jobs.append(seconds)

    def cost(self) -> Cost | None:
        """The figures so far; None before a logging step and the step after it were measured."""
        if not self._logging_own or not self._steps:
            return None
        worker = statistics.median(self._jobs) if self._jobs else 0.0
        logging = statistics.median(self._logging_own) + worker
        other = statistics.median(self._other_own) if self._other_own else math.nan
        step = statistics.median(self._steps)
        if step <= 0:
            return None
        return Cost(logging * 1e3, worker * 1e3, other * 1e3, step * 1e3, self.interval, len(self._logging_own))

    def notice(self, after: int = 5) -> str | None:
        """Once, after ``after`` logging steps were measured: a line when NormWatch's work takes more than
        ``WARN_SHARE`` of the training time; else None."""
        if self._noticed or len(self._logging_own) < after:
            return None
        cost = self.cost()
        if cost is None:
            return None
        self._noticed = True
        if cost.share <= WARN_SHARE:
            return None
        return (
            f"NormWatch: its own work costs about {_percent(cost.share)} of the training time here "
            f"({cost.logging_ms:.1f} ms per logging step against {cost.step_ms:.1f} ms of training per step, "
            f"logging every {_steps(cost.interval)}; medians over {cost.logging_steps} logging steps){cost._advice()}. "
            "The end-of-fit summary gives the run's figure."
        )


def timed(meter: CostMeter | None, hook: F) -> F:
    """``hook`` counted as NormWatch's work on ``meter`` (``hook`` itself when there is no meter).

    Example:
        >>> meter = CostMeter(1, clock=iter([0.0, 1.0, 3.0]).__next__, warm_logging_steps=0)
        >>> meter.step(0, logging=True)
        >>> timed(meter, lambda x: x + 1)(1), meter._own
        (2, 2.0)
    """
    if meter is None:
        return hook

    @functools.wraps(hook)
    def counted(*args: Any, **kwargs: Any) -> Any:
        meter.enter()
        try:
            return hook(*args, **kwargs)
        finally:
            meter.leave()

    return counted  # type: ignore[return-value]


def timed_method(method: F) -> F:
    """A method of an object with a ``meter`` (``CostMeter``), counted as NormWatch's work on it."""

    @functools.wraps(method)
    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        meter = self.meter
        meter.enter()
        try:
            return method(self, *args, **kwargs)
        finally:
            meter.leave()

    return counted  # type: ignore[return-value]


def _percent(share: float) -> str:
    return f"{100 * share:.0f} %" if share >= 0.095 else f"{100 * share:.1f} %"


def _steps(interval: int) -> str:
    return "step" if interval == 1 else f"{interval} steps"
