"""What the Lightning callback reads of a ``Trainer``: where its panels go, and how long the run is.

Example:
    >>> import pytorch_lightning as pl
    >>> trainer = pl.Trainer(max_steps=30, logger=False, enable_progress_bar=False, enable_model_summary=False)
    >>> panels_for(trainer, SessionConfig()) is None  # no logger: no panels
    True
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn

from ..config import SessionConfig
from ..output.loggers import is_tensorboard_logger, tensorboard_writer
from ..output.panels import Panels

__all__ = ["panels_for", "run_length"]


def panels_for(trainer: pl.Trainer, config: SessionConfig) -> Panels | None:
    """Panels on every ``TensorBoardLogger`` of the trainer (rank zero); one warning with other loggers only."""
    if not config.tensorboard:
        return None
    if any(is_tensorboard_logger(logger) for logger in trainer.loggers):
        if not trainer.is_global_zero:
            return None
        return Panels(tensorboard_writer(trainer.loggers), config.plot_every_n_steps, config.thresholds)
    if trainer.loggers:
        names = ", ".join(type(lg).__name__ for lg in trainer.loggers)
        rank_zero_warn(
            f"NormWatch: no TensorBoardLogger among the trainer's loggers ({names}); the scalars "
            "normwatch/<tensor>/<figure> go to these loggers, but the TensorBoard-only panels (histograms, "
            "custom-scalars layout, alert table" + (", figures" if config.plot_every_n_steps else "") + ") are skipped."
        )
    return None


def run_length(trainer: pl.Trainer) -> float | None:
    """Optimizer steps of the run (``max_steps``, or epochs x batches / accumulation; inf: unknown). Lightning
    loads the training dataloader to count its batches, as it does for ``configure_optimizers``."""
    try:
        return trainer.estimated_stepping_batches
    except Exception:  # noqa: BLE001 - no length is not an error: the default windows apply
        return None
