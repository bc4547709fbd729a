"""On CUDA, NormWatch must not synchronise with the host on non-logging steps, and only a few times on logging steps.

``torch.cuda.set_sync_debug_mode("error")`` makes every synchronising CUDA call (``.item()``,
``bool(tensor)``, a blocking device-to-host copy, ``cudaStreamSynchronize`` ...) raise. A helper
callback placed before NormWatch turns it on at the start of every non-logging step and a second
one, placed after NormWatch, turns it off at the end of the step, so that NormWatch's hooks, the
forward, the loss check (``on_before_backward`` accumulates a device flag), the backward and the
optimizer step all run under it. Logging steps run under ``"warn"`` instead, and the warnings are
counted: the transfer of the step's statistics is one synchronisation, the loss flag, the update
sizes (``docs/updates.md``) and the model checks may add one each, so at most ``MAX_LOGGING_SYNCS``
(a bound: the exact count is printed, ``pytest -s``). The batches live on the GPU already, so that
Lightning's batch transfer copies nothing.

Skipped without CUDA (run them with ``pytest tests/test_gpu_sync.py`` on a machine with a GPU;
``make bench-gpu`` times every-step overhead on the transformer there).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_normwatch import NormWatch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs CUDA: checks with torch.cuda.set_sync_debug_mode that NormWatch never synchronises with the "
        "host on non-logging steps, and at most a few times on logging steps",
    ),
]

EVERY = 3
#: synchronisations allowed in one logging step (transfer, loss flag, update sizes, model checks)
MAX_LOGGING_SYNCS = 4


class GpuBatches(Dataset):
    """Ready-made batches already on the GPU (``DataLoader(batch_size=None)`` serves them as they are)."""

    def __init__(self, steps: int, batch: int = 32, d_in: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(4, batch, d_in, generator=g).cuda()
        self.y = torch.randn(4, batch, 1, generator=g).cuda()
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i % 4], self.y[i % 4]


class Net(pl.LightningModule):
    """A small MLP with BatchNorm and a bounded activation; ``nan_at`` poisons the loss at that step."""

    def __init__(self, nan_at: int | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
        )
        self.nan_at = nan_at

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        if self.nan_at is not None and self.global_step == self.nan_at:
            loss = loss * math.nan  # non-finite loss on a non-logging step: flagged on the device only
        return loss  # no self.log: Lightning's own metric handling is not what this test is about

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class SyncGuard(pl.Callback):
    """Before NormWatch: raise on any host synchronisation from here on, on non-logging steps; count them
    (``"warn"`` mode) on logging steps, until ``release`` (``SyncRelease``, after NormWatch)."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.guarded: list[int] = []
        self.syncs: dict[int, int] = {}  # logging step -> synchronising calls counted
        self._capture: Any = None
        self._seen: list[warnings.WarningMessage] = []
        self._step = -1

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        self._step = trainer.global_step
        if trainer.global_step % self.every != 0:
            self.guarded.append(trainer.global_step)
            torch.cuda.set_sync_debug_mode("error")
            return
        self._capture = warnings.catch_warnings(record=True)
        self._seen = self._capture.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def release(self) -> None:
        torch.cuda.set_sync_debug_mode(0)
        if self._capture is not None:
            self.syncs[self._step] = sum("synchroniz" in str(w.message) for w in self._seen)
            self._capture.__exit__(None, None, None)
            self._capture = None


class SyncRelease(pl.Callback):
    """After NormWatch: allow synchronisation again (Lightning's bookkeeping between steps may sync)."""

    def __init__(self, guard: SyncGuard) -> None:
        self.guard = guard

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.guard.release()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.guard.release()


@pytest.fixture(autouse=True)
def _sync_mode_off() -> Any:
    yield
    torch.cuda.set_sync_debug_mode(0)


def _fit(tmp_path: Any, model: Net, steps: int) -> tuple[NormWatch, SyncGuard]:
    guard = SyncGuard(EVERY)
    watch = NormWatch(every_n_steps=EVERY, warmup_steps=0, reference_steps=2, on_alert="ignore", tensorboard=False)
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path),
        max_steps=steps,
        accelerator="gpu",
        devices=1,
        logger=False,
        callbacks=[guard, watch, SyncRelease(guard)],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, DataLoader(GpuBatches(steps), batch_size=None))
    return watch, guard


def test_sync_debug_mode_catches_a_sync() -> None:
    """The mechanism itself: without this, the test below would pass vacuously."""
    x = torch.ones(3, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    with pytest.raises(RuntimeError, match="synchroniz"):
        x.sum().item()
    torch.cuda.set_sync_debug_mode(0)


def test_no_host_sync_on_non_logging_steps(tmp_path: Any) -> None:
    steps = 3 * EVERY + 1  # logging steps 0, 3, 6, 9
    watch, guard = _fit(tmp_path, Net(), steps)
    assert guard.guarded == [s for s in range(steps) if s % EVERY], "non-logging steps ran under the sync check"
    result = watch.last_result
    assert result is not None and result.step == 9
    assert {"input", "net.0", "net.1", "net.2", "net.3", "net.4", "net.5"} <= set(result.figures)
    assert all(math.isfinite(fig["std"]) for fig in result.figures.values())


def test_nonfinite_loss_on_a_non_logging_step_is_reported_at_the_next_logging_step(tmp_path: Any) -> None:
    watch, guard = _fit(tmp_path, Net(nan_at=4), steps=2 * EVERY + 1)  # NaN at step 4; logging step 6
    assert 4 in guard.guarded
    nonfinite = [a for a in watch.alerts if a.kind == "nonfinite"]
    assert nonfinite, "the NaN loss of step 4 was not reported"
    assert nonfinite[0].step == 2 * EVERY


def test_a_logging_step_synchronises_a_bounded_number_of_times(tmp_path: Any) -> None:
    steps = 3 * EVERY + 1
    _, guard = _fit(tmp_path, Net(), steps)
    print(f"synchronising CUDA calls per logging step: {guard.syncs}")
    steady = {s: n for s, n in guard.syncs.items() if s > 0}  # step 0 also discovers inputs and lays out blocks
    assert set(steady) == {3, 6, 9}
    assert all(1 <= n <= MAX_LOGGING_SYNCS for n in steady.values()), steady  # at least the one transfer
