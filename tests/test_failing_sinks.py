"""Sinks that fail never stop training (``output/guarded.py``).

Three failures, each on a real ``Trainer`` with a model that raises a ``dead`` alert at step 0 and keeps
it active: a logger whose ``log_metrics`` raises; a TensorBoard writer on a full disk (its file writer's
``add_summary`` raises ``OSError(ENOSPC)`` from step 3 on); a ``CSVLogger`` whose log directory is
replaced by a file mid-run (unwritable even for root), restored before Lightning's own final save.
Each time training completes, the failure is one error line on the ``lightning_normwatch`` logger per
sink (later failures of the same kind within the rate limit are silent), and the alerts still reach
``callback.alerts`` and the console.
"""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from models import Regressor, loader, regression_data, trainer
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from torch import nn

from lightning_normwatch.adapters.callback import NormWatch
from lightning_normwatch.output.guarded import Guard

pytestmark = pytest.mark.filterwarnings("ignore:.*no TensorBoardLogger")

STEPS = 10


class Quiet(Regressor):
    """No ``self.log``: the only writes to the loggers are NormWatch's (Lightning's own would fail too)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)


def _model() -> Quiet:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():
        net[2].bias.fill_(-10.0)  # net.3 dead from the start
    return Quiet(net)


class Raising(Logger):
    """A logger whose ``log_metrics`` always raises (a remote tracking server that went away)."""

    name, version = "raising", "0"
    calls = 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls += 1
        raise ConnectionError("tracking server unreachable")

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lightning_normwatch" and r.levelno >= logging.ERROR]


def _dead_alerted(nw: NormWatch, caplog: pytest.LogCaptureFixture) -> None:
    assert [(a.module, a.kind) for a in nw.alerts] == [("net.3", "dead")]
    lines = [r.getMessage() for r in caplog.records if r.name == "lightning_normwatch" and "[dead]" in r.getMessage()]
    assert len(lines) == 1 and "net.3" in lines[0]


def test_logger_that_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="lightning_normwatch")
    raising = Raising()
    nw = NormWatch(every_n_steps=1, tensorboard=False)
    tr = trainer(tmp_path, [nw], max_steps=STEPS, logger=raising)
    tr.fit(_model(), loader(regression_data(n=320)))
    assert tr.global_step == STEPS and raising.calls == STEPS  # tried at every logging step
    errors = _errors(caplog)
    assert len(errors) == 1
    assert "writing to logger Raising failed (ConnectionError: tracking server unreachable)" in errors[0]
    assert nw.session.guard.failures == {"logger Raising": STEPS}
    _dead_alerted(nw, caplog)


class FullDisk(pl.Callback):
    """From ``at`` on, every summary the TensorBoard file writer adds fails with ENOSPC."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at:
            file_writer = trainer.logger.experiment._get_file_writer()  # type: ignore[union-attr]

            def add_summary(*_: Any, **__: Any) -> None:
                raise OSError(errno.ENOSPC, "No space left on device")

            file_writer.add_summary = add_summary


def test_tensorboard_on_a_full_disk(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="lightning_normwatch")
    nw = NormWatch(every_n_steps=1)
    tb = TensorBoardLogger(str(tmp_path), name="tb")
    tr = trainer(tmp_path, [FullDisk(at=3), nw], max_steps=STEPS, logger=tb)
    tr.fit(_model(), loader(regression_data(n=320)))
    assert tr.global_step == STEPS
    errors = _errors(caplog)
    # one line per sink: the scalars (through the logger) and the panels (through its writer)
    assert len(errors) == 2, errors
    assert all("OSError[28]" in e and "No space left on device" in e for e in errors)
    assert {e.split(" failed")[0] for e in errors} == {
        "NormWatch: writing to logger TensorBoardLogger",
        "NormWatch: writing to the TensorBoard panels",
    }
    # steps 3.. fail; the pipeline's worker may write steps 0-2 after the disk filled (in sync mode: STEPS - 3)
    assert STEPS - 3 <= nw.session.guard.failures["logger TensorBoardLogger"] <= STEPS
    _dead_alerted(nw, caplog)


class LostDirectory(pl.Callback):
    """Replaces the CSV logger's directory by a plain file from step ``at`` (no write can succeed there,
    not even as root), and restores it when training ends (before Lightning's own final save)."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.saved: Path | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at:
            directory = Path(trainer.logger.log_dir)  # type: ignore[union-attr]
            self.saved = directory.with_name("saved")
            shutil.move(directory, self.saved)
            directory.write_text("not a directory")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        directory = Path(trainer.logger.log_dir)  # type: ignore[union-attr]
        directory.unlink()
        shutil.move(self.saved, directory)  # type: ignore[arg-type]


def test_log_directory_that_became_unwritable(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="lightning_normwatch")
    nw = NormWatch(every_n_steps=1)
    csv = CSVLogger(str(tmp_path), name="csv", flush_logs_every_n_steps=1)
    tr = trainer(tmp_path, [LostDirectory(at=4), nw], max_steps=STEPS, logger=csv)
    tr.fit(_model(), loader(regression_data(n=320)))
    assert tr.global_step == STEPS
    errors = _errors(caplog)
    assert len(errors) == 1 and "writing to logger CSVLogger failed (" in errors[0]
    assert "OSError" in errors[0] or "NotADirectoryError" in errors[0] or "FileExistsError" in errors[0]
    _dead_alerted(nw, caplog)
    # what was written before the directory was lost is still there
    rows = (Path(csv.log_dir) / "metrics.csv").read_text().splitlines()
    assert len(rows) >= 1 + 4 and "normwatch/net.3/dead" in rows[0]


def test_rate_limit_one_line_per_sink_and_kind(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="lightning_normwatch")
    now = [0.0]
    guard = Guard(every_s=60.0, clock=lambda: now[0])

    def fail(exc: Exception) -> None:
        raise exc

    for t in (0.0, 1.0, 59.0, 61.0, 62.0):
        now[0] = t
        guard.call("sink a", fail, OSError(errno.ENOSPC, "full"))
    guard.call("sink a", fail, OSError(errno.EACCES, "denied"))  # another kind: its own line
    guard.call("sink b", fail, OSError(errno.ENOSPC, "full"))  # another sink: its own line
    assert guard.call("sink a", lambda: None)
    lines = _errors(caplog)
    assert len(lines) == 4
    assert "still fails (OSError[28]: [Errno 28] full; 3 failures since the last line)" in lines[1]
    assert guard.failures == {"sink a": 6, "sink b": 1}
