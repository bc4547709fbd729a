"""The pipeline (``session/pipeline.py``): judging and writing on a worker thread give exactly what the
synchronous path gives (alerts, event files, checkpoints, training), drain at every end of a run, survive
a failing worker, leave no thread behind after an interrupted run, and ``on_alert="raise"`` still stops
training with the step the alert refers to. Real ``Trainer``, tiny models, about 1 s a run."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from models import Regressor, loader, mlp, regression_data, trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch import nn

from lightning_normwatch import LoopWatch, NormWatch, NormWatchAlertError
from lightning_normwatch.judge.evaluator import Evaluator
from lightning_normwatch.session import judging
from lightning_normwatch.session.pipeline import THREAD_NAME

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from event_dump import _events, compare  # noqa: E402

WATCH = dict(every_n_steps=2, warmup_steps=4, reference_steps=8, params="histograms", plot_every_n_steps=20)


class Broken(Regressor):
    """``net[0].bias`` set to -100 at ``break_at`` (the ReLU after it dies); ``fail_at``: ``training_step`` raises."""

    def __init__(self, break_at: int = 24, fail_at: int | None = None, fail: type[BaseException] = RuntimeError):
        torch.manual_seed(0)
        super().__init__(mlp())
        self.break_at, self.fail_at, self.fail = break_at, fail_at, fail

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.global_step == self.fail_at:
            raise self.fail("stop here")
        if self.global_step == self.break_at:
            with torch.no_grad():
                nn.init.constant_(self.net[0].bias, -100.0)
        return super().training_step(batch, batch_idx)


def _threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == THREAD_NAME]


def _fit(root: Path, mode: str, steps: int = 40, model: Broken | None = None, **kwargs: Any) -> tuple:
    pl.seed_everything(0)
    model = model or Broken()
    watch = NormWatch(pipeline=mode, **{**WATCH, **kwargs})
    ckpt = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=15, save_top_k=-1)
    logger = TensorBoardLogger(root, name=mode)
    run = trainer(root, [watch, ckpt], max_steps=steps, logger=logger, enable_checkpointing=True)
    run.fit(model, loader(regression_data(), shuffle=True))
    return watch, model, Path(logger.log_dir), root / "ckpt"


@pytest.fixture
def where(monkeypatch):
    """The threads each logging step was judged on; the worker is slowed down (it lags the training loop
    by a few steps, so that every drain point matters)."""
    seen: list[str] = []
    judge = judging.judge

    def spy(session, taken):
        seen.append(threading.current_thread().name)
        if seen[-1] == THREAD_NAME:
            time.sleep(0.02)
        judge(session, taken)

    monkeypatch.setattr(judging, "judge", spy)
    monkeypatch.setattr("lightning_normwatch.session.session.judge", spy)
    return seen


def _state(path: Path) -> dict:
    ckpt = torch.load(path, weights_only=False)
    return next(v for k, v in ckpt["callbacks"].items() if k.startswith("NormWatch"))


def test_thread_and_sync_give_the_same_alerts_events_checkpoints_and_training(tmp_path, where):
    runs = {mode: _fit(tmp_path / mode, mode) for mode in ("thread", "sync")}
    assert where[:20] == [THREAD_NAME] * 20 and where[20:] == ["MainThread"] * 20
    (w_thread, m_thread, ev_thread, ck_thread), (w_sync, m_sync, ev_sync, ck_sync) = runs.values()
    assert [a.kind for a in w_sync.alerts if a.module == "net.1"] == ["dead"]  # the fault is found
    assert w_thread.alerts == w_sync.alerts
    dumps = {mode: {"run": {"alerts": [], "events": _events(ev)}} for mode, ev in (("t", ev_thread), ("s", ev_sync))}
    assert compare(dumps["t"], dumps["s"], images=True) == []
    tags = dumps["t"]["run"]["events"]
    assert any(t.startswith("image:") for t in tags) and any(t.startswith("hist:normwatch/params") for t in tags)
    assert len(tags["scalar:normwatch/net.1/dead"]) == 20  # every logging step written
    files = sorted(p.name for p in ck_thread.iterdir())
    assert files == sorted(p.name for p in ck_sync.iterdir()) and len(files) == 2
    for name in files:  # a checkpoint holds everything judged up to its step
        state_thread, state_sync = _state(ck_thread / name), _state(ck_sync / name)
        assert repr(state_thread) == repr(state_sync)
    assert {a["kind"] for a in state_thread["alerts"]} >= {"dead"}  # step 30's: the fault at 24 judged
    for a, b in zip(m_thread.parameters(), m_sync.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not _threads()


def test_a_failing_worker_is_one_error_line_and_the_synchronous_path_takes_over(tmp_path, where, monkeypatch, caplog):
    evaluate, calls = Evaluator.evaluate, []

    def fails_once(self, step, stats):
        calls.append(step)
        if len(calls) == 3:
            raise ValueError("injected")
        return evaluate(self, step, stats)

    monkeypatch.setattr(Evaluator, "evaluate", fails_once)
    with caplog.at_level(logging.ERROR, logger="lightning_normwatch"):
        watch, *_ = _fit(tmp_path, "thread", steps=36, plot_every_n_steps=None)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "ValueError('injected')" in errors[0] and "training thread" in errors[0]
    assert where[:3] == [THREAD_NAME] * 3 and set(where[4:]) == {"MainThread"}  # sync after the failure
    assert len(where) == 18  # training completed
    dead = [a for a in watch.alerts if a.kind == "dead" and a.module == "net.1"]
    assert len(dead) == 1 and dead[0].step in (24, 26)  # the fault after the failure is still found
    assert not _threads()


@pytest.mark.parametrize("fail", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_run_leaves_no_thread_and_complete_event_files(tmp_path, fail, where):
    model = Broken(fail_at=17, fail=fail)
    if fail is KeyboardInterrupt:  # Lightning shuts down gracefully (SIGINT ignored), then exits the process
        handler = signal.getsignal(signal.SIGINT)
        try:
            with pytest.raises(SystemExit):
                _fit(tmp_path, "thread", model=model, plot_every_n_steps=None)
        finally:
            signal.signal(signal.SIGINT, handler)
    else:
        with pytest.raises(RuntimeError, match="stop here"):
            _fit(tmp_path, "thread", model=model, plot_every_n_steps=None)
    assert not _threads()
    (log_dir,) = (tmp_path / "thread").iterdir()
    events = _events(log_dir)
    assert [step for step, _ in events["scalar:normwatch/net.1/dead"]] == list(range(0, 17, 2))


def test_on_alert_raise_stops_training_with_the_step_one_step_late_at_most(tmp_path, where):
    stopped = {}
    for mode in ("thread", "sync"):
        model = Broken()
        with pytest.raises(NormWatchAlertError) as info:
            _fit(tmp_path / mode, mode, model=model, on_alert="raise", plot_every_n_steps=None)
        alert = info.value.alert
        assert alert.step in (24, 26) and alert.module == "net.0"  # the root of the fault at step 24
        assert f"at step {alert.step} ({alert.kind} on `net.0`)" in str(info.value)
        stopped[mode] = (alert.step, [p.detach().clone() for p in model.parameters()])
        assert not _threads()
    (step_t, params_t), (step_s, params_s) = stopped.values()
    assert step_t == step_s
    assert all(torch.equal(a, b) for a, b in zip(params_t, params_s, strict=True))  # stopped before the next step


def test_loopwatch_drains_on_exit_and_gives_the_sync_alerts():
    alerts = {}
    for mode in ("thread", "sync"):
        torch.manual_seed(0)
        net = mlp()
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        with LoopWatch(net, optimizers=[opt], pipeline=mode, **WATCH) as watch:
            for step, (x, y) in enumerate(loader(regression_data())):
                if step == 8:
                    nn.init.constant_(net[0].bias, -100.0)
                with watch.step(x):
                    nn.functional.mse_loss(net(x), y).backward()
                    opt.step()
                    opt.zero_grad()
        alerts[mode] = watch.alerts
        assert not _threads()
    assert alerts["thread"] == alerts["sync"] and any(a.kind == "dead" for a in alerts["sync"])


def test_auto_is_the_thread_unless_every_step_is_logged_and_a_bad_value_raises_naming_it(tmp_path):
    modes = {n: LoopWatch(mlp(), every_n_steps=n).session.pipeline.mode for n in (1, 2, 50)}
    assert modes == {1: "sync", 2: "thread", 50: "thread"}
    watch = NormWatch(every_n_steps=None)  # the trainer's interval decides at setup
    trainer(tmp_path, [watch], max_steps=2, log_every_n_steps=1).fit(Broken(), loader(regression_data()))
    assert watch.session.pipeline.mode == "sync"
    for make in (lambda: NormWatch(pipeline="process"), lambda: LoopWatch(mlp(), pipeline="process")):
        with pytest.raises(ValueError, match="pipeline.*'process'"):
            make()


class ThreadsCSV(CSVLogger):
    """A ``CSVLogger`` (it clears its rows after saving them: not safe across threads) noting who writes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rows: list[tuple[str, int, dict]] = []

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if any(k.startswith("normwatch/") for k in metrics):
            self.rows.append((threading.current_thread().name, step, dict(metrics)))
        super().log_metrics(metrics, step)


def test_loggers_not_safe_across_threads_get_their_rows_from_the_training_thread(tmp_path, where):
    rows = {}
    for mode in ("thread", "sync"):
        csv = ThreadsCSV(tmp_path, name=mode)
        run = trainer(tmp_path, [NormWatch(pipeline=mode, **WATCH)], max_steps=12, logger=csv)
        run.fit(Broken(), loader(regression_data()))
        rows[mode] = csv.rows
        assert {name for name, *_ in csv.rows} == {"MainThread"}
    assert [r[1:] for r in rows["thread"]] == [r[1:] for r in rows["sync"]] and len(rows["sync"]) == 6
    assert where[:6] == [THREAD_NAME] * 6  # judged on the worker all the same


class NaNs(Broken):
    """A NaN loss at the steps in ``bad`` (a constant NaN added: the gradients stay finite, training goes on)."""

    def __init__(self, *bad: int) -> None:
        super().__init__(break_at=-1)
        self.bad = bad

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        return loss + float("nan") if self.global_step in self.bad else loss


def test_nonfinite_episodes_are_the_same_on_both_paths(tmp_path, where):
    alerts = {}
    for mode in ("thread", "sync"):
        pl.seed_everything(0)
        watch = NormWatch(pipeline=mode, **{**WATCH, "plot_every_n_steps": None})
        run = trainer(tmp_path / mode, [watch], max_steps=24)
        run.fit(NaNs(9, 10, 17), loader(regression_data()))
        alerts[mode] = watch.alerts
    nonfinite = [a.step for a in alerts["sync"] if a.kind == "nonfinite"]
    assert nonfinite == [9, 17] and alerts["thread"] == alerts["sync"]
