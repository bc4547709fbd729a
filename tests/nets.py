"""Models of the diagnosis tests: a deep MLP with a bias broken mid-run, a ResNet-like BN net, a small ViT,
a GRU classifier, residual and transformer stacks (all tiny, CPU, seconds)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Classifier(pl.LightningModule):
    """Cross-entropy classifier around ``net`` (Adam); ``break_at``: ``net[40].bias`` set to -50 at that step."""

    def __init__(self, net: nn.Module, lr: float = 1e-3, break_at: int | None = None) -> None:
        super().__init__()
        self.net, self.lr, self.break_at = net, lr, break_at

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.break_at is not None and self.global_step == self.break_at:
            break_bias(self.net)
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class EvalModel(Classifier):
    """The mistake of a hook: the whole model put in eval mode at every epoch start."""

    def on_train_epoch_start(self) -> None:
        self.eval()


def break_bias(net: nn.Module) -> None:
    """Layer 20's Linear of ``deep_mlp`` gets bias -50: the ReLU after it dies, the signal vanishes below."""
    with torch.no_grad():
        net[40].bias.fill_(-50.0)  # type: ignore[index]


def deep_mlp(he: bool = False) -> nn.Sequential:
    """benchmarks/event_dump.py's deep model: 30 Linear+ReLU blocks of width 32 (``he``: He init, zero bias)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(16, 32), nn.ReLU()]
    for _ in range(29):
        layers += [nn.Linear(32, 32), nn.ReLU()]
    layers.append(nn.Linear(32, 2))
    if he:
        for m in layers:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


def deep_data() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2048, 16, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=64, shuffle=True, generator=g)


class Block(nn.Module):
    """ResNet's basic block: conv-BN-ReLU-conv-BN, plus the input, ReLU."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(x + self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))


class ResNetLike(nn.Module):
    """A stem (conv-BN-ReLU) and ``blocks`` basic blocks on 8x8 images: 2 x blocks + 1 BatchNorm layers."""

    def __init__(self, blocks: int = 4, c: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.Sequential(*(Block(c) for _ in range(blocks)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class ViT(nn.Module):
    """A small ViT on 8x8 images: 4x4 patches, linear embedding, ``norm_first`` encoder layers, mean pool."""

    def __init__(self, d: int = 32, layers: int = 2, norm_first: bool = True) -> None:
        super().__init__()
        self.embed = nn.Linear(16, d)
        self.pos = nn.Parameter(torch.zeros(1, 4, d))
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = x.reshape(-1, 2, 4, 2, 4).permute(0, 1, 3, 2, 4).reshape(-1, 4, 16)
        return self.head(self.norm(self.encoder(self.embed(patches) + self.pos)).mean(1))


class GRUNet(nn.Module):
    def __init__(self, d: int = 8, h: int = 32) -> None:
        super().__init__()
        self.gru = nn.GRU(d, h, batch_first=True)
        self.head = nn.Linear(h, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x.reshape(-1, 8, 8))  # the image's rows as a sequence
        return self.head(out[:, -1])


class ResidualMLP(nn.Module):
    """Pre-norm residual MLP on flattened images."""

    def __init__(self, blocks: int = 8, width: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(64, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width))
            for _ in range(blocks)
        )
        self.out = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


def digits(raw: bool = False, batch: int = 64) -> DataLoader:
    """scikit-learn's 8x8 digits as [N, 1, 8, 8] images: standardized, or raw pixels stretched to 0-255."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1)
    x = x * (255.0 / 16.0) if raw else (x - x.mean()) / x.std()
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(x, torch.tensor(data.target)), batch_size=batch, shuffle=True, generator=g)
