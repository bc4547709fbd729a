"""Resuming from a checkpoint whose NormWatch state does not match the run (``judge/resume.py``).

One real run writes a checkpoint at step 4 (after the reference window ``[1, 3)``); each test resumes
from it with ``trainer.fit(..., ckpt_path=...)`` after changing one thing: the state written by an older
NormWatch (no ``format``), an activation swapped and the head replaced (fine-tuning), other windows,
other thresholds, a state that cannot be read. Each gives exactly one warning naming what changed and
what was kept, training completes, and the references of the tensors that still match are the
checkpoint's (per tensor), while the others are taken afresh.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from models import Regressor, loader, regression_data, trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

from lightning_normwatch.adapters.callback import NormWatch
from lightning_normwatch.judge.resume import FORMAT

pytestmark = pytest.mark.filterwarnings("ignore:.*the trainer has no logger", "ignore:.*dirpath has changed")

STEPS, AT = 8, 4


class Net(nn.Module):
    def __init__(self, act: type[nn.Module] = nn.ReLU, head: nn.Module | None = None) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), act(), nn.Linear(32, 32), nn.ReLU())
        self.head = head if head is not None else nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class FineTune(Regressor):
    """Loads the checkpoint's weights where the names match (the new head starts from its own init)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__(net)
        self.strict_loading = False


def _fit(root: Path, model: pl.LightningModule, ckpt: str | None = None, **nw_args: Any) -> tuple[NormWatch, list]:
    torch.manual_seed(0)
    args: dict[str, Any] = dict(every_n_steps=1, warmup_steps=1, reference_steps=2, sample_size=64, tensorboard=False)
    nw = NormWatch(**{**args, **nw_args})
    saver = ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=AT, save_top_k=-1)
    tr = trainer(root, [nw, saver], max_steps=STEPS, enable_checkpointing=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr.fit(model, loader(regression_data(n=256), batch_size=32), ckpt_path=ckpt)
    assert tr.global_step == STEPS  # training completed
    mine = [str(w.message) for w in caught if "checkpoint's NormWatch state" in str(w.message)]
    mine += [str(w.message) for w in caught if "older NormWatch" in str(w.message)]
    return nw, mine


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> tuple[NormWatch, Path]:
    root = tmp_path_factory.mktemp("original")
    nw, warned = _fit(root, Regressor(Net()))
    assert warned == []
    return nw, root / f"step={AT}.ckpt"


def _saved_references(path: Path, nw: NormWatch) -> dict[str, Any]:
    return torch.load(path, weights_only=True)["callbacks"][nw.state_key]["references"]


def _rewrite(path: Path, out: Path, nw: NormWatch, change: Any) -> Path:
    checkpoint = torch.load(path, weights_only=True)
    change(checkpoint["callbacks"][nw.state_key])
    torch.save(checkpoint, out)
    return out


def test_checkpoint_carries_format_and_what_it_was_made_for(original: tuple[NormWatch, Path]):
    nw, path = original
    state = torch.load(path, weights_only=True)["callbacks"][nw.state_key]
    assert state["format"] == FORMAT
    made = state["made_for"]
    assert made["modules"]["net.head"] == "Linear(weight 1x32, bias 1)"
    assert made["modules"]["net.body.1"] == "ReLU()"
    assert "input" in made["tensors"] and "net.body.0" in made["tensors"]
    assert made["settings"]["reference_steps"] == 2 and made["settings"]["interval"] == 1
    assert made["settings"]["sample_size"] == 64 and made["settings"]["thresholds"]["dead"] == nw.thresholds.dead


def test_matching_checkpoint_resumes_without_warning(original: tuple[NormWatch, Path], tmp_path: Path):
    nw, path = original
    _, warned = _fit(tmp_path, Regressor(Net()), str(path))
    assert warned == []


def test_older_checkpoint_without_format(original: tuple[NormWatch, Path], tmp_path: Path):
    nw, path = original

    def strip(state: dict) -> None:
        del state["format"], state["made_for"]

    old = _rewrite(path, tmp_path / "old.ckpt", nw, strip)
    resumed, warned = _fit(tmp_path, Regressor(Net()), str(old))
    assert len(warned) == 1 and "older NormWatch (no state format version)" in warned[0]
    assert "Kept: the references and alert state of 6 tensors" in warned[0]
    saved = _saved_references(path, nw)
    assert resumed.session.evaluator.references["net.body.0"].steps == saved["net.body.0"]["steps"] == 2


def test_swapped_activation_and_new_head_keep_the_rest(original: tuple[NormWatch, Path], tmp_path: Path):
    nw, path = original
    head = nn.Sequential(nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 1))
    model = FineTune(Net(act=nn.Tanh, head=head))
    checkpoint = torch.load(path, weights_only=True)  # fine-tuning: a fresh optimizer for the new parameters
    checkpoint["optimizer_states"] = [model.configure_optimizers().state_dict()]
    torch.save(checkpoint, tmp_path / "finetune.ckpt")
    resumed, warned = _fit(tmp_path, model, str(tmp_path / "finetune.ckpt"))
    assert len(warned) == 1
    message = warned[0]
    assert "`net.body.1` (module changed: ReLU() -> Tanh())" in message
    assert "`net.head.0` (newly watched)" in message and "`net.head` (no longer watched; dropped)" in message
    assert "Kept: the references and alert state of the inputs and of the 3 unchanged modules" in message
    refs = resumed.session.evaluator.references
    saved = _saved_references(path, nw)
    for key in ("input", "net.body.0", "net.body.2", "net.body.3"):  # unchanged: the checkpoint's reference
        assert refs[key].state() == saved[key], key
    for key in ("net.body.1", "net.head.0", "net.head.2"):  # taken afresh after the resume (one logging step)
        assert refs[key].steps == 1, key
        assert key not in saved or refs[key].state() != saved[key]
    assert "net.head" not in refs


def test_other_windows_reset_every_reference(original: tuple[NormWatch, Path], tmp_path: Path):
    _, path = original
    resumed, warned = _fit(tmp_path, Regressor(Net()), str(path), reference_steps=3)
    assert len(warned) == 1 and "every reference (reference_steps 2 -> 3" in warned[0]
    # the window [1, 4) is over at step 4: each reference is the first logging step after the resume
    assert {r.steps for r in resumed.session.evaluator.references.values()} == {1}


def test_other_thresholds_keep_references_and_judge_alerts_again(original: tuple[NormWatch, Path], tmp_path: Path):
    nw, path = original
    resumed, warned = _fit(tmp_path, Regressor(Net()), str(path), thresholds={"dead": 0.8})
    assert len(warned) == 1 and f"thresholds dead {nw.thresholds.dead:g}" in warned[0] and "-> 0.8" in warned[0]
    assert "the active alerts" in warned[0]
    saved = _saved_references(path, nw)
    assert resumed.session.evaluator.references["net.body.0"].state() == saved["net.body.0"]


def test_other_sample_size_keeps_references_and_says_so(original: tuple[NormWatch, Path], tmp_path: Path):
    nw, path = original
    resumed, warned = _fit(tmp_path, Regressor(Net()), str(path), sample_size=128)
    assert len(warned) == 1 and "the references despite sample_size 64 -> 128" in warned[0]
    assert resumed.session.evaluator.references["net.body.0"].steps == 2


def test_unreadable_state_is_reset_and_training_continues(original: tuple[NormWatch, Path], tmp_path: Path):
    nw, path = original

    def damage(state: dict) -> None:
        state["references"] = {"net.body.0": {"moments": "garbage"}}

    bad = _rewrite(path, tmp_path / "bad.ckpt", nw, damage)
    resumed, warned = _fit(tmp_path, Regressor(Net()), str(bad))
    assert len(warned) == 1 and "could not be read" in warned[0] and "all of it was reset" in warned[0]
    assert resumed.session.evaluator.references["net.body.0"].steps == 1
