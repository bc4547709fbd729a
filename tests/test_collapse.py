"""Batch-signal collapse (``judge/collapse.py``): caught where it starts, quiet on healthy networks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_normwatch.collect.collector import Collector
from lightning_normwatch.config import SessionConfig, Thresholds
from lightning_normwatch.judge.collapse import collapse_alerts, collapse_ratio
from lightning_normwatch.judge.evaluator import Evaluator
from lightning_normwatch.judge.rules import TensorInfo


def _sequence(spreads: list[float]) -> list[tuple[TensorInfo, dict[str, float]]]:
    return [
        (TensorInfo(f"fc{i}", "preact", "Linear", 64), {"batch_spread": s, "numel": 4096, "mean": 0.1, "std": 1.0})
        for i, s in enumerate(spreads)
    ]


@pytest.mark.parametrize("factor, fires", [(0.97, False), (1.03, True)])
def test_threshold_pinned_just_below_and_above(factor: float, fires: bool) -> None:
    th = Thresholds()
    low = 0.8 / (th.collapse * factor)
    seq = _sequence([0.8, 0.8, 0.7, low, low, low, low])
    alerts, checked = collapse_alerts(seq, th, step=5)
    assert bool(alerts) == fires
    assert ("fc3", "collapse") in checked
    if fires:
        (a,) = alerts
        assert (a.module, a.kind, a.severity, a.step) == ("fc3", "collapse", "warning", 5)
        assert math.isclose(a.value, th.collapse * factor, rel_tol=1e-9) and a.threshold == th.collapse
        assert "fc0" in a.message and f"threshold {th.collapse:g}x" in a.message


def test_a_later_batchnorm_restores_the_spread_and_keeps_it_quiet() -> None:
    seq = _sequence([0.8, 0.8, 1e-4, 1e-5, 1e-6, 0.9, 0.9, 0.9, 0.9])  # BN divides by the batch's std
    assert collapse_alerts(seq, Thresholds(), step=0)[0] == []


def _tanh_stack(depth: int = 20, width: int = 64, gain: float = 0.35, broken_from: int = 0) -> nn.Sequential:
    """Tanh MLP: layers from ``broken_from`` on have their (default-initialised) weights times ``gain``; the
    earlier ones are Xavier-initialised for tanh (gain 5/3), which keeps the batch signal."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(depth):
        lin = nn.Linear(64 if i == 0 else width, width)
        with torch.no_grad():
            if i < broken_from:
                nn.init.xavier_normal_(lin.weight, gain=5 / 3)
            else:
                lin.weight.mul_(gain)
        layers += [lin, nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, 4))


def _judge(net: nn.Module, x: torch.Tensor | dict) -> tuple[list, float]:
    """Measure one training-mode forward pass as a logging step does, and judge the collapse rule."""
    config = SessionConfig(warmup_steps=0, reference_steps=1)
    evaluator = Evaluator(config, collector := Collector(config))
    collector.attach(net)
    net.train()
    collector.arm()
    with torch.no_grad():
        net(**x) if isinstance(x, dict) else net(x)
    collector.disarm()
    result = evaluator.evaluate(0, collector.collect())
    prediction = evaluator.prediction_keys(result.figures)  # the rule leaves the prediction out
    info = collector.info
    seq = [(info(k), f) for k, f in result.figures.items() if info(k).role != "input" and k not in prediction]
    return collapse_alerts(seq, Thresholds(), step=0)[0], collapse_ratio(seq)


def test_collapse_of_statistics_md_section_8_is_caught_where_it_starts() -> None:
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
    alerts, ratio = _judge(_tanh_stack(), x)
    assert ratio > 1e6  # 0.87 -> ~1e-8
    (a,) = alerts
    assert a.module == "2"  # the fall starts at once: the second Linear already has half the first's spread
    # planted: ten healthy layers, then weights x0.1 from Linear 10 (module index 20) on
    alerts, ratio = _judge(_tanh_stack(gain=0.1, broken_from=10), x)
    (a,) = alerts
    assert a.module == "20" and a.kind == "collapse", a
    assert "`20` (Linear)" in a.message


def _healthy_torch_models() -> dict[str, tuple[nn.Module, object]]:
    g = torch.Generator().manual_seed(2)
    x, img, seq = torch.randn(64, 64, generator=g), torch.randn(32, 3, 16, 16, generator=g), torch.randn(16, 12, 32)
    torch.manual_seed(0)
    he = []
    for i in range(20):
        lin = nn.Linear(64 if i == 0 else 128, 128)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        he += [lin, nn.ReLU()]
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True, norm_first=True)
    models: dict[str, tuple[nn.Module, object]] = {
        "relu he 20": (nn.Sequential(*he, nn.Linear(128, 10)), x),
        "dropout mlp": (
            nn.Sequential(
                nn.Linear(64, 64),
                nn.ReLU(),
                nn.Dropout(0.5),
                nn.Linear(64, 64),
                nn.GELU(),
                nn.Dropout(0.5),
                nn.Linear(64, 10),
            ),
            x,
        ),
        "bn cnn": (
            nn.Sequential(
                *(
                    m
                    for i in range(6)
                    for m in (nn.Conv2d(3 if i == 0 else 16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
                ),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(16, 10),
            ),
            img,
        ),
        "prenorm transformer": (
            nn.Sequential(
                nn.TransformerEncoder(layer, 6, enable_nested_tensor=False), nn.LayerNorm(32), nn.Linear(32, 2)
            ),
            seq,
        ),
    }
    return models


def _healthy_transformers() -> dict[str, tuple[nn.Module, object]]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    img = torch.randn(32, 3, 16, 16, generator=g)
    models: dict[str, tuple[nn.Module, object]] = {}
    ids = {"input_ids": torch.randint(0, 64, (8, 12), generator=g)}
    gpt2 = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=4, n_head=2, n_positions=12)
    bert = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=12,
    )
    vit = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=10,
    )
    models["gpt2"] = (transformers.GPT2LMHeadModel(gpt2), ids)
    models["bert"] = (transformers.BertForSequenceClassification(bert), ids)
    models["vit"] = (transformers.ViTForImageClassification(vit), {"pixel_values": img})
    return models


@pytest.mark.parametrize("models", [_healthy_torch_models, _healthy_transformers], ids=["torch", "transformers"])
def test_healthy_networks_stay_far_below_the_threshold(models) -> None:  # noqa: ANN001
    th = Thresholds()
    ratios = {}
    for name, (net, x) in models().items():
        alerts, ratios[name] = _judge(net, x)
        assert alerts == [], name
    assert max(ratios.values()) < th.collapse / 10, ratios  # margin measured in docs/windows_and_collapse.md


def test_batch_spread_is_the_mean_unit_std_over_the_rms() -> None:
    from lightning_normwatch.collect.sampling import MeasureSpec, measure
    from lightning_normwatch.stats.figures import TensorStats, figures, figures_many

    g = torch.Generator().manual_seed(7)
    x = torch.randn(64, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.0, 0.5]) + 3.0
    block = measure(x, MeasureSpec(), torch.Generator().manual_seed(0)).numpy()
    st = TensorStats.from_blocks(block[None], channels=4)
    want = float(x.std(0, unbiased=False).mean() / x.pow(2).mean().sqrt())
    assert math.isclose(figures(st)["batch_spread"], want, rel_tol=1e-9)
    assert math.isclose(figures_many([st])[0]["batch_spread"], want, rel_tol=1e-9)
