"""Cheaper TensorBoard writes: the compiled checksum (same bytes), lean histograms (same picture), images once.

- ``output/checksum.py``: TensorBoard's masked CRC32C from a compiled CRC32C gives the same value for
  every input, so the same events written with and without it are the same bytes on disk, and
  TensorBoard's own reader reads them back; installing is idempotent and reversible, and another
  library's replacement is left alone.
- ``stats/histogram.tensorboard_buckets``: runs of empty buckets become one bucket, which changes
  neither the values TensorBoard reads nor the picture it draws (counts spread over bucket widths on
  linear bins, as its histogram dashboard does); all histograms of a step share one event.
- ``Panels.write_overview`` writes an overview image only when its PNG differs from the last one written.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference
from tensorboard.summary.writer import record_writer
from torch.utils.tensorboard import SummaryWriter

from lightning_normwatch.output import checksum
from lightning_normwatch.output.panels import Panels
from lightning_normwatch.stats.histogram import bin_counts, bin_edges, tensorboard_buckets

compiled = pytest.mark.skipif(checksum.compiled_crc32c() is None, reason="needs google-crc32c's C implementation")


@pytest.fixture
def restore_checksum() -> Any:
    was = checksum.installed()
    yield
    checksum.install() if was else checksum.uninstall()


@compiled
def test_compiled_checksum_equals_tensorboards_on_every_length() -> None:
    rng = random.Random(0)
    for n in [*range(0, 70), 255, 256, 1000, 4097]:
        data = bytes(rng.getrandbits(8) for _ in range(n))
        assert checksum.masked_crc32c(data) == reference(data), n


@compiled
def test_install_is_idempotent_reversible_and_leaves_other_replacements_alone(restore_checksum: None) -> None:
    checksum.uninstall()
    assert record_writer.masked_crc32c is reference and not checksum.installed()
    assert checksum.install() and checksum.install()
    assert record_writer.masked_crc32c is checksum.masked_crc32c
    checksum.uninstall()
    checksum.uninstall()
    assert record_writer.masked_crc32c is reference

    def foreign(data: bytes) -> int:
        return reference(data)

    record_writer.masked_crc32c = foreign
    try:
        assert not checksum.install()
        assert record_writer.masked_crc32c is foreign
        checksum.uninstall()
        assert record_writer.masked_crc32c is foreign
    finally:
        record_writer.masked_crc32c = reference


def _write_events(log_dir: Path) -> bytes:
    writer = SummaryWriter(str(log_dir))
    rng = np.random.default_rng(0)
    for step in range(3):
        writer.add_scalar("loss", float(rng.normal()), step, walltime=100.0 + step)
        writer.add_histogram("w", rng.normal(size=500), step, walltime=100.0 + step)
        writer.add_text("note", f"step {step} " * 50, step, walltime=100.0 + step)
    writer.close()
    (path,) = log_dir.glob("events.out.tfevents.*")
    return path.read_bytes()


@compiled
def test_same_event_bytes_with_and_without_the_compiled_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_checksum: None
) -> None:
    monkeypatch.setattr("time.time", lambda: 42.0)  # the file-version event's wall time
    checksum.uninstall()
    plain = _write_events(tmp_path / "plain")
    calls: list[int] = []
    checksum.install()
    monkeypatch.setattr(record_writer, "masked_crc32c", lambda d: calls.append(1) or checksum.masked_crc32c(d))
    fast = _write_events(tmp_path / "fast")
    assert calls, "the record writer did not use the compiled checksum"
    assert fast == plain and len(plain) > 5000
    acc = EventAccumulator(str(tmp_path / "fast"), size_guidance={"histograms": 0})
    acc.Reload()  # TensorBoard's reader checks every record's checksums
    assert [e.step for e in acc.Scalars("loss")] == [0, 1, 2]
    assert [e.histogram_value.num for e in acc.Histograms("w")] == [500, 500, 500]


def test_masked_crc32c_without_a_compiled_crc_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checksum, "_CRC", None)
    assert checksum.masked_crc32c(b"normwatch") == reference(b"normwatch")
    checksum.uninstall()
    assert not checksum.install()  # nothing compiled: TensorBoard's own stays
    assert record_writer.masked_crc32c is reference


# ---------------------------------------------------------------------------------------------- histograms
def _drawn(limits: list[float], counts: list[float], vmin: float, vmax: float, bins: int = 30) -> np.ndarray:
    """What TensorBoard's histogram dashboard draws: each bucket's count spread over its width on linear bins
    (buckets as its reader makes them: left edge = previous limit, the first from ``vmin``, the last to ``vmax``)."""
    lefts, rights = [vmin, *limits[:-1]], [*limits[:-1], vmax]
    grid = np.linspace(vmin, vmax, bins + 1)
    out = np.zeros(bins)
    for lo, hi, c in zip(lefts, rights, counts, strict=True):
        if hi <= lo:
            out[np.clip(np.searchsorted(grid, lo, side="right") - 1, 0, bins - 1)] += c
            continue
        overlap = np.clip(np.minimum(grid[1:], hi) - np.maximum(grid[:-1], lo), 0, None)
        out += c * overlap / (hi - lo)
    return out


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(0).standard_t(2, size=3000),  # heavy tails: empty buckets between outliers
        np.maximum(np.random.default_rng(1).normal(size=2000), 0),
        np.concatenate([np.random.default_rng(2).normal(size=500), [40.0, -70.0, 900.0]]),
    ],
)
def test_merged_empty_buckets_draw_the_same_picture(values: np.ndarray) -> None:
    counts = bin_counts(torch.from_numpy(values), bin_edges(dtype=torch.float64)).double().numpy()
    lo, hi = float(values.min()), float(values.max())
    limits, merged = tensorboard_buckets(counts, lo, hi)
    full_limits, full = tensorboard_buckets(counts, lo, hi, merge_empty=False)
    assert sum(merged) == sum(full) == values.size
    assert len(merged) < len(full) or 0 not in full
    assert 0 not in [merged[i] + merged[i + 1] for i in range(len(merged) - 1)], "two empty buckets in a row"
    np.testing.assert_allclose(_drawn(limits, merged, lo, hi), _drawn(full_limits, full, lo, hi), atol=1e-9)


def _stats(seed: int) -> Any:
    from lightning_normwatch.collect.sampling import MeasureSpec, measure
    from lightning_normwatch.stats.figures import TensorStats

    x = torch.from_numpy(np.random.default_rng(seed).standard_t(3, size=(64, 8)))
    block = measure(x, MeasureSpec(), torch.Generator().manual_seed(seed)).numpy()
    return TensorStats.from_blocks(block[None], 8)


def test_histograms_of_a_step_share_one_event_and_read_back(tmp_path: Path) -> None:
    from lightning_normwatch.judge.evaluator import StepResult

    writer = SummaryWriter(str(tmp_path))
    panels = Panels(writer)
    stats = {f"net.{i}": _stats(i) for i in range(3)}
    for step in (0, 5):
        panels.write(StepResult(step=step, figures={}, alerts=[], active={}), stats, {}, {})
    writer.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    acc.Reload()
    for i in range(3):
        events = acc.Histograms(f"normwatch/net.{i}")
        assert [e.step for e in events] == [0, 5]
        h = events[0].histogram_value
        st = stats[f"net.{i}"]
        limits, counts = tensorboard_buckets(st.hist, st.smin, st.smax)
        assert (h.min, h.max, h.num, list(h.bucket_limit), list(h.bucket)) == (st.smin, st.smax, 512, limits, counts)
    assert acc.SummaryMetadata("normwatch/net.0").summary_description.endswith(", other")  # first event's
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    (path,) = tmp_path.glob("events.out.tfevents.*")
    events = LegacyEventFileLoader(str(path)).Load()
    histogram_events = [e for e in events if any(v.HasField("histo") for v in e.summary.value)]
    assert [len(e.summary.value) for e in histogram_events] == [3, 3]


def test_overview_images_are_written_only_when_they_change(tmp_path: Path) -> None:
    class Image:
        def __init__(self, data: bytes) -> None:
            self.height, self.width, self.data = 1, 1, data

        def png(self) -> bytes:
            return self.data

    written: list[list[str]] = []

    class Writer:
        def _get_file_writer(self) -> Any:
            return self

        def add_summary(self, summary: Summary, step: int) -> None:
            written.append([v.tag for v in summary.value])

    panels = Panels(Writer())
    pictures = iter([{"a": b"1", "b": b"2"}, {"a": b"1", "b": b"3"}, {"a": b"1", "b": b"3"}])
    panels.overview.images = lambda thresholds: {k: Image(v) for k, v in next(pictures).items()}  # type: ignore[method-assign]
    for step in range(3):
        panels.overview.add(step, {"net.0": {"std": 1.0}}, {"net.0": ("Linear", "linear")}, {})
        panels.write_overview()
    assert written == [["a", "b"], ["b"]]


@compiled
def test_panels_install_the_compiled_checksum(tmp_path: Path, restore_checksum: None) -> None:
    checksum.uninstall()
    Panels(SummaryWriter(str(tmp_path)))
    assert checksum.installed()
