"""Layer figures and depth rules on real architectures: channels-last blocks, deep stacks, residual,
pre-norm transformer and BN CNN, each trained with a real ``pl.Trainer``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from models import Regressor, loader, regression_data, trainer
from torch import nn
from torch.utils.data import TensorDataset

from lightning_normwatch import NormWatch

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*the trainer has no logger.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
]


def watch(**kwargs: Any) -> NormWatch:
    kwargs.setdefault("every_n_steps", 1)
    kwargs.setdefault("on_alert", "ignore")
    kwargs.setdefault("tensorboard", False)
    return NormWatch(**kwargs)


def warnings_of(cb: NormWatch) -> list[tuple[str, str, int]]:
    return [(a.module, a.kind, a.step) for a in cb.alerts if a.severity != "info"]


# --------------------------------------------------------------------------- channels last
class ConvNeXtBlock(nn.Module):
    """ConvNeXt's block: depthwise conv, then LayerNorm and an MLP on ``[B, H, W, C]``."""

    def __init__(self, c: int = 16, dead_share: float = 0.0) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pwconv1 = nn.Linear(c, 4 * c)
        self.act = nn.ReLU()
        self.pwconv2 = nn.Linear(4 * c, c)
        with torch.no_grad():
            self.pwconv1.bias[: int(dead_share * 4 * c)] = -100.0  # these units never fire
        self.seen: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # [B, H, W, C]
        y = self.norm(y)
        self.seen["norm"] = y.detach().clone()
        y = self.act(self.pwconv1(y))
        self.seen["act"] = y.detach().clone()
        return x + self.pwconv2(y).permute(0, 3, 1, 2)


class ConvNeXtNet(nn.Module):
    def __init__(self, dead_share: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 1)
        self.block = ConvNeXtBlock(16, dead_share)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.block(self.stem(x.reshape(-1, 1, 4, 4)))).flatten(1))


def per_channel_rms(t: torch.Tensor) -> np.ndarray:
    v = t.double().reshape(-1, t.shape[-1]).numpy()
    return np.sqrt((v**2).mean(0))


def test_channels_last_mlp_block_is_measured_per_real_channel(tmp_path) -> None:
    torch.manual_seed(0)
    net = ConvNeXtNet(dead_share=0.75)
    cb = watch(inputs=False)
    trainer(tmp_path, [cb], max_steps=2).fit(Regressor(net), loader(regression_data(n=64)))
    mon, figs = cb.session.collector, cb.last_result.figures  # type: ignore[union-attr]
    # a Linear / LayerNorm / ReLU on [B, H, W, C]: channels are the last dimension (4 would be H = W)
    layers = ("net.block.norm", "net.block.pwconv1", "net.block.act", "net.block.pwconv2")
    assert [mon.info(k).channels for k in layers] == [16, 64, 64, 16]
    assert mon.info("net.block.dwconv").channels == 16 and mon.info("net.stem").channels == 16  # conv: dimension 1
    # the figures are those of the real channels (the whole tensor is sampled here)
    rms = per_channel_rms(net.block.seen["norm"])
    assert figs["net.block.norm"]["channel_scale_ratio"] == pytest.approx(rms.max() / rms.min(), rel=1e-6)
    act = net.block.seen["act"].reshape(-1, 64)
    assert figs["net.block.act"]["dead"] == pytest.approx(float((act == 0).all(0).double().mean()))
    assert figs["net.block.act"]["dead"] >= 0.75
    dead = [a for a in cb.alerts if a.kind == "dead"]
    assert [(a.module, a.step) for a in dead] == [("net.block.act", 0)]


# --------------------------------------------------------------------------- depth
def stack(depth: int = 20, width: int = 32, gain: float = 1.0) -> nn.Sequential:
    """``depth`` Linear+ReLU layers, He-initialised times ``gain``: RMS changes by ``gain`` per layer."""
    layers: list[nn.Module] = [nn.Linear(16, width)]
    for i in range(depth):
        if i:
            layers.append(nn.Linear(width, width))
        layers.append(nn.ReLU())
    for m in layers:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
            with torch.no_grad():
                m.weight.mul_(gain)
    return nn.Sequential(*layers, nn.Linear(width, 1))


def run(tmp_path, net: nn.Module, steps: int, data: TensorDataset | None = None, **kw: Any) -> NormWatch:
    cb = watch(inputs=False, **kw.pop("watch", {}))
    model = Regressor(net, **kw)
    trainer(tmp_path, [cb], max_steps=steps).fit(model, loader(data or regression_data(n=256), shuffle=True))
    return cb


@pytest.mark.parametrize("final", [0.04, 1e-6])
def test_vanishing_depth_caught_at_the_first_logging_step(tmp_path, final: float) -> None:
    torch.manual_seed(0)
    cb = run(tmp_path, stack(gain=final ** (1 / 20)), steps=1)
    stds = [f["std"] for k, f in cb.last_result.figures.items()]  # type: ignore[union-attr]
    assert stds[-2] < 0.1 * max(stds[:4])  # the stack does vanish
    vanishing = [a for a in cb.alerts if a.kind == "vanishing"]
    assert len(vanishing) == 1 and vanishing[0].step == 0
    assert int(vanishing[0].module.removeprefix("net.")) >= 4  # in the stack, not at its start
    assert "`" + vanishing[0].module + "`" in vanishing[0].message


def test_exploding_depth_caught_at_the_first_logging_step(tmp_path) -> None:
    torch.manual_seed(0)
    cb = run(tmp_path, stack(gain=1.5), steps=1)
    exploding = [a for a in cb.alerts if a.kind == "exploding"]
    assert [(a.module, a.step) for a in exploding] == [("net.20", 0)]
    # by hand: the RMS of the watched tensors in execution order, without the prediction (net.40); at net.20
    # every tensor from there on is > 30x the smallest RMS before it, and net.20 is the first such tensor
    figs = cb.last_result.figures  # type: ignore[union-attr]
    rms = [float(np.hypot(f["mean"], f["std"])) for k, f in figs.items() if k != "net.40"]
    ratio = [min(rms[i:]) / min(rms[:i]) for i in range(1, len(rms) - 3)]  # at least 4 tensors from i on
    first = next(i for i, r in enumerate(ratio, start=1) if r > 30)
    assert list(figs)[first] == "net.20"
    assert exploding[0].value == pytest.approx(ratio[first - 1], rel=1e-9) and exploding[0].threshold == 30


class ResidualMLP(nn.Module):
    """Pre-norm residual MLP: ``x + W2 relu(W1 LN(x))``."""

    def __init__(self, blocks: int = 12, width: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(16, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width))
            for _ in range(blocks)
        )
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class PreNormTransformer(nn.Module):
    def __init__(self, layers: int = 4, d: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(4, d)
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.encoder(self.embed(x.reshape(-1, 4, 4)))).mean(1))


def bn_cnn(blocks: int = 6, c: int = 8) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Unflatten(1, (1, 4, 4))]
    for i in range(blocks):
        layers += [nn.Conv2d(1 if i == 0 else c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1))


@pytest.mark.parametrize(
    "name, build, kw",
    [
        ("20-layer He stack", lambda: stack(width=128), {"lr": 1e-3, "optimizer": "adam"}),
        ("residual MLP", lambda: ResidualMLP(), {"lr": 1e-3, "optimizer": "adam"}),
        ("pre-norm transformer", lambda: PreNormTransformer(), {"lr": 1e-3, "optimizer": "adam"}),
        ("BN CNN", lambda: bn_cnn(), {"lr": 1e-3, "optimizer": "adam"}),
    ],
)
def test_deep_healthy_nets_raise_no_warning(tmp_path, name: str, build, kw) -> None:
    torch.manual_seed(0)
    cb = run(tmp_path, build(), steps=60, watch={"every_n_steps": 5, "warmup_steps": 10, "reference_steps": 20}, **kw)
    assert warnings_of(cb) == [], name
