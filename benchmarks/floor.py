"""The floor of every-step monitoring: what the least a per-layer monitor can do costs, next to NormWatch.

``make bench`` measures NormWatch's overhead; this script asks how far down any monitor written in
Python on top of PyTorch hooks and TensorBoard can go on the same models, so that a target such as
"every step ≤ 1.10×" can be judged against what is possible at all. It trains the models of
``benchmarks/overhead.py`` with a real ``pl.Trainer``, configurations interleaved over rounds (the
order rotating), each step timed from one batch start to the next, and reports the median step of each
configuration over the median plain step of the same round (median over rounds, and the range).

Configurations (all log every step, to a ``TensorBoardLogger``, on the modules NormWatch watches by
default, the input batch included):

- ``plain``: no callback;
- ``floor``: forward hooks that compute the sum, the sum of squares (a BLAS dot) and ``aminmax`` of
  each output on the device (three reductions per tensor, no sampling; mean and std from them on the
  host), one transfer of all of them at the step's end and one TensorBoard event holding all the
  values (4 scalars per tensor; the events' checksums by the compiled CRC32C NormWatch installs, for
  every configuration): the cheapest per-layer monitor we could write, with no histogram, no
  per-channel figure, no test, no reference, no rule;
- ``floor + hist``: ``floor`` and a 64-bin ``torch.histc`` of each output written as one TensorBoard
  histogram per tensor (what a per-layer histogram costs at the least);
- ``NormWatch``: ``NormWatch(every_n_steps=1, warmup_steps=0, reference_steps=5)``, as in ``make bench``.

Usage:
    python benchmarks/floor.py                      # MLP and transformer, 4 rounds (about 3 minutes)
    python benchmarks/floor.py --models MLP --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import overhead  # noqa: E402  (sets the environment, the warnings filters and the package path)
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from tensorboard.compat.proto.summary_pb2 import Summary  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from lightning_normwatch import NormWatch  # noqa: E402
from lightning_normwatch.collect.selection import select_modules  # noqa: E402
from lightning_normwatch.output.checksum import install  # noqa: E402

CONFIGS = ("plain", "floor", "floor + hist", "NormWatch")
FIGURES = ("mean", "std", "min", "max")


class FloorMonitor(pl.Callback):
    """The least a per-layer monitor does every step: 4 device-side figures per output, one transfer, one event.

    Example:
        >>> FloorMonitor(histograms=False).names
        []
    """

    def __init__(self, histograms: bool) -> None:
        self.histograms = histograms
        self.names: list[str] = []
        self.pending: list[Tensor] = []
        self.hists: list[tuple[str, Tensor, Tensor]] = []
        self.handles: list[Any] = []
        self.step = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for name, module in select_modules(pl_module):
            self.handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, Tensor) and output.is_floating_point():
                self._measure(name, output.detach())

        return hook

    def _measure(self, name: str, x: Tensor) -> None:
        # the fastest reductions: a sum and a BLAS dot (``torch.std_mean`` is 30x slower on CPU)
        flat = x.reshape(-1).float()
        low, high = torch.aminmax(flat)
        self.pending.append(torch.stack([flat.sum(), torch.dot(flat, flat), low, high, torch.full((), flat.numel())]))
        self.names.append(name)
        if self.histograms:
            self.hists.append((name, torch.histc(x.float(), 64, float(low), float(high)), torch.stack([low, high])))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        self.pending, self.names, self.hists = [], [], []
        self.step = trainer.global_step  # (incremented by the optimizer step before the batch ends)
        self._measure("input", batch[0])

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        values = torch.stack(self.pending).tolist()  # the one transfer
        summary = Summary()
        for name, (total, squares, low, high, n) in zip(self.names, values, strict=True):
            mean = total / n
            std = max(squares / n - mean * mean, 0.0) ** 0.5
            for figure, value in zip(FIGURES, (mean, std, low, high), strict=True):
                summary.value.add(tag=f"floor/{name}/{figure}", simple_value=value)
        writer = trainer.logger.experiment  # a SummaryWriter
        step = self.step
        writer._get_file_writer().add_summary(summary, step)
        for name, counts, bounds in self.hists:
            low, high = bounds.tolist()
            edges = torch.linspace(low, high, 65)
            writer.add_histogram_raw(
                f"floor/{name}/hist",
                min=low,
                max=high,
                num=float(counts.sum()),
                sum=0.0,
                sum_squares=0.0,
                bucket_limits=edges[1:].tolist(),
                bucket_counts=counts.tolist(),
                global_step=step,
            )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def callbacks_for(config: str) -> list[pl.Callback]:
    """The callbacks of one configuration."""
    if config == "plain":
        return []
    if config == "floor":
        return [FloorMonitor(histograms=False)]
    if config == "floor + hist":
        return [FloorMonitor(histograms=True)]
    return [NormWatch(every_n_steps=1, warmup_steps=0, reference_steps=5)]


def run(models: list[str], rounds: int) -> dict[tuple[str, str], list[float]]:
    """Ratios to plain per (model, configuration), one per round; prints the plain step time too."""
    specs = {m.name: m for m in overhead.MODELS}
    ratios: dict[tuple[str, str], list[float]] = {}
    log_dir = tempfile.mkdtemp(prefix="floor-")
    for name in models:
        spec = specs[name]
        torch.manual_seed(0)
        model = spec.build()
        plain_ms = []
        for r in range(rounds * spec.round_factor):
            order = CONFIGS[r % len(CONFIGS) :] + CONFIGS[: r % len(CONFIGS)]
            medians = {}
            for config in order:
                overhead.make_callbacks = lambda c, d, t, config=config: callbacks_for(config)
                timer = overhead.fit(model, spec, config, spec.warmup + spec.steps, log_dir)
                medians[config] = statistics.median(timer.step_times()[spec.warmup :])
            plain_ms.append(medians["plain"] * 1e3)
            for config in CONFIGS[1:]:
                ratios.setdefault((name, config), []).append(medians[config] / medians["plain"])
            print(f"  {name}: round {r + 1} done", file=sys.stderr, flush=True)
        print(f"{name}: plain step {statistics.median(plain_ms):.1f} ms (median over rounds)")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["MLP", "Transformer"])
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    overhead.set_threads(overhead.THREADS)
    install()  # every configuration's events with the compiled CRC32C NormWatch installs (the floor's too)
    started = time.time()
    ratios = run(args.models, args.rounds)
    print(f"\n{overhead.machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}")
    print("| model | configuration | × plain (median over rounds) | range |")
    print("|---|---|---:|---|")
    for (name, config), values in ratios.items():
        print(f"| {name} | {config} | {statistics.median(values):.3f} | {min(values):.3f}-{max(values):.3f} |")


if __name__ == "__main__":
    main()
