"""The warm-up and reference windows of drift, fitted to the run's length.

Drift compares each logging step with a reference accumulated over a window that opens after a
warm-up (activations move fast at initialisation, ``shared/STATISTICS.md`` §3). Fixed windows
(warm-up 100, reference 200 steps) never finish on a run of 300 steps or fewer, so drift would
silently never be judged. When the run's length is known (``trainer.max_steps``, or epochs times
batches), ``plan_windows`` fits the windows into it:

- warm-up ``WARMUP_SHARE`` (25 %) of the run, reference the next ``REFERENCE_SHARE`` (25 %): drift is
  judged on the second half of the run, never later than the fixed defaults (runs of 1,200 steps and
  more keep 100 + 200). Earlier references were measured to warn on healthy short runs, whose
  activations still move with learning (``docs/windows_and_collapse.md``: 10-30 % warned on 3 of 5
  drift-prone healthy runs of 200-300 steps, 20-40 % on 1, 25-50 % on none);
- the reference holds at least ``MIN_REFERENCE_LOGS`` logging steps, what the noise estimates need
  (measured in ``docs/windows_and_collapse.md``); the warm-up at least one logging interval, so the
  very first logging step (the untrained network) is never part of the reference;
- an argument the user passed explicitly wins over the fitted value.

A run of unknown length gets the defaults. When drift cannot be judged (the reference would end
after the run), ``Windows.judged`` is False and ``Windows.describe`` says from which step it would be.

Example:
    >>> w = plan_windows(total_steps=200, interval=10)
    >>> w.warmup, w.reference, w.judged_from, w.judged
    (50, 50, 100, True)
    >>> print(w.describe())
    drift judged from step 100 (reference window steps 50-100, fitted to a run of 200 steps)
    >>> plan_windows(total_steps=None, interval=10).judged_from
    300
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "Windows",
    "plan_windows",
    "rules_ran",
    "DEFAULT_WARMUP",
    "DEFAULT_REFERENCE",
    "MIN_REFERENCE_LOGS",
    "WARMUP_SHARE",
    "REFERENCE_SHARE",
]

#: windows of a run of unknown length (and the most a fitted window takes)
DEFAULT_WARMUP = 100
DEFAULT_REFERENCE = 200
#: share of the run spent in the warm-up, then in the reference window
WARMUP_SHARE = 0.25
REFERENCE_SHARE = 0.25
#: logging steps the reference must hold for the noise estimates (benchmarks/window_noise.py)
MIN_REFERENCE_LOGS = 4


@dataclass(frozen=True)
class Windows:
    """Where the warm-up and reference windows lie, in global steps.

    Attributes:
        warmup: global steps before the reference window opens.
        reference: length of the reference window in global steps.
        interval: logging interval in global steps.
        total_steps: the run's length in global steps, None when unknown.
        fitted: whether the windows were fitted to ``total_steps`` (else defaults or explicit).
    """

    warmup: int
    reference: int
    interval: int = 1
    total_steps: int | None = None
    fitted: bool = False

    @property
    def end(self) -> int:
        """First global step after the reference window."""
        return self.warmup + self.reference

    @property
    def reference_logs(self) -> int:
        """Logging steps (multiples of ``interval``) inside ``[warmup, end)``."""
        return max(0, _ceil_div(self.end, self.interval) - _ceil_div(self.warmup, self.interval))

    @property
    def judged_from(self) -> int:
        """First logging step at which drift is judged (the first logging step at or after ``end``)."""
        return _ceil_div(self.end, self.interval) * self.interval

    @property
    def judged(self) -> bool:
        """Whether drift is judged in this run (always True for a run of unknown length)."""
        return self.total_steps is None or self.judged_from < self.total_steps

    def describe(self) -> str:
        """One phrase for the start line and the summary: when drift is judged, or why not.

        Example:
            >>> print(plan_windows(total_steps=100, interval=50).describe())  # doctest: +NORMALIZE_WHITESPACE
            drift not judged: the run (100 steps) is shorter than the reference window needs (4 logging steps
            every 50 steps after a warm-up: drift would be judged from step 250); log more often or train longer
        """
        window = f"reference window steps {self.warmup}-{self.end}"
        if not self.judged:
            return (
                f"drift not judged: the run ({self.total_steps} steps) is shorter than the reference window needs "
                f"({max(self.reference_logs, 1)} logging steps every {self.interval} steps after a warm-up: drift "
                f"would be judged from step {self.judged_from}); log more often or train longer"
            )
        how = f", fitted to a run of {self.total_steps} steps" if self.fitted else ""
        return f"drift judged from step {self.judged_from} ({window}{how})"


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def plan_windows(
    total_steps: int | float | None,
    interval: int,
    warmup_steps: int | None = None,
    reference_steps: int | None = None,
    min_reference_logs: int = MIN_REFERENCE_LOGS,
) -> Windows:
    """Warm-up and reference windows for a run of ``total_steps`` global steps logged every ``interval``.

    ``warmup_steps``/``reference_steps`` are the user's explicit values (None: not given, fitted).
    ``total_steps`` None, infinite or not positive means unknown: the defaults apply.

    Examples:
        >>> [(w.warmup, w.reference, w.judged_from) for w in
        ...  (plan_windows(n, 10) for n in (200, 300, 1000, 100_000))]
        [(50, 50, 100), (75, 75, 150), (100, 200, 300), (100, 200, 300)]
        >>> w = plan_windows(200, 1)          # logging every step: 25 % and 25 % exactly
        >>> w.warmup, w.reference, w.reference_logs
        (50, 50, 50)
        >>> plan_windows(1000, 10, warmup_steps=500).warmup   # an explicit argument wins
        500
        >>> plan_windows(200, 50).judged      # logging steps 0, 50, 100, 150: too few for a reference
        False
        >>> plan_windows(None, 50, reference_steps=20).reference
        20
    """
    interval = max(1, int(interval))
    known = total_steps is not None and math.isfinite(total_steps) and total_steps > 0
    if not known:
        warmup = DEFAULT_WARMUP if warmup_steps is None else warmup_steps
        reference = DEFAULT_REFERENCE if reference_steps is None else reference_steps
        return Windows(warmup, reference, interval, None, fitted=False)
    total = int(total_steps)  # type: ignore[arg-type]
    warmup = warmup_steps
    if warmup is None:
        warmup = min(DEFAULT_WARMUP, max(interval, round(WARMUP_SHARE * total)))
    reference = reference_steps
    if reference is None:
        reference = min(DEFAULT_REFERENCE, round(REFERENCE_SHARE * total))
        # enough logging steps in [warmup, warmup + reference): extend to the min_reference_logs-th one
        first = _ceil_div(warmup, interval) * interval
        reference = max(reference, first + (min_reference_logs - 1) * interval + 1 - warmup)
    fitted = warmup_steps is None or reference_steps is None
    return Windows(int(warmup), int(reference), interval, total, fitted=fitted)


def rules_ran(windows: Windows, last_step: int) -> str:
    """The end-of-fit line saying which rules ran: the reference-free ones at every logging step, drift
    (activations and input features) from the end of the reference window, or why not.

    Examples:
        >>> w = plan_windows(200, 10)
        >>> print(rules_ran(w, 190))  # doctest: +NORMALIZE_WHITESPACE
        rules: drift judged from step 100 (reference window steps 50-100, fitted to a run of 200 steps); depth,
        collapse, dead units, saturation, outliers and shape at every logging step
        >>> print(rules_ran(w, 40).split(";")[0])   # stopped early (early stopping, an exception)
        rules: drift not judged: the run stopped at step 40, before the reference window ended at step 100
    """
    every = "depth, collapse, dead units, saturation, outliers and shape at every logging step"
    if windows.judged and last_step < windows.judged_from:
        drift = (
            f"drift not judged: the run stopped at step {last_step}, before the reference window ended at step "
            f"{windows.end}"
        )
    else:
        drift = windows.describe()
    return f"rules: {drift}; {every}"
