"""Runs for the TensorBoard plugin tests (and docs/make_plugin_screenshots.py), and a real ``tensorboard`` server.

- ``demo_runs``: the quickstart's two runs (raw features; standardized + BatchNorm), shortened;
- ``deep_run``: a 16-block ReLU MLP (33 watched tensors) whose Linear ``net.14`` gets a bias of -20
  at step 100, so ReLU ``net.15`` dies: the planted fault the tab must point at.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from cdp import stop_process
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_normwatch import NormWatch

TENSORBOARD = Path(sys.executable).with_name("tensorboard")
#: the Linear whose bias is broken, and the ReLU after it that dies
FAULTY_LINEAR, DEAD_RELU = "net.14", "net.15"
FAULT_STEP = 100


def _fit(model: pl.LightningModule, data: TensorDataset, logdir: Path, name: str, steps: int, callbacks=()) -> Any:
    watch = NormWatch(every_n_steps=5, warmup_steps=20, reference_steps=40, plot_every_n_steps=None, on_alert="ignore")
    trainer = pl.Trainer(
        max_steps=steps,
        callbacks=[watch, *callbacks],
        logger=TensorBoardLogger(str(logdir), name=name, default_hp_metric=False),
        log_every_n_steps=5,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(model, DataLoader(data, batch_size=64, shuffle=True))
    return watch


def demo_runs(logdir: Path, steps: int = 150) -> dict[str, NormWatch]:
    """The quickstart's two runs (``examples/quickstart.py``) under ``logdir``."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
    from quickstart import Classifier, dataset

    out = {}
    for name, standardize, batchnorm in [("raw_features", False, False), ("standardized_batchnorm", True, True)]:
        pl.seed_everything(0, verbose=False)
        out[name] = _fit(Classifier(30, batchnorm), dataset(standardize), logdir, name, steps)
    return out


class Deep(pl.LightningModule):
    """A He-initialised ReLU MLP of ``blocks`` Linear+ReLU blocks."""

    def __init__(self, blocks: int = 16, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(blocks):
            layers += [nn.Linear(16 if i == 0 else width, width), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.002)


class Fault(pl.Callback):
    """At ``FAULT_STEP`` the Linear ``FAULTY_LINEAR`` gets a bias of -20: the ReLU after it dies."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        if trainer.global_step == FAULT_STEP:
            with torch.no_grad():
                pl_module.net[int(FAULTY_LINEAR.split(".")[1])].bias.fill_(-20.0)


def deep_run(logdir: Path, steps: int = 150) -> NormWatch:
    """The deep MLP with its planted fault, under ``logdir/deep_mlp``."""
    pl.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 16, generator=g)
    y = torch.tanh(x[:, :1]) + 0.05 * torch.randn(1024, 1, generator=g)
    return _fit(Deep(), TensorDataset(x, y), logdir, "deep_mlp", steps, [Fault()])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(base: str, path: str, **params: Any) -> Any:
    """JSON from the server (raises ``urllib.error.HTTPError`` on 4xx/5xx)."""
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read().decode())


def get_error(base: str, path: str, **params: Any) -> tuple[int, str]:
    """Status and body of a request that must fail."""
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@contextmanager
def tensorboard(logdir: Path, timeout: float = 90.0, load_fast: str = "false") -> Iterator[str]:
    """``tensorboard`` on 127.0.0.1 serving ``logdir``, once the NormWatch plugin is active; yields its URL.

    ``load_fast="false"``: TensorBoard's Python reader (what the other server tests use); ``"true"``: its
    Rust data server (the default where it runs), which loads large runs many times faster.
    """
    port = free_port()
    cmd = [str(TENSORBOARD), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, f"--load_fast={load_fast}", "--reload_interval=0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tensorboard exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")  # type: ignore[union-attr]
            try:
                if get(base, "/data/plugins_listing").get("normwatch", {}).get("enabled"):
                    break
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"tensorboard did not load {logdir} within {timeout:.0f} s")
            time.sleep(0.3)
        yield base
    finally:
        stop_process(proc)
