"""Measure root alerts: on how many planted faults is the root alert on the right module?

Each run plants one fault in a small model and trains it with a real ``pl.Trainer`` and NormWatch's
default arguments (logging every 50 steps). A run counts as right when, among the warnings raised within
3 logging steps of the fault on the faulty module and the tensors after it in execution order, exactly
one is a root, on the expected module (the others follow it). Roots raised before the faulty module in
those steps are listed: they are not symptoms of the planted fault (units of a default-initialized deep
MLP that sit around the dead threshold and cross it by chance). Faults:

- a bias set to -50 in one Linear of a 30-block MLP (layers 5, 10, 15, 20, 25; default and He init), at
  step 100: the ReLU after it dies and the signal vanishes below; the root belongs on that ReLU;
- ``model.eval()`` in a hook of a ResNet-like BN net: one root ``frozen_norm`` on the first BN layer;
- raw 0-255 pixels into a small ViT: the root belongs on the input (``feature_scale``);
- a bias of -100 in one layer of an 8-layer MLP at initialization: the first dead ReLU.

With ``--logdir DIR`` the 20th-layer run also writes TensorBoard event files there (``normwatch report DIR``
then shows roots first: docs/report_roots.txt).

Run: ``.venv/bin/python benchmarks/roots.py`` (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nets import EvalModel, ResNetLike, ViT, deep_data, deep_mlp, digits  # noqa: E402

from lightning_normwatch import NormWatch  # noqa: E402


class Broken(pl.LightningModule):
    """Classifier whose ``net[layer].bias`` is set to ``value`` at step ``at`` (0: before training)."""

    def __init__(self, net: nn.Module, layer: int, at: int, value: float) -> None:
        super().__init__()
        self.net, self.layer, self.at, self.value = net, layer, at, value

    def training_step(self, batch, batch_idx):  # noqa: D102
        if self.global_step == self.at:
            with torch.no_grad():
                self.net[self.layer].bias.fill_(self.value)
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):  # noqa: D102
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def mlp8() -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(16, 32), nn.ReLU()]
    for _ in range(7):
        layers += [nn.Linear(32, 32), nn.ReLU()]
    for m in layers:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return nn.Sequential(*layers, nn.Linear(32, 2))


def cases() -> list[tuple[str, object, object, str, int]]:
    """(name, model factory, data factory, expected root module, fault step)."""
    out: list[tuple[str, object, object, str, int]] = []
    for he in (False, True):
        for block in (5, 10, 15, 20, 25):
            layer = 2 * block  # net[2k] is block k's Linear, net[2k+1] its ReLU
            name = f"bias -50 in block {block} of 30 ({'He' if he else 'default'} init)"
            out.append(
                (
                    name,
                    lambda he=he, layer=layer: Broken(deep_mlp(he), layer, 100, -50.0),
                    deep_data,
                    f"net.{layer + 1}",
                    100,
                )
            )
    out.append(("model.eval() in a hook, ResNet-like", lambda: EvalModel(ResNetLike()), digits, "net.stem.1", 0))
    out.append(("raw 0-255 pixels into a ViT", lambda: EvalFree(ViT()), lambda: digits(raw=True), "input", 0))
    for layer in (2, 6, 10):
        out.append(
            (
                f"bias -100 at init in layer {layer // 2} of 8",
                lambda layer=layer: Broken(mlp8(), layer, 0, -100.0),
                deep_data,
                f"net.{layer + 1}",
                0,
            )
        )
    return out


class EvalFree(pl.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def training_step(self, batch, batch_idx):  # noqa: D102
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):  # noqa: D102
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=251)
    parser.add_argument("--logdir", default=None, help="write the block-20 run's event files here")
    parser.add_argument("--only", default=None, help="run only the faults whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning_normwatch").setLevel(logging.CRITICAL)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    t0, right, rows = time.time(), 0, []
    for name, model, data, expected, at in cases():
        if args.only and args.only not in name:
            continue
        pl.seed_everything(0, verbose=False)
        logger = False
        if args.logdir and "block 20 of 30 (He" in name:
            from pytorch_lightning.loggers import TensorBoardLogger

            logger = TensorBoardLogger(args.logdir, name="deep_mlp_broken_bias", version=0)
        watch = NormWatch(on_alert="ignore")
        trainer = pl.Trainer(
            max_steps=args.steps,
            callbacks=[watch],
            logger=logger,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            accelerator="cpu",
            log_every_n_steps=50,
        )
        trainer.fit(model(), data())  # type: ignore[operator]
        order = list(watch.last_result.figures) if watch.last_result else []
        after = set(order[order.index(expected) :]) if expected in order else set(order)
        window = [a for a in watch.alerts if at <= a.step <= at + 100 and a.severity != "info"]
        roots = [a for a in window if a.caused_by is None and a.module in after]
        followers = [a for a in window if a.caused_by is not None]
        elsewhere = [a for a in window if a.caused_by is None and a.module not in after]
        ok = len(roots) == 1 and roots[0].module == expected
        right += ok
        root = f"{roots[0].kind}@{roots[0].module}" if roots else "-"
        other = f"; other roots before it: {', '.join(f'{a.kind}@{a.module}' for a in elsewhere)}" if elsewhere else ""
        if len(roots) > 1:
            other += f"; {len(roots)} roots: {', '.join(f'{a.kind}@{a.module} (step {a.step})' for a in roots)}"
        rows.append(f"{'right' if ok else 'WRONG':5s}  {name:45s} root {root:26s} +{len(followers)} followers{other}")
        print(rows[-1], flush=True)
    print(f"root on the right module, alone: {right} of {len(rows)} planted faults ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
