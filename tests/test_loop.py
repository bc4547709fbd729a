"""``LoopWatch``: a plain PyTorch loop, Lightning Fabric, and two-process ``torch.distributed``.

The examples (``examples/plain_loop.py``, ``examples/fabric_loop.py``) run here in reduced form on a
model built to trigger the ``dead`` alert. The DDP case runs in a subprocess (``python
tests/test_loop.py <out>``) that forks two gloo ranks, with a timeout so that a hang fails the test.
"""

from __future__ import annotations

import datetime
import importlib
import json
import logging
import multiprocessing
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from lightning_normwatch import LoopWatch, NormWatch
from lightning_normwatch.view import cli

ROOT = Path(__file__).resolve().parents[1]
STEPS = 21  # logging steps 0, 10, 20 in the examples (every_n_steps=10)


def example(name: str) -> Any:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "examples"))


def hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def read_events(log_dir: Path) -> EventAccumulator:
    (event_file,) = Path(log_dir).rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(event_file.parent), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def warnings_of(watch: LoopWatch) -> list[tuple[str, str]]:
    return [(a.kind, a.module) for a in watch.alerts if a.severity != "info"]


@pytest.mark.parametrize("dead", [True, False])
def test_plain_loop_example(dead: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lightning_normwatch"):
        watch = example("plain_loop").main(steps=STEPS, dead=dead, logdir=str(tmp_path))
    if dead:  # the ReLU after the bias -100 layer, named as in the model, at the first logging step
        assert warnings_of(watch) == [("dead", "1")] and watch.alerts[-1].step == 0
        assert any("NormWatch [dead] 1 (ReLU):" in r.getMessage() for r in caplog.records)  # to the Python logger
    else:
        assert warnings_of(watch) == []
    assert hooks(watch.model) == 0  # leaving the `with` block removed every hook
    acc = read_events(tmp_path)
    assert {"normwatch/0", "normwatch/1", "normwatch/2", "normwatch/input"} <= set(acc.Tags()["histograms"])
    assert [e.step for e in acc.Scalars("normwatch/1/zeros")] == [0, 10, 20]
    assert acc.Scalars("normwatch/1/zeros")[0].value == (1.0 if dead else pytest.approx(0.5, abs=0.3))
    if dead:
        assert any(t.startswith("normwatch/alerts") for t in acc.Tags()["tensors"])  # the alert table (Text panel)
    # `normwatch report` reads a loop's run as a Lightning one: exit status 1 on the warning
    assert cli.main(["report", str(tmp_path), "--fail-on", "warning"]) == (1 if dead else 0)


def test_fabric_example_names_have_no_wrapper_and_the_dead_relu_is_found(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        watch = example("fabric_loop").main(steps=STEPS, dead=True, logdir=str(tmp_path))
    assert watch.watched == ["net.0", "net.1", "net.2"]
    assert warnings_of(watch) == [("dead", "net.1")]
    assert hooks(watch.model) == 0
    acc = read_events(tmp_path)
    scalars = [t for t in acc.Tags()["scalars"] if t.startswith("normwatch/")]
    assert "normwatch/net.1/zeros" in scalars and not any("_forward_module" in t for t in scalars)
    assert "normwatch/net.1" in acc.Tags()["histograms"]  # Fabric's TensorBoardLogger gets the panels too


@pytest.mark.slow  # Fabric launches a second process that imports torch and Lightning again: 20-40 s
def test_fabric_example_under_two_process_ddp(tmp_path: Path) -> None:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    args = ["--dead", "--steps", str(STEPS), "--devices", "2", "--logdir", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "fabric_loop.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert out.count("NormWatch [dead] net.1 (ReLU):") == 1  # found once, logged by rank 0 only
    assert out.count("watched: net.0, net.1, net.2") == 2  # both ranks watched the same, unwrapped names
    assert len(list(tmp_path.rglob("events.out.tfevents.*"))) == 1  # rank 0 writes
    assert [e.step for e in read_events(tmp_path).Scalars("normwatch/net.1/zeros")] == [0, 10, 20]


def test_fabric_callbacks_get_a_clear_error_pointing_to_loopwatch() -> None:
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=1, callbacks=[NormWatch()])
    with pytest.raises(TypeError, match="LoopWatch"):
        fabric.call("on_train_batch_start", torch.randn(4, 3), 0)
    with pytest.raises(TypeError, match="without a Lightning Trainer"):
        fabric.call("on_train_batch_end", outputs=None)


def test_figures_match_numpy_and_go_to_a_callable_sink() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    got: list[tuple[int, dict[str, float]]] = []
    outputs: dict[int, np.ndarray] = {}
    sink = lambda m, s: got.append((s, m))  # noqa: E731
    with LoopWatch(model, sink=sink, every_n_steps=3, warmup_steps=0, scalars="all") as watch:
        for step in range(7):
            x = torch.randn(32, 8)
            with watch.step(x):
                hidden = model[0](x)
                model[2](model[1](hidden)).sum().backward()
            outputs[step] = hidden.detach().numpy().astype(np.float64)
    assert [s for s, _ in got] == [0, 3, 6]
    for step, metrics in got:  # every value is sampled (512 < sample_size): exact up to float rounding
        h = outputs[step]
        assert metrics["normwatch/0/mean"] == pytest.approx(h.mean(), rel=1e-5, abs=1e-6)
        assert metrics["normwatch/0/std"] == pytest.approx(h.std(), rel=1e-5)
        assert metrics["normwatch/0/max"] == pytest.approx(h.max(), rel=1e-6)
    assert hooks(model) == 0


def test_an_exception_in_a_step_removes_the_hooks_and_the_loop_goes_on() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    watch = LoopWatch(model, every_n_steps=1, warmup_steps=0)
    with pytest.raises(RuntimeError, match="boom"), watch.step(torch.randn(8, 4)):
        model(torch.randn(8, 4))
        raise RuntimeError("boom")
    assert hooks(model) == 0
    with watch.step(torch.randn(8, 4)):
        # armed at this logging step: a forward hook per watched module, (inputs not found yet: the first
        # step failed) a discovery pre-hook on every leaf, and the model's pre-hook restarting call counts
        assert hooks(model) == 5
        model(torch.randn(8, 4))
    assert watch.last_result is not None and watch.last_result.step == 1
    watch.close()
    assert hooks(model) == 0


def test_nonfinite_loss_raises_one_error_alert() -> None:
    model = nn.Linear(4, 1)
    with LoopWatch(model, every_n_steps=100, on_alert="ignore") as watch:
        with watch.step(torch.randn(8, 4)):
            loss = model(torch.randn(8, 4)).sum() * float("nan")
        watch.check_loss(loss)
        watch.check_loss(loss)
    assert [(a.kind, a.severity) for a in watch.alerts] == [("nonfinite", "error")]


def test_bad_sink_and_bad_options_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="sink"):
        LoopWatch(nn.Linear(2, 2), sink=42)
    with pytest.raises(ValueError, match="every_n_steps"):
        LoopWatch(nn.Linear(2, 2), every_n_steps=0)


# --------------------------------------------------------------------------------------- DDP
WORLD, BATCH, LOG_STEPS = 2, 16, (0, 2, 4)


def _data(step: int, rank: int) -> torch.Tensor:
    return torch.randn(BATCH, 8, generator=torch.Generator().manual_seed(100 * step + rank))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))


def _train(model: nn.Module, batches: Any, out: dict[str, Any]) -> LoopWatch:
    sink = lambda metrics, step: out.setdefault("metrics", {}).__setitem__(str(step), metrics)  # noqa: E731
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with LoopWatch(model, sink=sink, every_n_steps=2, warmup_steps=0, reference_steps=2) as watch:
        for step in range(max(LOG_STEPS) + 1):
            x = batches(step)
            with watch.step(x):
                loss = model(x).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return watch


def _rank(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=datetime.timedelta(60)
    )
    out: dict[str, Any] = {}
    ddp = nn.parallel.DistributedDataParallel(_model())
    watch = _train(ddp, lambda step: _data(step, rank), out)
    out |= {"collectives": watch.session.exchange.collectives, "watched": watch.watched, "hooks": hooks(ddp)}
    out["figures"] = {k: {s: v for s, v in f.items() if s in ("mean", "std", "min", "max")} for k, f in
                      watch.last_result.figures.items()}  # fmt: skip
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


def test_ddp_one_collective_per_logging_step_and_global_figures(tmp_path: Path) -> None:
    # without the launcher variables an earlier Lightning DDP test left in this process (MASTER_PORT,
    # WORLD_SIZE, LOCAL_RANK ...): with them the ranks of this plain torch.distributed run hung
    leaked = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"}
    env = {k: v for k, v in os.environ.items() if k not in leaked and not k.startswith(("PL_", "TORCHELASTIC"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env["PL_DISABLE_FORK"] = os.environ.get("PL_DISABLE_FORK", "1")
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, timeout=240, cwd=ROOT, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert ranks[0]["watched"] == ["0", "1", "2"]  # DistributedDataParallel's `module.` is looked through
    assert "metrics" in ranks[0] and "metrics" not in ranks[1]  # rank 0 writes
    assert sorted(ranks[0]["metrics"], key=int) == [str(s) for s in LOG_STEPS]
    assert [r["collectives"] for r in ranks] == [len(LOG_STEPS)] * WORLD  # one per logging step
    assert [r["hooks"] for r in ranks] == [0, 0]
    assert ranks[0]["figures"] == ranks[1]["figures"]
    # the same model trained on both ranks' batches in one process: the same figures
    single: dict[str, Any] = {}
    watch = _train(_model(), lambda step: torch.cat([_data(step, r) for r in range(WORLD)]), single)
    for key, fig in watch.last_result.figures.items():
        for stat in ("mean", "std", "min", "max"):
            assert ranks[0]["figures"][key][stat] == pytest.approx(fig[stat], rel=1e-4, abs=1e-6), (key, stat)


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    # spawn, not fork: a child forked from a process that imported torch can deadlock in its thread pools
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(r, free_port, sys.argv[1])) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(100)
    os._exit(max(abs(p.exitcode or 0) for p in procs) if all(p.exitcode is not None for p in procs) else 1)
