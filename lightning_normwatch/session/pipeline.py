"""``Pipeline``: a session's logging-step judging and writing, off the training thread, in step order.

The training thread keeps what must happen there (the hooks' device-side sampling, the one transfer or
DDP collective per logging step, and copies of the live state the judging reads); everything else of a
logging step (figures, references, rules, panels, logger writes, console lines) is one *job*, run by a
daemon worker thread, in step order. One job at a time: a job is handed over once the one before it has
finished (the training thread waits for it if need be), so what a logging step finds is out by the end of
the next logging step at the latest.

``mode="sync"`` runs each job inline on the training thread, exactly as before the pipeline (for
debugging). A job's exception other than ``NormWatchAlertError`` becomes one error line and the
synchronous path takes over for the rest of the run; a ``NormWatchAlertError`` (``on_alert="raise"``)
is kept and raised on the training thread by ``raise_pending`` (the session calls it at every step
boundary and when draining). ``drain`` (and ``close``) wait for the job in flight.

Example:
    >>> done = []
    >>> pipe = Pipeline("thread")
    >>> for step in range(3):
    ...     pipe.submit(lambda step=step: done.append(step))
    >>> pipe.drain(); done
    [0, 1, 2]
    >>> pipe.close(); pipe.alive
    False
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..judge.alerts import NormWatchAlertError
from ..output import console
from .cost import CostMeter

__all__ = ["Pipeline", "THREAD_NAME"]

#: the worker's thread name (tests look for it in ``threading.enumerate()``)
THREAD_NAME = "NormWatch-pipeline"


class Pipeline:
    """Jobs of logging steps, run in order by a worker thread (``"thread"``) or inline (``"sync"``).

    One job at a time, each on a thread of its own that ends with the job (about 0.1 ms to start, once
    per logging step): no thread waits idle between logging steps or outlives a run, whether or not the
    run is closed.

    Args:
        mode: ``"thread"``, ``"sync"``, or ``"auto"``: the thread when ``interval`` (the logging interval) is
            longer than one step, else sync (measured in ``docs/pipeline.md``: with every step logged there are
            no steps in between to overlap, and the worker only competes with training for the GIL).
        interval: the logging interval in steps.
        meter: told the worker's job time and the training thread's waits for it (``cost.py``), if given.
    """

    def __init__(self, mode: str = "thread", interval: int = 2, meter: CostMeter | None = None) -> None:
        self.mode = mode if mode != "auto" else "thread" if interval > 1 else "sync"
        self.failed = False  # a job failed on the worker: the synchronous path runs the rest of the run
        self.error: NormWatchAlertError | None = None  # raised by the next raise_pending (training thread)
        self._thread: threading.Thread | None = None
        self.meter = meter

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def on_worker(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` once the job before it has finished: on a worker thread, or inline (sync mode, or after
        a worker failure)."""
        self.drain()
        if self.mode == "sync" or self.failed:
            job()
            return
        self._thread = threading.Thread(target=self._run, args=(job,), name=THREAD_NAME, daemon=True)
        self._thread.start()

    def drain(self) -> None:
        """Wait until the job submitted has run (no-op on the worker itself or with no job)."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            started = time.perf_counter()
            thread.join()
            if self.meter is not None:
                self.meter.waited(time.perf_counter() - started)

    def boundary(self, wait: bool) -> None:
        """At a step boundary: raise what a job recorded; ``wait`` (``on_alert="raise"``): wait for the judging
        first, so that an alert stops training at the next step at the latest, the same step on every rank."""
        if wait:
            self.drain()
        self.raise_pending()

    def raise_pending(self) -> None:
        """Raise the ``NormWatchAlertError`` a job recorded (``on_alert="raise"``), once."""
        error, self.error = self.error, None
        if error is not None:
            raise error

    def close(self) -> None:
        """Wait for the job in flight (idempotent; a later ``submit`` starts a new thread)."""
        self.drain()

    def _run(self, job: Callable[[], None]) -> None:
        started = time.thread_time()  # CPU time: the job's waits for the GIL while training runs are not its cost
        try:
            job()
            if self.meter is not None:
                self.meter.worker(time.thread_time() - started)
        except NormWatchAlertError as error:  # on_alert="raise": the training thread raises it
            if self.error is None:
                self.error = error
        except BaseException as exc:  # noqa: BLE001 - never into training: one line, then the synchronous path
            if not self.failed:
                self.failed = True
                console.log.error(
                    "NormWatch: judging a logging step on the worker thread failed (%r); that step's figures "
                    "are lost and the rest of the run is judged on the training thread (pipeline='sync').",
                    exc,
                )
