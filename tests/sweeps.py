"""Severity sweeps on real training (``tests/test_severity_sweeps.py``): models and data that are not the
calibration's own (``benchmarks/calibrate.py``), with a fault of a chosen size planted in them.

- ``dead_sweep``: parallel ReLU branches (not a stack), each with a planted share of dead units (bias -100);
- ``drift_run``: a SiLU MLP with a bias-free first Linear on logistic-distributed features (excess kurtosis
  1.2, neither Gaussian nor a scikit-learn data set); from step ``AT`` every input feature is multiplied by
  ``scale`` and shifted by ``shift`` of its stds, on fresh rows of the same stream.

Run as a script to print the sweep tables of docs/testing.md: ``.venv/bin/python -m tests.sweeps``.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_normwatch import NormWatch
from tests.models import Regressor, trainer

#: logging at every step, input reference at steps 0-11 (layers: 4-11), drift judged from step 12
WATCH = dict(every_n_steps=1, warmup_steps=4, reference_steps=8, on_alert="ignore", tensorboard=False)
REFERENCE_STEPS = 12  # logging steps the input reference holds (inputs need no warm-up)
AT = 14  # the first step with the fault
FEATURES = 8
LOGISTIC_KURTOSIS = 1.2  # excess kurtosis of the logistic distribution


class Stream(Dataset):
    """``steps * batch`` rows drawn once (standardized logistic features, a noisy target); rows from
    ``AT * batch`` on are ``x * scale + shift``."""

    def __init__(self, steps: int, batch: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> None:
        g = torch.Generator().manual_seed(1000 + seed)
        u = torch.rand(steps * batch, FEATURES, generator=g, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
        x = (torch.log(u / (1 - u)) * math.sqrt(3) / math.pi).float()  # logistic, std 1
        w = torch.randn(FEATURES, 1, generator=g) / FEATURES**0.5
        self.y = torch.tanh(x @ w) + 0.05 * torch.randn(len(x), 1, generator=g)
        x[AT * batch :] = x[AT * batch :] * scale + shift
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def drift_net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(FEATURES, 32, bias=False), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 1))


def drift_run(tmp_path: Any, batch: int, shift: float = 0.0, scale: float = 1.0, seed: int = 0, **th: float) -> list:
    """Alerts of a run with the fault from step ``AT`` (8 faulty steps) as ``(module, kind, step, value)``."""
    steps = AT + 8
    pl.seed_everything(seed, verbose=False)
    cb = NormWatch(**WATCH, thresholds=th or None)  # type: ignore[arg-type]
    data = DataLoader(Stream(steps, batch, seed, shift, scale), batch_size=batch)
    trainer(tmp_path, [cb], max_steps=steps).fit(Regressor(drift_net(), lr=1e-4, optimizer="adam"), data)
    return [(a.module, a.kind, a.step, a.value) for a in cb.alerts if a.severity != "info"]


def first(alerts: list, module: str, kind: str) -> int | None:
    """The step ``kind`` was first raised on ``module`` (None: never)."""
    return next((s for m, k, s, _ in alerts if m == module and k == kind), None)


def mean_floor(batch: int, floor: float = 0.5, z: float = 5.0) -> float:
    """Where ``input_drift`` starts for a mean shift (in stds): the effect floor or ``z`` standard errors of
    the difference of two means (batch items now, ``REFERENCE_STEPS`` batches in the reference), the larger."""
    return max(floor, z * math.sqrt(1 / batch + 1 / (REFERENCE_STEPS * batch)))


def scale_floor(batch: int, floor: float = 1.5, z: float = 5.0) -> float:
    """Where ``input_drift`` starts for a rescaling (factor): the effect floor or ``z`` standard errors of
    the log std ratio, ``sqrt((g2 + 2) / 4 * (1/n + 1/m))`` with the logistic's excess kurtosis, the larger."""
    se = math.sqrt((LOGISTIC_KURTOSIS + 2) / 4 * (1 / batch + 1 / (REFERENCE_STEPS * batch)))
    return max(floor, math.exp(z * se))


class DeadBranches(nn.Module):
    """Parallel ``Linear(8, width) -> ReLU`` branches; branch ``i`` has ``round(shares[i] * width)`` units whose
    bias is -100 (dead for every input). Module names: ``branches.<i>.1`` for the ReLUs."""

    def __init__(self, shares: list[float], width: int = 50) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(nn.Linear(FEATURES, width), nn.ReLU()) for _ in shares)
        self.dead = [round(s * width) / width for s in shares]
        with torch.no_grad():
            for branch, share in zip(self.branches, shares, strict=True):
                branch[0].bias[: round(share * width)] = -100.0
        self.head = nn.Linear(len(shares) * width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([b(x) for b in self.branches], dim=1))


def dead_sweep(tmp_path: Any, shares: list[float], seed: int = 0, batch: int = 32, **th: float) -> dict[float, tuple]:
    """Planted dead share -> (measured dead share, step of the ``dead`` alert or None) at the first logging steps."""
    pl.seed_everything(seed, verbose=False)
    net = DeadBranches(shares)
    cb = NormWatch(**WATCH, thresholds=th or None)  # type: ignore[arg-type]
    data = DataLoader(Stream(2, batch, seed), batch_size=batch)
    trainer(tmp_path, [cb], max_steps=2).fit(Regressor(net, lr=1e-3), data)
    alerts = [(a.module, a.kind, a.step, a.value) for a in cb.alerts]
    figures = cb.last_result.figures  # type: ignore[union-attr]
    out = {}
    for i, share in enumerate(net.dead):
        name = f"net.branches.{i}.1"
        out[share] = (figures[name]["dead"], first(alerts, name, "dead"))
    return out


def _table() -> None:  # pragma: no cover - prints the tables of docs/testing.md
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        shares = [0.4 + 0.02 * i for i in range(26)]
        for th in ({}, {"dead": 0.7}):
            fired = [s for s, (_, at) in dead_sweep(tmp, shares, **th).items() if at is not None]
            print("dead", th or "default", "fires from", min(fired))
        for batch in (32, 256):
            for seed in range(3):
                row = []
                for shift in (0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0):
                    row.append((shift, first(drift_run(tmp, batch, shift=shift, seed=seed), "input", "input_drift")))
                print("shift", batch, seed, f"floor {mean_floor(batch):.2f}", row)
                row = []
                for scale in (1.25, 1.4, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.5, 6.0, 8.0):
                    alerts = drift_run(tmp, batch, scale=scale, seed=seed)
                    row.append((scale, first(alerts, "input", "input_drift"), first(alerts, "net.0", "scale_drift")))
                print("scale", batch, seed, f"floor {scale_floor(batch):.2f}", row)


if __name__ == "__main__":
    _table()
