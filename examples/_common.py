"""Helpers shared by the examples: quiet set-up, a trainer, a recorder of NormWatch's figures, JSON output.

Not part of the package: the examples import it from their own folder (``python examples/<name>.py``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from lightning_normwatch import NormWatch


def quiet(threads: int = 1) -> None:
    """One torch thread (tiny models run fastest so), Lightning's chatter off, NormWatch's log lines off."""
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_normwatch"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")


class Recorder(pl.Callback):
    """After NormWatch's logging step, keep a copy of its figures and log the example's own scalars.

    Must come *after* the ``NormWatch`` instance in ``callbacks`` (Lightning calls callbacks in order).
    ``extra(trainer, module, step)`` returns further scalars for NormWatch's logging step ``step`` (e.g. the
    loss on the whole training set); they are logged under ``example/<name>`` and kept in ``history``.
    """

    def __init__(
        self, watch: NormWatch, extra: Callable[[pl.Trainer, pl.LightningModule, int], dict[str, float]]
    ) -> None:
        self.watch = watch
        self.extra = extra
        self.history: list[dict[str, Any]] = []
        self._seen = -1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        result = self.watch.last_result
        if result is None or result.step == self._seen:
            return
        self._seen = result.step
        scalars = self.extra(trainer, pl_module, result.step)
        self.history.append(
            {"step": result.step, "figures": {k: dict(v) for k, v in result.figures.items()}, **scalars}
        )
        if trainer.logger is not None:
            trainer.logger.log_metrics({f"example/{k}": v for k, v in scalars.items()}, step=result.step)


def make_trainer(
    logdir: str, name: str, steps: int, callbacks: list[pl.Callback], version: str | None = None
) -> pl.Trainer:
    """A quiet CPU trainer that logs to TensorBoard under ``logdir/name/version``."""
    return pl.Trainer(
        max_steps=steps,
        max_epochs=-1,
        callbacks=callbacks,
        logger=TensorBoardLogger(logdir, name=name, version=version, default_hp_metric=False),
        log_every_n_steps=10,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
    )


def alert_rows(watch: NormWatch) -> list[dict[str, Any]]:
    """Every alert of a run as plain values (JSON-ready)."""
    return [
        {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in a.to_dict().items()}
        for a in watch.alerts
    ]


def figure_of(figures: dict[str, dict[str, float]], key: str, name: str) -> float:
    """A figure by tensor and name, NaN when absent (figures may be renamed or added by later versions)."""
    value = figures.get(key, {}).get(name)
    return float(value) if value is not None else math.nan


def write_json(path: str, data: Any) -> None:
    """JSON with NaN/inf written as null."""

    def clean(x: Any) -> Any:
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    with open(path, "w") as fh:
        json.dump(clean(data), fh, indent=1)


def print_conclusion(lines: list[str], pngs: list[str]) -> None:
    """The printed end of every example: its conclusion, drawn from the run's numbers, and its figures."""
    print("Conclusion:")
    for line in lines:
        print("  " + line)
    print("Figures: " + ", ".join(pngs))


def fmt(x: float, digits: int = 3) -> str:
    """A number as printed in the conclusions (and parsed back by the tests)."""
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"
