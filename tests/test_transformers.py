"""Healthy ``transformers`` models built from small configs (random init, no download) stay quiet,
and the tensors watched are the ones a user expects."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from models import trainer
from torch.utils.data import DataLoader, Dataset

from lightning_normwatch import NormWatch

transformers = pytest.importorskip("transformers")

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*the trainer has no logger.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
]

VOCAB, LENGTH = 64, 12


class Tokens(Dataset):
    """Token sequences: a random start and step, counting modulo the vocabulary (learnable);
    the label says whether the step is even."""

    def __init__(self, n: int = 512, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        step = torch.randint(1, 8, (n, 1), generator=g)
        self.ids = (start + step * torch.arange(LENGTH)) % VOCAB
        self.labels = (step[:, 0] % 2 == 0).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(LENGTH, dtype=torch.long),
            "labels": self.labels[i],
        }


class HF(pl.LightningModule):
    def __init__(self, model: torch.nn.Module, lm: bool = False) -> None:
        super().__init__()
        self.model, self.lm = model, lm
        self.losses: list[float] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.lm:
            batch = {"input_ids": batch["input_ids"], "labels": batch["input_ids"]}
        loss = self.model(**batch).loss
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def bert() -> HF:
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=LENGTH,
        num_labels=2,
    )
    return HF(transformers.BertForSequenceClassification(config))


def gpt2() -> HF:
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=LENGTH)
    return HF(transformers.GPT2LMHeadModel(config), lm=True)


def run(tmp_path: Any, model: HF, steps: int) -> NormWatch:
    torch.manual_seed(0)
    # reference after the fast first 100 steps (the default warm-up), drift judged on steps 200-300
    cb = NormWatch(every_n_steps=10, warmup_steps=100, reference_steps=100, on_alert="ignore", tensorboard=False)
    data = DataLoader(Tokens(), batch_size=8, shuffle=True)
    trainer(tmp_path, [cb], max_steps=steps, log_every_n_steps=10).fit(model, data)
    return cb


def test_bert_classifier_trains_300_steps_without_warning(tmp_path) -> None:
    torch.manual_seed(0)
    model = bert()
    cb = run(tmp_path, model, steps=300)
    assert [(a.module, a.kind) for a in cb.alerts if a.severity != "info"] == []
    mon = cb.session.collector
    prefix = "model.bert.encoder.layer.0."
    # the attention's output projection (its input is the attention output), the MLP and the norms are watched
    for name, role, channels in [
        (prefix + "attention.self.query", "preact", 32),
        (prefix + "attention.output.dense", "preact", 32),
        (prefix + "attention.output.LayerNorm", "preact", 32),
        (prefix + "intermediate.intermediate_act_fn", "activation", 64),
        ("model.bert.pooler.activation", "bounded", 32),
        ("model.classifier", "preact", 2),
    ]:
        assert (mon.info(name).role, mon.info(name).channels) == (role, channels), name
    assert not [a for a in cb.alerts if a.kind == "not_run"]  # every watched module ran
    # the reference window closed at step 200: drift was judged on the last 100 steps
    assert "shape_psi" in cb.last_result.figures["model.bert.pooler.activation"]  # type: ignore[union-attr]


def test_gpt2_lm_trains_300_steps_without_warning(tmp_path) -> None:
    torch.manual_seed(0)
    model = gpt2()
    cb = run(tmp_path, model, steps=300)
    assert model.losses[-1] < 0.7 * model.losses[0]  # it learns
    assert [(a.module, a.kind) for a in cb.alerts if a.severity != "info"] == []
    mon = cb.session.collector
    prefix = "model.transformer.h.0."
    # transformers' Conv1D keeps its output features last and is a pre-activation; NewGELUActivation an activation
    for name, role, channels in [
        (prefix + "attn.c_attn", "preact", 96),
        (prefix + "attn.c_proj", "preact", 32),
        (prefix + "mlp.c_fc", "preact", 128),
        (prefix + "mlp.act", "activation", 128),
        (prefix + "ln_1", "preact", 32),
        ("model.lm_head", "preact", VOCAB),
    ]:
        assert (mon.info(name).role, mon.info(name).channels) == (role, channels), name
    (placement,) = [a for a in cb.alerts if a.kind == "norm_placement"]  # one summary for the model
    assert placement.module == prefix + "ln_1"
    assert "4 pre-norm" in placement.message and "1 final" in placement.message, placement.message
