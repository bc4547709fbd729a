"""lightning_normwatch: watch the scale, shape and drift of a network's inputs and activations.

Example:
    >>> from lightning_normwatch import NormWatch
    >>> callback = NormWatch()          # add to pl.Trainer(callbacks=[callback])
    >>> callback.config.every_n_steps is None   # None: the trainer's log_every_n_steps
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import SessionConfig, Thresholds
from .judge.alerts import KINDS, Alert, NormWatchAlertError

if TYPE_CHECKING:
    from .adapters.callback import NormWatch
    from .adapters.loop import LoopWatch
    from .judge.evaluator import StepResult
    from .session.session import Session

# torch and Lightning are imported on first use, so that `normwatch report` starts quickly.
_LAZY = {
    "NormWatch": ".adapters.callback",
    "LoopWatch": ".adapters.loop",
    "Session": ".session.session",
    "StepResult": ".judge.evaluator",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "NormWatch",
    "LoopWatch",
    "Session",
    "SessionConfig",
    "StepResult",
    "Alert",
    "NormWatchAlertError",
    "Thresholds",
    "KINDS",
]
__version__ = "0.2.0"
