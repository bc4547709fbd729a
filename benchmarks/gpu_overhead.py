"""Every-step and default overhead of NormWatch on a CUDA GPU: the transformer of ``overhead.py``.

One process, configurations interleaved over rounds (the order rotates), each ratio against plain
training of the same round, as in ``overhead.py``; the batches live on the GPU already. A step is
timed from one batch start to the next, after ``torch.cuda.synchronize()`` at each batch start (the
same for every configuration), so that the time includes the device's work. Without CUDA it says so
and exits 0 (``make bench-gpu`` on a machine without a GPU is not an error).

Usage:
    python benchmarks/gpu_overhead.py [--rounds 3] [--steps 60] [--models Transformer,MLP]
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import overhead  # noqa: E402

CONFIGS = ("plain", "every step", "default")


class CudaStepTimer(overhead.StepTimer):
    """``StepTimer`` that waits for the device before reading the clock at every batch start."""

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, i: int) -> None:
        torch.cuda.synchronize()
        super().on_train_batch_start(trainer, pl_module, batch, i)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        torch.cuda.synchronize()
        super().on_train_end(trainer, pl_module)


class GpuBatches(overhead.Batches):
    """``overhead.Batches`` moved to the GPU once."""

    def __init__(self, spec: overhead.ModelSpec, length: int) -> None:
        super().__init__(spec, length)
        self.x, self.y = self.x.cuda(), self.y.cuda()


#: NormWatch's own estimate of its cost (``callback.cost.share``) in the fits of each configuration
ESTIMATES: dict[str, list[float]] = {}


def fit(model: torch.nn.Module, spec: overhead.ModelSpec, config: str, steps: int, log_dir: str) -> list[float]:
    """Step times (s) of one fit on the GPU under ``config`` (NormWatch's own estimate into ``ESTIMATES``)."""
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader

    from lightning_normwatch import NormWatch

    timer = CudaStepTimer()
    watch = {"every step": [NormWatch(every_n_steps=1)], "default": [NormWatch()]}.get(config, [])
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="gpu",
        devices=1,
        logger=TensorBoardLogger(log_dir, name=config.replace(" ", "_")),
        callbacks=[timer, *watch],
        log_every_n_steps=overhead.INTERVAL,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(overhead.Classifier(copy.deepcopy(model)), DataLoader(GpuBatches(spec, steps), batch_size=None))
    cost = watch[0].cost if watch else None
    if cost is not None:
        ESTIMATES.setdefault(config, []).append(cost.share)
    return timer.step_times()[spec.warmup :]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=100, help="timed steps per fit (two logging intervals)")
    p.add_argument("--models", default="Transformer", help="comma-separated models of overhead.py (not compiled)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_overhead: skipped: no CUDA device (torch.cuda.is_available() is False); nothing to measure here.")
        return 0
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_normwatch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import tempfile

    names = args.models.split(",")
    specs = [m for m in overhead.MODELS if m.name in names and not m.compiled]
    if not specs:
        p.error(f"--models: none of {names} is one of MLP, CNN, Transformer")
    print(f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M %Z')}.")
    print("| model | configuration | median ms/step | × plain (median over rounds) |\n|---|---|---:|---:|")
    with tempfile.TemporaryDirectory() as log_dir:
        for spec in specs:
            torch.manual_seed(0)
            model = spec.build()
            fit(model, spec, "every step", spec.warmup + 3, log_dir)  # warm up kernels and code paths
            steps: dict[str, list[float]] = {c: [] for c in CONFIGS}
            ratios: dict[str, list[float]] = {c: [] for c in CONFIGS}
            for r in range(args.rounds):
                order = CONFIGS[r % 3 :] + CONFIGS[: r % 3]
                medians = {}
                for config in order:
                    times = fit(model, spec, config, spec.warmup + args.steps, log_dir)
                    steps[config] += times
                    medians[config] = statistics.median(times)
                for config in CONFIGS:
                    ratios[config].append(medians[config] / medians["plain"])
            for config in CONFIGS:
                median_ms = 1000 * statistics.median(steps[config])
                print(f"| {spec.name} | {config} | {median_ms:.2f} | {statistics.median(ratios[config]):.3f} |")
    print(
        "\n`default`: the median step is a non-logging step; the mean over whole logging intervals is "
        "(sum of the step times) / (plain's sum): "
        + ", ".join(f"{c} {sum(steps[c]) / sum(steps['plain']):.3f}" for c in CONFIGS if c != "plain")
        + " (last model)."
    )
    print(
        "NormWatch's own estimate of its cost (`callback.cost.share`, median over the fits of all models): "
        + ", ".join(f"{c} {statistics.median(v):+.1%}" for c, v in ESTIMATES.items())
        + "."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
