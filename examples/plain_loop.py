"""NormWatch in a plain PyTorch loop: ``LoopWatch`` + a TensorBoard ``SummaryWriter``.

Trains a small MLP on scikit-learn's bundled digits. ``--dead`` starts its first layer with a
bias of -100: every unit of the ReLU after it is zero, and NormWatch says so (a ``dead`` warning
on module ``1``, the ReLU, in the ``lightning_normwatch`` log, in ``watch.alerts`` and in TensorBoard's Text tab).

Run: ``python examples/plain_loop.py --dead`` then ``tensorboard --logdir logs/plain_loop``.
"""

from __future__ import annotations

import argparse
import logging

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from lightning_normwatch import LoopWatch


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    return x, torch.tensor(data.target)


def model(dead: bool) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    if dead:
        nn.init.constant_(net[0].bias, -100.0)  # every pre-activation negative: a dead ReLU
    return net


def main(steps: int = 300, dead: bool = False, logdir: str = "logs/plain_loop") -> LoopWatch:
    x, y = digits()
    net = model(dead)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    writer = SummaryWriter(logdir)
    # NormWatch's options as for the callback; every 10 steps here, reference after 20 warm-up steps
    with LoopWatch(net, sink=writer, every_n_steps=10, warmup_steps=20, reference_steps=50) as watch:
        for step in range(steps):
            i = torch.randint(0, len(x), (64,))
            with watch.step(x[i], step=step):  # the forward pass of this training step
                loss = nn.functional.cross_entropy(net(x[i]), y[i])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            watch.check_loss(loss)  # optional: NaN/Inf loss -> `nonfinite` alert
    writer.close()
    return watch


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--dead", action="store_true", help="start with a dead ReLU (first bias -100)")
    parser.add_argument("--logdir", default="logs/plain_loop")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    watch = main(args.steps, args.dead, args.logdir)
    print(f"{len(watch.alerts)} alerts; watched: {', '.join(watch.watched)}")
