"""Overhead of NormWatch on CPU training: time per step and peak memory, against plain training.

Every configuration trains the same model (same initialisation, same batches) with a real
``pl.Trainer`` in this one process; the configurations are interleaved over several rounds (the
order rotates every round) and each ratio compares a configuration with plain training of the same
round, so that slow phases of a shared machine affect both sides. The step time is the time between
consecutive ``on_train_batch_start`` calls: it includes everything the loop does (data, forward,
backward, optimizer, every callback, logging). Warm-up steps are dropped.

Configurations:

- ``plain``: no callback;
- ``every step``: ``NormWatch(every_n_steps=1)``: every layer and the inputs, every step;
- ``default``: ``NormWatch()``: logs every ``log_every_n_steps`` (50) steps. Its median step is a
  non-logging step, where NormWatch's cost (a fraction of a millisecond) is below the noise of a
  shared machine: it is also timed directly inside NormWatch's hooks, and ``amortised`` adds it on 49
  steps and one logging step's extra time (``every step`` minus ``plain``) per 50 steps;
- ``naive hist``: a peer approach re-implemented naively: forward hooks on the same modules calling
  ``SummaryWriter.add_histogram`` on the full tensor, every step.

Both NormWatch configurations use ``warmup_steps=0, reference_steps=5`` so that the timed steps
include the drift figures (the steady state of a long run); everything else is the default. Every
configuration logs to a ``TensorBoardLogger`` (Lightning's default logger), unless ``--logger none``.

Memory is measured in forked child processes, one per model and configuration, all forked from the
same parent state before the parent trains anything: the peak resident set size (``VmHWM``, reset
through ``/proc/self/clear_refs``) during a short fit, and its growth above the resident size just
before that fit. Two more children train a small MLP for ``--long-steps`` (2,000) steps with NormWatch
and record the resident size along the way, to show that it does not grow.

Usage:
    python benchmarks/overhead.py                 # full run (about 4 minutes on a quiet 2-core CPU)
    python benchmarks/overhead.py --quick         # smoke run
    python benchmarks/overhead.py --out table.md  # also write the Markdown report to a file

After the timed rounds, one more ``every step`` fit per model runs under ``stages.StageProfile``, which
wraps the methods of each stage (hooks, transfer, judge, write, TensorBoard's record writing) from
outside the package and attributes their time to the thread that ran them (``--skip-profile``: none).
"""

from __future__ import annotations

import argparse
import copy
import logging
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("PL_DISABLE_FORK", "1")
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*enable_nested_tensor.*")
warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.loggers import TensorBoardLogger  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lightning_normwatch import NormWatch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stages import HEADER, StageProfile  # noqa: E402

from lightning_normwatch.collect.selection import select_modules  # noqa: E402

CONFIGS = ("plain", "every step", "default", "naive hist")
THREADS = 2  # torch threads of every run (--threads)
INTERVAL = 50  # the trainer's log_every_n_steps: NormWatch's default logging interval


# ---------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: how to build it, its input shape, batch size and step budgets.

    Attributes:
        name: row label.
        build: builds the network (called under a fixed seed).
        input_shape: one example's shape.
        batch_size: examples per batch.
        steps: timed steps per configuration and round (``naive_steps`` for the naive peer).
        warmup: steps dropped at the start of every fit.
        memory_steps: steps of the fit whose peak memory is measured.
        round_factor: rounds of this model per requested round (cheap models get more, against noise).
    """

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    batch_size: int
    steps: int
    naive_steps: int
    warmup: int = 3
    memory_steps: int = 3
    round_factor: int = 1
    classes: int = 10
    compiled: bool = False
    configs: tuple[str, ...] = CONFIGS


class MeanPool(nn.Module):
    """Average over the sequence dimension of ``[batch, seq, features]``."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=1)


def build_mlp() -> nn.Module:
    """MLP 256 -> 512 -> 512 -> 512 -> 10 with ReLU."""
    return nn.Sequential(
        nn.Linear(256, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 10),
    )


def build_cnn() -> nn.Module:
    """Three 3x3 conv layers (32/64/64) with BatchNorm and ReLU, global average pool, linear."""
    layers: list[nn.Module] = []
    for c_in, c_out in ((3, 32), (32, 64), (64, 64)):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def build_transformer() -> nn.Module:
    """12 transformer encoder blocks of width 128 (4 heads, feed-forward 256), mean pool, linear.

    Many small layers: 4 watched tensors per block (two linear outputs, two layer norms), 50 in all.
    """
    blocks = [
        nn.TransformerEncoderLayer(128, nhead=4, dim_feedforward=256, dropout=0.1, batch_first=True) for _ in range(12)
    ]
    return nn.Sequential(*blocks, MeanPool(), nn.Linear(128, 10))


def build_compiled_mlp() -> nn.Module:
    """The MLP under ``torch.compile`` (inductor); compiled once and trained by every configuration in turn."""
    return torch.compile(build_mlp())


MODELS = (
    ModelSpec("MLP", build_mlp, (256,), 256, steps=60, naive_steps=10, warmup=5, memory_steps=10, round_factor=2),
    ModelSpec(
        "MLP-compiled",
        build_compiled_mlp,
        (256,),
        256,
        steps=60,
        naive_steps=0,
        warmup=5,
        round_factor=2,
        compiled=True,
        configs=("plain", "every step", "default"),
    ),
    ModelSpec("CNN", build_cnn, (3, 32, 32), 64, steps=8, naive_steps=3),
    ModelSpec("Transformer", build_transformer, (32, 128), 16, steps=16, naive_steps=3),
)


class Classifier(pl.LightningModule):
    """Cross-entropy classification with SGD (momentum 0.9) around any ``net``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class Batches(Dataset):
    """A few ready-made batches served in turn (``DataLoader(batch_size=None)``): no collation cost."""

    def __init__(self, spec: ModelSpec, length: int, count: int = 8, batch_size: int | None = None) -> None:
        g = torch.Generator().manual_seed(0)
        size = batch_size or spec.batch_size
        self.x = torch.randn(count, size, *spec.input_shape, generator=g)
        self.y = torch.randint(spec.classes, (count, size), generator=g)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i % len(self.x)], self.y[i % len(self.y)]


# ---------------------------------------------------------------------------------------------- callbacks
class StepTimer(pl.Callback):
    """Records ``time.perf_counter()`` at every ``on_train_batch_start`` (must be the first callback)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.hooks: dict[int, float] = {}  # global step -> seconds in NormWatch's per-step hooks (default config)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.starts.append(time.perf_counter())

    def step_times(self) -> list[float]:
        """Seconds per step (step ``i`` runs from its batch start to the next one)."""
        return [b - a for a, b in zip(self.starts, self.starts[1:], strict=False)]


class TimedNormWatch(NormWatch):
    """``NormWatch`` that adds up, per global step, the time spent in its per-step hooks.

    Used for the ``default`` configuration: its non-logging steps cost NormWatch a fraction of a
    millisecond, below the step-to-step noise of a shared machine, so it is measured directly.
    """

    def __init__(self, timer: StepTimer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timer = timer
        self.current = 0

    def _add(self, started: float) -> None:
        hooks = self.timer.hooks
        hooks[self.current] = hooks.get(self.current, 0.0) + time.perf_counter() - started

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        started, self.current = time.perf_counter(), trainer.global_step
        super().on_train_batch_start(trainer, pl_module, batch, i)
        self._add(started)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        started = time.perf_counter()
        super().on_before_backward(trainer, pl_module, loss)
        self._add(started)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        started = time.perf_counter()
        super().on_train_batch_end(trainer, pl_module, *args)
        self._add(started)


class NaiveHistograms(pl.Callback):
    """The naive peer: full-tensor ``SummaryWriter.add_histogram`` per watched module, every step."""

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.writer: SummaryWriter | None = None
        self.handles: list[Any] = []
        self.step = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.writer = SummaryWriter(self.log_dir)
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in select_modules(pl_module)]

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, Tensor) and output.is_floating_point() and self.writer is not None:
                self.writer.add_histogram(name, output.detach(), self.step)

        return hook

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        self.step = trainer.global_step
        if self.writer is not None:
            self.writer.add_histogram("input", batch[0], self.step)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for handle in self.handles:
            handle.remove()
        if self.writer is not None:
            self.writer.close()


#: the NormWatch of the latest fit of each configuration (its ``cost``: NormWatch's own estimate of what it cost)
WATCHES: dict[str, NormWatch] = {}


def own_estimate(config: str) -> float | None:
    """``cost.share`` of the latest fit's NormWatch under ``config`` (None before it measured a logging step)."""
    watch = WATCHES.pop(config, None)
    cost = watch.cost if watch is not None else None
    return cost.share if cost is not None else None


def make_callbacks(config: str, log_dir: str, timer: StepTimer) -> list[pl.Callback]:
    """The callbacks of one configuration (the timer itself is added by ``fit``)."""
    if config == "plain":
        return []
    if config == "every step":
        WATCHES[config] = NormWatch(every_n_steps=1, warmup_steps=0, reference_steps=5)
        return [WATCHES[config]]
    if config == "default":
        WATCHES[config] = TimedNormWatch(timer, warmup_steps=0, reference_steps=5)
        return [WATCHES[config]]
    if config == "naive hist":
        return [NaiveHistograms(log_dir)]
    raise ValueError(f"unknown configuration {config!r}")


def fit(
    model: nn.Module,
    spec: ModelSpec,
    config: str,
    steps: int,
    log_dir: str,
    *,
    logger: bool = True,
    extra: list[pl.Callback] | None = None,
    batch_size: int | None = None,
) -> StepTimer:
    """Train a copy of ``model`` for ``steps`` steps under ``config``; return its timer."""
    timer = StepTimer()
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(log_dir, name=config.replace(" ", "_")) if logger else False,
        callbacks=[timer, *make_callbacks(config, log_dir, timer), *(extra or [])],
        log_every_n_steps=INTERVAL,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    data = DataLoader(Batches(spec, steps, batch_size=batch_size), batch_size=None)
    # a compiled network is shared by all fits (a copy would be compiled again, and again ...)
    trainer.fit(Classifier(model if spec.compiled else copy.deepcopy(model)), data)
    return timer


# ---------------------------------------------------------------------------------------------- memory
def set_threads(n: int) -> None:
    """Torch threads of this process and of the children it forks."""
    global THREADS
    THREADS = n
    torch.set_num_threads(n)


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> None:
    """Reset ``VmHWM`` to the current resident size (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class RssProbe(pl.Callback):
    """Resident size (KiB) after the given global steps."""

    def __init__(self, at: set[int]) -> None:
        self.at = at
        self.rss: dict[int, int] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_step in self.at:
            self.rss[trainer.global_step] = status_kib("VmRSS")


def peak_child(index: int, config: str, log_dir: str, logger: bool) -> tuple[int, int]:
    """(resident KiB before the fit, peak resident KiB during it) for one model and configuration."""
    spec = MODELS[index]
    torch.manual_seed(0)
    model = spec.build()
    fit(model, spec, config, 1, log_dir, logger=logger)  # lazy imports and first-call allocations
    reset_peak()
    before = status_kib("VmRSS")
    fit(model, spec, config, 2 if config == "naive hist" else spec.memory_steps, log_dir, logger=logger)
    return before, status_kib("VmHWM")


def growth_child(config: str, steps: int, marks: list[int], log_dir: str, logger: bool) -> dict[int, int]:
    """Resident size (KiB) at the ``marks`` of a long run of the MLP with batch 32."""
    spec = MODELS[0]
    torch.manual_seed(0)
    probe = RssProbe(set(marks))
    fit(spec.build(), spec, config, steps, log_dir, logger=logger, extra=[probe], batch_size=32)
    return probe.rss


def _child_main(target: Callable[..., Any], args: tuple[Any, ...], conn: Any) -> None:
    try:
        torch.set_num_threads(THREADS)
        conn.send((True, target(*args)))
    except BaseException:  # report it to the parent instead of dying silently
        conn.send((False, traceback.format_exc()))
    finally:
        conn.close()


def in_child(target: Callable[..., Any], *args: Any) -> Any:
    """Run ``target(*args)`` in a forked process and return its result (its error is re-raised here)."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(target, args, child))
    proc.start()
    child.close()
    ok, result = parent.recv()
    proc.join()
    if not ok:
        raise RuntimeError(f"benchmark child failed:\n{result}")
    return result


# ---------------------------------------------------------------------------------------------- timing
@dataclass
class Timings:
    """Per (model, configuration): step times (s) of every round, and ratios to plain per round."""

    steps: dict[tuple[str, str], list[float]]
    ratio: dict[tuple[str, str], list[float]]
    amortised: dict[tuple[str, str], list[float]]
    hooks: dict[str, list[float]]  # model -> NormWatch's hook seconds per non-logging step (default), per round
    #: (model, configuration) -> NormWatch's own estimate of its cost (``callback.cost.share``), per round
    meter: dict[tuple[str, str], list[float]] = field(default_factory=dict)


def time_model(spec: ModelSpec, rounds: int, quick: bool, log_dir: str, logger: bool, t: Timings) -> None:
    """Train every configuration ``rounds`` times, interleaved, and record step times and ratios."""
    torch.manual_seed(0)
    model = spec.build()
    fit(model, spec, "every step", 3, log_dir, logger=logger)  # warm the code paths once
    rounds *= spec.round_factor
    for r in range(rounds):
        configs = spec.configs
        order = configs[r % len(configs) :] + configs[: r % len(configs)]
        medians: dict[str, float] = {}
        hooks = 0.0
        for config in order:
            n = spec.naive_steps if config == "naive hist" else spec.steps
            n = max(2, n // 2) if quick else n
            timer = fit(model, spec, config, spec.warmup + n, log_dir, logger=logger)
            times = timer.step_times()[spec.warmup :]
            t.steps.setdefault((spec.name, config), []).extend(times)
            medians[config] = statistics.median(times)
            share = own_estimate(config)
            if config == "every step" and share is not None:
                t.meter.setdefault((spec.name, config), []).append(share)
            if config == "default":
                quiet = [s for step, s in timer.hooks.items() if step >= spec.warmup and step % INTERVAL]
                hooks = statistics.median(quiet) if quiet else 0.0
        t.hooks.setdefault(spec.name, []).append(hooks)
        for config in spec.configs:
            ratio = medians[config] / medians["plain"]
            t.ratio.setdefault((spec.name, config), []).append(ratio)
            if config == "default":  # its hooks on 49 non-logging steps, and one logging step, per interval
                extra = (INTERVAL - 1) * hooks + medians["every step"] - medians["plain"]
                ratio = 1 + extra / (INTERVAL * medians["plain"])
            t.amortised.setdefault((spec.name, config), []).append(ratio)
        print(f"  {spec.name}: round {r + 1}/{rounds} done", file=sys.stderr, flush=True)


def interval_ratios(
    spec: ModelSpec, rounds: int, log_dir: str, logger: bool, t: Timings | None = None
) -> tuple[list[float], float]:
    """``default`` against plain over whole logging intervals: per round (plain and default interleaved, the
    order alternating), mean step time over steps 50-149 (two 50-step intervals, each with its logging step
    and everything that follows it: the worker thread's judging and writing included), default / plain.

    Returns the per-round ratios and one burst-robust ratio: the sum over step positions 50-149 of the median
    (over rounds) step time at that position, default / plain. A logging step's cost recurs at its position in
    every round and stays in the median; a burst of another process's load hits a position in one round and
    drops out (the per-round means of a shared machine swing by more than the 2 % being measured).
    Steps 0-49 (step 0's logging step, the reference window of 5 steps, warm-up) are not timed.
    """
    start, end = INTERVAL, 3 * INTERVAL
    torch.manual_seed(0)
    model = spec.build()
    ratios = []
    steps: dict[str, list[list[float]]] = {"plain": [], "default": []}
    for r in range(rounds * spec.round_factor):
        means = {}
        for config in ("plain", "default") if r % 2 == 0 else ("default", "plain"):
            times = fit(model, spec, config, end + 1, log_dir, logger=logger).step_times()[start:end]
            means[config] = statistics.fmean(times)
            share = own_estimate(config)
            if t is not None and share is not None:
                t.meter.setdefault((spec.name, config), []).append(share)
            steps[config].append(times)
        ratios.append(means["default"] / means["plain"])
        print(f"  {spec.name}: whole intervals, round {r + 1} done", file=sys.stderr, flush=True)
    robust = {c: sum(statistics.median(column) for column in zip(*runs, strict=True)) for c, runs in steps.items()}
    return ratios, robust["default"] / robust["plain"]


def profile_model(spec: ModelSpec, quick: bool, log_dir: str, logger: bool) -> StageProfile:
    """Per-stage profile of NormWatch's logging steps (``every step``), in a fit of its own after the timed rounds
    (the wrappers cost about a microsecond a call: kept out of the timed fits)."""
    torch.manual_seed(0)
    model = spec.build()
    steps = max(3, spec.steps // (4 if quick else 2))
    fit(model, spec, "every step", spec.warmup, log_dir, logger=logger)  # compiled: compiled again here, once
    with StageProfile() as prof:
        fit(model, spec, "every step", steps, log_dir, logger=logger)
    return prof


# ---------------------------------------------------------------------------------------------- report
def own_estimates(specs: list[ModelSpec], t: Timings, whole: dict[str, tuple[list[float], float]]) -> str:
    """NormWatch's own estimate of its cost (``callback.cost.share``, ``session/cost.py``) next to the measured
    overhead: every step against its median ratio - 1, the default against its whole-interval ratio - 1."""
    cells = []
    for spec in specs:
        every = t.meter.get((spec.name, "every step"))
        default = t.meter.get((spec.name, "default"))
        measured = statistics.median(t.ratio[(spec.name, "every step")]) - 1
        cell = f"{spec.name}: every step {statistics.median(every):+.1%} (measured {measured:+.1%})" if every else ""
        if default:
            whole_ratio = statistics.median(whole[spec.name][0]) - 1
            cell += f", default {statistics.median(default):+.1%} (measured {whole_ratio:+.1%})"
        cells.append(cell or f"{spec.name}: no estimate")
    return (
        "NormWatch's own estimate of what it costs (`callback.cost.share`: its work over the training time, median "
        "over rounds; the default from the whole-interval fits), against the measured overhead: "
        + "; ".join(cells)
        + "."
    )


def machine() -> str:
    """CPU model, cores and library versions."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} cores, torch {torch.__version__} ({THREADS} threads), "
        f"pytorch_lightning {pl.__version__}, Python {platform.python_version()}"
    )


def table(specs: list[ModelSpec], t: Timings, peaks: dict[tuple[str, str], tuple[int, int]]) -> str:
    """The Markdown table: model x configuration."""
    lines = [
        "| model | configuration | median ms/step | × plain (median) | × plain (amortised) "
        "| peak RSS MiB | × plain | peak growth MiB | × plain |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for spec in specs:
        for config in spec.configs:
            key = (spec.name, config)
            memory = "| — | — | — | — |"  # not measured (--skip-memory; a compiled model)
            if key in peaks and (spec.name, "plain") in peaks:
                (before, peak), (base_before, base_peak) = peaks[key], peaks[spec.name, "plain"]
                growth, base_growth = (peak - before) / 1024, (base_peak - base_before) / 1024
                memory = (
                    f"| {peak / 1024:.0f} | {peak / base_peak:.3f} | {growth:.1f} "
                    f"| {growth / base_growth if base_growth > 0 else float('nan'):.2f} |"
                )
            lines.append(
                f"| {spec.name} | {config} | {1000 * statistics.median(t.steps[key]):.1f} "
                f"| {statistics.median(t.ratio[key]):.3f} | {statistics.median(t.amortised[key]):.3f} {memory}"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: one round, half the steps, short growth check")
    p.add_argument("--out", default=None, help="also write the Markdown report to this file")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --quick: 1)")
    p.add_argument(
        "--models",
        default="MLP,CNN,Transformer,MLP-compiled",
        help="comma-separated subset of MLP,CNN,Transformer,MLP-compiled",
    )
    p.add_argument("--long-steps", type=int, default=None, help="steps of the growth check (default 2000)")
    p.add_argument("--logger", choices=("tensorboard", "none"), default="tensorboard", help="logger of every run")
    p.add_argument("--threads", type=int, default=THREADS, help="torch threads (default 2)")
    p.add_argument("--skip-memory", action="store_true", help="time only (no memory children, no growth check)")
    p.add_argument("--skip-profile", action="store_true", help="no per-stage profile of the logging steps")
    args = p.parse_args(argv)
    set_threads(args.threads)

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_normwatch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    rounds = args.rounds or (1 if args.quick else 3)
    long_steps = args.long_steps or (300 if args.quick else 2000)
    logger = args.logger == "tensorboard"
    names = args.models.split(",")
    specs = [m for m in MODELS if m.name in names]
    if not specs:
        p.error(f"--models: none of {names} is one of MLP, CNN, Transformer, MLP-compiled")
    started = time.perf_counter()

    with tempfile.TemporaryDirectory() as log_dir:
        # Memory first, in forked children, before this process runs any parallel torch work.
        peaks = {
            (spec.name, config): in_child(peak_child, MODELS.index(spec), config, log_dir, logger)
            for spec in specs
            if not spec.compiled and not args.skip_memory  # a compiled model would compile again in every child
            for config in spec.configs
        }
        marks = sorted({min(200, long_steps // 2), long_steps // 2, long_steps})
        # default: the long run; every step: a quarter as long (each of its steps is a logging step)
        short = [m // 4 for m in marks]
        growth = (
            {}
            if args.skip_memory
            else {
                "default": (marks, in_child(growth_child, "default", long_steps, marks, log_dir, logger)),
                "every step": (short, in_child(growth_child, "every step", short[-1], short, log_dir, logger)),
            }
        )
        memory_s = time.perf_counter() - started
        print(f"  memory measured in {memory_s:.0f} s", file=sys.stderr, flush=True)

        timings = Timings({}, {}, {}, {})
        for spec in specs:
            time_model(spec, rounds, args.quick, log_dir, logger, timings)
        whole = {s.name: interval_ratios(s, rounds, log_dir, logger, timings) for s in specs}
        profiles = {} if args.skip_profile else {s.name: profile_model(s, args.quick, log_dir, logger) for s in specs}
    total_s = time.perf_counter() - started

    command = " ".join(["python benchmarks/overhead.py", *(argv if argv is not None else sys.argv[1:])])
    budget = ", ".join(f"{s.name} {s.steps} (naive {s.naive_steps}) × {rounds * s.round_factor} rounds" for s in specs)
    lines = [
        f"Machine: {machine()}.",
        f"Command: `{command}`; logger: {args.logger}.",
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; interleaved rounds, timed steps per configuration "
        f"and round: {budget}{' (halved: --quick)' if args.quick else ''}, after dropping warm-up steps; "
        f"run time {total_s:.0f} s, of which memory {memory_s:.0f} s.",
        "",
        table(specs, timings, peaks),
        "× plain (median): median over rounds of (median step of the configuration / median step of plain in the "
        f"same round); for `default` the median step is a non-logging step. × plain (amortised), `default` only: "
        f"1 + (49 × NormWatch's own hook time on a non-logging step + one logging step's extra time, i.e. the "
        f"`every step` median minus the plain median) / ({INTERVAL} × plain median), per round, median over rounds; "
        "for the other configurations it repeats the median ratio. Peak RSS: whole process; peak growth: above the "
        "resident size just before the fit.",
        "",
        "`default` over whole logging intervals (steps 50-149 of a fit: two 50-step intervals with their logging "
        "steps and what follows them, the worker thread's work included), mean step / plain's mean step, per round "
        "(plain and default interleaved), median [min-max] over rounds; then, burst-robust, the sum over the 100 "
        "step positions of the median step time at each position over rounds, default / plain: "
        + ", ".join(
            f"{n} {statistics.median(r):.3f} [{min(r):.3f}-{max(r):.3f}] ({len(r)} rounds), robust {robust:.3f}"
            for n, (r, robust) in whole.items()
        )
        + ".",
        "",
        "NormWatch's own hooks on a non-logging step (`default`, measured directly, median over rounds): "
        + ", ".join(f"{s.name} {1000 * statistics.median(timings.hooks[s.name]):.3f} ms" for s in specs)
        + ".",
        "",
        own_estimates(specs, timings, whole),
        "",
    ]
    if profiles:
        lines += [
            "Per-stage profile of a logging step (`every step`, a fit of its own after the timed rounds; "
            "`benchmarks/stages.py`): wall time in the methods of each stage, by the thread that ran them. "
            "Only the training thread's time delays training directly; the others compete for the GIL and the cores.",
            "",
            HEADER,
            *(row for name, prof in profiles.items() for row in prof.rows(name)),
            "",
        ]
    lines += [
        "Resident size (MiB) over a long run (MLP, batch 32):",
        "",
    ]
    for config, (at, rss) in growth.items():
        values = ", ".join(f"{rss[m] / 1024:.1f} at step {m}" for m in at if m in rss)
        delta = (rss.get(at[-1], 0) - rss.get(at[0], 0)) / 1024
        lines.append(f"- NormWatch {config}: {values} ({delta:+.1f} MiB from step {at[0]} to {at[-1]})")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
