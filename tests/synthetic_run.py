"""A large synthetic NormWatch run, written with NormWatch's own tags and writers (for the tab's speed test).

``write_large_run(logdir, tensors=200, steps=2000)``: an input and alternating Linear/ReLU tensors,
every figure of the default scalar set at every step (``scalars.scalar_metrics`` and
``scalars.threshold_metrics``), histograms every 10 steps, the watched-tensor panel and an alert table
(``panels.watched_markdown`` / ``panels.alerts_markdown``) with one planted fault: from step 1,200 the
ReLU ``net.121`` is dead and everything after it shrinks. Written as one Summary per step, a few seconds.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import text

from lightning_normwatch.config import Thresholds
from lightning_normwatch.judge.alerts import Alert
from lightning_normwatch.output.markdown import alerts_markdown, watched_markdown
from lightning_normwatch.output.scalars import scalar_metrics, threshold_metrics
from lightning_normwatch.output.tags import ALERT_TAG, WATCHED_TAG

DEAD, FAULT_STEP, REFERENCE_END = "net.121", 1200, 300


def _kinds(tensors: int) -> dict[str, tuple[str, str]]:
    kinds = {"input": ("batch", "input")}
    for i in range(tensors - 1):
        kinds[f"net.{i}"] = ("Linear", "preact") if i % 2 == 0 else ("ReLU", "activation")
    return kinds


def _figures(i: int, key: str, role: str, step: int, rng: np.random.Generator) -> dict[str, float]:
    broken = step >= FAULT_STEP and i >= int(DEAD.split(".")[1])
    std = (0.01 if broken else 1.0) * (1 + 0.05 * rng.standard_normal())
    fig = {"mean": 0.1 * rng.standard_normal(), "std": std, "zeros": 0.5 if role == "activation" else 0.0}
    fig.update(channel_skew=0.1, channel_kurtosis=0.2)
    if role == "activation":
        fig["dead"] = 1.0 if broken and key == DEAD else 0.0
        fig["zeros"] = 1.0 if broken and key == DEAD else 0.5
    if step >= REFERENCE_END:
        fig.update(std_log_ratio=math.log(std), mean_shift=fig["mean"] / 1.0, shape_psi=0.02)
    return fig


def _histogram(std: float, rng: np.random.Generator) -> HistogramProto:
    values = rng.standard_normal(512) * std
    counts, edges = np.histogram(values, bins=30)
    return HistogramProto(min=float(values.min()), max=float(values.max()), num=512, sum=float(values.sum()),
                          sum_squares=float((values**2).sum()), bucket_limit=edges[1:].tolist(),
                          bucket=counts.astype(float).tolist())  # fmt: skip


def write_large_run(logdir: Path, tensors: int = 200, steps: int = 2000) -> Path:
    """Write the run into ``logdir/large``; its path."""
    run = logdir / "large"
    writer = SummaryWriter(str(run))
    kinds = _kinds(tensors)
    keys = list(kinds)
    rng = np.random.default_rng(0)
    writer.add_text(WATCHED_TAG, watched_markdown(keys, kinds), global_step=0)
    file_writer = writer._get_file_writer()
    th = Thresholds()
    for step in range(steps):
        values = []
        for i, key in enumerate(keys):
            role = kinds[key][1]
            fig = _figures(i - 1, key, role, step, rng)
            metrics = scalar_metrics(key, role, fig)
            values += [Summary.Value(tag=t, simple_value=v) for t, v in metrics.items()]
            if step % 10 == 0:
                values.append(Summary.Value(tag=f"normwatch/{key}", histo=_histogram(fig["std"], rng)))
        if step >= REFERENCE_END:
            logged = {f"normwatch/x/{f}": 0.0 for f in ("std_log_ratio", "mean_shift", "shape_psi", "dead")}
            values += [Summary.Value(tag=t, simple_value=v) for t, v in threshold_metrics(th, logged).items()]
        file_writer.add_summary(Summary(value=values), step)
    alert = Alert(FAULT_STEP, DEAD, "dead", "warning", 1.0, th.dead, f"100% of `{DEAD}` (ReLU)'s units output zero")
    file_writer.add_summary(text(ALERT_TAG, alerts_markdown([alert], {DEAD: "ReLU"})), FAULT_STEP)
    writer.close()
    return run
