"""Per-stage profile of NormWatch's logging steps, by thread, without instrumenting the package.

``StageProfile`` wraps, for the duration of a ``with`` block, the methods that make up one logging
step (class attributes, restored afterwards) and adds up the wall time spent in each, keyed by stage
and by the thread that ran it (``threading.current_thread()``):

- ``hooks``: ``Collector.observe``, the device-side sampling in the forward hooks;
- ``transfer``: ``Exchange.collect``: the batched arithmetic of all samples, the one transfer to the
  host (or DDP collective) and the merge;
- ``judge``: ``Evaluator.evaluate`` (figures, reference, rules, alert tracking) and
  ``UpdateWatch.add_to`` (update sizes and their rules);
- ``write``: ``Panels.write`` / ``write_alerts`` / ``flush`` (histograms, layout, overview images,
  alert table) and ``log_scalars`` (the scalars to every logger);
- ``encode``: TensorBoard's ``RecordWriter.write`` (the two checksums of every event and the file
  write), which runs on TensorBoard's own writer thread;
- ``callback``: all of NormWatch's Lightning hooks together, which contain ``transfer``, ``judge``
  and ``write`` when those run on the training thread, and the ``hooks`` of a compiled model's eager
  replay (``other`` in the table is the rest; the total counts nested time once).

Threads: ``training`` (the main thread), ``TB writer`` (TensorBoard's ``_AsyncWriterThread``) and
``worker`` (any other thread, e.g. a NormWatch worker that judges and writes off the training thread).
Only the training thread's time delays training directly; the others compete for the GIL and cores.

Example:
    >>> with StageProfile() as prof:
    ...     pass
    >>> prof.per_step("judge", "training")
    0.0
"""

from __future__ import annotations

import functools
import importlib
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["StageProfile", "STAGES", "THREADS"]

#: stage -> (module, class or None for a module function, attribute names)
_TARGETS: dict[str, list[tuple[str, str | None, tuple[str, ...]]]] = {
    "hooks": [("lightning_normwatch.collect.collector", "Collector", ("observe",))],
    "transfer": [("lightning_normwatch.collect.exchange", "Exchange", ("collect",))],
    "judge": [
        ("lightning_normwatch.judge.evaluator", "Evaluator", ("evaluate",)),
        ("lightning_normwatch.session.updates", "UpdateWatch", ("add_to",)),
    ],
    "write": [("lightning_normwatch.output.panels", "Panels", ("write", "write_alerts", "flush"))],
    "encode": [("tensorboard.summary.writer.record_writer", "RecordWriter", ("write",))],
    "callback": [
        (
            "lightning_normwatch.adapters.callback",
            "NormWatch",
            ("on_train_batch_start", "on_before_backward", "on_before_optimizer_step", "on_train_batch_end"),
        )
    ],
}
STAGES = ("hooks", "transfer", "judge", "write", "encode", "callback")
THREADS = ("training", "worker", "TB writer")


def _thread_kind() -> str:
    thread = threading.current_thread()
    if thread is threading.main_thread():
        return "training"
    return "TB writer" if type(thread).__name__ == "_AsyncWriterThread" else "worker"


class StageProfile:
    """Adds up seconds per (stage, thread kind) while active; ``steps`` counts logging steps (transfers)."""

    def __init__(self) -> None:
        self.seconds: dict[tuple[str, str], float] = {}
        self.cpu: dict[str, float] = {}  # stage -> CPU seconds of the thread that ran it, all threads together
        self.steps = 0
        self._undo: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._depth = threading.local()  # a stage re-entered on one thread (nested calls) counts once

    def _wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._depth, stage, 0)
            setattr(self._depth, stage, depth + 1)
            started, cpu_started = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                setattr(self._depth, stage, depth)
                if depth == 0:
                    spent, thread = time.perf_counter() - started, _thread_kind()
                    cpu = time.thread_time() - cpu_started
                    keys = [(stage, thread)]
                    if stage != "callback" and getattr(self._depth, "callback", 0):
                        keys.append((stage + "@callback", thread))  # inside NormWatch's hooks (a compiled replay)
                    with self._lock:
                        for key in keys:
                            self.seconds[key] = self.seconds.get(key, 0.0) + spent
                        self.cpu[stage] = self.cpu.get(stage, 0.0) + cpu
                        self.steps += stage == "transfer"

        return timed

    def _patch(self, owner: Any, name: str, stage: str) -> None:
        original = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name)
        if original is None:  # inherited or absent: patch what attribute lookup finds, restore by deleting
            inherited = getattr(owner, name, None)
            if inherited is None:
                return
            setattr(owner, name, self._wrap(stage, inherited))
            self._undo.append(lambda: delattr(owner, name))
            return
        setattr(owner, name, self._wrap(stage, original))
        self._undo.append(lambda: setattr(owner, name, original))

    def __enter__(self) -> StageProfile:
        for stage, targets in _TARGETS.items():
            for module_name, cls, names in targets:
                module = importlib.import_module(module_name)
                owner = getattr(module, cls)
                for name in names:
                    self._patch(owner, name, stage)
        self._patch_log_scalars()
        return self

    def _patch_log_scalars(self) -> None:
        """``log_scalars`` wherever the package imported it by name (a module global, looked up per call)."""
        import sys

        loggers = importlib.import_module("lightning_normwatch.output.loggers")
        original = loggers.log_scalars
        for module_name, module in list(sys.modules.items()):
            if module_name.startswith("lightning_normwatch") and getattr(module, "log_scalars", None) is original:
                self._patch(module, "log_scalars", "write")

    def __exit__(self, *exc: object) -> None:
        while self._undo:
            self._undo.pop()()

    def per_step(self, stage: str, thread: str) -> float:
        """Milliseconds per logging step of ``stage`` on ``thread``."""
        return 1000 * self.seconds.get((stage, thread), 0.0) / max(self.steps, 1)

    def cpu_per_step(self, stage: str) -> float:
        """CPU milliseconds per logging step of ``stage``, on whichever thread ran it: less sensitive than wall
        time to other processes on a shared machine (``time.thread_time``; CPU spent by torch's intra-op
        threads on the stage's behalf is not counted)."""
        return 1000 * self.cpu.get(stage, 0.0) / max(self.steps, 1)

    def rows(self, model: str) -> list[str]:
        """Markdown table rows: one per stage, ms per logging step by thread, and CPU ms."""
        lines = []
        inside = sum(self.per_step(s + "@callback", "training") for s in STAGES if s != "callback")
        for stage in STAGES:
            cells = " | ".join(f"{self.per_step(stage, t):.2f}" for t in THREADS)
            lines.append(f"| {model} | {stage} | {cells} | {self.cpu_per_step(stage):.2f} |")
        other = self.per_step("callback", "training") - inside
        lines.append(f"| {model} | other (callback − above) | {other:.2f} | — | — | — |")
        hooks_outside = self.per_step("hooks", "training") - self.per_step("hooks@callback", "training")
        total = hooks_outside + self.per_step("callback", "training")
        lines.append(f"| {model} | **training thread total** | {total:.2f} | — | — | — |")
        return lines


HEADER = (
    "| model | stage | training thread ms/logging step | worker ms | TB writer ms | CPU ms (any thread) |\n"
    "|---|---|---:|---:|---:|---:|"
)
