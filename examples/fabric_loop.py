"""NormWatch with Lightning Fabric: ``LoopWatch`` on the module ``fabric.setup`` returns.

Fabric wraps the model (``_FabricModule``, and ``DistributedDataParallel`` under ``strategy="ddp"``);
``LoopWatch`` looks through the wrappers, so tensors keep the model's own names (``net.1``, not
``_forward_module.net.1``). Figures and panels go to Fabric's ``TensorBoardLogger``; under DDP every
rank marks the same steps, statistics are merged with one collective per logging step, rank 0 writes.

``--dead`` starts the first layer with a bias of -100: a ``dead`` warning on ``net.1``.

Run: ``python examples/fabric_loop.py --dead`` (add ``--devices 2`` for two CPU processes).
"""

from __future__ import annotations

import argparse
import logging

import torch
from lightning.fabric import Fabric
from lightning.fabric.loggers import TensorBoardLogger
from sklearn.datasets import load_digits
from torch import nn

from lightning_normwatch import LoopWatch


class Classifier(nn.Module):
    def __init__(self, dead: bool) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        if dead:
            nn.init.constant_(self.net[0].bias, -100.0)  # every pre-activation negative: a dead ReLU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def main(steps: int = 300, dead: bool = False, logdir: str = "logs/fabric_loop", devices: int = 1) -> LoopWatch:
    logger = TensorBoardLogger(logdir, name="fabric")
    fabric = Fabric(accelerator="cpu", devices=devices, loggers=logger)
    fabric.launch()
    fabric.seed_everything(0)
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    model = Classifier(dead)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model, optimizer = fabric.setup(model, optimizer)
    batches = torch.Generator().manual_seed(fabric.global_rank)  # each rank draws its own batches
    with LoopWatch(model, sink=logger, every_n_steps=10, warmup_steps=20, reference_steps=50) as watch:
        for _ in range(steps):
            i = torch.randint(0, len(x), (64,), generator=batches)
            batch = x[i].to(fabric.device)
            with watch.step(batch):
                loss = nn.functional.cross_entropy(model(batch), y[i].to(fabric.device))
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()
            watch.check_loss(loss)
    logger.finalize("success")
    return watch


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--dead", action="store_true", help="start with a dead ReLU (first bias -100)")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--logdir", default="logs/fabric_loop")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    watch = main(args.steps, args.dead, args.logdir, args.devices)
    print(f"{len(watch.alerts)} alerts; watched: {', '.join(watch.watched)}")
