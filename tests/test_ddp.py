"""NormWatch under real two-process CPU DDP (gloo) with a Lightning ``Trainer``.

The DDP runs happen in a subprocess (``python tests/test_ddp.py <scenario,...> <out>``) with a
timeout, so that a hang fails the test instead of blocking the suite. Inside it, Lightning's
``ddp_fork`` strategy forks the two ranks from a process that has already imported torch and
Lightning (no second import: a run takes a few seconds), and each rank writes what it saw to
``<out>/<scenario>/rank<r>.json``: the figures of every logging step, the collectives made, the alerts, the
``lightning_normwatch`` log records and the metrics its logger received.

Scenarios:

- ``same``: every rank runs the same modules. The logged figures must equal those of one process
  that trains on the same global batches: batch ``2 * B`` over the samples in the order Lightning's
  ``DistributedSampler`` deals them out (it shuffles training data with seed 0: rank ``r`` gets
  ``perm[r::2]``, so the union at step ``k`` is ``perm[2kB : 2(k+1)B]``). Every tensor has fewer values per rank than
  ``sample_size`` and ``pvalue_size / 2``, so measurement is exact and the comparison is exact up
  to float rounding, not statistical.
- ``skip``: rank 0 alone runs ``only0`` from the start; rank 1 alone runs ``late1`` from step 3
  (a branch taken for the first time mid-training). No hang; the figures of those modules are the
  ones of the rank that ran them.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import Regressor, mlp, regression_data  # noqa: E402

from lightning_normwatch.adapters.callback import NormWatch  # noqa: E402
from lightning_normwatch.collect.collector import Collector
from lightning_normwatch.collect.exchange import Exchange  # noqa: E402
from lightning_normwatch.config import SessionConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
BATCH = 8  # per rank
STEPS = 6
TIMEOUT_S = 300  # generous (a loaded 2-core machine imports Lightning slowly); a run takes ~15 s


class Net(nn.Module):
    """An MLP (``body``), a dead side branch (``side.1``) and two optional rank-dependent branches.

    ``only0`` (``Tanh``) runs on rank 0 only; ``late1`` (``Sigmoid``) on rank 1 only from step 3.
    Both are parameter-free, so DDP needs no ``find_unused_parameters``.
    """

    def __init__(self, branches: bool = False) -> None:
        super().__init__()
        self.body = mlp(16, 32, 1)
        self.side = nn.Sequential(nn.Linear(16, 8), nn.ReLU())
        self.head = nn.Linear(8, 1)
        self.only0 = nn.Tanh()
        self.late1 = nn.Sigmoid()
        with torch.no_grad():
            self.side[0].bias.fill_(-5.0)  # every unit of side.1 outputs zero: one `dead` alert
        self.branches = branches
        self.rank = 0
        self.step = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body[1](self.body[0](x))
        if self.branches and self.rank == 0:
            h = h + self.only0(h)
        if self.branches and self.rank == 1 and self.step >= 3:
            h = h * self.late1(h)
        h = self.body[4](self.body[3](self.body[2](h)))
        return h + self.head(self.side(x))


class Model(Regressor):
    """``Regressor`` that tells its net the rank and step (for the rank-dependent branches)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.net.rank, self.net.step = self.global_rank, self.global_step
        return super().training_step(batch, batch_idx)


class MemoryLogger(Logger):
    """Keeps every logged metric in memory: ``{step: {name: value}}``."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[int, dict[str, float]] = {}

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.setdefault(int(step or 0), {}).update({k: float(v) for k, v in metrics.items()})

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


class _Records(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


class Recorder(pl.Callback):
    """Runs after ``NormWatch`` on every rank; writes what this rank saw to ``<out>/rank<r>.json``."""

    def __init__(self, nw: NormWatch, out: Path) -> None:
        self.nw, self.out = nw, out
        self.steps: list[dict[str, Any]] = []
        self.messages: list[str] = []
        self.branch_values: dict[str, dict[int, list[float]]] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        logger = logging.getLogger("lightning_normwatch")
        logger.setLevel(logging.INFO)
        logger.addHandler(_Records(self.messages))
        for name in ("only0", "late1"):
            module = getattr(pl_module.net, name)
            module.register_forward_hook(self._capture(trainer, name))

    def _capture(self, trainer: pl.Trainer, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            v = output.detach().double().numpy().ravel()
            self.branch_values.setdefault(name, {})[trainer.global_step] = [v.size, v.mean(), v.std()]

        return hook

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        ex, result = self.nw.exchange, self.nw.last_result
        assert ex is not None and result is not None
        self.steps.append(
            {
                "step": result.step,
                "collectives": ex.collectives,
                "bytes": ex.bytes_sent,
                "figures": result.figures,
                "layout": ex.layout,
            }
        )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logged = next((lg.metrics for lg in trainer.loggers if isinstance(lg, MemoryLogger)), {})
        record = {
            "rank": trainer.global_rank,
            "world": trainer.world_size,
            "steps": self.steps,
            "alerts": [a.to_dict() for a in self.nw.alerts],
            "messages": self.messages,
            "logged": logged,
            "branch_values": self.branch_values,
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def _normwatch() -> NormWatch:
    return NormWatch(every_n_steps=1, warmup_steps=1, reference_steps=2, tensorboard=False, on_alert="warn")


def _trainer(root: Path, callbacks: list[pl.Callback], logger: Logger, **kwargs: Any) -> pl.Trainer:
    opts: dict[str, Any] = dict(
        default_root_dir=str(root),
        max_steps=STEPS,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    opts.update(kwargs)
    return pl.Trainer(logger=logger, callbacks=callbacks, **opts)


def _data(steps_per_epoch: int = STEPS) -> Any:
    return regression_data(n=WORLD * BATCH * steps_per_epoch)


RESUME_STEPS, RESUME_EPOCH = 8, 4  # resume scenario: 2 epochs of 4 steps, checkpoint after the first


def _resume_fit(out: Path, ckpt_path: Path | None) -> None:
    """A ``ddp_fork`` fit for the resume scenario (sampled tensors, reference window [2, 6))."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = Model(Net())
    nw = NormWatch(
        every_n_steps=1, warmup_steps=2, reference_steps=4, sample_size=64, tensorboard=False, on_alert="warn"
    )
    ckpt = ModelCheckpoint(dirpath=out, filename="{step}", every_n_train_steps=RESUME_EPOCH, save_top_k=-1)
    trainer = _trainer(
        out,
        [nw, Recorder(nw, out), ckpt],
        MemoryLogger(),
        devices=WORLD,
        strategy="ddp_fork",
        max_steps=RESUME_STEPS,
        enable_checkpointing=True,
    )
    data = DataLoader(_data(RESUME_EPOCH), batch_size=BATCH, shuffle=False)
    trainer.fit(model, data, ckpt_path=None if ckpt_path is None else str(ckpt_path))


def run_scenario(scenario: str, out: Path) -> None:
    """Two-rank ``ddp_fork`` fit(s) of one scenario; each rank writes ``<out>/rank<r>.json``."""
    out.mkdir(parents=True, exist_ok=True)
    if scenario == "resume":  # an uninterrupted run, then a run resumed from its step-4 checkpoint
        _resume_fit(out / "full", None)
        _resume_fit(out / "resumed", out / "full" / f"step={RESUME_EPOCH}.ckpt")
        return
    torch.manual_seed(0)
    model = Model(Net(branches=scenario == "skip"))
    nw = _normwatch()
    trainer = _trainer(out, [nw, Recorder(nw, out)], MemoryLogger(), devices=WORLD, strategy="ddp_fork")
    trainer.fit(model, DataLoader(_data(), batch_size=BATCH, shuffle=False))


def _launch(scenarios: list[str], out: Path) -> dict[str, list[dict[str, Any]]]:
    """Run scenarios one after the other in one subprocess (one import of Lightning) with a timeout,
    killing its process group on a hang; read each scenario's per-rank records."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("PL_GLOBAL_SEED", None)  # Lightning's DistributedSampler then shuffles with seed 0
    proc = subprocess.Popen(
        [sys.executable, __file__, ",".join(scenarios), str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        done = [s for s in scenarios if (out / s / "rank0.json").exists()]
        pytest.fail(f"DDP scenarios {scenarios} did not finish in {TIMEOUT_S} s (hang); done: {done}\n{output[-3000:]}")
    assert proc.returncode == 0, output[-5000:]
    paths = {s: out / s / ("resumed" if s == "resume" else "") for s in scenarios}
    return {s: [json.loads((path / f"rank{r}.json").read_text()) for r in range(WORLD)] for s, path in paths.items()}


def _same(a: float, b: float, rel: float = 1e-5, abs_: float = 1e-5) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """The ``same`` and ``skip`` scenarios, run once for the module (one subprocess, one timeout)."""
    return _launch(["same", "skip"], tmp_path_factory.mktemp("ddp"))


@pytest.fixture(scope="module")
def ddp_same(ddp_runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return ddp_runs["same"]


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> tuple[MemoryLogger, NormWatch]:
    """One process over the same global batches: batch ``2 * B`` in the same sample order."""
    torch.manual_seed(0)
    model = Model(Net())
    nw, logger = _normwatch(), MemoryLogger()
    trainer = _trainer(tmp_path_factory.mktemp("single"), [nw], logger, devices=1)
    data = _data()
    per_rank = [list(DistributedSampler(data, num_replicas=WORLD, rank=r, shuffle=True, seed=0)) for r in range(WORLD)]
    order = [i for step in range(STEPS) for r in range(WORLD) for i in per_rank[r][step * BATCH : (step + 1) * BATCH]]
    trainer.fit(model, DataLoader(Subset(data, order), batch_size=WORLD * BATCH, shuffle=False))
    return logger, nw


def test_ddp_figures_equal_single_process(ddp_same: list[dict[str, Any]], single: tuple[MemoryLogger, NormWatch]):
    rank0, rank1 = ddp_same
    assert rank0["world"] == WORLD
    expected = single[0].metrics
    logged = {int(step): metrics for step, metrics in rank0["logged"].items()}
    nw_keys = {step: {k: v for k, v in m.items() if k.startswith("normwatch/")} for step, m in logged.items()}
    exp_keys = {step: {k: v for k, v in m.items() if k.startswith("normwatch/")} for step, m in expected.items()}
    assert sorted(nw_keys) == sorted(exp_keys) == list(range(STEPS))
    layers = ["input"] + [
        f"net.{m}" for m in ("body.0", "body.1", "body.2", "body.3", "body.4", "side.0", "side.1", "head")
    ]
    for step in range(STEPS):
        got, want = nw_keys[step], exp_keys[step]
        assert set(got) == set(want), (step, set(got) ^ set(want))
        for layer in layers:
            for stat in ("mean", "std"):  # (a Linear's zeros gives way to its update_ratio)
                assert f"normwatch/{layer}/{stat}" in got, (layer, stat)
        bad = {k: (got[k], want[k]) for k in want if not _same(got[k], want[k])}
        assert not bad, (step, bad)
    # drift figures are there (reference window: steps 1-2) and equal too
    assert "normwatch/net.body.0/shape_psi" in nw_keys[STEPS - 1]
    # update sizes are compared above too: gradients are reduced before the step, so each rank's equal the
    # single process's with no collective of their own (test_ddp_one_collective_per_logging_step)
    assert all(f"normwatch/net.{m}/update_ratio" in nw_keys[s] for m in ("body.0", "head") for s in range(STEPS))
    # the merged sample is the global batch: twice one rank's values
    body0 = rank0["steps"][0]["figures"]["net.body.0"]
    assert body0["numel"] == body0["sampled"] == WORLD * BATCH * 32
    # only rank zero logs figures
    assert not any(k.startswith("normwatch/") for m in rank1["logged"].values() for k in m)


def test_ddp_alerts_raised_once(ddp_same: list[dict[str, Any]], single: tuple[MemoryLogger, NormWatch]):
    rank0, rank1 = ddp_same
    dead = [a for a in rank0["alerts"] if a["kind"] == "dead"]
    assert [(a["module"], a["step"]) for a in dead] == [("net.side.1", 0)]
    # every rank computed the same alerts from the same merged figures ...
    assert rank1["alerts"] == rank0["alerts"]
    assert [(a["module"], a["kind"], a["step"]) for a in rank0["alerts"]] == [
        (a.module, a.kind, a.step) for a in single[1].alerts
    ]
    # ... and only rank zero logged them: the message appears once over both processes
    messages = rank0["messages"] + rank1["messages"]
    assert sum("NormWatch [dead] net.side.1" in m for m in messages) == 1
    assert rank1["messages"] == []


def test_ddp_one_collective_per_logging_step(ddp_same: list[dict[str, Any]]):
    for rank in ddp_same:
        counts = [s["collectives"] for s in rank["steps"]]
        per_step = np.diff([0, *counts]).tolist()
        # first step: one all_gather_object that agrees on the layout and carries the blocks;
        # then one all_gather per logging step
        assert per_step == [1] * STEPS, per_step
        steady = {s["bytes"] for s in rank["steps"][1:]}
        assert len(steady) == 1
    layout = ddp_same[0]["steps"][-1]["layout"]
    assert layout == ddp_same[1]["steps"][-1]["layout"]
    # bytes per rank per step: a head of 2 floats plus one block per tensor (see docs/distributed.md);
    # input features add batch items and 18 anchor-bin counts per feature
    tails = sum(1 + 18 * c for name, c in layout if name == "input" or name.startswith("input/"))
    assert ddp_same[0]["steps"][-1]["bytes"] == 8 * (2 + sum(12 + 583 + 6 * c for _, c in layout) + tails)


def test_ddp_rank_skipping_a_module_does_not_hang(ddp_runs: dict[str, list[dict[str, Any]]]):
    rank0, rank1 = ddp_runs["skip"]
    for step in range(STEPS):
        f0, f1 = rank0["steps"][step]["figures"], rank1["steps"][step]["figures"]
        assert json.dumps(f0) == json.dumps(f1)  # identical on both ranks, same order
        # only0 ran on rank 0 alone: its figures are rank 0's values
        n, mean, std = rank0["branch_values"]["only0"][str(step)]
        assert f0["net.only0"]["numel"] == n == BATCH * 32
        assert _same(f0["net.only0"]["mean"], mean) and _same(f0["net.only0"]["std"], std)
        assert "only0" not in rank1["branch_values"]
        # late1 ran on rank 1 alone, from step 3
        if step < 3:
            assert "net.late1" not in f0
        else:
            n, mean, std = rank1["branch_values"]["late1"][str(step)]
            assert f0["net.late1"]["numel"] == n == BATCH * 32
            assert _same(f0["net.late1"]["mean"], mean) and _same(f0["net.late1"]["std"], std)
        assert f0["net.body.0"]["numel"] == WORLD * BATCH * 32
    # the layout follows execution order: late1 right after body.1, only0 after it
    names = [name for name, _ in rank0["steps"][-1]["layout"]]
    assert names.index("net.body.1") < names.index("net.late1") < names.index("net.body.2")
    assert names.index("net.body.1") < names.index("net.only0") < names.index("net.body.2")
    # collectives: 1 per step, 2 at the step where a rank meets a new tensor (flag + names and blocks)
    per_step = np.diff([0, *[s["collectives"] for s in rank0["steps"]]]).tolist()
    assert per_step == [1, 1, 1, 2, 1, 1]
    assert rank0["alerts"] == rank1["alerts"]
    logged = {int(k): v for k, v in rank0["logged"].items()}
    assert "normwatch/net.late1/mean" in logged[3] and "normwatch/net.late1/mean" not in logged[2]


def _exchange_worker(rank: int, port: int, out: str) -> None:
    """One rank of a bare gloo group driving ``Collector`` + ``Exchange`` by hand (no Lightning)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    monitor = Collector(SessionConfig(world_size=WORLD))
    exchange = Exchange(monitor, distributed=True)
    gen = torch.Generator().manual_seed(rank)
    plan = {  # step -> widths this rank calls module "m" with, in order
        0: [4] if rank == 0 else [6],  # the same module, a different width on each rank
        1: [4, 6] if rank == 0 else [6],  # rank 0 now also calls it with width 6 (locally "m@2")
        2: [4] if rank == 0 else [],  # rank 1 measures nothing at all
    }
    record: dict[str, Any] = {"local": [], "merged": [], "flags": [], "layout": [], "collectives": []}
    for step, widths in plan.items():
        local: dict[str, list[float]] = {}
        for width in widths:
            x = torch.randn(8, width, generator=gen) + rank
            monitor.observe("m", x)
            local.setdefault(str(width), [0.0, 0.0])
            local[str(width)][0] += x.numel()
            local[str(width)][1] += float(x.double().sum())
        stats = exchange.collect(flags=[rank == 1 and step == 0, False])
        record["local"].append(local)
        record["merged"].append({k: [st.numel, len(st.cn), st.overall.mean] for k, st in stats.items()})
        record["flags"].append(list(exchange.flags))
        record["layout"].append([list(e) for e in exchange.layout])
        record["collectives"].append(exchange.collectives)
    record["info"] = {name: monitor.info(name).channels for name, _ in exchange.layout}
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


def test_exchange_widths_flags_and_empty_ranks(tmp_path: Path):
    """Widths differing across ranks get agreed names; flags are OR-ed; a rank may measure nothing."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_exchange_worker, args=(r, port, str(tmp_path))) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "the exchange hung"
    assert [p.exitcode for p in procs] == [0, 0]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    for key in ("merged", "flags", "layout", "collectives"):
        assert r0[key] == r1[key], key
    # each rank ran its "m" first: rank 1's goes before rank 0's (no predecessor), under an agreed new name
    assert r0["layout"][0] == [["m@2", 6], ["m", 4]]
    assert r0["flags"] == [[True, False], [False, False], [False, False]]
    assert r0["collectives"] == [1, 2, 3]  # first step: the agreement only; then one all_gather each

    def expected(step: int, width: int) -> list[float]:
        parts = [r["local"][step].get(str(width), [0.0, 0.0]) for r in (r0, r1)]
        n, total = sum(p[0] for p in parts), sum(p[1] for p in parts)
        return [n, width, total / n]

    for step, names in enumerate([{"m": 4, "m@2": 6}, {"m": 4, "m@2": 6}, {"m": 4}]):
        merged = r0["merged"][step]
        assert sorted(merged) == sorted(names)
        for name, width in names.items():
            np.testing.assert_allclose(merged[name], expected(step, width), rtol=1e-6, atol=1e-6)  # float32 on device
    assert r0["merged"][1]["m@2"][0] == 2 * 8 * 6  # rank 0's local "m@2" and rank 1's local "m" merged
    assert r0["info"] == {"m": 4, "m@2": 6}  # rank 0 learned the width it had not seen


@pytest.mark.slow
def test_ddp_resume_from_checkpoint(tmp_path: Path):
    """Under DDP every rank loads the checkpoint (rank 0's state) and continues exactly."""
    resumed = _launch(["resume"], tmp_path)["resume"]
    full = [json.loads((tmp_path / "resume" / "full" / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for rank in range(WORLD):
        after = {s["step"]: s for s in resumed[rank]["steps"]}
        before = {s["step"]: s for s in full[rank]["steps"]}
        assert sorted(after) == list(range(RESUME_EPOCH, RESUME_STEPS))
        for step in after:
            np.testing.assert_equal(after[step]["figures"], before[step]["figures"], err_msg=f"rank {rank} step {step}")
        assert "psi" in after[RESUME_STEPS - 1]["figures"]["net.body.0"]
        # the layout is agreed again after the resume: still one collective per step
        assert np.diff([0, *[s["collectives"] for s in resumed[rank]["steps"]]]).tolist() == [1] * len(after)
        assert resumed[rank]["alerts"] == full[rank]["alerts"]
        alert_lines = [m for m in resumed[rank]["messages"] if m.startswith("NormWatch [")]
        assert alert_lines == []  # the dead branch is not alerted again (the end-of-fit summary is not an alert)
    assert any(a["kind"] == "dead" for a in full[0]["alerts"])


if __name__ == "__main__":
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    for name in sys.argv[1].split(","):
        run_scenario(name, Path(sys.argv[2]) / name)
