"""Does the pipeline's worker thread pay off? Step times with ``pipeline="thread"`` against ``"sync"``.

Trains ``benchmarks/overhead.py``'s MLP and transformer with a real ``pl.Trainer`` in this one process:
plain (no callback), and NormWatch every step and at its default interval (50), each with the worker
thread and synchronously, interleaved over rounds (the order rotates every round). A step is timed from
one batch start to the next; the figure is the mean over whole runs (whole 50-step intervals for the
default), as a ratio to plain training of the same round. It also times the two halves of a logging
step (``take`` on the training thread, ``judge`` on the worker: ``session/judging.py``) and what
pickling one step's statistics would cost a worker *process*.

Run: ``.venv/bin/python benchmarks/pipeline_cost.py [--rounds 3] [--threads 2] [--quick]``
"""

from __future__ import annotations

import argparse
import copy
import os
import pickle
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pytorch_lightning as pl  # noqa: E402
from overhead import MODELS, Batches, Classifier, StepTimer, machine, set_threads  # noqa: E402
from pytorch_lightning.loggers import TensorBoardLogger  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from lightning_normwatch import NormWatch  # noqa: E402
from lightning_normwatch.session import judging, session  # noqa: E402

CONFIGS = ("plain", "every/thread", "every/sync", "default/thread", "default/sync")
INTERVAL = 50


class Halves:
    """Per logging step: wall seconds of ``take`` and ``judge``, the training thread's seconds in NormWatch's
    end of step (``Session._finish_step``: take, then judge (sync) or the hand-off (thread)) and in its step
    start (waits for the worker), by pipeline mode; and one step's statistics pickled."""

    def __init__(self) -> None:
        self.take: list[float] = []
        self.judge: list[float] = []
        self.train: dict[str, list[float]] = {"thread": [], "sync": []}
        self.pickle_s: list[float] = []
        self.pickle_bytes = 0

    def install(self) -> None:
        take0, judge0 = judging.take, judging.judge
        finish0, begin0 = session.Session._finish_step, session.Session.begin_step

        def take(s: Any, step: int) -> Any:
            t0 = time.perf_counter()
            taken = take0(s, step)
            self.take.append(time.perf_counter() - t0)
            if len(self.pickle_s) < 20:
                t0 = time.perf_counter()
                self.pickle_bytes = len(pickle.dumps((taken.stats, taken.view.infos, taken.updates)))
                self.pickle_s.append(time.perf_counter() - t0)
            return taken

        def judge(s: Any, taken: Any) -> None:
            t0 = time.perf_counter()
            judge0(s, taken)
            self.judge.append(time.perf_counter() - t0)

        def finish(s: Any, step: int) -> None:
            t0 = time.perf_counter()
            finish0(s, step)
            self.train[s.config.pipeline].append(time.perf_counter() - t0)

        def begin(s: Any, step: int, *args: Any) -> None:
            t0 = time.perf_counter()
            begin0(s, step, *args)
            if s.is_logging_step(step) and step > 0:  # the waits for the worker land here (anchors, raise)
                self.train[s.config.pipeline][-1] += time.perf_counter() - t0

        session.take, session.judge = take, judge  # what Session._finish_step calls
        session.Session._finish_step, session.Session.begin_step = finish, begin  # type: ignore[method-assign]


def fit(model: Any, spec: Any, config: str, steps: int, log_dir: str) -> list[float]:
    timer = StepTimer()
    callbacks: list[pl.Callback] = [timer]
    if config != "plain":
        interval, mode = config.split("/")
        every = 1 if interval == "every" else None
        callbacks.append(NormWatch(every_n_steps=every, warmup_steps=0, reference_steps=5, pipeline=mode))
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, callbacks=callbacks, log_every_n_steps=INTERVAL,
        logger=TensorBoardLogger(log_dir, name=config.replace("/", "_")), enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(Classifier(copy.deepcopy(model)), DataLoader(Batches(spec, steps), batch_size=None))
    return timer.step_times()


def run(spec: Any, rounds: int, steps: int, warmup: int, log_dir: str) -> dict[str, list[float]]:
    import torch

    torch.manual_seed(0)
    model = spec.build()
    fit(model, spec, "every/sync", 3, log_dir)  # warm the code paths once
    ratios: dict[str, list[float]] = {}
    for r in range(rounds):
        order = CONFIGS[r % len(CONFIGS) :] + CONFIGS[: r % len(CONFIGS)]
        times = {c: fit(model, spec, c, warmup + steps, log_dir) for c in order}
        means = {c: statistics.fmean(t[warmup:]) for c, t in times.items()}
        for c in CONFIGS:
            ratios.setdefault(c, []).append(means[c] / means["plain"])
            # the worker's interference: the 5 steps after a logging step against steps 10-49 of the interval
            after = [t for i, t in enumerate(times[c]) if i >= warmup and 1 <= i % INTERVAL <= 5]
            later = [t for i, t in enumerate(times[c]) if i >= warmup and i % INTERVAL >= 10]
            ratios.setdefault(f"{c} after", []).append(statistics.fmean(after) / statistics.fmean(later))
        ratios.setdefault("plain ms", []).append(means["plain"] * 1e3)
        print(f"  {spec.name} round {r + 1}/{rounds}: " + ", ".join(f"{c} {means[c] * 1e3:.1f} ms" for c in order))
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one round, one interval")
    parser.add_argument("--models", nargs="+", default=["MLP", "Transformer"], choices=["MLP", "CNN", "Transformer"])
    args = parser.parse_args(argv)
    set_threads(args.threads)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning_normwatch", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    halves = Halves()
    halves.install()
    specs = {s.name: s for s in MODELS}
    rounds, steps = (1, INTERVAL) if args.quick else (args.rounds, 2 * INTERVAL)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}; load {os.getloadavg()[0]:.2f}")
    rows, pickled = [], []
    med: Callable[[list[float]], float] = statistics.median
    with tempfile.TemporaryDirectory() as log_dir:
        for name in args.models:
            marks = len(halves.take), {m: len(v) for m, v in halves.train.items()}
            halves.pickle_s = []
            ratios = run(specs[name], rounds, steps, 5, log_dir)
            take, judge = halves.take[marks[0] :], halves.judge[marks[0] :]
            train = {m: v[marks[1][m] :] for m, v in halves.train.items()}
            rows.append((name, ratios, take, judge, train))
            pickled.append(f"{name} {med(halves.pickle_s) * 1e3:.2f} ms, {halves.pickle_bytes / 1024:.0f} KiB")
    print("\nMean step time over whole runs, ratio to plain (median over rounds):\n")
    print("| model | plain step | " + " | ".join(CONFIGS[1:]) + " |")
    print("|---|---:|" + "---:|" * (len(CONFIGS) - 1))
    for name, ratios, *_ in rows:
        cells = " | ".join(f"{med(ratios[c]):.3f}x" for c in CONFIGS[1:])
        print(f"| {name} | {med(ratios['plain ms']):.1f} ms | {cells} |")
    print("\nSteps 1-5 after a logging step against steps 10-49 (mean ratio, median over rounds): the worker's")
    print("interference with the training thread (GIL, cores) while it judges\n")
    print("| model | plain | default/thread | default/sync |")
    print("|---|---:|---:|---:|")
    for name, ratios, *_ in rows:
        cells = " | ".join(f"{med(ratios[f'{c} after']):.3f}" for c in ("plain", "default/thread", "default/sync"))
        print(f"| {name} | {cells} |")
    print("\nPer logging step (median, ms): the training thread's share and the judging\n")
    print("| model | take | judge | training thread, sync | training thread, thread |")
    print("|---|---:|---:|---:|---:|")
    for name, _, take, judge, train in rows:
        cells = [med(take), med(judge), med(train["sync"]), med(train["thread"])]
        print(f"| {name} | " + " | ".join(f"{c * 1e3:.1f}" for c in cells) + " |")
    print("\npickling one logging step's statistics for a worker process: " + "; ".join(pickled))
    return 0


if __name__ == "__main__":
    sys.exit(main())
