"""Writes to sinks (loggers, TensorBoard panels) that never stop training when a sink fails.

A full disk, a log directory that became unwritable, a logger that raises: each failure becomes one
error line on the ``lightning_normwatch`` logger naming the sink and the error, then at most one line
per sink and kind of failure every ``every_s`` seconds (with the count of failures in between). The
alerts do not depend on sinks: they are kept (``callback.alerts``) and printed whatever the sinks do.

Example:
    >>> import logging
    >>> guard = Guard(every_s=600.0, clock=iter([0.0, 1.0, 700.0]).__next__)
    >>> def full(*_):
    ...     raise OSError(28, "No space left on device")
    >>> [guard.call("logger CSVLogger", full, {}, 0) for _ in range(3)]  # 3 failures: 2 lines
    [False, False, False]
    >>> guard.failures["logger CSVLogger"]
    3
    >>> guard.call("logger CSVLogger", lambda: None)
    True
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Guard"]

log = logging.getLogger("lightning_normwatch")

#: at most one error line per sink and kind of failure in this many seconds
EVERY_S = 600.0


def failure_kind(exc: BaseException) -> str:
    """The kind of a failure: the exception type, with the errno for an ``OSError`` (``OSError[28]``).

    Example:
        >>> failure_kind(OSError(28, "No space left")), failure_kind(ValueError("x"))
        ('OSError[28]', 'ValueError')
    """
    errno = getattr(exc, "errno", None)
    return f"{type(exc).__name__}[{errno}]" if isinstance(exc, OSError) and errno is not None else type(exc).__name__


class Guard:
    """Calls sink writes; a failure is logged (rate-limited) and swallowed (see the module docstring).

    Args:
        every_s: at most one line per sink and failure kind in this many seconds.
        clock: seconds (monotonic), for tests.

    Attributes:
        failures: failures so far by sink.
    """

    def __init__(self, every_s: float = EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self.failures: dict[str, int] = {}
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # (sink, kind) -> (time of the line, failures then)

    def call(self, sink: str, write: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """``write(*args, **kwargs)``; False (and the failure logged) when it raised an ``Exception``."""
        try:
            write(*args, **kwargs)
        except Exception as exc:  # a sink never stops training
            self._report(sink, exc)
            return False
        return True

    def _report(self, sink: str, exc: Exception) -> None:
        count = self.failures[sink] = self.failures.get(sink, 0) + 1
        kind = failure_kind(exc)
        now = self.clock()
        last = self._last.get((sink, kind))
        if last is None:
            log.error(
                "NormWatch: writing to %s failed (%s: %s); training continues, alerts are still kept and "
                "printed. Further failures of this kind are reported at most every %.0f s.",
                sink, kind, exc, self.every_s,
            )  # fmt: skip
        elif now - last[0] >= self.every_s:
            log.error("NormWatch: writing to %s still fails (%s: %s; %d failures since the last line).",
                      sink, kind, exc, count - last[1])  # fmt: skip
        else:
            return
        self._last[(sink, kind)] = (now, count)
