"""Calibrate the default alert thresholds: healthy runs must stay below them, broken runs above.

Trains several small healthy models (different architectures, optimizers, activations, with and
without batch norm, on data that ships with scikit-learn or is generated) and several broken ones,
records every figure an alert rule reads at every logging step after the reference window, and
prints, per rule, the largest value seen on healthy runs and the largest on each broken run.

Run: ``.venv/bin/python benchmarks/calibrate.py`` (about 5 minutes on 2 cores; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_normwatch import NormWatch

RULES = (
    "dead",
    "saturated",
    "scale_drift",
    "mean_drift",
    "shift",
    "feature_scale",
    "outlier",
    "non_normal",
    "input_changed",
    "input_drift",
)


class Classifier(pl.LightningModule):
    def __init__(self, net: nn.Module, lr: float, opt: str = "adam", loss: str = "ce") -> None:
        super().__init__()
        self.net, self.lr, self.opt, self.loss = net, lr, opt, loss

    def training_step(self, batch, batch_idx):  # noqa: D102
        x, y = batch
        out = self.net(x)
        if self.loss == "ce":
            return nn.functional.cross_entropy(out, y)
        return nn.functional.mse_loss(out, y)

    def configure_optimizers(self):  # noqa: D102
        cls = torch.optim.Adam if self.opt == "adam" else torch.optim.SGD
        return cls(self.parameters(), lr=self.lr)


def digits(scaled: bool = True, image: bool = False) -> TensorDataset:
    d = load_digits()
    x = d.data.astype("float32")
    if scaled:
        x = StandardScaler().fit_transform(x).astype("float32")
    t = torch.from_numpy(x)
    if image:
        t = t.reshape(-1, 1, 8, 8)
    return TensorDataset(t, torch.from_numpy(d.target).long())


def cancer(scaled: bool = True) -> TensorDataset:
    d = load_breast_cancer()
    x = d.data.astype("float32")
    if scaled:
        x = StandardScaler().fit_transform(x).astype("float32")
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(d.target).long())


def synthetic(n: int = 2048, d: int = 16) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=g)
    y = torch.tanh(x @ torch.randn(d, 1, generator=g) / d**0.5)
    return TensorDataset(x, y)


def sequences(n: int = 1024, t: int = 12, d: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, t, d, generator=g)
    y = (x.mean((1, 2)) > 0).long()
    return TensorDataset(x, y)


class SeqNet(nn.Module):
    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d, 4, 64, dropout=0.1, batch_first=True), 2, enable_nested_tensor=False
        )
        self.head = nn.Linear(d, 2)

    def forward(self, x):  # noqa: D102
        return self.head(self.encoder(x).mean(1))


class NaNAfter(nn.Module):
    """Identity until ``step`` forward calls, then NaN."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step, self.calls = step, 0

    def forward(self, x):  # noqa: D102
        self.calls += 1
        return x * float("nan") if self.calls > self.step else x * 1.0


def mlp(d_in: int, d_out: int, act: Callable[[], nn.Module] = nn.ReLU, width: int = 64, bn: bool = False):
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(3):
        layers += [nn.Linear(d, width)] + ([nn.BatchNorm1d(width)] if bn else []) + [act()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, d_out))


def cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def digits_unnormalized_from(step: int, batch: int = 64) -> Dataset:
    """Standardized digits until ``step``, then the raw pixels (a normalization step dropped mid-run)."""
    base = digits()
    raw = digits(scaled=False)

    class Dropped(Dataset):
        def __len__(self) -> int:
            return 10**6

        def __getitem__(self, i: int):  # noqa: ANN204
            j = (i * 7919) % len(base)
            return (raw if i // batch >= step else base)[j]

    return Dropped()


def dead_mlp() -> nn.Sequential:
    net = mlp(64, 10)
    nn.init.constant_(net[2].bias, -100.0)
    return net


def saturated_mlp() -> nn.Sequential:
    net = mlp(64, 10, act=nn.Sigmoid)
    with torch.no_grad():
        net[0].weight.mul_(20)
    return net


@dataclass
class Run:
    name: str
    healthy: bool
    model: Callable[[], pl.LightningModule]
    data: Callable[[], Dataset]
    batch: int = 64
    shuffle: bool = True


RUNS = [
    Run("mlp-relu-sgd synthetic", True, lambda: Classifier(mlp(16, 1), 0.05, "sgd", "mse"), synthetic),
    Run("mlp-relu-adam digits", True, lambda: Classifier(mlp(64, 10), 1e-3), digits),
    Run("mlp-tanh-sgd cancer", True, lambda: Classifier(mlp(30, 2, nn.Tanh), 0.05, "sgd"), cancer),
    Run("mlp-sigmoid+bn-sgd digits", True, lambda: Classifier(mlp(64, 10, nn.Sigmoid, bn=True), 0.1, "sgd"), digits),
    Run("mlp-gelu-adam digits", True, lambda: Classifier(mlp(64, 10, nn.GELU), 3e-3), digits),
    Run("cnn-bn-adam digits", True, lambda: Classifier(cnn(), 1e-3), lambda: digits(image=True)),
    Run("transformer-adam seq", True, lambda: Classifier(SeqNet(), 1e-3), sequences, 32),
    Run("BROKEN dead relu (bias -100)", False, lambda: Classifier(dead_mlp(), 1e-3), digits),
    Run("BROKEN saturated sigmoid (init x20)", False, lambda: Classifier(saturated_mlp(), 1e-3), digits),
    Run("BROKEN unscaled inputs", False, lambda: Classifier(mlp(30, 2), 1e-3), lambda: cancer(scaled=False)),
    Run("BROKEN lr blow-up (sgd lr 1.5)", False, lambda: Classifier(mlp(64, 10), 1.5, "sgd"), digits),
    Run(
        "BROKEN normalization dropped (step 500)",
        False,
        lambda: Classifier(mlp(64, 10), 1e-3),
        lambda: digits_unnormalized_from(500),
        shuffle=False,
    ),
    Run(
        "BROKEN NaN layer",
        False,
        lambda: Classifier(nn.Sequential(mlp(64, 64), NaNAfter(350), nn.Linear(64, 10)), 1e-3),
        digits,
    ),
]


def rule_values(fig: dict[str, float], role: str) -> dict[str, float]:
    """The figure each rule compares with its threshold."""
    f = {k: v for k, v in fig.items() if isinstance(v, float) and math.isfinite(v)}
    out = {
        "dead": f.get("dead", math.nan) if role in ("activation", "bounded", "other") else math.nan,
        "saturated": f.get("saturated", math.nan) if role == "bounded" else math.nan,
        "scale_drift": math.exp(abs(f["std_log_ratio"])) if "std_log_ratio" in f else math.nan,
        "mean_drift": abs(f.get("mean_shift", math.nan)),
        "shift": f.get("shape_psi", math.nan),
        "outlier": f.get("max_abs", math.nan) / f["abs_median"] if f.get("abs_median", 0) > 0 else math.nan,
        "feature_scale": math.nan,
        "non_normal": math.nan,
        # inputs: the largest share of features changed at one step, and drifted (changed twice in a row)
        "input_changed": f.get("feature_changed_share", math.nan),
        "input_drift": f.get("feature_drift_share", math.nan),
    }
    if role == "input" and "feature_rms_ratio" in f:
        out["feature_scale"] = max(f["feature_rms_ratio"], f["feature_rms_max"])
    if role in ("input", "preact"):
        out["non_normal"] = max(abs(f.get("channel_skew", 0.0)) / 2.0, f.get("channel_kurtosis", 0.0) / 4.0)
    return out


class Recorder(pl.Callback):
    def __init__(self, watch: NormWatch) -> None:
        self.watch, self.maxima = watch, {r: (0.0, "") for r in RULES}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: D102
        res = self.watch.last_result
        if res is None or res.step != trainer.global_step - 1:
            return
        for key, fig in res.figures.items():
            info = self.watch.monitor.info(key)
            for rule, value in rule_values(fig, info.role).items():
                drift_rule = rule in ("scale_drift", "mean_drift", "shift")
                if drift_rule and info.role == "input":
                    continue  # inputs are judged per feature (input_drift)
                if drift_rule and (not self.watch.monitor.reference_ready(res.step) or key == list(res.figures)[-1]):
                    continue  # no reference yet, or the model's output (drift alerts skip it)
                if math.isfinite(value) and value > self.maxima[rule][0]:
                    self.maxima[rule] = (value, key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps = 150 if args.quick else args.steps
    torch.set_num_threads(1)
    print(f"{'run':38s} " + " ".join(f"{r:>13s}" for r in RULES) + "   alerts raised (kind@module)")
    t0 = time.time()
    for run in RUNS:
        pl.seed_everything(0, verbose=False)
        watch = NormWatch(every_n_steps=10, on_alert="ignore", warmup_steps=100, reference_steps=200)
        rec = Recorder(watch)
        trainer = pl.Trainer(
            max_steps=steps,
            callbacks=[watch, rec],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            accelerator="cpu",
        )
        loader = DataLoader(run.data(), batch_size=run.batch, shuffle=run.shuffle)
        trainer.fit(run.model(), loader)
        cells = " ".join(f"{rec.maxima[r][0]:13.3g}" for r in RULES)
        raised = sorted({f"{a.kind}@{a.module}" for a in watch.alerts if a.severity != "info"})
        print(f"{run.name:38s} {cells}   {', '.join(raised) or '-'}")
    print(f"thresholds (defaults): {NormWatch().thresholds}")
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
