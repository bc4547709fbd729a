"""lightning_normwatch: watch the scale, shape and drift of a network's inputs and activations.

Example:
    >>> from lightning_normwatch import NormWatch
    >>> callback = NormWatch()          # add to pl.Trainer(callbacks=[callback])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .judge.alerts import KINDS, Alert, NormWatchAlertError
from .config import Thresholds

if TYPE_CHECKING:
    from .adapters.loop import LoopWatch
    from .adapters.callback import NormWatch
    from .session.monitor import Monitor, MonitorConfig, StepResult

# torch and Lightning are imported on first use, so that `normwatch report` starts quickly.
_LAZY = {
    "NormWatch": ".adapters.callback",
    "Monitor": ".session.monitor",
    "MonitorConfig": ".session.monitor",
    "StepResult": ".session.monitor",
    "LoopWatch": ".adapters.loop",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "NormWatch",
    "Alert",
    "NormWatchAlertError",
    "Thresholds",
    "KINDS",
    "Monitor",
    "MonitorConfig",
    "StepResult",
    "LoopWatch",
]
__version__ = "0.1.0"
