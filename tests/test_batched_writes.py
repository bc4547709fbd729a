"""The batched writes of a logging step against their plain, one-tensor-at-a-time definitions.

- ``tensorboard_buckets_many`` (all histograms of a step in one numpy pass) gives, bit for bit, what
  ``tensorboard_buckets`` gives row by row: random rows and the edges (empty rows, one bin, the open outer
  bins, NaN counts, bounds not finite, float32 and fractional counts, other groupings);
- ``Panels`` writes the histogram values that the plain definition (one ``HistogramProto`` per tensor from
  ``tensorboard_buckets``, the description on a tag's first value) gives, byte for byte, read back from
  the event file; the parameter histograms too;
- ``scalar_metrics`` (its tags planned once per tensor) gives the figures ``scalar_names`` lists, as before;
- ``write_scalars`` writes one event that TensorBoard's reader reads back as every scalar.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary
from tensorboard.plugins.histogram.metadata import create_summary_metadata
from torch.utils.tensorboard import SummaryWriter

from lightning_normwatch.judge.evaluator import StepResult
from lightning_normwatch.output.loggers import write_scalars
from lightning_normwatch.output.panels import Panels
from lightning_normwatch.output.scalars import ALL_SCALARS, scalar_metrics, scalar_names
from lightning_normwatch.stats.histogram import (
    bin_counts,
    bin_edges,
    num_bins,
    tensorboard_buckets,
    tensorboard_buckets_many,
)

B = num_bins()


def _bits(values: list[float]) -> bytes:
    assert all(type(v) is float for v in values)
    return np.array(values, dtype=float).tobytes()


def _assert_same(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, **kwargs: Any) -> None:
    many = tensorboard_buckets_many(rows, lo, hi, **kwargs)
    assert len(many) == len(rows)
    for i, (limits, counts) in enumerate(many):
        want_limits, want_counts = tensorboard_buckets(rows[i], float(lo[i]), float(hi[i]), **kwargs)
        assert _bits(limits) == _bits(want_limits), (i, kwargs)
        assert _bits(counts) == _bits(want_counts), (i, kwargs)


def _edge_rows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, lo, hi = [], [], []

    def add(row: np.ndarray, vmin: float, vmax: float) -> None:
        rows.append(row)
        lo.append(vmin)
        hi.append(vmax)

    zeros = np.zeros(B)
    add(zeros.copy(), 0.0, 0.0)  # empty
    one = zeros.copy()
    one[B // 2] = 7.0  # a constant 0: only the zero bin
    add(one, 0.0, 0.0)
    outer = zeros.copy()
    outer[0], outer[-1] = 2.0, 3.0  # both open outer bins: below -1e6, above 1e6
    add(outer, -5e6, 7e7)
    add(outer.copy(), -math.inf, math.inf)  # bounds not finite: no merged zero bucket, top limit from the edges
    add(outer.copy(), math.nan, 1.0)
    nan = zeros.copy()
    nan[100], nan[400] = math.nan, 1.0
    add(nan, -1.0, 1.0)
    frac = np.random.default_rng(3).random(B) * (np.random.default_rng(4).random(B) < 0.3)
    add(frac, -100.0, 100.0)  # fractional counts: the running sums round as in the plain definition
    top = zeros.copy()
    top[-3:] = [1.0, 0.0, 4.0]
    add(top, 5e5, 2e6)
    lost = zeros.copy()
    lost[B // 2 + 10], lost[B // 2 + 200] = 1e20, 1.0  # the last bucket's running sum rounds back: a count of 0
    add(lost, 0.0, 1e3)
    return np.array(rows), np.array(lo), np.array(hi)


@pytest.mark.parametrize("group, merge_below, merge_empty", [(3, 0.01, True), (1, 0.0, False), (4, 0.5, True)])
def test_buckets_of_many_rows_equal_each_rows_buckets(group: int, merge_below: float, merge_empty: bool) -> None:
    rng = np.random.default_rng(group)
    values = [rng.normal(0, s, size=n) for s, n in ((1.0, 1000), (1e-3, 50), (30.0, 3000), (1e-7, 10))]
    values += [np.maximum(rng.normal(size=500), 0), rng.standard_t(1, size=400), np.array([4.2])]
    rows = np.stack([bin_counts(torch.from_numpy(v), bin_edges(dtype=torch.float64)).numpy() for v in values])
    lo, hi = np.array([v.min() for v in values]), np.array([v.max() for v in values])
    edge_rows, edge_lo, edge_hi = _edge_rows()
    rows, lo, hi = np.concatenate([rows, edge_rows]), np.concatenate([lo, edge_lo]), np.concatenate([hi, edge_hi])
    kwargs = {"group": group, "merge_below": merge_below, "merge_empty": merge_empty}
    _assert_same(rows, lo, hi, **kwargs)
    order = rng.permutation(len(rows))  # a row's buckets do not depend on its neighbours
    _assert_same(rows[order], lo[order], hi[order], **kwargs)
    _assert_same(rows.astype(np.float32), lo, hi, **kwargs)  # float32 counts: float32 running sums, as there


def test_buckets_of_no_rows_and_wrong_widths() -> None:
    assert tensorboard_buckets_many(np.zeros((0, B)), np.zeros(0), np.zeros(0)) == []
    assert tensorboard_buckets_many(np.zeros((2, B)), np.zeros(2), np.ones(2)) == [([], []), ([], [])]
    with pytest.raises(ValueError, match="bins per row"):
        tensorboard_buckets_many(np.zeros((1, B - 1)), np.zeros(1), np.zeros(1))


def _stats(seed: int, scale: float = 1.0) -> Any:
    from lightning_normwatch.collect.sampling import MeasureSpec, measure
    from lightning_normwatch.stats.figures import TensorStats

    x = scale * torch.from_numpy(np.random.default_rng(seed).standard_t(3, size=(64, 8)))
    block = measure(x, MeasureSpec(), torch.Generator().manual_seed(seed)).numpy()
    return TensorStats.from_blocks(block[None], 8)


def _plain_value(tag: str, counts: Any, lo: float, hi: float, total: float, squares: float, meta: Any, num: Any) -> Any:
    """One histogram value as the writes before built it: ``tensorboard_buckets`` of this tensor alone."""
    limits, grouped = tensorboard_buckets(counts, lo, hi)
    if not grouped or not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    n = float(sum(grouped) if num is None else num)
    histo = HistogramProto(min=lo, max=hi, num=n, sum=total, sum_squares=squares, bucket_limit=limits, bucket=grouped)
    value = Summary.Value(tag=tag, histo=histo)
    if meta is not None:
        value.metadata.CopyFrom(meta)
    return value


def _histogram_events(run: Path) -> list[Any]:
    (path,) = run.glob("events.out.tfevents.*")
    events = LegacyEventFileLoader(str(path)).Load()
    return [e for e in events if any(v.HasField("histo") for v in e.summary.value)]


def test_panels_write_the_plain_histogram_values_byte_for_byte(tmp_path: Path) -> None:
    stats = {f"net.{i}": _stats(i, scale=10.0**i) for i in range(4)}
    unbounded = _stats(9)
    unbounded.smax = math.inf  # left out, as before
    empty = _stats(10)
    empty.hist = np.zeros_like(empty.hist)  # nothing binned: left out
    stats |= {"wide": unbounded, "empty": empty}
    kinds = {"net.0": ("Linear", "preact"), "net.1": ("ReLU", "activation")}
    writer = SummaryWriter(str(tmp_path))
    panels = Panels(writer)
    for step in (0, 3):
        panels.write(StepResult(step=step, figures={}, alerts=[], active={}), stats, {}, {})
    rng = np.random.default_rng(0)
    weight, grad = rng.integers(0, 9, B).astype(np.float32), rng.integers(0, 3, B).astype(np.float32)
    params = {  # (counts, min, max, n, sum, sum of squares), float32 counts as the device bins them
        "net.0": {"weight": (weight, -0.5, 0.5, weight.sum(), 1.5, 2.5), "grad": (grad, -1e-3, 2e-3, 99, 0.1, 0.2)},
        "net.2": {"weight": (np.zeros(B, dtype=np.float32), 0.0, 0.0, 0, 0.0, 0.0)},
    }
    panels.write_param_histograms(params, step=3)
    writer.close()

    def plain(step: int) -> list[bytes]:
        values = []
        for key, st in stats.items():
            m, tag = st.overall, f"normwatch/{key}"
            type_name, role = panels._kinds.get(key, ("?", "other"))
            meta = create_summary_metadata(display_name=tag, description=f"{key} ({type_name}), {role}")
            total, squares = m.n * m.mean, m.m2 + m.n * m.mean * m.mean
            values.append(
                _plain_value(tag, st.hist, st.smin, st.smax, total, squares, meta if step == 0 else None, None)
            )
        return [v.SerializeToString() for v in values if v is not None]

    plain_params = [
        _plain_value(f"normwatch/params/{o}/{w}", c, lo, hi, t, s, None, int(n))
        for o, kinds in params.items()
        for w, (c, lo, hi, n, t, s) in kinds.items()
    ]
    written = [[v.SerializeToString() for v in e.summary.value] for e in _histogram_events(tmp_path)]
    assert len(written[0]) == 4 and kinds  # the unbounded and the empty histogram are left out
    assert written == [plain(0), plain(3), [v.SerializeToString() for v in plain_params if v is not None]]


@pytest.mark.parametrize("role", ["input", "preact", "activation", "bounded", "other"])
@pytest.mark.parametrize("which", ["default", "all"])
def test_scalar_metrics_log_the_listed_figures(role: str, which: str) -> None:
    fig = {name: 0.5 for name in ALL_SCALARS} | {"skew": math.nan, "nonfinite": 0.0, "std": math.nan}
    for updates in (False, True):
        figures = fig if updates else {k: v for k, v in fig.items() if k not in ("update_ratio", "grad_rms")}
        got = scalar_metrics("enc.0@2", role, figures, which)
        names = scalar_names(role, which)
        if updates and which == "default":
            names = tuple(n for n in names if not (role == "preact" and n == "zeros")) + ("update_ratio",)
        elif updates:
            names += ("update_ratio", "grad_rms", "weight_rms", "update_drift", "grad_drift", "weight_drift")
        want = {
            f"normwatch/enc.0@2/{n}": float(figures[n])
            for n in names
            if n in figures and (n in ("mean", "std", "min", "max") or math.isfinite(figures[n]))
        }
        # with ``which="all"`` also mean -/+ std, but not here: the std is NaN
        assert list(got) == list(want)
        assert all(got[k] == want[k] or (math.isnan(got[k]) and math.isnan(want[k])) for k in want)
    # another tensor of the same role gets its own tags (the plan is per tensor)
    assert all(k.startswith("normwatch/net.1/") for k in scalar_metrics("net.1", role, fig, which))


def test_write_scalars_is_one_event_read_back_as_every_scalar(tmp_path: Path) -> None:
    metrics = {f"normwatch/net.{i}/std": 0.1 * i for i in range(40)} | {"normwatch/alerts/warning": 2.0}
    writer = SummaryWriter(str(tmp_path))
    for step in (0, 7):
        write_scalars(writer, {k: v + step for k, v in metrics.items()}, step)
    writer.close()
    (path,) = tmp_path.glob("events.out.tfevents.*")
    scalar_events = [e for e in LegacyEventFileLoader(str(path)).Load() if e.summary.value]
    assert [(e.step, len(e.summary.value)) for e in scalar_events] == [(0, 41), (7, 41)]
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == sorted(metrics)
    for tag, value in metrics.items():
        read = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert read == [(0, pytest.approx(value, rel=1e-6)), (7, pytest.approx(value + 7, rel=1e-6))]


def test_log_scalars_reads_back_as_the_loggers_own_log_metrics(tmp_path: Path) -> None:
    """One event through the writer, the same tags (``prefix`` joined) and values as ``log_metrics`` writes."""
    from pytorch_lightning.loggers import TensorBoardLogger

    from lightning_normwatch.output.loggers import log_scalars

    metrics = {"normwatch/net.0/std": 0.25, "normwatch/net.0/mean": -1.5, "normwatch/alerts/error": 1.0}
    for name, prefix in (("plain", ""), ("prefixed", "train")):
        ours, theirs = (TensorBoardLogger(tmp_path, name=f"{name}_{who}", prefix=prefix) for who in ("ours", "theirs"))
        log_scalars(ours, metrics, 4)
        theirs.log_metrics(dict(metrics), step=4)
        read = []
        for logger in (ours, theirs):
            logger.experiment.flush()
            acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
            acc.Reload()
            read.append({t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]})
        assert read[0] == read[1] and len(read[0]) == 3
        assert all(t.startswith("train-normwatch/") for t in read[0]) == bool(prefix)
