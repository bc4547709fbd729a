"""Dump what NormWatch logged on two fixed runs, to compare the package before and after a change.

Trains the demo's classifier (breast-cancer data, raw features) and a deep 30-block MLP with one
broken bias (layer 20 at step 150), seeded, then writes every scalar, histogram, text and image
event NormWatch wrote (tag, step, value; images as size and checksum) and the alerts as JSON.
Two dumps of the same code are identical; a restructuring that changes no figure, alert or tag
leaves them identical too.

Run: ``.venv/bin/python benchmarks/event_dump.py OUT.json`` then ``diff`` two dumps, or
``.venv/bin/python benchmarks/event_dump.py --compare A.json B.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from sklearn.datasets import load_breast_cancer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_normwatch import NormWatch


class Net(pl.LightningModule):
    def __init__(self, net: nn.Module, break_at: int | None = None) -> None:
        super().__init__()
        self.net, self.break_at = net, break_at

    def training_step(self, batch, batch_idx):
        if self.break_at is not None and self.global_step == self.break_at:
            with torch.no_grad():
                self.net[40].bias.fill_(-50.0)  # layer 20's Linear: its ReLU dies
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def _demo() -> tuple[Net, DataLoader]:
    data = load_breast_cancer()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target)
    net = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    return Net(net), DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)


def _deep() -> tuple[Net, DataLoader]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2048, 16, generator=g)
    y = (x[:, 0] > 0).long()
    layers: list[nn.Module] = [nn.Linear(16, 32), nn.ReLU()]
    for _ in range(29):
        layers += [nn.Linear(32, 32), nn.ReLU()]
    layers.append(nn.Linear(32, 2))
    return Net(nn.Sequential(*layers), break_at=150), DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)


def _run(name: str, root: Path, steps: int) -> dict:
    pl.seed_everything(0, workers=True)
    model, data = _demo() if name == "demo" else _deep()
    callback = NormWatch(every_n_steps=10, warmup_steps=20, reference_steps=40, on_alert="ignore")
    trainer = pl.Trainer(
        max_steps=steps,
        logger=TensorBoardLogger(root, name=name),
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        deterministic=True,
    )
    trainer.fit(model, data)
    return {"alerts": [repr(a) for a in callback.alerts], "events": _events(Path(trainer.logger.log_dir))}


def _events(log_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    out: dict = {}
    for tag in tags["scalars"]:
        out[f"scalar:{tag}"] = [[e.step, e.value] for e in acc.Scalars(tag)]
    for tag in tags["histograms"]:
        out[f"hist:{tag}"] = [
            [
                e.step,
                e.histogram_value.min,
                e.histogram_value.max,
                e.histogram_value.num,
                list(e.histogram_value.bucket_limit),
                list(e.histogram_value.bucket),
            ]
            for e in acc.Histograms(tag)
        ]
    for tag in tags["images"]:
        out[f"image:{tag}"] = [
            [e.step, e.width, e.height, hashlib.sha256(e.encoded_image_string).hexdigest()[:16]]
            for e in acc.Images(tag)
        ]
    for tag in tags["tensors"]:
        out[f"tensor:{tag}"] = [[e.step, str(e.tensor_proto.string_val)] for e in acc.Tensors(tag)]
    return out


def compare(a: dict, b: dict, images: bool = False) -> list[str]:
    """Differences between two dumps (image checksums are ignored unless ``images``)."""
    diffs = []
    for run in sorted(set(a) | set(b)):
        ra, rb = a.get(run, {}), b.get(run, {})
        if ra.get("alerts") != rb.get("alerts"):
            diffs.append(f"{run}: alerts differ")
        ea, eb = ra.get("events", {}), rb.get("events", {})
        for tag in sorted(set(ea) | set(eb)):
            va, vb = ea.get(tag), eb.get(tag)
            if tag.startswith("image:") and not images and va is not None and vb is not None:
                va, vb = [v[:1] for v in va], [v[:1] for v in vb]
            if va != vb:
                diffs.append(f"{run}: {tag} differs")
    return diffs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", nargs="?", help="write the dump here (JSON)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two dumps")
    parser.add_argument("--images", action="store_true", help="with --compare: compare image bytes too")
    args = parser.parse_args()
    if args.compare:
        a, b = (json.loads(Path(p).read_text()) for p in args.compare)
        diffs = compare(a, b, args.images)
        tags = sum(len(r["events"]) for r in a.values())
        print("\n".join(diffs) or f"identical: {tags} tags, alerts equal")
        return 1 if diffs else 0
    if not args.out:
        parser.error("give OUT or --compare A B")
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning_normwatch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        dump = {name: _run(name, Path(tmp), steps) for name, steps in (("demo", 300), ("deep", 300))}
    Path(args.out).write_text(json.dumps(dump, sort_keys=True))
    print(
        f"wrote {args.out}: "
        + ", ".join(f"{k} {len(v['events'])} tags {len(v['alerts'])} alerts" for k, v in dump.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
