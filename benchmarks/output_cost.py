"""CPU cost of writing one logging step: histograms, scalars, TensorBoard's encoding; old package against new.

Captures the inputs of the writes (``Panels.write``'s step result and statistics, ``_log_figures``'s
figures) from a real fit of a benchmark model of ``overhead.py`` with ``every_n_steps=1``, then replays
them, configurations interleaved over rounds in this one process, into fresh ``TensorBoardLogger``s:
``Panels.write`` and the scalars (``_log_figures``) of every captured step, then ``flush`` (which waits for
TensorBoard's writer thread). It reports CPU time per logging step (all threads: the writer thread's
encoding included; the overview images drawn every 20 logging steps as ``Panels`` does by default, and
their share), the calling thread's wall time, and whether old and new wrote the same event files (every
event, wall times aside, byte for byte). Capture 110 steps or more for the overview's steady state
(a window of 100 steps).

The old package is a copy of another checkout's ``lightning_normwatch`` renamed, e.g.::

    mkdir /tmp/nw_old && git archive main lightning_normwatch | tar -x -C /tmp/nw_old
    mv /tmp/nw_old/lightning_normwatch /tmp/nw_old/lightning_normwatch_old
    python benchmarks/output_cost.py --old /tmp/nw_old --model Transformer --rounds 7

Without ``--old`` only the current package is measured.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import deque
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import overhead  # noqa: E402

#: ``Panels``' default: the overview images are drawn every this many logging steps
OVERVIEW_EVERY = 20


def capture(spec: overhead.ModelSpec, steps: int) -> list[tuple[Any, ...]]:
    """``(result, stats, infos, active)`` of every logging step of one every-step fit (deep copies)."""
    from lightning_normwatch.output.panels import Panels

    seen: list[tuple[Any, ...]] = []
    original = Panels.write

    def write(self: Any, result: Any, stats: Any, infos: Any, active: Any) -> None:
        seen.append(copy.deepcopy((result, stats, dict(infos), set(active))))
        original(self, result, stats, infos, active)

    Panels.write = write  # type: ignore[method-assign]
    try:
        import torch

        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as d:
            overhead.fit(spec.build(), spec, "every step", steps, d)
    finally:
        Panels.write = original  # type: ignore[method-assign]
    return seen


def _modules(package: str) -> SimpleNamespace:
    return SimpleNamespace(
        panels=importlib.import_module(f"{package}.output.panels"),
        judging=importlib.import_module(f"{package}.session.judging"),
        config=importlib.import_module(f"{package}.config"),
        guarded=importlib.import_module(f"{package}.output.guarded"),
    )


def replay(mods: SimpleNamespace, steps: list[tuple[Any, ...]], root: str) -> tuple[float, float, float]:
    """CPU seconds per logging step (all threads, TensorBoard's writer thread included, overview drawings
    included as ``Panels`` draws them: every ``overview_every`` logging steps), the calling thread's wall
    seconds per logging step, and the overview drawings' CPU seconds per logging step; for the steps
    after the first (which writes the layout)."""
    from pytorch_lightning.loggers import TensorBoardLogger

    logger = TensorBoardLogger(root, name="run")
    panels = mods.panels.Panels(logger.experiment, overview_every=OVERVIEW_EVERY)
    session = SimpleNamespace(
        config=SimpleNamespace(scalars="default", thresholds=mods.config.Thresholds()),
        loggers=[logger],
        pipeline=SimpleNamespace(on_worker=lambda: False),
        guard=mods.guarded.Guard(),
        outbox=deque(),
    )
    drawing = [0.0]
    write_overview = panels.write_overview

    def timed_overview() -> None:
        started = time.process_time()
        write_overview()
        drawing[0] += time.process_time() - started

    panels.write_overview = timed_overview

    def one(result: Any, stats: Any, infos: Any, active: Any) -> None:
        mods.judging._log_figures(session, result, infos)
        panels.write(result, stats, infos, active)

    one(*steps[0])
    logger.experiment.flush()
    drawing[0] = 0.0
    cpu, wall = time.process_time(), time.perf_counter()
    for item in steps[1:]:
        one(*item)
    wall = time.perf_counter() - wall
    logger.experiment.flush()
    cpu = time.process_time() - cpu
    logger.experiment.close()
    n = len(steps) - 1
    return cpu / n, wall / n, drawing[0] / n


def events(root: str) -> list[bytes]:
    """Every event under ``root`` (file by file, in order) serialized without its wall time."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    out = []
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(f for f in files if f.startswith("events.out.tfevents")):
            for e in LegacyEventFileLoader(os.path.join(folder, name)).Load():
                e.wall_time = 0.0
                out.append(e.SerializeToString(deterministic=True))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--old", help="a folder holding lightning_normwatch_old (the package before)")
    p.add_argument("--model", default="Transformer", help="a model of overhead.py")
    p.add_argument("--steps", type=int, default=12, help="logging steps captured and replayed")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    overhead.set_threads(1)
    import logging

    for name in ("pytorch_lightning", "lightning_normwatch", "lightning_normwatch_old"):
        logging.getLogger(name).setLevel(logging.ERROR)
    spec = next(m for m in overhead.MODELS if m.name == args.model)
    steps = capture(spec, args.steps)
    configs: dict[str, SimpleNamespace] = {"new": _modules("lightning_normwatch")}
    if args.old:
        sys.path.insert(0, args.old)
        configs = {"old": _modules("lightning_normwatch_old"), **configs}
    results: dict[str, list[tuple[float, float, float]]] = {c: [] for c in configs}
    root = tempfile.mkdtemp()
    for r in range(args.rounds):
        for name in list(configs) if r % 2 == 0 else list(configs)[::-1]:
            results[name].append(replay(configs[name], steps, os.path.join(root, f"{name}{r}")))
    print(f"Machine: {overhead.machine()}. Date: {time.strftime('%Y-%m-%d %H:%M %Z')}.")
    print(f"{spec.name}: {len(steps[0][1])} tensors, {len(steps) - 1} logging steps replayed, {args.rounds} rounds")
    for name, rows in results.items():
        cpu, wall, drawn = (1000 * statistics.median(x) for x in zip(*rows, strict=True))
        print(
            f"- {name}: {cpu:.2f} ms CPU per logging step (all threads), of which {drawn:.2f} ms drawing the overview "
            f"(every {OVERVIEW_EVERY} logging steps); {wall:.2f} ms wall on the calling thread"
        )
    if "old" in results:
        same = events(os.path.join(root, "old0")) == events(os.path.join(root, "new0"))
        print(f"event files of old and new, wall times aside: {'identical' if same else 'DIFFERENT'}")
        old, new = results["old"], results["new"]
        for label, part in (("all", lambda r: r[0]), ("without the overview", lambda r: r[0] - r[2])):
            ratio = [part(o) / part(n) for o, n in zip(old, new, strict=True)]
            each = ", ".join(f"{x:.2f}" for x in ratio)
            print(f"old / new CPU per logging step, {label}: {each} (median {statistics.median(ratio):.2f})")
    shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
