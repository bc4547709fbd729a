"""Soak: a long run of a tiny model with NormWatch every 10 steps; memory, logging-step cost, event bytes.

``python benchmarks/soak.py [steps] [out.json] [--without]`` (default 20,000 steps; ``--without``: the same
run without NormWatch, the memory baseline) trains an MLP with a real
``Trainer`` and a ``TensorBoardLogger`` and records, every ``BLOCK`` steps: the process's resident memory
(``/proc/self/statm``), the event file's size (after a flush), and the time NormWatch's hooks took on
each logging step (``on_train_batch_start`` + ``on_before_backward`` + ``on_train_batch_end``; CPU time of
the training thread, robust to the load of other processes, and wall time). It prints
and writes the figures ``tests/test_soak.py`` checks:

- ``rss_growth_mib``: resident memory at the end minus after the warm-up (step ``WARMUP``);
- ``cost_ratio``: median logging-step CPU cost over the last 1,000 steps / over steps 1,000-2,000;
- ``bytes_per_logging_step``: event bytes per logging step in each block after the first.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from models import Regressor, loader, mlp, regression_data  # noqa: E402

from lightning_normwatch.adapters.callback import NormWatch  # noqa: E402

EVERY, BLOCK, WARMUP = 10, 1000, 2000


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Timed(NormWatch):
    """NormWatch that times its own hooks per global step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cost: dict[int, float] = {}  # CPU time of this thread (robust to other processes' load)
        self.wall: dict[int, float] = {}
        self._step = 0  # the global step of the batch (Lightning advances it before on_train_batch_end)

    def _timed(self, step: int, hook: Any, *args: Any) -> None:
        if step % EVERY:  # only logging steps are kept: the soak's own records must not grow its memory
            hook(*args)
            return
        start, cpu = time.perf_counter(), time.thread_time()
        hook(*args)
        self.cost[step] = self.cost.get(step, 0.0) + time.thread_time() - cpu
        self.wall[step] = self.wall.get(step, 0.0) + time.perf_counter() - start

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._step = trainer.global_step
        self._timed(self._step, super().on_train_batch_start, trainer, *args)

    def on_before_backward(self, trainer: pl.Trainer, *args: Any) -> None:
        self._timed(self._step, super().on_before_backward, trainer, *args)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._timed(self._step, super().on_train_batch_end, trainer, *args)


class Probe(pl.Callback):
    """Every ``BLOCK`` steps: resident memory and event bytes (after a flush)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        step = trainer.global_step  # already advanced: steps done
        if step % BLOCK == 0:
            trainer.logger.experiment.flush()  # type: ignore[union-attr]
            size = sum(p.stat().st_size for p in Path(trainer.logger.log_dir).glob("events.out.tfevents.*"))  # type: ignore[union-attr]
            self.rows.append({"step": step, "rss_mib": rss_mib(), "event_bytes": size})


def soak(steps: int, root: str, watch: bool = True) -> dict[str, Any]:
    """The soak's figures (see the module docstring); ``watch=False``: the same run without NormWatch
    (memory and event-byte baseline; no cost figures)."""
    torch.manual_seed(0)
    nw = Timed(every_n_steps=EVERY)
    probe = Probe()
    tr = pl.Trainer(
        default_root_dir=root, max_steps=steps, log_every_n_steps=EVERY, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, accelerator="cpu", devices=1,
        callbacks=[nw, probe] if watch else [probe], logger=TensorBoardLogger(root, name="soak"),
    )  # fmt: skip
    start = time.perf_counter()
    tr.fit(Regressor(mlp(16, 32, 1), lr=0.01), loader(regression_data(n=512), batch_size=32))
    wall = time.perf_counter() - start
    rows = probe.rows
    at_warmup = next(r["rss_mib"] for r in rows if r["step"] >= min(WARMUP, steps))
    per_block = [(b["event_bytes"] - a["event_bytes"]) / (BLOCK / EVERY) for a, b in zip(rows, rows[1:], strict=False)]
    memory = {
        "steps": steps,
        "wall_s": round(wall, 1),
        "rss_mib": [round(r["rss_mib"], 2) for r in rows],
        "rss_growth_mib": round(rows[-1]["rss_mib"] - at_warmup, 2),
        "bytes_per_logging_step": [round(b, 1) for b in per_block],
        "event_bytes": rows[-1]["event_bytes"],
    }
    if not watch:
        return memory
    logging_cost = {s: c for s, c in nw.cost.items() if s % EVERY == 0}
    early = [c for s, c in logging_cost.items() if 1000 <= s < 2000]
    late = [c for s, c in logging_cost.items() if s >= steps - 1000]
    wall_early = [nw.wall[s] for s in logging_cost if 1000 <= s < 2000]
    wall_late = [nw.wall[s] for s in logging_cost if s >= steps - 1000]
    return {
        **memory,
        "alerts": len(nw.alerts),
        "cost_ms_early": round(1e3 * statistics.median(early), 3),
        "cost_ms_late": round(1e3 * statistics.median(late), 3),
        "cost_ratio": round(statistics.median(late) / statistics.median(early), 3),
        "wall_ms_early": round(1e3 * statistics.median(wall_early), 3),
        "wall_ms_late": round(1e3 * statistics.median(wall_late), 3),
    }


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning_normwatch").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    with tempfile.TemporaryDirectory() as tmp:
        figures = soak(n, tmp, watch="--without" not in sys.argv)
    text = json.dumps(figures, indent=1)
    print(text)
    if len(sys.argv) > 2 and sys.argv[2] != "--without":
        Path(sys.argv[2]).write_text(text)
