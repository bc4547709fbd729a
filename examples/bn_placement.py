"""Why batch norm before the activation? Doesn't the activation "denormalize" everything again?

The same network (digits, 64 -> 3 hidden layers of 100 -> 10, SGD with momentum) in three forms:

  bn_before: Linear -> BatchNorm -> ReLU   (the usual placement, Ioffe & Szegedy 2015)
  bn_after:  Linear -> ReLU -> BatchNorm
  no_bn:     Linear -> ReLU

NormWatch watches every layer. For each hidden layer the example reads, from NormWatch's figures,
what the ReLU *receives* (mean, std, percentiles) and what it *passes* (share of exact zeros, dead
units), the scale across depth and its drift over training; the loss on the whole training set is
measured at every logging step, over several seeds. After training, the tensors before and after
each ReLU are captured once to draw their histograms against the fitted normal and their Q-Q plots.
The printed conclusion is computed from this run's numbers.

Run: ``.venv/bin/python examples/bn_placement.py`` (``--quick`` for a smoke run); figures in ``--out``
(default ``examples_out/bn_placement``), TensorBoard logs under it in ``logs/``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import Counter

import numpy as np
import pytorch_lightning as pl
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Recorder, alert_rows, figure_of, fmt, make_trainer, print_conclusion, quiet, write_json  # noqa: E402

from lightning_normwatch import NormWatch  # noqa: E402

VARIANTS = {"bn_before": "Linear->BN->ReLU", "bn_after": "Linear->ReLU->BN", "no_bn": "Linear->ReLU (no BN)"}
DEPTH = 3
WIDTH = 100


class Net(pl.LightningModule):
    """One Sequential ``net``; ``relu_in[i]`` / ``relu_out[i]``: NormWatch keys around hidden layer i's ReLU."""

    def __init__(self, variant: str, lr: float = 0.05) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        self.relu_in: list[str] = []
        self.relu_out: list[str] = []
        d = 64
        for _ in range(DEPTH):
            block = {
                "bn_before": [nn.Linear(d, WIDTH), nn.BatchNorm1d(WIDTH), nn.ReLU()],
                "bn_after": [nn.Linear(d, WIDTH), nn.ReLU(), nn.BatchNorm1d(WIDTH)],
                "no_bn": [nn.Linear(d, WIDTH), nn.ReLU()],
            }[variant]
            for m in block:
                if isinstance(m, nn.ReLU):
                    self.relu_in.append(f"net.{len(layers) - 1}")
                    self.relu_out.append(f"net.{len(layers)}")
                layers.append(m)
            d = WIDTH
        self.net = nn.Sequential(*layers, nn.Linear(d, 10))
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    d = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(d.data, d.target, test_size=0.25, random_state=0, stratify=d.target)
    sc = StandardScaler().fit(x_tr)
    f = lambda a: torch.as_tensor(sc.transform(a), dtype=torch.float32)  # noqa: E731
    return f(x_tr), torch.as_tensor(y_tr).long(), f(x_te), torch.as_tensor(y_te).long()


def train_one(variant: str, seed: int, data: tuple, steps: int, logdir: str, quick: bool) -> tuple[dict, Net]:
    x_tr, y_tr, x_te, y_te = data
    pl.seed_everything(seed, verbose=False)
    model = Net(variant)
    warm, ref = (20, 30) if quick else (100, 200)
    watch = NormWatch(every_n_steps=10, warmup_steps=warm, reference_steps=ref)

    def full_loss(trainer: pl.Trainer, module: pl.LightningModule, step: int) -> dict[str, float]:
        # The training objective on the whole training set: BN in training mode (statistics of the batch, here
        # all 1,347 rows), its running statistics left as they were (momentum 0, counter restored).
        bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm1d)]
        saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
        for m in bns:
            m.momentum = 0.0
        with torch.no_grad():
            loss = float(nn.functional.cross_entropy(module(x_tr), y_tr))
        for m, (mom, count) in zip(bns, saved, strict=True):
            m.momentum = mom
            m.num_batches_tracked.copy_(count)
        return {"train_loss_full": loss}

    recorder = Recorder(watch, full_loss)
    trainer = make_trainer(logdir, variant, steps, [watch, recorder], version=f"seed_{seed}")
    loader = DataLoader(
        TensorDataset(x_tr, y_tr), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    trainer.fit(model, loader)
    model.eval()
    with torch.no_grad():
        acc = float((model(x_te).argmax(1) == y_te).float().mean())
    names = ("mean", "std", "zeros", "dead", "skew", "kurtosis", "p15", "p50", "p85", "std_log_ratio", "mean_shift")
    series = {
        key: {n: [figure_of(h["figures"], key, n) for h in recorder.history] for n in names}
        for key in model.relu_in + model.relu_out
    }
    return {
        "variant": variant,
        "seed": seed,
        "steps": [h["step"] for h in recorder.history],
        "loss": [h["train_loss_full"] for h in recorder.history],
        "test_accuracy": acc,
        "alerts": alert_rows(watch),
        "relu_in": model.relu_in,
        "relu_out": model.relu_out,
        "figures": series,
    }, model


def capture(model: Net, x: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input, output) of each hidden ReLU on the training set, in training mode (batch statistics)."""
    got: list[tuple[np.ndarray, np.ndarray]] = []
    relus = [m for m in model.net if isinstance(m, nn.ReLU)]
    hooks = [
        r.register_forward_hook(lambda m, a, o: got.append((a[0].numpy().copy(), o.numpy().copy()))) for r in relus
    ]
    model.train()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return got


def late(values: list[float], steps: list[int], after: int) -> float:
    """Median of a figure over the logging steps after ``after`` (the second half of training)."""
    v = [x for x, s in zip(values, steps, strict=False) if s >= after and x is not None and math.isfinite(x)]
    return float(np.median(v)) if v else math.nan


def summarize(runs: list[dict], steps: int) -> dict:
    out = {}
    for v in VARIANTS:
        rs = [r for r in runs if r["variant"] == v]
        half = steps // 2
        per_layer = []
        for i in range(DEPTH):
            fin = [r["figures"][r["relu_in"][i]] for r in rs]
            fout = [r["figures"][r["relu_out"][i]] for r in rs]
            st = rs[0]["steps"]

            def med(fs: list[dict], n: str, st: list[int] = st, half: int = half) -> float:
                return float(np.median([late(f[n], st, half) for f in fs]))

            mean, std = med(fin, "mean"), med(fin, "std")
            per_layer.append(
                {
                    "relu_input_mean": mean,
                    "relu_input_std": std,
                    "relu_input_mean_over_std": abs(mean) / std if std > 0 else math.nan,
                    "relu_input_p50": med(fin, "p50"),
                    "relu_output_zeros": med(fout, "zeros"),
                    "relu_output_dead": med(fout, "dead"),
                    "relu_input_abs_log_std_drift_max": float(
                        np.max([np.nanmax(np.abs(np.array(f["std_log_ratio"], dtype=float)), initial=0.0) for f in fin])
                    ),
                }
            )
        finals = [r["loss"][-1] for r in rs]
        alerts = Counter(f"{a['kind']} ({a['severity']}) @ {a['module']}" for r in rs for a in r["alerts"])
        stds = [p["relu_input_std"] for p in per_layer]
        out[v] = {
            "layers": per_layer,
            "relu_input_abs_mean_over_std": float(np.median([p["relu_input_mean_over_std"] for p in per_layer])),
            "relu_input_std": float(np.median(stds)),
            "relu_alive_share": 1.0 - float(np.median([p["relu_output_zeros"] for p in per_layer])),
            "dead_units": float(np.max([p["relu_output_dead"] for p in per_layer])),
            "std_depth_ratio": max(stds) / min(stds) if min(stds) > 0 else math.inf,
            "std_drift_max": float(np.max([p["relu_input_abs_log_std_drift_max"] for p in per_layer])),
            "final_loss_median": float(np.median(finals)),
            "final_loss_min": float(np.min(finals)),
            "final_loss_max": float(np.max(finals)),
            "test_accuracy_median": float(np.median([r["test_accuracy"] for r in rs])),
            "alerts": dict(alerts),
            "seeds": len(rs),
        }
    return out


def conclusion(s: dict) -> list[str]:
    lines = []
    for v, label in VARIANTS.items():
        f = s[v]
        lines.append(
            f"{label:22s} ReLU input |mean|/std {fmt(f['relu_input_abs_mean_over_std'])}, "
            f"std {fmt(f['relu_input_std'])} "
            f"(across depth x{fmt(f['std_depth_ratio'])}), ReLU passes {fmt(100 * f['relu_alive_share'])}% of values, "
            f"dead units {fmt(100 * f['dead_units'])}%, |log std drift| max {fmt(f['std_drift_max'])}, "
            f"final loss median {fmt(f['final_loss_median'])} "
            f"(seeds {fmt(f['final_loss_min'])}-{fmt(f['final_loss_max'])}), "
            f"test accuracy {fmt(f['test_accuracy_median'])}"
        )
    b = s["bn_before"]
    centred = b["relu_input_abs_mean_over_std"] < 0.25
    unit = 0.5 <= b["relu_input_std"] <= 2.0
    half = 0.35 <= b["relu_alive_share"] <= 0.65
    lines.append(
        f"BN before the ReLU: its input is {'centred' if centred else 'NOT centred'} (|mean|/std "
        f"{fmt(b['relu_input_abs_mean_over_std'])}), {'of about unit scale' if unit else 'NOT of unit scale'} (std "
        f"{fmt(b['relu_input_std'])}), and the ReLU {'keeps about half' if half else 'does NOT keep about half'} "
        f"of its values ({fmt(100 * b['relu_alive_share'])}%)."
    )
    for v in ("bn_after", "no_bn"):
        f = s[v]
        lines.append(
            f"{VARIANTS[v]}: the ReLU receives |mean|/std {fmt(f['relu_input_abs_mean_over_std'])}, std "
            f"{fmt(f['relu_input_std'])} (x{fmt(f['std_depth_ratio'])} across depth), passes "
            f"{fmt(100 * f['relu_alive_share'])}% of values."
        )
    best = min(VARIANTS, key=lambda v: s[v]["final_loss_median"])
    lines.append(
        f"Lowest median final loss: {VARIANTS[best]} ({fmt(s[best]['final_loss_median'])}); "
        + ", ".join(f"{VARIANTS[v]} {fmt(s[v]['final_loss_median'])}" for v in VARIANTS if v != best)
        + "."
    )
    return lines


def plot(runs: list[dict], s: dict, captured: dict[str, list[tuple[np.ndarray, np.ndarray]]], out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    colors = dict(zip(VARIANTS, ["tab:blue", "tab:orange", "tab:grey"], strict=False))
    paths = []
    fig, axes = plt.subplots(len(VARIANTS) * DEPTH, 4, figsize=(13, 2.1 * len(VARIANTS) * DEPTH))
    for vi, (v, label) in enumerate(VARIANTS.items()):
        for i, (a, o) in enumerate(captured[v]):
            row = axes[vi * DEPTH + i]
            for j, (vals, what) in enumerate(((a, "ReLU input"), (o, "ReLU output"))):
                vals = vals.ravel()
                ax = row[2 * j]
                mu, sd = vals.mean(), vals.std()
                zeros = float((vals == 0).mean())
                nz = vals[vals != 0] if what == "ReLU output" else vals
                lo, hi = np.percentile(vals, [0.5, 99.5])
                dens, edges = np.histogram(nz, bins=60, range=(min(lo, 0.0), hi), density=True)
                ax.stairs(dens * nz.size / vals.size, edges, fill=True, color=colors[v], alpha=0.6)
                grid = np.linspace(min(lo, 0.0), hi, 200)
                ax.plot(grid, stats.norm.pdf(grid, mu, sd), "r-", lw=1)
                if what == "ReLU output":
                    ax.set_title(f"{label} layer {i + 1}: {what}, zeros {zeros:.0%}", fontsize=8)
                else:
                    ax.set_title(f"{label} layer {i + 1}: {what}, mean {mu:.2f} std {sd:.2f}", fontsize=8)
                ax.axvline(0, color="k", lw=0.5)
                ax.tick_params(labelsize=7)
                q = row[2 * j + 1]
                sample = np.sort(np.random.default_rng(0).choice(vals, size=min(2000, vals.size), replace=False))
                theo = stats.norm.ppf((np.arange(sample.size) + 0.5) / sample.size)
                q.plot(theo, (sample - mu) / sd if sd > 0 else sample, ".", ms=2, color=colors[v])
                q.plot([-3.5, 3.5], [-3.5, 3.5], "r-", lw=0.8)
                q.set_title(f"Q-Q against the fitted normal ({what})", fontsize=8)
                q.tick_params(labelsize=7)
    fig.tight_layout()
    p = os.path.join(out, "bn_placement_distributions.png")
    fig.savefig(p, dpi=80)
    plt.close(fig)
    paths.append(p)

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax = axes[0, 0]
    for v, label in VARIANTS.items():
        rs = [r for r in runs if r["variant"] == v]
        n = min(len(r["loss"]) for r in rs)
        losses = np.array([r["loss"][:n] for r in rs])
        st = np.array(rs[0]["steps"][:n])
        ax.plot(st, np.median(losses, 0), color=colors[v], label=f"{label} (median of {len(rs)} seeds)")
        ax.fill_between(st, losses.min(0), losses.max(0), color=colors[v], alpha=0.2)
    ax.set_yscale("log")
    ax.set_title("loss on the whole training set (band: min-max over seeds)", fontsize=9)
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    x = np.arange(DEPTH)
    for k, (v, label) in enumerate(VARIANTS.items()):
        ax.bar(
            x + (k - 1) * 0.27,
            [1 - p["relu_output_zeros"] for p in s[v]["layers"]],
            0.27,
            color=colors[v],
            label=f"{label}: share passed",
        )
        ax.plot(x + (k - 1) * 0.27, [p["relu_output_dead"] for p in s[v]["layers"]], "kx")
    ax.axhline(0.5, color="k", ls=":", lw=0.8)
    ax.set_xticks(x, [f"layer {i + 1}" for i in x])
    ax.set_title("ReLU: share of values passed (bars), dead units (x); 2nd half of training, NormWatch", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1, 0]
    for v, label in VARIANTS.items():
        ax.plot(x + 1, [p["relu_input_std"] for p in s[v]["layers"]], "o-", color=colors[v], label=label)
    ax.set_yscale("log")
    ax.set_xticks(x + 1)
    ax.set_xlabel("hidden layer")
    ax.set_title("std of the ReLU input across depth (NormWatch, 2nd half of training)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1, 1]
    for v, label in VARIANTS.items():
        r = [r for r in runs if r["variant"] == v][0]
        for i, key in enumerate(r["relu_in"]):
            vals = np.array([np.nan if y is None else y for y in r["figures"][key]["std_log_ratio"]], dtype=float)
            ax.plot(r["steps"], vals, color=colors[v], ls=["-", "--", ":"][i], label=f"{label} layer {i + 1}")
    ax.axhline(math.log(4), color="r", lw=0.8)
    ax.axhline(-math.log(4), color="r", lw=0.8)
    ax.set_title("drift: log(std / reference std) of the ReLU input (seed 0; red: alert threshold)", fontsize=9)
    ax.set_xlabel("step")
    ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    p = os.path.join(out, "bn_placement_training.png")
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed x 100 steps")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per variant (default 3, quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 1500, quick 100)")
    parser.add_argument("--out", default="examples_out/bn_placement", help="output folder")
    args = parser.parse_args()
    seeds = args.seeds or (1 if args.quick else 3)
    steps = args.steps or (100 if args.quick else 1500)
    quiet()
    os.makedirs(args.out, exist_ok=True)
    start, cpu = time.perf_counter(), time.process_time()
    data = digits()
    runs, captured = [], {}
    for v in VARIANTS:
        for seed in range(seeds):
            run, model = train_one(v, seed, data, steps, os.path.join(args.out, "logs"), args.quick)
            runs.append(run)
            if seed == 0:
                captured[v] = capture(model, data[0])
    s = summarize(runs, steps)
    lines = conclusion(s)
    pngs = plot(runs, s, captured, args.out)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    write_json(
        os.path.join(args.out, "results.json"),
        {
            "steps": steps,
            "seeds": seeds,
            "summary": s,
            "runs": runs,
            "conclusion": lines,
            "seconds": elapsed,
            "cpu_seconds": cpu,
        },
    )
    print(f"BN placement: {len(runs)} runs of {steps} steps in {elapsed:.0f} s (CPU {cpu:.0f} s)")
    print("NormWatch alerts (kind (severity) @ module: count over seeds):")
    for v, label in VARIANTS.items():
        items = ", ".join(f"{k}: {n}" for k, n in sorted(s[v]["alerts"].items())) or "none"
        print(f"  {label}: {items}")
    print_conclusion(lines, pngs)


if __name__ == "__main__":
    main()
