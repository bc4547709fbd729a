"""Calibrate the default alert thresholds: healthy runs must stay below them, broken runs above.

Trains several small healthy models (different architectures, optimizers, activations, with and
without batch norm, on data that ships with scikit-learn or is generated) and several broken ones,
records every figure an alert rule reads at every logging step after the reference window, and
prints, per rule, the largest value seen on healthy runs and the largest on each broken run.

Run: ``.venv/bin/python benchmarks/calibrate.py`` (about 5 minutes on 2 cores; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import logging
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
from lightning_normwatch.judge.collapse import collapse_ratio
from lightning_normwatch.judge.depth import depth_ratios

RULES = (
    "dead",
    "saturated",
    "scale_drift",
    "mean_drift",
    "shift",
    "feature_scale",
    "outlier",
    "non_normal",
    "vanishing",
    "exploding",
    "collapse",
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


def he_stack(depth: int = 20, width: int = 128, gain: float = 1.0, d_in: int = 64, d_out: int = 10) -> nn.Sequential:
    """``depth`` Linear+ReLU layers, He-initialised times ``gain`` (RMS changes by ``gain`` per layer)."""
    layers: list[nn.Module] = []
    for i in range(depth):
        lin = nn.Linear(d_in if i == 0 else width, width)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        with torch.no_grad():
            lin.weight.mul_(gain)
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, d_out))


class ResidualMLP(nn.Module):
    """Pre-norm residual MLP: ``h + W2 relu(W1 LN(h))``, 12 blocks."""

    def __init__(self, d_in: int = 64, d_out: int = 10, blocks: int = 12, width: int = 64) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width))
            for _ in range(blocks)
        )
        self.out = nn.Linear(width, d_out)

    def forward(self, x):  # noqa: D102
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class ConvNeXtNet(nn.Module):
    """ConvNeXt-style blocks: depthwise conv, then LayerNorm and an MLP on channels-last ``[B, H, W, C]``."""

    def __init__(self, c: int = 32, blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.dw = nn.ModuleList(nn.Conv2d(c, c, 7, padding=3, groups=c) for _ in range(blocks))
        self.norm = nn.ModuleList(nn.LayerNorm(c) for _ in range(blocks))
        self.fc1 = nn.ModuleList(nn.Linear(c, 4 * c) for _ in range(blocks))
        self.act = nn.GELU()  # one module reused by every block: one entry per call (act, act#2)
        self.fc2 = nn.ModuleList(nn.Linear(4 * c, c) for _ in range(blocks))
        self.head = nn.Linear(c, 10)

    def forward(self, x):  # noqa: D102
        x = self.stem(x)
        for dw, norm, fc1, fc2 in zip(self.dw, self.norm, self.fc1, self.fc2, strict=True):
            y = norm(dw(x).permute(0, 2, 3, 1))
            x = x + fc2(self.act(fc1(y))).permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


class PreNormTransformer(nn.Module):
    def __init__(self, d: int = 32, layers: int = 6) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.1, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 2)

    def forward(self, x):  # noqa: D102
        return self.head(self.norm(self.encoder(x)).mean(1))


class BrokenBias(Classifier):
    """A 30-block MLP whose layer-20 Linear gets bias -50 at step ``at``: its ReLU dies, the signal vanishes."""

    def __init__(self, at: int = 400) -> None:
        torch.manual_seed(0)
        layers: list[nn.Module] = [nn.Linear(16, 32), nn.ReLU()]
        for _ in range(29):
            layers += [nn.Linear(32, 32), nn.ReLU()]
        for m in layers:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        super().__init__(nn.Sequential(*layers, nn.Linear(32, 2)), 1e-3)
        self.at = at

    def training_step(self, batch, batch_idx):  # noqa: D102
        if self.global_step == self.at:
            with torch.no_grad():
                self.net[40].bias.fill_(-50.0)
        return super().training_step(batch, batch_idx)


class GRUNet(nn.Module):
    """A GRU over the sequence, the last output to a linear head."""

    def __init__(self, d: int = 32, h: int = 64) -> None:
        super().__init__()
        self.gru = nn.GRU(d, h, batch_first=True)
        self.head = nn.Linear(h, 2)

    def forward(self, x):  # noqa: D102
        return self.head(self.gru(x)[0][:, -1])


def classes(n: int = 2048, d: int = 16) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def deep_bn_cnn(blocks: int = 8, c: int = 16) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(blocks):
        layers += [nn.Conv2d(1 if i == 0 else c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


class FrozenBN(Classifier):
    """The frozen-BN bug: BatchNorm layers put in eval mode at every epoch start."""

    def on_train_epoch_start(self) -> None:  # noqa: D102
        for m in self.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.eval()


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


def collapsing_tanh(depth: int = 20, width: int = 64, gain: float = 0.35) -> nn.Sequential:
    """``shared/STATISTICS.md`` §8: default-initialised weights times ``gain``; the biases carry each layer's
    RMS while the spread across the batch's examples falls by orders of magnitude (batch-signal collapse)."""
    layers: list[nn.Module] = []
    for i in range(depth):
        lin = nn.Linear(64 if i == 0 else width, width)
        with torch.no_grad():
            lin.weight.mul_(gain)
        layers += [lin, nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


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
    steps: int | None = None  # a short run: this many steps with NormWatch's default (fitted) windows


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
    Run("resnet-mlp prenorm-adam digits", True, lambda: Classifier(ResidualMLP(), 1e-3), digits),
    Run("he-stack 20x128-adam digits", True, lambda: Classifier(he_stack(), 1e-3), digits),
    Run("cnn-bn 8 blocks-adam digits", True, lambda: Classifier(deep_bn_cnn(), 1e-3), lambda: digits(image=True)),
    Run("convnext channels-last digits", True, lambda: Classifier(ConvNeXtNet(), 1e-3), lambda: digits(image=True)),
    Run("prenorm-transformer 6-adam seq", True, lambda: Classifier(PreNormTransformer(), 1e-3), sequences, 32),
    Run("gru-adam seq", True, lambda: Classifier(GRUNet(), 3e-3), sequences, 32),
    Run("BROKEN vanishing 20 layers (1 -> .04)", False, lambda: Classifier(he_stack(gain=0.04**0.05), 1e-3), digits),
    Run("BROKEN exploding 20 layers (x1.5)", False, lambda: Classifier(he_stack(gain=1.5), 1e-4), digits),
    Run("BROKEN frozen BN", False, lambda: FrozenBN(mlp(64, 10, bn=True), 1e-3), digits),
    Run("BROKEN cascade (bias -50, layer 20/30)", False, lambda: BrokenBias(400), classes),
    Run(
        "BROKEN normalization dropped (step 500)",
        False,
        lambda: Classifier(mlp(64, 10), 1e-3),
        lambda: digits_unnormalized_from(500),
        shuffle=False,
    ),
    Run("BROKEN collapse tanh 20 layers (w x0.35)", False, lambda: Classifier(collapsing_tanh(), 1e-3), digits),
    Run("short 200: mlp-relu-adam digits", True, lambda: Classifier(mlp(64, 10), 1e-3), digits, steps=200),
    Run("short 200: cnn-bn-adam digits", True, lambda: Classifier(cnn(), 1e-3), lambda: digits(image=True), steps=200),
    Run("short 300: resnet-mlp prenorm digits", True, lambda: Classifier(ResidualMLP(), 1e-3), digits, steps=300),
    Run(
        "short 300: prenorm-transformer seq",
        True,
        lambda: Classifier(PreNormTransformer(), 1e-3),
        sequences,
        32,
        steps=300,
    ),
    Run(
        "BROKEN short 200: norm. dropped (step 120)",
        False,
        lambda: Classifier(mlp(64, 10), 1e-3),
        lambda: digits_unnormalized_from(120),
        shuffle=False,
        steps=200,
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
        session = self.watch.session
        # activation figures only: the update-size figures of parameter-holding modules are calibrated by
        # calibrate_updates.py
        keys = [k for k in res.figures if k in session.collector.infos]
        prediction = session.evaluator.prediction_keys(res.figures)  # the depth rules leave these out
        info = session.collector.info
        sequence = [(info(k), res.figures[k]) for k in keys if info(k).role != "input" and k not in prediction]
        ratios = (*depth_ratios(sequence), collapse_ratio(sequence))
        for rule, value in zip(("vanishing", "exploding", "collapse"), ratios, strict=True):
            if value > self.maxima[rule][0]:
                self.maxima[rule] = (value, "")
        for key in keys:
            fig, info = res.figures[key], session.collector.info(key)
            for rule, value in rule_values(fig, info.role).items():
                drift_rule = rule in ("scale_drift", "mean_drift", "shift")
                if drift_rule and info.role == "input":
                    continue  # inputs are judged per feature (input_drift)
                ready = self.watch.session.evaluator.reference_ready(res.step)
                if drift_rule and (not ready or key == keys[-1]):
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
    # one table row per run: NormWatch's own start line, alert lines and end-of-fit summary are left out
    logging.getLogger("lightning_normwatch").setLevel(logging.CRITICAL)
    print(f"{'run':44s} " + " ".join(f"{r:>13s}" for r in RULES) + "   root warnings (kind@module), followers")
    t0 = time.time()
    failures = []
    for run in RUNS:
        pl.seed_everything(0, verbose=False)
        if run.steps is None:  # the long runs keep the unfitted windows, so their rows stay comparable
            watch = NormWatch(every_n_steps=10, on_alert="ignore", warmup_steps=100, reference_steps=200)
        else:
            watch = NormWatch(every_n_steps=10, on_alert="ignore")
        rec = Recorder(watch)
        trainer = pl.Trainer(
            max_steps=run.steps or steps,
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
        warned = [a for a in watch.alerts if a.severity != "info"]
        raised = sorted({f"{a.kind}@{a.module}" for a in warned if a.caused_by is None})
        followers = len({(a.kind, a.module) for a in warned if a.caused_by is not None})
        roots = f"{len(raised)} root{'s' if len(raised) != 1 else ''}: " + ", ".join(raised)
        shown = roots + (f" (+{followers} followers)" if followers else "") if warned else "-"
        print(f"{run.name:44s} {cells}   {shown}", flush=True)
        if bool(warned) == run.healthy:
            failures.append(run.name)
    print(f"thresholds (defaults): {NormWatch().thresholds}")
    # the parameter side (update sizes, gradient flow): its own healthy and broken cases, in plain loops
    import calibrate_updates

    print("\nparameter side (benchmarks/calibrate_updates.py):")
    failures += calibrate_updates.calibrate(min(steps, 300), every=5)
    print(f"({time.time() - t0:.0f} s)")
    if failures:
        raise SystemExit(f"calibration FAILED (healthy run warned, or broken run not caught): {failures}")
    print("calibration passed: no warning on healthy runs, every broken run caught")


if __name__ == "__main__":
    main()
