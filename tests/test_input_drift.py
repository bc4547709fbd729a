"""Input features as drift tools judge them: per feature, on what the model consumes, quiet when stationary.

Faults are injected into real data streams at a known step and must raise ``input_drift`` on the
input, naming the right feature(s), within 3 logging steps; stationary streams of several kinds and
batch sizes must raise no warning over 1,000 logging steps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, TensorDataset

from lightning_normwatch import NormWatch
from tests.models import trainer

NOTHING = ["__no_module__"]  # watch the inputs only: the layers have their own tests


class Fit(pl.LightningModule):
    """Any net on (x, y) batches; a tiny learning rate (the data, not the model, is under test)."""

    def __init__(self, net: nn.Module, lr: float = 1e-3) -> None:
        super().__init__()
        self.net, self.lr = net, lr

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Faulty(Dataset):
    """Rows of ``x``; from batch ``start`` on (sequential batches of ``batch``), ``fault`` applies."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch: int, start: int, fault: Callable) -> None:
        self.x, self.y, self.batch, self.start, self.fault = x, y, batch, start, fault

    def __len__(self) -> int:
        return 10**6

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = (i * 7919) % len(self.x)  # a fixed shuffle of the rows
        x = self.x[j]
        if i // self.batch >= self.start:
            x = self.fault(x.clone())
        return x, self.y[j]


def cancer(scaled: bool = True) -> tuple[torch.Tensor, torch.Tensor, StandardScaler]:
    d = load_breast_cancer()
    scaler = StandardScaler().fit(d.data)
    x = scaler.transform(d.data) if scaled else d.data
    return torch.tensor(x, dtype=torch.float32), torch.tensor(d.target), scaler


def watch(**kwargs: Any) -> NormWatch:
    opts: dict[str, Any] = dict(modules=NOTHING, every_n_steps=1, warmup_steps=10, reference_steps=20)
    return NormWatch(**{**opts, **kwargs})


START, STEPS, BATCH = 40, 44, 64


def run_fault(tmp_path: Any, fault: Callable, x: torch.Tensor | None = None, **kwargs: Any) -> NormWatch:
    cx, cy, _ = cancer()
    x = cx if x is None else x
    cb = watch(**kwargs)
    data = DataLoader(Faulty(x, cy, BATCH, START, fault), batch_size=BATCH)
    net = nn.Sequential(nn.Linear(x.shape[1], 16), nn.ReLU(), nn.Linear(16, 2))
    trainer(tmp_path, [cb], max_steps=STEPS).fit(Fit(net), data)
    return cb


def the_input_drift(cb: NormWatch) -> Any:
    warnings = [a for a in cb.alerts if a.severity == "warning"]
    drift = [a for a in warnings if a.kind == "input_drift"]
    assert drift, f"no input_drift; warnings: {[(a.kind, a.module, a.step) for a in warnings]}"
    assert all(a.module == "input" for a in drift)
    assert all(a.step >= START for a in warnings), [(a.kind, a.step) for a in warnings]  # nothing before the fault
    assert drift[0].step <= START + 2  # within 3 logging steps
    return drift[0]


def test_all_features_shifted_by_2_5_sigma(tmp_path):
    alert = the_input_drift(run_fault(tmp_path, lambda x: x + 2.5))
    assert "all 30 features shifted by +2.5 σ (median)" in alert.message


def test_one_feature_becomes_constant(tmp_path):
    def fault(x: torch.Tensor) -> torch.Tensor:
        x[7] = 0.3
        return x

    alert = the_input_drift(run_fault(tmp_path, fault))
    assert "feature 7 became constant (= 0.3)" in alert.message
    assert "feature 1 " not in alert.message and alert.message.count("feature ") == 1


def test_one_feature_rescaled_x10_named_by_feature_names(tmp_path):
    def fault(x: torch.Tensor) -> torch.Tensor:
        x[3] = x[3] * 10
        return x

    names = list(load_breast_cancer().feature_names)
    alert = the_input_drift(run_fault(tmp_path, fault, feature_names=names))
    assert f"`{names[3]}` rescaled x" in alert.message
    assert sum(f"`{n}`" in alert.message for n in names) == 1


def test_one_feature_shifted_by_6_sigma(tmp_path):
    def fault(x: torch.Tensor) -> torch.Tensor:
        x[12] = x[12] + 6
        return x

    alert = the_input_drift(run_fault(tmp_path, fault))
    assert "feature 12 shifted by +6" in alert.message and alert.message.count("feature ") == 1


def test_permuted_columns_are_named(tmp_path):
    # the pipeline's column order changed before the scaler fitted on the old order
    raw, _, scaler = cancer(scaled=False)
    swap = [
        0,
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
        9,
        10,
        11,
        12,
        13,
        14,
        15,
        16,
        17,
        18,
        19,
        20,
        21,
        23,
        22,
        24,
        25,
        26,
        27,
        28,
        29,
    ]
    mean, scale = torch.tensor(scaler.mean_, dtype=torch.float32), torch.tensor(scaler.scale_, dtype=torch.float32)
    x = (raw - mean) / scale
    alert = the_input_drift(run_fault(tmp_path, lambda r: (r * scale + mean)[swap].sub(mean).div(scale), x=x))
    named = {i for i in range(30) if f"feature {i} " in alert.message}
    assert named == {22, 23}


def test_normalization_dropped_after_step_k(tmp_path):
    _, _, scaler = cancer()
    mean, scale = torch.tensor(scaler.mean_, dtype=torch.float32), torch.tensor(scaler.scale_, dtype=torch.float32)
    cb = run_fault(tmp_path, lambda x: x * scale + mean)
    alert = the_input_drift(cb)
    assert "30 features" in alert.message or alert.message.count("feature ") >= 5
    # the recent-window feature scale reports the unit change within a few logging steps, not hundreds
    scale_alerts = [a for a in cb.alerts if a.kind == "feature_scale"]
    assert scale_alerts and START <= scale_alerts[0].step <= START + 2


def test_feature_scale_reports_a_unit_change_within_a_few_steps(tmp_path):
    def fault(x: torch.Tensor) -> torch.Tensor:
        x[5] = x[5] * 1000
        return x

    cb = run_fault(tmp_path, fault)
    alerts = [a for a in cb.alerts if a.kind == "feature_scale"]
    assert [a.module for a in alerts] == ["input"] and alerts[0].step <= START + 2


def test_input_drift_info_or_off_for_data_that_changes_on_purpose(tmp_path):
    info = run_fault(tmp_path, lambda x: x + 2.5, input_drift="info")
    drift = [a for a in info.alerts if a.kind == "input_drift"]
    assert drift and all(a.severity == "info" for a in drift)
    off = run_fault(tmp_path, lambda x: x + 2.5, input_drift="off")
    assert not [a for a in off.alerts if a.kind == "input_drift"]
    assert off.last_result.figures["input"]["feature_mean_shift_max"] == pytest.approx(2.5, abs=0.5)


# ---------------------------------------------------------------- healthy, stationary streams
def tabular(n: int, d: int, kind: str, seed: int = 0) -> torch.Tensor:
    g = np.random.default_rng(seed)
    if kind == "gaussian":
        x = g.normal(size=(n, d))
    elif kind == "heavy":  # t(3) and lognormal columns: heavy tails, skew
        x = np.concatenate([g.standard_t(3, size=(n, d // 2)), g.lognormal(0, 1, size=(n, d - d // 2))], 1)
    elif kind == "onehot":  # 5 one-hot columns of a 5-level category with uneven levels, then 3 numeric
        levels = g.choice(5, size=n, p=[0.5, 0.2, 0.15, 0.1, 0.05])
        x = np.concatenate([np.eye(5)[levels], g.normal(size=(n, 3))], 1)
    else:
        raise ValueError(kind)
    return torch.tensor(x, dtype=torch.float32)


def digits(image: bool) -> torch.Tensor:
    x = load_digits().data.astype("float32")
    if image:  # one global mean/std, as torchvision's Normalize with dataset-wide constants
        return torch.from_numpy((x - x.mean()) / x.std()).reshape(-1, 1, 8, 8)
    return torch.from_numpy(StandardScaler().fit_transform(x).astype("float32"))  # sparse pixel features


STREAMS = {
    "standardized tabular, batch 16": (lambda: cancer()[0], 16),
    "standardized tabular, batch 1024": (lambda: tabular(50_000, 4, "gaussian"), 1024),
    "3,000 features, batch 16": (lambda: tabular(4_000, 3_000, "gaussian"), 16),
    "sparse pixel features (digits)": (lambda: digits(image=False), 64),
    "images with one global mean/std": (lambda: digits(image=True), 64),
    "heavy-tailed features": (lambda: tabular(20_000, 8, "heavy"), 256),
    "one-hot columns": (lambda: tabular(20_000, 8, "onehot"), 128),
}


@pytest.mark.parametrize("stream", list(STREAMS))
def test_stationary_streams_raise_no_warning_over_1000_logging_steps(tmp_path, stream: str) -> None:
    make, batch = STREAMS[stream]
    x = make()
    y = torch.zeros(len(x), dtype=torch.long)
    flat = math.prod(x.shape[1:])
    net = nn.Sequential(nn.Flatten(), nn.Linear(flat, 2))
    cb = watch(warmup_steps=20, reference_steps=80)
    ds = TensorDataset(x, y)
    rows = BatchSampler(RandomSampler(ds, replacement=True, num_samples=1000 * batch), batch, drop_last=True)
    data = DataLoader(ds, sampler=rows, batch_size=None)  # one indexing per batch, not per row
    trainer(tmp_path, [cb], max_steps=1000).fit(Fit(net, lr=1e-4), data)
    warnings = [(a.kind, a.step, a.message[:200]) for a in cb.alerts if a.severity != "info"]
    assert warnings == []
    fig = cb.last_result.figures["input"]
    assert fig["feature_drift_share"] == 0.0 and "feature_mean_shift_max" in fig  # drift was measured


# ---------------------------------------------------------------- which tensor is the input
class Tokens(Dataset):
    """Dict items with token ids, a float attention mask, float features and a float target in the thousands."""

    def __init__(self, n: int = 256) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 50, (n, 6), generator=g)
        self.mask = (torch.rand(n, 6, generator=g) > 0.2).float()
        self.x = torch.randn(n, 4, generator=g)
        self.target = 3000 + 500 * torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": self.mask[i],
            "features": self.x[i],
            "price": self.target[i],
        }


class TokenRegressor(pl.LightningModule):
    def __init__(self, with_features: bool = True) -> None:
        super().__init__()
        self.with_features = with_features
        self.embed = nn.Embedding(50, 8)
        self.proj = nn.Linear(4, 8)
        self.head = nn.Linear(8, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        mask = batch["attention_mask"].unsqueeze(-1)
        h = (self.embed(batch["input_ids"]) * mask).sum(1) / mask.sum(1).clamp_min(1)
        if self.with_features:
            h = h + self.proj(batch["features"])
        pred = self.head(h).squeeze(-1)
        return nn.functional.mse_loss(pred, (batch["price"] - 3000) / 500)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def test_masks_and_targets_are_not_watched_as_inputs(tmp_path):
    cb = NormWatch(every_n_steps=1, warmup_steps=2, reference_steps=3)
    trainer(tmp_path, [cb], max_steps=8).fit(TokenRegressor(), DataLoader(Tokens(), batch_size=32))
    inputs = [k for k in cb.last_result.figures if cb.session.collector.info(k).role == "input"]
    assert inputs == ["input/features"]  # not the mask (the first float tensor), not the target in the thousands
    assert cb.session.collector.discovery.consumers == {"proj": "input/features"}
    fig = cb.last_result.figures["input/features"]
    assert fig["std"] == pytest.approx(1.0, abs=0.3)
    assert not [a for a in cb.alerts if a.kind == "feature_scale"]


def test_token_ids_only_say_so_once(tmp_path, caplog):
    cb = NormWatch(every_n_steps=1, warmup_steps=2, reference_steps=3)
    with caplog.at_level(logging.INFO, logger="lightning_normwatch"):
        trainer(tmp_path, [cb], max_steps=8).fit(
            TokenRegressor(with_features=False), DataLoader(Tokens(), batch_size=32)
        )
    notes = [a for a in cb.alerts if a.kind == "integer_inputs"]
    assert len(notes) == 1 and notes[0].severity == "info" and notes[0].module == "embed"
    assert "integer ids" in notes[0].message
    assert sum("integer ids" in r.getMessage() for r in caplog.records) == 1
    assert not [k for k in cb.last_result.figures if k.startswith("input")]
    assert "embed" in cb.last_result.figures  # the embedding outputs are the first watched tensors


class Normalizing(pl.LightningModule):
    """Normalizes the batch inside the step: the features the model consumes are not a batch tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 2))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net((x - 100.0) / 50.0), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def test_features_transformed_in_the_step_are_watched_as_the_model_sees_them(tmp_path):
    x = 100 + 50 * torch.randn(256, 30)
    cb = NormWatch(every_n_steps=1, warmup_steps=2, reference_steps=3, modules=NOTHING)
    trainer(tmp_path, [cb], max_steps=6).fit(Normalizing(), DataLoader(TensorDataset(x, torch.zeros(256).long()), 32))
    assert cb.session.collector.discovery.consumers == {"net.0": "input"}
    fig = cb.last_result.figures["input"]
    assert fig["mean"] == pytest.approx(0.0, abs=0.2) and fig["std"] == pytest.approx(1.0, abs=0.2)
