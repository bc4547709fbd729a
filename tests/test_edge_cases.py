"""Edge cases found in review: validation inside a logging step, reused callbacks, 1-d conv layouts,
few rows, reused modules' p-values, long logging intervals, and the prediction's drift."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lightning_normwatch import NormWatch
from lightning_normwatch.collect.collector import Collector
from lightning_normwatch.config import SessionConfig
from tests.models import Regressor, loader, mlp, regression_data, trainer


class StepFigures(pl.Callback):
    """Keeps NormWatch's figures of every logging step (placed after NormWatch)."""

    def __init__(self, watch: NormWatch) -> None:
        self.watch, self.by_step = watch, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: D102
        res = self.watch.last_result
        if res is not None:
            self.by_step[res.step] = res.figures


class WithValidation(Regressor):
    def validation_step(self, batch, batch_idx):  # noqa: D102
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))


def test_validation_inside_a_logging_step_is_not_measured(tmp_path):
    watch = NormWatch(warmup_steps=0, reference_steps=2)
    rec = StepFigures(watch)
    tr = trainer(tmp_path, [watch, rec], max_steps=4, accumulate_grad_batches=2, val_check_interval=3)
    val = loader(regression_data(n=14, seed=3), batch_size=7)
    tr.fit(WithValidation(mlp()), loader(regression_data(n=256)), val)
    # step 1 = training batches 2 and 3; validation ran between them (after batch index 2)
    assert rec.by_step[1]["net.0"]["numel"] == 2 * 32 * 32


def test_a_second_fit_starts_fresh(tmp_path):
    watch = NormWatch(warmup_steps=0, reference_steps=2)
    for width in (16, 32):
        net = mlp(width=width)
        nn.init.constant_(net[0].bias, -100.0)
        trainer(tmp_path, [watch], max_steps=3).fit(Regressor(net), loader(regression_data()))
        assert [a.module for a in watch.alerts if a.kind == "dead"][:1] == ["net.1"]
        assert not [k for k in watch.last_result.figures if "@" in k]
        assert watch.session.evaluator.references["input"].steps == 2


def test_dead_channels_after_a_conv1d_are_found(tmp_path):
    conv = nn.Conv1d(4, 16, 3, padding=1)
    with torch.no_grad():
        conv.bias[:12] = -100.0
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(16 * 20, 1))
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(128, 4, 20, generator=g), torch.zeros(128, 1))
    watch = NormWatch(warmup_steps=0, reference_steps=2)
    trainer(tmp_path, [watch], max_steps=2).fit(Regressor(net, lr=1e-6), loader(data))
    assert watch.session.collector.info("net.1").channels == 16  # the ReLU keeps the conv's [B, C, L] layout
    assert watch.last_result.figures["net.1"]["dead"] == 12 / 16
    dead = [a.module for a in watch.alerts if a.kind == "dead"]
    assert dead[0] == "net.1" and "net.0" not in dead  # the Flatten after it may repeat it


def test_no_dead_alert_for_zero_init_projections_or_single_rows(tmp_path):
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    nn.init.zeros_(net[2].weight)
    nn.init.zeros_(net[2].bias)
    watch = NormWatch(warmup_steps=0, reference_steps=2)
    trainer(tmp_path, [watch], max_steps=3).fit(Regressor(net, lr=1e-6), loader(regression_data()))
    assert not [a for a in watch.alerts if a.kind == "dead"]
    watch = NormWatch(warmup_steps=0, reference_steps=2)
    trainer(tmp_path, [watch], max_steps=6).fit(Regressor(mlp()), loader(regression_data(), batch_size=1))
    assert not [a for a in watch.alerts if a.kind == "dead"]


def test_pvalues_rest_on_one_fixed_size_sample_however_often_a_module_runs():
    mon = Collector(SessionConfig(pvalue_size=500))
    g = torch.Generator().manual_seed(0)
    mon.arm()
    for _ in range(4):  # a module called 4 times (or 4 accumulated batches) in one logging step
        mon.observe("layer", torch.randn(64, 32, generator=g))
    stats = mon.collect()
    mon.disarm()
    assert stats["layer"].pvalue.n == 500
    assert stats["layer"].sampled == 4 * 64 * 32


def test_reference_taken_when_no_logging_step_falls_in_the_window(tmp_path):
    x, y = regression_data(n=1024).tensors
    x = x.clone()
    x[10 * 32 :] *= 10
    watch = NormWatch(every_n_steps=7, warmup_steps=3, reference_steps=2)
    trainer(tmp_path, [watch], max_steps=15).fit(Regressor(mlp(), lr=1e-4), loader(TensorDataset(x, y)))
    assert watch.session.evaluator.references["input"].steps == 1  # step 7, the first logging step after warm-up
    assert watch.session.evaluator.references["net.0"].steps == 1
    assert "scale_drift" in {a.kind for a in watch.alerts if a.module == "net.0"}


def test_no_drift_alert_on_the_prediction_logits_before_log_softmax(tmp_path):
    x, y = regression_data(n=1024).tensors
    x = x.clone()
    x[12 * 32 :] *= 10
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4), nn.LogSoftmax(dim=1))
    watch = NormWatch(warmup_steps=2, reference_steps=6)
    trainer(tmp_path, [watch], max_steps=16).fit(Regressor(net, lr=1e-4), loader(TensorDataset(x, y.repeat(1, 4))))
    drifted = {a.module for a in watch.alerts if a.kind in ("scale_drift", "mean_drift", "shift")}
    assert "net.0" in drifted
    assert not drifted & {"net.2", "net.3"}
