"""lightning_normwatch: watch the scale, shape and drift of a network's inputs and activations.

Example:
    >>> from lightning_normwatch import NormWatch
    >>> callback = NormWatch()          # add to pl.Trainer(callbacks=[callback])
"""

from .alerts import KINDS, Alert, NormWatchAlertError
from .callback import NormWatch
from .config import Thresholds
from .monitor import Monitor, MonitorConfig, StepResult

__all__ = [
    "NormWatch",
    "Alert",
    "NormWatchAlertError",
    "Thresholds",
    "KINDS",
    "Monitor",
    "MonitorConfig",
    "StepResult",
]
__version__ = "0.1.0"
