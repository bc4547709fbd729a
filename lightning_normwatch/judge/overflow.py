"""Naming the origin of a loss that overflowed while the forward pass stayed finite.

With a learning rate that jumps, activations can grow from 5 to 1e38 within a few steps, all
finite, until the loss (a square, a sum, an exp) overflows to inf. Replaying the forward then
finds no NaN/Inf in any layer. The origin is the first module, in execution order, whose scale
exploded: against its reference (or its figures at the last logging step), else against the
layers before it (``depth.py``).

Example:
    >>> order = [("fc1", 1.0e3), ("fc2", 1.0e12), ("fc3", 1.0e19)]
    >>> first_exploded(order, {"fc1": 1.0, "fc2": 2.0, "fc3": 3.0})
    ('fc1', 1000.0, 'its scale before')
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .alerts import SEVERITY, Alert

__all__ = ["first_exploded", "overflow_alert", "EXPLODED_FACTOR"]

#: RMS growth over a module's own baseline that counts as exploded
EXPLODED_FACTOR = 100.0


def first_exploded(order: Sequence[tuple[str, float]], baseline: dict[str, float]) -> tuple[str, float, str] | None:
    """(first tensor whose RMS grew ``EXPLODED_FACTOR``-fold over its baseline, the factor, the basis).

    Without a baseline for a tensor, it is compared with the smallest RMS before it in ``order``
    (its depth neighbours); without any exploded tensor, the largest RMS relative to what came
    before is returned when it reaches the factor, else None.
    """
    smallest_before = math.inf
    for name, rms in order:
        if not (math.isfinite(rms) and rms > 0):
            continue
        base = baseline.get(name, math.nan)
        if math.isfinite(base) and base > 0:
            if rms / base >= EXPLODED_FACTOR:
                return name, rms / base, "its scale before"
        elif math.isfinite(smallest_before) and rms / smallest_before >= EXPLODED_FACTOR:
            return name, rms / smallest_before, "the layers before it"
        smallest_before = min(smallest_before, rms)
    return None


def overflow_alert(step: int, origin: str, type_name: str, rms: float, factor: float, basis: str) -> Alert:
    """The ``nonfinite`` alert for a loss that overflowed after a finite forward pass."""
    return Alert(
        step,
        origin,
        "nonfinite",
        SEVERITY["nonfinite"],
        float(factor),
        EXPLODED_FACTOR,
        f"The loss overflowed to inf/NaN at step {step} while the replayed forward pass stayed finite: "
        f"`{origin}` ({type_name}) is the first module whose scale exploded (RMS {rms:.3g}, {factor:.3g}x "
        f"{basis}), and the values after it grew until the loss overflowed; usual causes: a learning rate "
        "too high (or a schedule jumping up), missing gradient clipping, or fp16 without loss scaling.",
    )
