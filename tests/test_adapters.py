"""Both Lightning packages, both LightningCLIs, and every Lightning logger, with real fits."""

from __future__ import annotations

import csv
import importlib
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from models import loader, regression_data
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import lightning_normwatch
from lightning_normwatch.adapters.callback import NormWatch as PLNormWatch
from lightning_normwatch.lightning import NormWatch as LNormWatch

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pytorch_lightning", "lightning.pytorch")


def module_class(package: str) -> type:
    """The same regression module, subclassing ``package``'s ``LightningModule``."""
    base = importlib.import_module(package).LightningModule

    class Regressor(base):  # type: ignore[misc, valid-type]
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(self(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return Regressor


def fit(package: str, root: Path, net: nn.Module, loggers: list[Any], max_steps: int = 6, **options: Any) -> Any:
    """Fit ``net`` for ``max_steps`` with ``package``'s Trainer and the NormWatch made for it."""
    pl = importlib.import_module(package)
    callback_cls = PLNormWatch if package == "pytorch_lightning" else LNormWatch
    opts = dict(every_n_steps=2, warmup_steps=0, reference_steps=2, on_alert="ignore") | options
    cb = callback_cls(**opts)
    trainer = pl.Trainer(
        default_root_dir=str(root),
        max_steps=max_steps,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        devices=1,
        logger=loggers,
        callbacks=[cb],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module_class(package)(net), loader(regression_data(n=256)))
    return cb


def csv_rows(log_dir: str | Path) -> list[dict[str, str]]:
    with open(Path(log_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


def last_values(rows: list[dict[str, str]], prefix: str = "normwatch/") -> dict[str, float]:
    out: dict[str, float] = {}
    for row in rows:
        out |= {k: float(v) for k, v in row.items() if k.startswith(prefix) and v != ""}
    return out


def mlp_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))


# --------------------------------------------------------------------------------------- both packages
def test_lightning_and_pytorch_lightning_fits_give_the_same_figures(tmp_path: Path) -> None:
    runs = {}
    for package in PACKAGES:
        loggers_module = importlib.import_module(f"{package}.loggers")
        csv_logger = loggers_module.CSVLogger(tmp_path / package, name="csv")
        tb_logger = loggers_module.TensorBoardLogger(tmp_path / package, name="tb")
        cb = fit(package, tmp_path / package, mlp_net(), [csv_logger, tb_logger])
        runs[package] = (cb, csv_rows(csv_logger.log_dir), tb_logger.log_dir)
    (cb_pl, rows_pl, tb_pl), (cb_l, rows_l, tb_l) = runs["pytorch_lightning"], runs["lightning.pytorch"]
    assert isinstance(cb_l, importlib.import_module("lightning.pytorch").Callback)
    # every figure of every logging step, through each package's own CSVLogger
    figures_pl = [{k: v for k, v in r.items() if k.startswith("normwatch/")} for r in rows_pl]
    figures_l = [{k: v for k, v in r.items() if k.startswith("normwatch/")} for r in rows_l]
    assert figures_pl == figures_l
    logged = {k for r in figures_pl for k, v in r.items() if v}
    assert {"normwatch/net.1/mean", "normwatch/net.3/std", "normwatch/input/channel_kurtosis"} <= logged
    assert any(k.endswith("/std_log_ratio") for k in logged)  # drift figures after the reference window
    assert cb_pl.last_result.figures == cb_l.last_result.figures
    # the lightning.pytorch TensorBoardLogger is recognised: histograms and the layout are written
    for log_dir in (tb_pl, tb_l):
        acc = EventAccumulator(str(log_dir), size_guidance={"histograms": 0, "scalars": 0})
        acc.Reload()
        assert "normwatch/net.1" in acc.Tags()["histograms"]
        assert "normwatch/net.1/std" in acc.Tags()["scalars"]


def test_lightning_cli_refused_the_pytorch_lightning_class_and_accepts_the_adapter() -> None:
    import lightning.pytorch as L
    import pytorch_lightning as pl

    assert not issubclass(PLNormWatch, L.Callback)  # why lightning_normwatch.lightning exists
    assert issubclass(LNormWatch, L.Callback) and issubclass(LNormWatch, pl.Callback)
    # one implementation: the adapter defines nothing of its own
    assert {k for k in vars(LNormWatch) if not k.startswith("__")} == set()


# --------------------------------------------------------------------------------------- LightningCLI
def example_cli_module(package: str) -> Any:
    """``examples/lightning_cli.py``, its imports of ``lightning.pytorch`` pointed at ``package``."""
    source = (ROOT / "examples" / "lightning_cli.py").read_text().replace("lightning.pytorch", package)
    module = type(sys)(f"lightning_cli_{package.replace('.', '_')}")
    sys.modules[module.__name__] = module  # jsonargparse resolves the classes by module name
    exec(compile(source, str(ROOT / "examples" / "lightning_cli.py"), "exec"), module.__dict__)
    return module


def _run_cli(package: str, root: Path) -> Any:
    example = example_cli_module(package)
    cli_module = importlib.import_module(f"{package}.cli")
    args = [
        "fit",
        "--config",
        str(ROOT / "examples" / "lightning_cli.yaml"),
        "--trainer.max_steps=3",
        f"--trainer.default_root_dir={root}",
        "--trainer.enable_model_summary=false",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cli_module.LightningCLI(example.DigitsClassifier, example.Digits, args=args)


@pytest.mark.parametrize("package", PACKAGES)
def test_lightning_cli_runs_the_example_yaml(package: str, tmp_path: Path) -> None:
    pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse (extra `integrations`)")
    cli = _run_cli(package, tmp_path)
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, PLNormWatch)]
    # every YAML value reached the callback, nested thresholds included
    assert cb.thresholds.dead == 0.6 and cb.thresholds.scale_drift == 5.0
    assert cb.thresholds.shift == lightning_normwatch.Thresholds().shift  # the others keep their defaults
    assert (cb.every_n_steps, cb.config.warmup_steps, cb.config.reference_steps) == (10, 20, 50)
    assert cb.exclude == ["net.4"] or tuple(cb.exclude) == ("net.4",)
    assert cli.trainer.global_step == 3
    # it watched the model: step 0 was a logging step, the excluded output layer is not there
    assert set(cb.last_result.figures) == {"input", "net.0", "net.1", "net.2", "net.3"}


# --------------------------------------------------------------------------------------- loggers
class Pair(nn.Module):
    """A leaf module returning a tuple: its tensors are named ``<name>[0]`` and ``<name>[1]``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width, width) / width**0.5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x @ self.weight
        return h, torch.tanh(h)


class First(nn.Module):
    def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return pair[1]


def colliding_net() -> nn.Sequential:
    """``net.1[0]``, ``net.1[1]``, ``net.10``, ``net.11``: MLflow's key sanitization maps the first two
    onto the last two (``[`` and ``]`` deleted)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(16, 8), Pair(8), First()]
    while len(layers) < 11:
        layers += [nn.Linear(8, 8), nn.Tanh()]
    return nn.Sequential(*layers[:11], nn.Linear(8, 1))


def test_every_logger_gets_every_figure_under_a_distinct_name(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 keeps the file store behind this flag
    from mlflow.tracking import MlflowClient
    from pytorch_lightning.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger

    uri = f"file:{tmp_path / 'mlruns'}"
    csv_logger = CSVLogger(tmp_path, name="csv")
    mlflow_logger = MLFlowLogger(experiment_name="normwatch", tracking_uri=uri)
    tb1, tb2 = TensorBoardLogger(tmp_path, name="tb1"), TensorBoardLogger(tmp_path, name="tb2")
    cb = fit("pytorch_lightning", tmp_path, colliding_net(), [csv_logger, mlflow_logger, tb1, tb2], max_steps=3)
    mlflow_logger.finalize("success")
    tensors = set(cb.last_result.figures)
    assert {"net.1[0]", "net.1[1]", "net.10", "net.11"} <= tensors

    from_csv = last_values(csv_rows(csv_logger.log_dir))
    assert {k.split("/")[1] for k in from_csv if k.count("/") == 2} >= tensors
    metrics = MlflowClient(tracking_uri=uri).get_run(mlflow_logger.run_id).data.metrics
    from_mlflow = {k: v for k, v in metrics.items() if k.startswith("normwatch/")}
    # nothing lost to a collision: as many keys, and the same values, as the CSV logger got
    assert len(from_mlflow) == len(from_csv)
    assert sorted(from_mlflow.values()) == pytest.approx(sorted(from_csv.values()), nan_ok=True)
    # the documented readable names
    assert from_mlflow["normwatch/net.1-0/mean"] == pytest.approx(from_csv["normwatch/net.1[0]/mean"])
    assert from_mlflow["normwatch/net.10/mean"] == pytest.approx(from_csv["normwatch/net.10/mean"])
    assert from_mlflow["normwatch/net.1-0/mean"] != from_mlflow["normwatch/net.10/mean"]

    # histograms (and scalars) to every TensorBoardLogger, not only the first
    hist = []
    for logger in (tb1, tb2):
        acc = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0, "scalars": 0, "tensors": 0})
        acc.Reload()
        hist.append({t.removeprefix("normwatch/") for t in acc.Tags()["histograms"]})
        assert {k for k in acc.Tags()["scalars"] if k.startswith("normwatch/")} == set(from_csv)
    # one histogram per watched tensor (a module with a tuple output also has update figures under its own name)
    assert hist[0] == hist[1] == {k for k, f in cb.last_result.figures.items() if "std" in f}


def wandb_history(path: Path) -> list[dict[str, Any]]:
    """Every ``history`` record of an offline ``.wandb`` file (LevelDB log framing after a 7-byte header)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, chunk, rows = path.read_bytes(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            break
        if kind in (1, 4):  # a FULL record, or the LAST piece of one
            record = pb.Record()
            record.ParseFromString(chunk)
            chunk = b""
            if record.WhichOneof("record_type") == "exit":
                rows.append({"_exit": True})
            elif record.WhichOneof("record_type") == "history":
                rows.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
    return rows


def test_wandb_offline_gets_every_figure_under_a_distinct_name(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(key, value)
    from pytorch_lightning.loggers import CSVLogger, WandbLogger

    csv_logger = CSVLogger(tmp_path, name="csv")
    wandb_logger = WandbLogger(project="normwatch", save_dir=str(tmp_path), offline=True)
    cb = fit("pytorch_lightning", tmp_path, colliding_net(), [csv_logger, wandb_logger], max_steps=3)
    wandb_logger.experiment.finish()
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    for _ in range(100):  # W&B's service process writes the file: wait for the run's exit record
        rows = wandb_history(run_file)
        if rows and rows[-1].get("_exit"):
            break
        time.sleep(0.1)
    from_wandb: dict[str, float] = {}
    for row in rows:  # read back from W&B's own offline file
        from_wandb |= {k: v for k, v in row.items() if k.startswith("normwatch/")}
    from_csv = last_values(csv_rows(csv_logger.log_dir))
    assert {"net.1[0]", "net.10"} <= set(cb.last_result.figures)
    assert set(from_wandb) == set(from_csv)  # W&B keeps the names as they are: nothing merged
    keys = sorted(from_csv)
    assert [from_wandb[k] for k in keys] == pytest.approx([from_csv[k] for k in keys], nan_ok=True)
