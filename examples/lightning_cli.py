"""NormWatch configured from YAML with ``LightningCLI``.

Run: ``python examples/lightning_cli.py fit --config examples/lightning_cli.yaml``

The YAML's callback, ``lightning_normwatch.lightning.NormWatch``, is accepted by both CLIs,
``lightning.pytorch.cli`` (this script) and ``pytorch_lightning.cli`` (same file, a model of that
package). With ``pytorch_lightning`` only, ``class_path: lightning_normwatch.NormWatch`` works too.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def network(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def digits() -> TensorDataset:
    data = load_digits()
    return TensorDataset(torch.tensor(data.data, dtype=torch.float32) / 16.0, torch.tensor(data.target))


class DigitsClassifier(LightningModule):
    """An MLP on scikit-learn's bundled 8x8 digits."""

    def __init__(self, width: int = 64, lr: float = 1e-3) -> None:
        super().__init__()
        self.net = network(width)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class Digits(LightningDataModule):
    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(digits(), batch_size=self.batch_size, shuffle=True)


if __name__ == "__main__":
    LightningCLI(DigitsClassifier, Digits)
