"""benchmarks/floor.py: the floor monitor does the work its figures are quoted for (a no-op monitor would make
"the least a per-layer monitor costs" meaningless): every watched output's mean, std, min and max, every step,
in the event file, equal to numpy's on the same outputs; and one histogram per tensor with ``histograms``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from floor import FloorMonitor  # noqa: E402


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))
        self.seen: dict[tuple[int, str], np.ndarray] = {}
        for name in ("0", "1", "2"):
            self.net.get_submodule(name).register_forward_hook(self._keep("net." + name))

    def _keep(self, name: str):  # noqa: ANN202
        def hook(module: nn.Module, args: object, out: torch.Tensor) -> None:
            self.seen[(self.global_step, name)] = out.detach().double().numpy().copy()

        return hook

    def training_step(self, batch: list[torch.Tensor], i: int) -> torch.Tensor:
        self.seen[(self.global_step, "input")] = batch[0].double().numpy().copy()
        return self.net(batch[0]).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_floor_writes_every_outputs_figures_every_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(24, 6) * 3 + 1, torch.zeros(24)), batch_size=8)
    model, monitor = Net(), FloorMonitor(histograms=True)
    trainer = pl.Trainer(
        max_steps=3,
        logger=TensorBoardLogger(str(tmp_path), name="f"),
        callbacks=[monitor],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, data)
    acc = EventAccumulator(str(tmp_path / "f" / "version_0"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    names = ("input", "net.0", "net.1", "net.2")
    assert sorted(acc.Tags()["histograms"]) == sorted(f"floor/{n}/hist" for n in names)
    for name in names:
        for figure, of in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max)):
            events = acc.Scalars(f"floor/{name}/{figure}")
            assert [e.step for e in events] == [0, 1, 2]
            for e in events:
                assert abs(e.value - of(model.seen[(e.step, name)])) <= 1e-4 * (1 + abs(e.value)), (
                    name,
                    figure,
                    e.step,
                )
        for h in acc.Histograms(f"floor/{name}/hist"):
            assert h.histogram_value.num == model.seen[(h.step, name)].size
