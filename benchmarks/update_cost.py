"""Cost of the update figures: their share of a NormWatch logging step on the overhead benchmark's models.

Trains each model of ``overhead.py`` (same builders, batches and SGD) with ``NormWatch(every_n_steps=1)``,
so that every step is a logging step, and times directly, inside the session, what the parameter side
adds: the snapshot before the optimizer step (``before_step``: parameter copies, weight and gradient
norms), the comparison after it (``after_step``), and the end of the logging step (``finish``: one
transfer, figures, rules). The share is that time over the logging step's time (between consecutive
``on_train_batch_start`` calls, training included), median over the timed steps.

Run: ``.venv/bin/python benchmarks/update_cost.py`` (about 1 minute; ``--steps N``).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
import overhead  # noqa: E402

from lightning_normwatch import NormWatch  # noqa: E402


class Clock(pl.Callback):
    """Step times (between batch starts) and the time spent in the session's update calls per step."""

    def __init__(self, nw: NormWatch) -> None:
        self.nw = nw
        self.steps: list[float] = []
        self.updates: list[float] = []
        self._last: float | None = None
        self._spent = 0.0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        watch = self.nw.session.updates
        assert watch is not None
        for name in ("before_step", "after_step", "finish"):
            original = getattr(watch, name)

            def timed(*args: Any, _original: Any = original) -> Any:
                start = time.perf_counter()
                try:
                    return _original(*args)
                finally:
                    self._spent += time.perf_counter() - start

            setattr(watch, name, timed)

    def on_train_batch_start(self, *args: Any) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.steps.append(now - self._last)
            self.updates.append(self._spent)
        self._last, self._spent = now, 0.0


def measure(spec: overhead.ModelSpec, steps: int, warmup: int = 3) -> dict[str, float]:
    torch.manual_seed(0)
    model = spec.build()
    nw = NormWatch(every_n_steps=1, warmup_steps=0, reference_steps=5, on_alert="ignore")
    clock = Clock(nw)
    with tempfile.TemporaryDirectory() as log_dir:
        trainer = pl.Trainer(
            max_steps=steps,
            accelerator="cpu",
            devices=1,
            logger=pl.loggers.TensorBoardLogger(log_dir),
            callbacks=[nw, clock],
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
        )
        data = DataLoader(overhead.Batches(spec, steps), batch_size=None)
        trainer.fit(overhead.Classifier(copy.deepcopy(model)), data)
    shares = [u / s for u, s in zip(clock.updates[warmup:], clock.steps[warmup:], strict=True)]
    return {
        "step_ms": 1e3 * statistics.median(clock.steps[warmup:]),
        "updates_ms": 1e3 * statistics.median(clock.updates[warmup:]),
        "share": statistics.median(shares),
        "params": float(sum(p.numel() for p in model.parameters())),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=overhead.THREADS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | parameters | logging step (ms) | update figures (ms) | share |")
    print("|---|---:|---:|---:|---:|")
    for spec in overhead.MODELS:
        if spec.compiled:
            continue
        r = measure(spec, args.steps)
        cells = f"{r['params']:,.0f} | {r['step_ms']:.1f} | {r['updates_ms']:.2f} | {100 * r['share']:.1f} %"
        print(f"| {spec.name} | {cells} |")


if __name__ == "__main__":
    main()
