"""Gradient flow the per-layer figures miss (through time in a recurrent layer), an exploding gradient, and the
diagnosis joining a too-large update with the activation alerts it causes: real Trainer runs and the pure rules."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from models import loader, trainer
from pytorch_lightning.strategies import SingleDeviceStrategy
from test_updates import PARAM_KINDS, Classifier, digits, digits_mlp, tokens, watch
from torch import nn

from lightning_normwatch.collect.through_time import TimeProbe
from lightning_normwatch.config import Thresholds
from lightning_normwatch.judge.alerts import Alert, AlertTracker
from lightning_normwatch.judge.updates import PERSIST, UpdateHistory, time_alerts, time_factors
from lightning_normwatch.session.updates import UpdateWatch

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*the trainer has no logger.*"),
    pytest.mark.filterwarnings("ignore:.*Seed set to.*"),
]


class Recurrent(nn.Module):
    """Two layers before an LSTM (or GRU), a head on its last output (``benchmarks/calibrate_updates.py``)."""

    def __init__(self, gru: bool = False, d: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, hidden))
        self.lstm = (nn.GRU if gru else nn.LSTM)(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x))
        return self.head(out[:, -1])


class RecurrentLM(nn.Module):
    def __init__(self, vocab: int = 32, hidden: int = 32) -> None:
        super().__init__()
        self.tok, self.pre = nn.Embedding(vocab, hidden), nn.Linear(hidden, hidden)
        self.lstm, self.head = nn.LSTM(hidden, hidden, batch_first=True), nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.pre(self.tok(x)))[0])


def first_step_class(length: int, n: int = 256, d: int = 8) -> Any:
    """Noise sequences whose class is the sign pattern of their first step: the LSTM must carry it ``length`` steps."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, length, d, generator=g)
    y = (x[:, 0, 0] > 0).long() + 2 * (x[:, 0, 1] > 0).long()
    return loader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)


def fit(model: pl.LightningModule, data: Any, tmp_path: Any, steps: int = 6, every: int = 2) -> Any:
    pl.seed_everything(0)
    cb = watch(every_n_steps=every)
    trainer(tmp_path, [cb], max_steps=steps).fit(model, data)
    return cb


def test_an_lstm_over_long_sequences_raises_vanishing_gradient_through_time(tmp_path) -> None:
    pl.seed_everything(0)
    cb = fit(Classifier(Recurrent(), "adam"), first_step_class(100), tmp_path)
    found = [a for a in cb.alerts if a.kind in PARAM_KINDS]
    assert [(a.module, a.kind, a.step) for a in found] == [("net.lstm", "vanishing_gradient", 2)]  # held 2 steps
    assert found[0].value > 1e10 and "`net.embed.0`, `net.embed.2`" in found[0].message  # the layers before it
    assert cb.last_result.figures["net.lstm"]["time_vanishing"] > 1e10


@pytest.mark.parametrize("case", ["lstm_10_steps", "gru_10_steps", "lstm_language_model"])
def test_healthy_recurrent_runs_raise_no_gradient_alert(tmp_path, case: str) -> None:
    pl.seed_everything(0)
    model, data = {
        "lstm_10_steps": lambda: (Classifier(Recurrent(), "adam"), first_step_class(10)),
        "gru_10_steps": lambda: (Classifier(Recurrent(gru=True), "sgd", 0.1), first_step_class(10)),
        "lstm_language_model": lambda: (Classifier(RecurrentLM(), "adam", 3e-3), tokens(length=32)),
    }[case]()
    cb = fit(model, data, tmp_path, steps=12)
    assert [(a.module, a.kind) for a in cb.alerts if a.kind in PARAM_KINDS] == []
    assert 1.0 <= cb.last_result.figures["net.lstm"]["time_vanishing"] < 1000  # measured, below the threshold


def chaotic_tanh(depth: int = 20, gain: float = 4.0) -> nn.Sequential:
    """Deep tanh MLP with weights ``gain / sqrt(fan_in)``: bounded activations, a backward gain above 1 per layer."""
    model = digits_mlp(nn.Tanh, depth=depth)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, 0.0, gain / math.sqrt(layer.in_features))
                nn.init.zeros_(layer.bias)
    return model


def test_a_chaotic_deep_tanh_mlp_under_sgd_raises_exploding_gradient_on_its_early_layers(tmp_path) -> None:
    cb = fit(Classifier(chaotic_tanh(), "sgd", 1e-4), digits(), tmp_path)
    found = [a for a in cb.alerts if a.kind in PARAM_KINDS]
    assert [(a.kind, a.step) for a in found] == [("exploding_gradient", 2)]
    layer = int(found[0].module.split(".")[1])  # net.<i>: where the gradients grew 1000x above the later layers'
    assert layer <= 12 and found[0].value > 1000 and "explode toward the input" in found[0].message


@pytest.mark.parametrize("kind", ["vanishing_gradient", "exploding_gradient"])
def test_through_time_at_its_threshold(kind: str) -> None:
    """A profile whose factor is just below / just above the threshold: raised only above, after PERSIST steps."""
    limit = getattr(Thresholds(), kind)
    for scale, expected in ((0.999, []), (1.001, [("lstm", kind)])):
        factor = limit * scale
        rising = [1.0, 1.0, 1.0, factor, factor] if kind == "vanishing_gradient" else [factor] * 3 + [1.0, 1.0]
        assert time_factors(rising)[kind != "vanishing_gradient"] == pytest.approx(factor)
        history, alerts = UpdateHistory(), []
        for step in range(PERSIST):
            alerts, _ = time_alerts(step, {"lstm": rising}, {"lstm": ["embed"]}, Thresholds(), history)
        assert [(a.module, a.kind) for a in alerts] == expected


class OneLayerHot(Classifier):
    """One Linear (``net.<layer>``) in a param group with ``factor`` times the others' learning rate."""

    def __init__(self, net: nn.Module, layer: int, factor: float, **kw: Any) -> None:
        super().__init__(net, **kw)
        self.layer, self.factor = layer, factor

    def configure_optimizers(self) -> Any:
        hot = list(self.net[self.layer].parameters())
        rest = [p for p in self.net.parameters() if all(p is not q for q in hot)]
        return torch.optim.Adam([{"params": rest}, {"params": hot, "lr": self.lr * self.factor}], lr=self.lr)


def test_activation_drift_after_a_too_large_update_follows_it_in_one_sentence(tmp_path) -> None:
    """Adam 1e-3, net.2 at x30: update_size on net.2 at step 4, then the activations after it drift (reference
    window 0-4); every drift on net.2 and after it follows the update_size alert, and says how much later it began."""
    runs = {}
    for factor in (1.0, 30.0):
        pl.seed_everything(0)
        cb = watch(every_n_steps=2, warmup_steps=0, reference_steps=4)
        trainer(tmp_path / str(factor), [cb], max_steps=24).fit(OneLayerHot(digits_mlp(), 2, factor), digits())
        runs[factor] = cb.alerts
    assert not [a for a in runs[1.0] if a.kind == "update_size" or a.caused_by and a.caused_by[0] == "update_size"]
    roots = [a for a in runs[30.0] if a.caused_by is None and a.kind != "non_normal"]
    assert [(a.module, a.kind, a.step) for a in roots] == [("net.2", "update_size", 4)]
    followers = [a for a in runs[30.0] if a.caused_by is not None]
    assert {a.module for a in followers} >= {"net.2", "net.3", "net.4"}  # the layer and the ones after it
    assert all(a.caused_by == ("update_size", "net.2") and a.step > 4 for a in followers)
    assert {a.kind for a in followers} <= {"scale_drift", "mean_drift", "shift", "outlier"}
    first = min(followers, key=lambda a: a.step)
    assert "`net.2`'s updates are 149x the usual 0.001 of its weights per step from step 0" in first.message
    assert f"started drifting {first.step // 2} logging steps later ({first.kind} on `{first.module}`" in first.message


class FSDPOnCPUStandIn(SingleDeviceStrategy):
    """Named like Lightning's ``FSDPStrategy``, which refuses a CPU accelerator (``requires a GPU accelerator``):
    the parameter side is switched off by the strategy's name, so a CPU stand-in exercises that path."""


def test_a_sharded_strategy_switches_the_update_figures_off_with_one_warning(tmp_path) -> None:
    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        trainer(tmp_path, [], strategy="fsdp")  # what Lightning does with FSDP on CPU
    pl.seed_everything(0)
    cb = watch(every_n_steps=2)
    strategy = FSDPOnCPUStandIn(device=torch.device("cpu"))
    with pytest.warns(UserWarning, match="update sizes are not measured under FSDPOnCPUStandIn"):
        trainer(tmp_path, [cb], max_steps=4, strategy=strategy).fit(Classifier(digits_mlp()), digits())
    figures = cb.last_result.figures
    assert "std" in figures["net.0"] and not any("update_ratio" in f for f in figures.values())  # activations only


def test_the_through_time_profile_equals_a_hand_computation() -> None:
    """Per-time-step RMS of the gradient at the LSTM's input against ``x.grad`` (batch first and not)."""
    for batch_first in (True, False):
        torch.manual_seed(0)
        pre, lstm = nn.Linear(3, 6), nn.LSTM(6, 5, batch_first=batch_first)
        model = nn.ModuleDict({"pre": pre, "lstm": lstm})
        probe = TimeProbe()
        assert probe.attach(model, ["pre", "lstm"]) == ["lstm"]
        probe.arm()
        x = pre(torch.randn(4, 7, 3) if batch_first else torch.randn(7, 4, 3))
        x.retain_grad()
        out, _ = lstm(x)
        (out[:, -1] if batch_first else out[-1]).pow(2).sum().backward()
        hand = x.grad.double().pow(2).mean((0, 2) if batch_first else (1, 2)).sqrt()
        torch.testing.assert_close(probe.profiles()["lstm"], hand, rtol=1e-12, atol=0.0)
        probe.close()


def test_drift_raised_before_the_update_alert_is_joined_into_its_message() -> None:
    """The activations drifted first (step 4), the update alert comes at step 6 (streak from step 2): the update
    alert carries the sentence, the drift becomes its follower in the evaluator's alerts."""
    drift = Alert(4, "net.3", "scale_drift", "warning", 5.0, 4.0, "drift.")
    tracker = AlertTracker()
    tracker.update([drift], {("net.3", "scale_drift")}, 4)
    evaluator = SimpleNamespace(
        alerts=[drift], tracker=tracker, order=["net.0", "net.2", "net.3"], collector=SimpleNamespace(edges={})
    )
    watch_ = UpdateWatch()
    root = Alert(6, "net.2", "update_size", "warning", 0.2, Thresholds().update_large, "large.")
    watch_.alerts, watch_._logged = [root], [4, 6]
    watch_.tracker.update([root], {("net.2", "update_size")}, 6)
    watch_.history.since["net.2"] = 2
    result = SimpleNamespace(alerts=[])
    new = watch_.join(6, [root], result, evaluator)
    assert new[0].message.startswith("large. `net.2`'s updates are 200x the usual 0.001 of its weights per step")
    assert "the activations after it started drifting 1 logging step later (scale_drift on `net.3`" in new[0].message
    assert evaluator.alerts[0].caused_by == ("update_size", "net.2")
    assert "Follows the update_size alert on `net.2` from step 6" in evaluator.alerts[0].message
