"""Resuming NormWatch from a checkpoint with ``trainer.fit(..., ckpt_path=...)``.

An uninterrupted run and a run resumed from its mid-training checkpoint (global step 4, inside the
reference window ``[2, 6)``) must produce the same figures at every step after the resume, drift
included, from the same reference; no new warm-up; no alert raised again. The sample is smaller
than the tensors (``sample_size=64``), so equal figures also need the sampling generator's state
to be restored.

The checkpoint is taken at an epoch boundary: a plain ``DataLoader`` is not resumable mid-epoch
(Lightning then replays the epoch from its start and warns), which would change the data, not
NormWatch's behaviour.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from models import Regressor, loader, mlp, regression_data, trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

from lightning_normwatch.adapters.callback import NormWatch

STEPS = 12
BATCH = 32  # > min_rows (16): each hidden tensor is sampled, not measured whole
STEPS_PER_EPOCH = 4
RESUME_AT = 4  # global step of the checkpoint: end of the first epoch, inside the reference window
WARMUP, REFERENCE = 2, 4

pytestmark = pytest.mark.filterwarnings("ignore:.*the trainer has no logger", "ignore:.*dirpath has changed")


class Net(nn.Module):
    """An MLP plus a dead side branch (``side.1``: one ``dead`` alert at step 0 that never clears)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = mlp(16, 32, 1)
        self.side = nn.Sequential(nn.Linear(16, 8), nn.ReLU())
        with torch.no_grad():
            self.side[0].bias.fill_(-5.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.side(x).sum(dim=1, keepdim=True)


class OrderedNormWatch(NormWatch):
    """Records the order in which Lightning calls ``setup`` and ``load_state_dict``.

    With ``forget_generator``, drops the sampling generator's state on load (negative control).
    """

    def __init__(self, *args: Any, forget_generator: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []
        self.forget_generator = forget_generator

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.calls.append("setup")
        super().setup(trainer, pl_module, stage)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.calls.append("load_state_dict")
        if self.forget_generator:
            state_dict = {k: v for k, v in state_dict.items() if k != "generators"}
        super().load_state_dict(state_dict)


class Recorder(pl.Callback):
    """Keeps each logging step's figures and the reference window's progress (runs after NormWatch)."""

    def __init__(self, nw: NormWatch) -> None:
        self.nw = nw
        self.figures: dict[int, dict[str, dict[str, float]]] = {}
        self.reference_steps: dict[int, int] = {}

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        result = self.nw.last_result
        assert result is not None
        self.figures[result.step] = result.figures
        self.reference_steps[result.step] = self.nw.session.evaluator.references["net.body.0"].steps


def _fit(root: Path, ckpt_path: str | None = None, forget_generator: bool = False) -> tuple[OrderedNormWatch, Recorder]:
    torch.manual_seed(0)
    model = Regressor(Net())
    nw = OrderedNormWatch(
        every_n_steps=1,
        warmup_steps=WARMUP,
        reference_steps=REFERENCE,
        sample_size=64,
        tensorboard=False,
        on_alert="warn",
        forget_generator=forget_generator,
    )
    rec = Recorder(nw)
    ckpt = ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=STEPS_PER_EPOCH, save_top_k=-1)
    tr = trainer(root, [nw, rec, ckpt], max_steps=STEPS, enable_checkpointing=True)
    data = regression_data(n=BATCH * STEPS_PER_EPOCH)
    tr.fit(model, loader(data, batch_size=BATCH, shuffle=False), ckpt_path=ckpt_path)
    return nw, rec


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[OrderedNormWatch, Recorder, Path]:
    root = tmp_path_factory.mktemp("full")
    nw, rec = _fit(root)
    return nw, rec, root / f"step={RESUME_AT}.ckpt"


def test_callback_state_loads_with_weights_only(full: tuple[OrderedNormWatch, Recorder, Path]):
    nw, _, path = full
    checkpoint = torch.load(path, weights_only=True)
    state = checkpoint["callbacks"][nw.state_key]
    assert checkpoint["global_step"] == RESUME_AT
    assert {k: v["steps"] for k, v in state["references"].items()} == dict.fromkeys(state["references"], 2)
    assert ["net.side.1", "dead"] in state["active"]
    assert [(a["module"], a["kind"]) for a in state["alerts"]] == [("net.side.1", "dead")]
    assert isinstance(state["generators"]["cpu"], torch.Tensor)
    restored = NormWatch()
    restored.load_state_dict(state)
    again = restored.state_dict()
    assert again.keys() == state.keys()
    assert again["references"] == state["references"] and again["alerts"] == state["alerts"]
    assert torch.equal(again["generators"]["cpu"], state["generators"]["cpu"])


def test_resume_continues_reference_drift_and_alerts(
    full: tuple[OrderedNormWatch, Recorder, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    nw_full, rec_full, path = full
    caplog.set_level(logging.INFO, logger="lightning_normwatch")
    nw, rec = _fit(tmp_path, ckpt_path=str(path))

    # Lightning 2.x restores callbacks after setup, into the monitor the exchange uses
    assert nw.calls == ["setup", "load_state_dict"]
    assert nw.exchange is not None and nw.exchange.collector is nw.session.collector

    # the resumed run picks up at the checkpoint's step with the reference half full: no new warm-up
    assert sorted(rec.figures) == list(range(RESUME_AT, STEPS))
    assert rec.reference_steps[RESUME_AT] == 3  # 2 steps from the checkpoint + step 4
    assert rec.reference_steps[STEPS - 1] == REFERENCE

    # the sample is a strict subset of each hidden tensor: equal figures need the generator state
    assert rec.figures[RESUME_AT]["net.body.0"]["sampled"] < rec.figures[RESUME_AT]["net.body.0"]["numel"]

    # every figure (drift ones included, from step WARMUP + REFERENCE on) continues exactly
    for step in range(RESUME_AT, STEPS):
        np.testing.assert_equal(rec.figures[step], rec_full.figures[step], err_msg=f"step {step}")
    for step in range(WARMUP + REFERENCE, STEPS):
        assert np.isfinite(rec.figures[step]["net.body.0"]["psi"])
        assert np.isfinite(rec.figures[step]["net.body.0"]["std_log_ratio"])
    assert "psi" not in rec.figures[WARMUP + REFERENCE - 1]["net.body.0"]

    # the reference itself (moments, histogram, steps) is the uninterrupted run's
    assert nw.session.evaluator.references.keys() == nw_full.session.evaluator.references.keys()
    for key, ref in nw.session.evaluator.references.items():
        assert ref.state() == nw_full.session.evaluator.references[key].state(), key

    # the dead branch was alerted once, before the checkpoint, and is not alerted again
    assert [a.to_dict() for a in nw.alerts] == [a.to_dict() for a in nw_full.alerts]
    assert [(a.module, a.kind, a.step) for a in nw.alerts if a.kind == "dead"] == [("net.side.1", "dead", 0)]
    assert not [r for r in caplog.records if r.name == "lightning_normwatch" and "[dead]" in r.getMessage()]


def test_resume_without_generator_state_samples_differently(
    full: tuple[OrderedNormWatch, Recorder, Path], tmp_path: Path
):
    """Negative control: the exact continuation above depends on restoring the generator state."""
    _, rec_full, path = full
    _, rec = _fit(tmp_path, ckpt_path=str(path), forget_generator=True)
    assert rec.figures[RESUME_AT]["input"]["max"] == rec_full.figures[RESUME_AT]["input"]["max"]  # same batch
    assert rec.figures[RESUME_AT]["net.body.0"]["mean"] != rec_full.figures[RESUME_AT]["net.body.0"]["mean"]
