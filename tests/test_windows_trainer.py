"""Drift at any run length, with a real Trainer and NormWatch's default arguments (issue 20).

The windows are fitted to ``trainer.max_steps`` (or epochs times batches): on runs of 200, 300 and
1,000 steps drift is judged, and an input shift planted in the second half is caught within three
logging steps. When the run cannot hold a reference window, the start line says so and from which step.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from models import Regressor, mlp, trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_normwatch import LoopWatch, NormWatch

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*the trainer has no logger.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
]

INTERVAL, BATCH = 10, 32


class ShiftedFrom(Dataset):
    """Regression data read in order; from batch ``step`` on (``None``: never) every input feature moves
    by ``shift`` of its std (a preprocessing change mid-run)."""

    def __init__(self, step: int | None, shift: float = 1.0, n: int = 100_000, d: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(4096, d, generator=g)
        w = torch.randn(d, 1, generator=g) / d**0.5
        self.y = torch.tanh(self.x @ w)
        self.step, self.shift, self.n = step, shift, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = (i * 7919) % len(self.x)
        moved = self.step is not None and i // BATCH >= self.step
        return self.x[j] + (self.shift if moved else 0.0), self.y[j]


def _fit(tmp_path: Any, steps: int, shift_at: int | None, **kwargs: Any) -> NormWatch:
    torch.manual_seed(0)
    cb = NormWatch(on_alert="ignore", tensorboard=False)  # default windows: fitted to the run
    model = Regressor(mlp(16, 32, 1), lr=1e-2, optimizer="adam")
    data = DataLoader(ShiftedFrom(shift_at), batch_size=BATCH, shuffle=False)
    trainer(tmp_path, [cb], max_steps=steps, log_every_n_steps=INTERVAL, **kwargs).fit(model, data)
    return cb


@pytest.mark.parametrize("steps", [200, 300, 1000])
def test_input_shift_in_the_second_half_is_caught_at_every_run_length(tmp_path, steps: int, caplog) -> None:
    shift_at = steps // 2 + 5
    with caplog.at_level(logging.INFO, logger="lightning_normwatch"):
        cb = _fit(tmp_path, steps, shift_at)
    start = next(r.getMessage() for r in caplog.records if "watching" in r.getMessage())
    assert "drift judged from step" in start, start
    drift = [a for a in cb.alerts if a.kind == "input_drift"]
    assert drift, [(a.kind, a.module) for a in cb.alerts]
    first = min(a.step for a in drift)
    assert shift_at <= first <= shift_at + 3 * INTERVAL, (first, shift_at)
    summary = [r.getMessage() for r in caplog.records if "summary" in r.getMessage()]
    assert summary and "drift judged from step" in summary[-1]


@pytest.mark.parametrize("steps", [200, 300])
def test_healthy_short_runs_stay_quiet_with_drift_judged(tmp_path, steps: int) -> None:
    cb = _fit(tmp_path, steps, None)
    assert [(a.kind, a.module) for a in cb.alerts if a.severity != "info"] == []
    assert cb.windows.judged and cb.windows.judged_from <= 0.5 * steps + INTERVAL  # type: ignore[union-attr]
    assert "mean_shift" in cb.last_result.figures["net.0"]  # type: ignore[union-attr]  # drift was measured


def test_start_line_says_when_drift_cannot_be_judged(tmp_path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="lightning_normwatch"):
        torch.manual_seed(0)
        cb = NormWatch(on_alert="ignore", tensorboard=False)
        data = DataLoader(ShiftedFrom(None), batch_size=BATCH)
        trainer(tmp_path, [cb], max_steps=40, log_every_n_steps=10).fit(Regressor(mlp(16, 32, 1)), data)
    start = next(r.getMessage() for r in caplog.records if "watching" in r.getMessage())
    assert "drift not judged" in start and "40 steps" in start and "from step" in start, start
    summary = next(r.getMessage() for r in caplog.records if "summary" in r.getMessage())
    assert "drift not judged" in summary


def test_explicit_windows_win_and_epochs_give_the_length(tmp_path) -> None:
    cb = NormWatch(on_alert="ignore", tensorboard=False, warmup_steps=7, reference_steps=50)
    data = DataLoader(ShiftedFrom(None, n=BATCH * 30), batch_size=BATCH)
    trainer(tmp_path, [cb], max_steps=-1, max_epochs=4, log_every_n_steps=10).fit(Regressor(mlp(16, 32, 1)), data)
    w = cb.windows
    assert (w.warmup, w.reference, w.total_steps) == (7, 50, 120)  # type: ignore[union-attr]
    auto = NormWatch(on_alert="ignore", tensorboard=False)
    trainer(tmp_path, [auto], max_steps=-1, max_epochs=4, log_every_n_steps=10).fit(Regressor(mlp(16, 32, 1)), data)
    w = auto.windows
    assert (w.warmup, w.end, w.judged_from, w.fitted) == (30, 61, 70, True)  # type: ignore[union-attr]


def test_collapse_is_caught_on_the_module_where_it_starts(tmp_path) -> None:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(16):
        lin = nn.Linear(16 if i == 0 else 64, 64)
        with torch.no_grad():
            if i < 6:
                nn.init.xavier_normal_(lin.weight, gain=5 / 3)
            else:
                lin.weight.mul_(0.1)  # from Linear 6 (module index 12) on, the bias carries everything
        layers += [lin, nn.Tanh()]
    net = nn.Sequential(*layers, nn.Linear(64, 1))
    cb = NormWatch(on_alert="ignore", tensorboard=False)
    data = DataLoader(ShiftedFrom(None), batch_size=BATCH)
    trainer(tmp_path, [cb], max_steps=30, log_every_n_steps=10).fit(Regressor(net, lr=1e-3, optimizer="adam"), data)
    collapse = [a for a in cb.alerts if a.kind == "collapse"]
    assert [(a.module, a.step) for a in collapse] == [("net.12", 0)]


def test_loopwatch_takes_a_total_steps_hint() -> None:
    net = mlp(16, 32, 1)
    watch = LoopWatch(net, every_n_steps=10, total_steps=200, on_alert="ignore")
    assert (watch.windows.warmup, watch.windows.end) == (50, 100)
    assert (LoopWatch(net, every_n_steps=10, on_alert="ignore").windows.end) == 300
