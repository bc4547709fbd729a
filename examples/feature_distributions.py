"""Does the *shape* of a feature's distribution matter, or its *scale*?

scikit-learn's breast-cancer data has 30 features from below 0.1 to the thousands, most of them
skewed. The same MLP (30 -> 64 -> 64 -> 2, ReLU, Adam 1e-3, batch 32) is trained on four versions of
the same features, several seeds each:

  (a) raw               - the original units;
  (b) standardized      - each feature centred, unit std (shape unchanged: still skewed);
  (c) quantile->uniform - each feature mapped to a uniform distribution, then centred to unit std
                          (so that (b), (c), (d) differ in shape only);
  (d) quantile->normal  - each feature mapped to a standard normal distribution;
  (c') uniform on [0,1]  - (c) without the centring: same shape as (c), mean 0.5, std 0.29.

(b), (c) and (d) all have the same scale (centred, unit std) but three different shapes; (a) has
the shape of (b) and wildly different scales; (c') shows what centring alone does. If shape
mattered, (b)/(c)/(d) would train differently; if scale matters, (a) lags. The loss on the whole
training set is measured at every logging step; NormWatch watches the inputs and every layer.
The printed conclusion is computed from this run's numbers.

Run: ``.venv/bin/python examples/feature_distributions.py`` (``--quick`` for a smoke run); figures in
``--out`` (default ``examples_out/feature_distributions``), TensorBoard logs under it in ``logs/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import pytorch_lightning as pl
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import QuantileTransformer, StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Recorder, alert_rows, figure_of, fmt, make_trainer, print_conclusion, quiet, write_json  # noqa: E402

from lightning_normwatch import NormWatch  # noqa: E402

VARIANTS = {
    "raw": "(a) raw",
    "standardized": "(b) standardized",
    "uniform": "(c) quantile->uniform",
    "normal": "(d) quantile->normal",
    "uniform01": "(c') uniform on [0,1]",
}


class MLP(pl.LightningModule):
    def __init__(self, d_in: int = 30, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def datasets() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Train/test features per variant (transforms fitted on the training part only)."""
    data = load_breast_cancer()
    x_tr, x_te, y_tr, y_te = train_test_split(
        data.data, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    transforms = {
        "raw": None,
        "standardized": StandardScaler(),
        "uniform": make_pipeline(
            QuantileTransformer(n_quantiles=200, output_distribution="uniform", random_state=0), StandardScaler()
        ),
        "normal": QuantileTransformer(n_quantiles=200, output_distribution="normal", random_state=0),
        "uniform01": QuantileTransformer(n_quantiles=200, output_distribution="uniform", random_state=0),
    }
    out = {}
    for name, t in transforms.items():
        a, b = (x_tr, x_te) if t is None else (t.fit_transform(x_tr), t.transform(x_te))
        out[name] = (a.astype("float32"), y_tr, b.astype("float32"), y_te)
    return out


def train_one(variant: str, seed: int, data: tuple, steps: int, logdir: str) -> dict:
    x_tr, y_tr, x_te, y_te = (torch.as_tensor(v) for v in data)
    y_tr, y_te = y_tr.long(), y_te.long()
    pl.seed_everything(seed, verbose=False)
    model = MLP()
    watch = NormWatch(every_n_steps=10, warmup_steps=50, reference_steps=100)

    def full_loss(trainer: pl.Trainer, module: pl.LightningModule, step: int) -> dict[str, float]:
        with torch.no_grad():
            return {"train_loss_full": float(nn.functional.cross_entropy(module(x_tr), y_tr))}

    recorder = Recorder(watch, full_loss)
    trainer = make_trainer(logdir, variant, steps, [watch, recorder], version=f"seed_{seed}")
    loader = DataLoader(
        TensorDataset(x_tr, y_tr), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    trainer.fit(model, loader)
    with torch.no_grad():
        acc = float((model(x_te).argmax(1) == y_te).float().mean())
    return {
        "variant": variant,
        "seed": seed,
        "steps": [h["step"] for h in recorder.history],
        "loss": [h["train_loss_full"] for h in recorder.history],
        "test_accuracy": acc,
        "alerts": alert_rows(watch),
        "input_rms_ratio": [figure_of(h["figures"], "input", "feature_rms_ratio") for h in recorder.history],
        "input_channel_kurtosis": [figure_of(h["figures"], "input", "channel_kurtosis") for h in recorder.history],
    }


def steps_to(steps: list[int], loss: list[float], level: float) -> float:
    """First logging step at which the loss is at or below ``level`` (inf if never)."""
    for s, v in zip(steps, loss, strict=False):
        if v <= level:
            return float(s)
    return math.inf


def summarize(runs: list[dict], levels: tuple[float, ...]) -> dict:
    out = {}
    for v in VARIANTS:
        rs = [r for r in runs if r["variant"] == v]
        finals = [r["loss"][-1] for r in rs]
        kinds: dict[str, int] = {}
        for r in rs:
            for k in {(a["kind"], a["severity"], a["module"]) for a in r["alerts"]}:
                key = f"{k[0]}@{k[2]} ({k[1]})"
                kinds[key] = kinds.get(key, 0) + 1
        out[v] = {
            "final_loss_median": float(np.median(finals)),
            "final_loss_min": float(np.min(finals)),
            "final_loss_max": float(np.max(finals)),
            "steps_to_level_median": {
                str(lv): float(np.median([steps_to(r["steps"], r["loss"], lv) for r in rs])) for lv in levels
            },
            "test_accuracy_median": float(np.median([r["test_accuracy"] for r in rs])),
            "seeds": len(rs),
            "warnings": sum(a["severity"] != "info" for r in rs for a in r["alerts"]),
            "feature_scale_seeds": sum(any(a["kind"] == "feature_scale" for a in r["alerts"]) for r in rs),
            "input_non_normal_seeds": sum(
                any(a["kind"] == "non_normal" and a["module"] == "input" for a in r["alerts"]) for r in rs
            ),
            "alert_seeds": kinds,  # "kind@module (severity)": seeds in which it was raised
        }
    return out


def _reach(s: dict, v: str, levels: tuple[float, ...]) -> str:
    return ", ".join(f"loss {lv} at step {fmt(s[v]['steps_to_level_median'][str(lv)])}" for lv in levels)


def conclusion(s: dict, levels: tuple[float, ...], steps: int) -> list[str]:
    lines = []
    for v, label in VARIANTS.items():
        f = s[v]
        lines.append(
            f"{label:22s} final loss median {fmt(f['final_loss_median'])} (seeds {fmt(f['final_loss_min'])}-"
            f"{fmt(f['final_loss_max'])}), {_reach(s, v, levels)}, test accuracy {fmt(f['test_accuracy_median'])}, "
            f"warnings {f['warnings']}, feature_scale in {f['feature_scale_seeds']}/{f['seeds']} seeds, "
            f"input non_normal info in {f['input_non_normal_seeds']}/{f['seeds']} seeds"
        )
    lines.append(f"(step n/a: the level was not reached in {steps} steps; medians over seeds)")
    scaled = ["standardized", "uniform", "normal"]
    # Alike: each loss level reached within 1.5x the steps (+ one logging interval) and test accuracies within
    # 3 points. Final losses of converged runs (1e-3 and below: memorized training sets) are not compared.
    reach = {lv: [s[v]["steps_to_level_median"][str(lv)] for v in scaled] for lv in levels}
    # (a level none of them reached in the run counts as alike; one reached by some only does not)
    same_speed = all(
        (all(math.isfinite(x) for x in r) and max(r) <= 1.5 * min(r) + 10) or not any(math.isfinite(x) for x in r)
        for r in reach.values()
    )
    accs = [s[v]["test_accuracy_median"] for v in scaled]
    same_acc = max(accs) - min(accs) <= 0.03
    alike = same_speed and same_acc
    raw = s["raw"]
    raw_reach = [raw["steps_to_level_median"][str(lv)] for lv in levels]
    slower = any(r > 1.5 * max(reach[lv]) + 10 for r, lv in zip(raw_reach, levels, strict=True))
    lags = slower or raw["final_loss_median"] > 3 * max(s[v]["final_loss_median"] for v in scaled)
    lines.append(
        f"Shape: (b), (c), (d) {'converge alike' if alike else 'do NOT converge alike'}: "
        + "; ".join(f"loss {lv} at steps {', '.join(fmt(x) for x in reach[lv])}" for lv in levels)
        + f"; test accuracy {', '.join(fmt(a) for a in accs)}."
    )
    u01 = s["uniform01"]
    lines.append(
        f"Centring: (c') the uniform shape on [0,1] (not centred) reaches {_reach(s, 'uniform01', levels)}, "
        f"final loss {fmt(u01['final_loss_median'])}, vs {_reach(s, 'uniform', levels)}, final loss "
        f"{fmt(s['uniform']['final_loss_median'])} centred with unit std (c)."
    )
    lines.append(
        f"Scale: (a) raw {'lags' if lags else 'does NOT lag'}: {_reach(s, 'raw', levels)}, final loss "
        f"{fmt(raw['final_loss_median'])} vs at most {fmt(max(s[v]['final_loss_median'] for v in scaled))}."
    )
    if alike and lags:
        lines.append(
            "Answer from these numbers: the scale of the features matters, the shape of their distribution does not."
        )
    else:
        lines.append("These numbers do NOT support the expected answer (shape irrelevant, scale matters): see above.")
    return lines


def plot(runs: list[dict], s: dict, levels: tuple[float, ...], out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(VARIANTS, ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:olive"], strict=False))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for v, label in VARIANTS.items():
        rs = [r for r in runs if r["variant"] == v]
        steps = np.array(rs[0]["steps"])
        n = min(len(r["loss"]) for r in rs)
        losses = np.array([r["loss"][:n] for r in rs])
        ax.plot(steps[:n], np.median(losses, 0), color=colors[v], label=f"{label} (median of {len(rs)} seeds)")
        ax.fill_between(steps[:n], losses.min(0), losses.max(0), color=colors[v], alpha=0.2)
    for lv in levels:
        ax.axhline(lv, color="grey", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy on the whole training set")
    ax.set_title("Same MLP, same data, four feature transforms (band: min-max over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p1 = os.path.join(out, "feature_distributions_loss.png")
    fig.savefig(p1, dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [VARIANTS[v].replace(" ", "\n", 1) for v in VARIANTS]
    x = np.arange(len(VARIANTS))
    seeds = [s[v]["seeds"] for v in VARIANTS]
    axes[0].bar(
        x - 0.2,
        [s[v]["feature_scale_seeds"] for v in VARIANTS],
        0.4,
        color="tab:orange",
        label="feature_scale warning on input",
    )
    axes[0].bar(
        x + 0.2,
        [s[v]["input_non_normal_seeds"] for v in VARIANTS],
        0.4,
        color="tab:cyan",
        label="non_normal info on input",
    )
    axes[0].plot(x, seeds, "k_", ms=30, label="seeds run")
    axes[0].set_xticks(x, names, fontsize=7)
    axes[0].set_ylabel("seeds in which NormWatch raised it")
    axes[0].set_title("What NormWatch reported on the inputs")
    axes[0].legend(fontsize=8)
    for v, label in VARIANTS.items():
        rs = [r for r in runs if r["variant"] == v]
        ratio = np.array([[np.nan if y is None else y for y in r["input_rms_ratio"]] for r in rs], dtype=float)
        kurt = np.array([[np.nan if y is None else y for y in r["input_channel_kurtosis"]] for r in rs], dtype=float)
        steps = rs[0]["steps"]
        axes[1].plot(steps, np.nanmedian(ratio, 0), color=colors[v], label=f"{label}: largest/median feature RMS")
        axes[1].plot(
            steps, np.nanmedian(kurt, 0), color=colors[v], ls="--", label=f"{label}: within-feature excess kurtosis"
        )
    axes[1].axhline(100, color="tab:orange", ls=":", lw=1)
    axes[1].axhline(4, color="tab:cyan", ls=":", lw=1)
    axes[1].set_yscale("symlog", linthresh=1)
    axes[1].set_xlabel("step")
    axes[1].set_title("NormWatch's input figures (dotted: thresholds 100 and 4)")
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    p2 = os.path.join(out, "feature_distributions_normwatch.png")
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return [p1, p2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 seeds x 100 steps")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per variant (default 5, quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 800, quick 100)")
    parser.add_argument(
        "--levels", type=float, nargs="+", default=[0.1, 0.01], help="loss levels for 'steps to reach' (0.1 0.01)"
    )
    parser.add_argument("--out", default="examples_out/feature_distributions", help="output folder")
    parser.add_argument("--replot", action="store_true", help="redraw the figures from --out's results.json")
    args = parser.parse_args()
    if args.replot:
        with open(os.path.join(args.out, "results.json")) as fh:
            saved = json.load(fh)
        print("Figures: " + ", ".join(plot(saved["runs"], saved["summary"], tuple(saved["levels"]), args.out)))
        return
    seeds = args.seeds or (2 if args.quick else 5)
    steps = args.steps or (100 if args.quick else 800)
    quiet()
    os.makedirs(args.out, exist_ok=True)
    start, cpu = time.perf_counter(), time.process_time()
    data = datasets()
    runs = [
        train_one(v, seed, data[v], steps, os.path.join(args.out, "logs")) for v in VARIANTS for seed in range(seeds)
    ]
    levels = tuple(args.levels)
    s = summarize(runs, levels)
    lines = conclusion(s, levels, steps)
    pngs = plot(runs, s, levels, args.out)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    write_json(
        os.path.join(args.out, "results.json"),
        {
            "steps": steps,
            "seeds": seeds,
            "levels": levels,
            "summary": s,
            "runs": runs,
            "conclusion": lines,
            "seconds": elapsed,
            "cpu_seconds": cpu,
        },
    )
    print(f"Feature distributions: {len(runs)} runs of {steps} steps in {elapsed:.0f} s (CPU {cpu:.0f} s)")
    print_conclusion(lines, pngs)


if __name__ == "__main__":
    main()
