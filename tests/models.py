"""Tiny real models and a trainer factory shared by the tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Regressor(pl.LightningModule):
    """A LightningModule around any ``net``: MSE regression with SGD (or Adam)."""

    def __init__(self, net: nn.Module, lr: float = 0.05, optimizer: str = "sgd") -> None:
        super().__init__()
        self.net = net
        self.lr = lr
        self.optimizer = optimizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def mlp(d_in: int = 16, width: int = 32, d_out: int = 1, act: Callable[[], nn.Module] = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, width), act(), nn.Linear(width, width), act(), nn.Linear(width, d_out))


def regression_data(n: int = 512, d_in: int = 16, seed: int = 0, scale: torch.Tensor | None = None) -> TensorDataset:
    """Deterministic synthetic regression data; ``scale`` multiplies the input features column-wise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    w = torch.randn(d_in, 1, generator=g) / d_in**0.5
    y = torch.tanh(x @ w) + 0.05 * torch.randn(n, 1, generator=g)
    if scale is not None:
        x = x * scale
    return TensorDataset(x, y)


def loader(ds: TensorDataset, batch_size: int = 32, shuffle: bool = False) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle)


def trainer(tmp_path: Any, callbacks: list[pl.Callback], max_steps: int = 20, **kwargs: Any) -> pl.Trainer:
    """A quiet CPU trainer logging every step (override with kwargs)."""
    opts: dict[str, Any] = dict(
        default_root_dir=str(tmp_path),
        max_steps=max_steps,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        devices=1,
        logger=False,
    )
    opts.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **opts)
