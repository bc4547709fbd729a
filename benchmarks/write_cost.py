"""What the cheaper writes save: step time with and without the compiled checksum, bytes per histogram.

Trains the transformer of ``overhead.py`` (50 watched tensors) with ``NormWatch(every_n_steps=1)``, so
every step is a logging step, under two configurations interleaved over rounds in this one process:

- ``python crc``: TensorBoard's own pure-Python masked CRC32C (``checksum.uninstall()``);
- ``compiled crc``: ``google-crc32c`` (``checksum.install()``).

It reports the median step of each, their ratio per round, and the per-stage profile of each
(``stages.StageProfile``: TensorBoard's record writing is timed on its writer thread). Then it reads
the event file of one ``compiled crc`` fit and reports the bytes of the histogram events per logging
step as written (one event per step, runs of empty buckets merged) against one event per histogram
and every bucket (the writes before), computed from the same values.

Usage:
    python benchmarks/write_cost.py [--rounds 3] [--steps 12] [--model Transformer]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import overhead  # noqa: E402
import stages  # noqa: E402
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader  # noqa: E402
from tensorboard.compat.proto.event_pb2 import Event  # noqa: E402
from tensorboard.compat.proto.summary_pb2 import Summary  # noqa: E402

from lightning_normwatch.output import checksum  # noqa: E402

_STEPS = 6  # steps of the fits whose event files are measured (every one a logging step)
_FRAME = 16  # bytes around each record: length (8), its checksum (4), the data's checksum (4)


_COMPILED = checksum.compiled_crc32c()


def _use_compiled(on: bool) -> None:
    """Compiled or pure-Python checksums for the fits that follow (``Panels`` installs the compiled one when
    it can: without it, it cannot)."""
    checksum._CRC = _COMPILED if on else None
    checksum.install() if on else checksum.uninstall()


def histogram_bytes(log_dir: str, split: bool) -> tuple[float, int]:
    """(bytes of NormWatch's activation histograms per logging step, histograms per step) in ``log_dir``'s
    event files; ``split``: as if every histogram were its own event (``add_histogram_raw``)."""
    total, count, steps = 0, 0, set()
    for root, _, files in os.walk(log_dir):
        for name in (f for f in files if f.startswith("events.out.tfevents")):
            for e in LegacyEventFileLoader(os.path.join(root, name)).Load():
                values = [v for v in e.summary.value if v.HasField("histo") and "/params/" not in v.tag]
                if not values:
                    continue
                steps.add(e.step)
                count += len(values)
                if not split:
                    total += e.ByteSize() + _FRAME
                    continue
                for v in values:
                    total += Event(wall_time=e.wall_time, step=e.step, summary=Summary(value=[v])).ByteSize() + _FRAME
    n = max(len(steps), 1)
    return total / n, count // n


def checksum_seconds(log_dir: str, repeats: int = 5) -> dict[str, tuple[float, float, int, int]]:
    """Per kind of record (``images``: overview PNGs; ``other``): (pure-Python, compiled) seconds of the checksums
    of those records in ``log_dir``'s event files, best of ``repeats``, records and bytes: the work TensorBoard's
    writer thread does for them, holding the GIL."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as python_crc

    records: dict[str, list[bytes]] = {"images": [], "other": []}
    for root, _, files in os.walk(log_dir):
        for name in (f for f in files if f.startswith("events.out.tfevents")):
            for e in LegacyEventFileLoader(os.path.join(root, name)).Load():
                data = e.SerializeToString()
                kind = "images" if any(v.HasField("image") for v in e.summary.value) else "other"
                records[kind] += [struct.pack("<Q", len(data)), data]  # the header and the data: two checksums
    out = {}
    for kind, chunks in records.items():
        best = []
        for crc in (python_crc, checksum.masked_crc32c):
            runs = []
            for _ in range(repeats):
                started = time.perf_counter()
                for data in chunks:
                    crc(data)
                runs.append(time.perf_counter() - started)
            best.append(min(runs))
        out[kind] = (best[0], best[1], len(chunks) // 2, sum(map(len, chunks)))
    return out


def _bytes_before_and_after(model: object, spec: overhead.ModelSpec) -> tuple[float, float, float, int, tuple]:
    """(as written, as one event per histogram, and also with every empty bucket: the writes before) per step."""
    from lightning_normwatch.output import panels

    original = panels.tensorboard_buckets_many
    with tempfile.TemporaryDirectory() as now, tempfile.TemporaryDirectory() as before:
        overhead.fit(model, spec, "every step", _STEPS, now)
        crc = checksum_seconds(now)
        panels.tensorboard_buckets_many = functools.partial(original, merge_empty=False)
        try:
            overhead.fit(model, spec, "every step", _STEPS, before)
        finally:
            panels.tensorboard_buckets_many = original
        written, tensors = histogram_bytes(now, split=False)
        per_event = histogram_bytes(now, split=True)[0]
        every_bucket = histogram_bytes(before, split=True)[0]
    return written, per_event, every_bucket, tensors, crc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=12, help="timed steps per fit (after 3 warm-up steps)")
    p.add_argument("--model", default="Transformer", help="a model of overhead.py")
    p.add_argument("--threads", type=int, default=overhead.THREADS, help="torch threads")
    args = p.parse_args(argv)
    overhead.set_threads(args.threads)
    import logging

    for name in ("pytorch_lightning", "lightning_normwatch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    spec = next(m for m in overhead.MODELS if m.name == args.model)
    import torch

    torch.manual_seed(0)
    model = spec.build()
    configs = ("python crc", "compiled crc")
    times: dict[str, list[float]] = {c: [] for c in configs}
    ratios: list[float] = []
    profiles = {c: stages.StageProfile() for c in configs}
    with tempfile.TemporaryDirectory() as log_dir:
        overhead.fit(model, spec, "every step", 3, log_dir)  # warm the code paths
        for r in range(args.rounds):
            medians = {}
            for config in configs if r % 2 == 0 else configs[::-1]:
                _use_compiled(config == "compiled crc")
                with profiles[config]:
                    timer = overhead.fit(model, spec, "every step", 3 + args.steps, log_dir)
                steps = timer.step_times()[3:]
                times[config] += steps
                medians[config] = statistics.median(steps)
            ratios.append(medians["compiled crc"] / medians["python crc"])
            print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        _use_compiled(True)
        now, per_event, every_bucket, tensors, crc = _bytes_before_and_after(model, spec)
    print(f"Machine: {overhead.machine()}. Date: {time.strftime('%Y-%m-%d %H:%M %Z')}.")
    print(f"Command: python benchmarks/write_cost.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    if ratios:
        a, b = (1000 * statistics.median(times[c]) for c in configs)
        each = ", ".join(f"{x:.3f}" for x in ratios)
        print(f"\n{spec.name}, every step a logging step, {args.rounds} interleaved rounds × {args.steps} steps:")
        print(f"- median step: pure-Python CRC {a:.1f} ms, compiled CRC {b:.1f} ms ({a - b:+.1f} ms per step);")
        print(f"- compiled / pure-Python per round (median): {statistics.median(ratios):.3f} ({each})")
        print("\nPer-stage profile (ms per logging step):\n")
        print(stages.HEADER)
        for config in configs:
            print("\n".join(profiles[config].rows(config)))
    print(f"\nChecksums of one fit's event files ({_STEPS} steps, every one a logging step), best of 5:")
    for kind, (python_s, compiled_s, records, size) in crc.items():
        per, unit = (records, "draw of the overview images") if kind == "images" else (_STEPS, "logging step")
        print(
            f"- {kind}: {records} records, {size / 1024:.0f} KiB: pure Python {1000 * python_s:.2f} ms, "
            f"compiled {1000 * compiled_s:.3f} ms in all: {1000 * (python_s - compiled_s) / max(per, 1):.2f} ms "
            f"saved per {unit} on TensorBoard's writer thread (which holds the GIL meanwhile)"
        )
    print(
        f"\nHistogram events per logging step ({tensors} histograms): {now / 1024:.1f} KiB as written; "
        f"{per_event / 1024:.1f} KiB as one event per histogram; {every_bucket / 1024:.1f} KiB with every "
        f"empty bucket as well (the writes before): {now / every_bucket:.2f}× the bytes."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
