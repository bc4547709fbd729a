"""session/cost.py: NormWatch times its own work and says what it costs.

The arithmetic is checked by hand; the meter's attribution (what counts as NormWatch's work, what as
training) with a scripted clock; and on a real ``Trainer``, with a known amount of work injected on each
side: a training step that takes 30 ms more and a judging that spins 40 ms of CPU, on the training thread
(``pipeline="sync"``) or on the worker, must come out as such, within what a loaded 2-core machine adds.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_normwatch import NormWatch
from lightning_normwatch.session import judging
from lightning_normwatch.session.cost import TARGET_SHARE, WARN_SHARE, Cost, CostMeter


def cost(logging_ms: float, other_ms: float, step_ms: float, interval: int) -> Cost:
    return Cost(logging_ms, 0.0, other_ms, step_ms, interval, 5)


# ---------------------------------------------------------------------------------------------- arithmetic
def test_share_is_the_work_of_one_interval_over_its_training_time() -> None:
    # 12 ms on the logging step and 0.1 ms on each of 9 others, against 10 steps of 8 ms: 12.9 / 80
    assert cost(12.0, 0.1, 8.0, 10).share == pytest.approx(12.9 / 80)
    # every step logged: the other steps do not occur
    assert cost(12.0, 0.1, 8.0, 1).share == pytest.approx(1.5)
    # no other step measured (every step logged): counted as free
    assert cost(12.0, math.nan, 8.0, 4).share == pytest.approx(12 / 32)


def test_the_suggested_interval_is_the_shortest_under_the_target() -> None:
    c = cost(12.0, 0.1, 8.0, 1)
    n = c.interval_for(TARGET_SHARE)
    # by hand: (12 + (n - 1) 0.1) / (8 n) <= 0.02  <=>  n >= 11.9 / 0.06 = 198.3
    assert n == 199
    assert c.share_at(n) <= TARGET_SHARE < c.share_at(n - 1)
    # the other steps alone above the target: no interval helps
    assert cost(12.0, 0.2, 8.0, 1).interval_for(TARGET_SHARE) is None


def test_the_line_advises_only_above_the_warning_share() -> None:
    step = 10.0
    below = cost(WARN_SHARE * 0.99 * step, math.nan, step, 1)
    above = cost(WARN_SHARE * 1.01 * step, math.nan, step, 1)
    assert "every_n_steps" not in below.line()
    assert "every_n_steps=11 would bring it to about 1.8 %" in above.line()  # 2.02 / (11 * 10)
    assert "about 20 % of the training time, logging every step" in above.line()
    # the other steps alone above 1 % (0.5 / 10 = 5 %): the interval that comes within twice that, by hand
    # (30 + (n - 1) 0.5) / (10 n) <= 0.10  <=>  n >= 29.5 / 0.5 = 59
    line = cost(30.0, 0.5, step, 1).line()
    assert "; its hooks on the other steps alone cost 5.0 %; every_n_steps=59 would bring it to about 10 %" in line
    # just below 1 % (0.099 / 10): the 2 % target stands; just above (0.101 / 10): twice theirs, 2.02 %
    assert "alone" not in cost(30.0, 0.099, step, 1).line()
    assert "alone cost 1.0 %; every_n_steps=" in cost(30.0, 0.101, step, 1).line()


# ---------------------------------------------------------------------------------------------- the meter
class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_meter_counts_outermost_sections_minus_waits_and_skips_the_warm_up() -> None:
    clock = Clock()
    meter = CostMeter(interval=2, clock=clock)  # the first logging step is warm-up
    for step in range(7):
        meter.step(step, logging=step % 2 == 0)
        if step == 1:
            meter.step(1, logging=False)  # an accumulated batch of the same step: no new step
        meter.enter()
        clock.now += 0.001
        meter.enter()  # nested (a replay's hooks inside before_backward): counted once
        clock.now += 0.002 if step % 2 == 0 else 0.0
        meter.leave()
        meter.waited(0.0005 if step % 2 == 0 else 0.0)  # waiting for the worker is not NormWatch's work here
        meter.leave()
        meter.waited(1.0)  # outside any section: ignored
        clock.now += 0.010  # training
        if step % 2 == 0:
            meter.worker(0.004)
    meter.step(7, logging=False)
    c = meter.cost()
    assert c is not None
    # steps 2..6 counted (step 0 is the warm-up logging step, step 1 follows it)
    assert c.logging_steps == 3
    assert c.logging_ms == pytest.approx(2.5 + 4.0)
    assert c.worker_ms == pytest.approx(4.0)
    assert c.other_ms == pytest.approx(1.0)
    assert c.step_ms == pytest.approx(10.0)


def test_a_wait_for_the_device_is_training_time_not_normwatch_work() -> None:
    clock = Clock()
    meter = CostMeter(interval=1, clock=clock, warm_logging_steps=0)
    for step in range(3):
        meter.step(step, logging=True)
        clock.now += 0.003  # the forward and backward launched (a GPU runs them after)
        meter.enter()
        clock.now += 0.012  # the logging step's end: 8 ms waiting for the device at its first synchronisation
        meter.device(0.008)
        meter.leave()
        meter.device(1.0)  # outside any section: ignored
    meter.step(3, logging=True)
    c = meter.cost()
    assert c is not None
    assert c.logging_ms == pytest.approx(4.0) and c.step_ms == pytest.approx(11.0)


def test_notice_comes_once_after_enough_logging_steps_and_only_above_the_share() -> None:
    for work, expected in ((0.0025, True), (0.0015, False)):  # 25 % and 15 % of a 10 ms step
        clock = Clock()
        meter = CostMeter(interval=1, clock=clock, warm_logging_steps=0)
        lines = []
        for step in range(9):
            meter.step(step, logging=True)
            lines.append(meter.notice())  # by default after 5 logging steps
            meter.enter()
            clock.now += work
            meter.leave()
            clock.now += 0.010
        said = [(i, line) for i, line in enumerate(lines) if line is not None]
        if expected:
            assert [i for i, _ in said] == [5]  # step 5 starts with 5 logging steps measured
            assert "costs about 25 % of the training time here" in said[0][1] and "logging every step;" in said[0][1]
        else:
            assert said == []


def test_boundaries_of_the_advice_and_of_the_wording() -> None:
    from lightning_normwatch.session.cost import _percent

    at = cost(2.0, math.nan, 10.0, 1)  # exactly WARN_SHARE: no advice, and nothing after the interval
    assert at.share == WARN_SHARE and at.line().endswith("about 20 % of the training time, logging every step")
    # the other steps' hooks at exactly half the 2 % target: the 2 % target stands
    assert "alone" not in cost(30.0, 0.1, 10.0, 1).line()
    # no other step measured: nothing said of them
    assert "alone" not in cost(30.0, math.nan, 10.0, 1).line()
    assert "logging every 10 steps" in cost(30.0, 0.1, 10.0, 10).line()
    assert "about 150 % of the training time" in cost(12.0, 0.1, 8.0, 1).line()
    assert (_percent(0.095), _percent(0.0949)) == ("10 %", "9.5 %")


def test_the_summary_line_by_hand() -> None:
    # (12 + 9 * 0.1) / (10 * 8) = 16.1 %; then 12 / 80 = 15 % with no worker and no other step measured
    assert Cost(12.0, 4.0, 0.1, 8.0, 10, 5).line() == (
        "cost: NormWatch's own work took 12.0 ms per logging step (4.0 of them on its worker thread) and 0.10 ms "
        "per other step, against 8.0 ms of training per step: about 16 % of the training time, logging every 10 steps"
    )
    assert Cost(12.0, 0.0, math.nan, 8.0, 10, 5).line() == (
        "cost: NormWatch's own work took 12.0 ms per logging step, against 8.0 ms of training per step: about 15 % "
        "of the training time, logging every 10 steps"
    )
    assert cost(12.0, 0.2, 10.0, 1).interval_for(0.02) is None  # the other steps take exactly the whole budget
    assert cost(0.1, 0.0, 10.0, 1).interval_for(0.02) == 1  # cheap enough at every step


def test_timed_counts_a_hook_only_with_a_meter() -> None:
    from lightning_normwatch.session.cost import timed

    def hook(x: int) -> int:
        clock.now += 0.5
        return x + 1

    clock = Clock()
    assert timed(None, hook) is hook
    meter = CostMeter(1, clock=clock, warm_logging_steps=0)
    meter.step(0, logging=True)
    assert timed(meter, hook)(1) == 2 and timed(meter, hook)(2) == 3
    clock.now += 1.0  # training
    meter.step(1, logging=True)
    c = meter.cost()
    assert c is not None and c.logging_ms == pytest.approx(1000.0)


def test_several_sections_waits_and_device_waits_in_one_step_add_up() -> None:
    clock = Clock()
    meter = CostMeter(interval=1, clock=clock, warm_logging_steps=2)  # two warm-up logging steps
    for step in range(4):
        meter.step(step, logging=True)
        for _ in range(3):  # begin_step, the hooks, end_step: 4 ms each, 1 ms of worker wait, 1 ms of device
            meter.enter()
            clock.now += 0.004
            meter.waited(0.001)
            meter.device(0.001)
            meter.leave()
        clock.now += 0.010
    meter.step(4, logging=True)
    c = meter.cost()
    assert c is not None and c.logging_steps == 2  # steps 2 and 3: 0 and 1 were warm-up
    assert c.logging_ms == pytest.approx(3 * 2.0)  # 4 ms - 1 - 1, three times
    assert c.step_ms == pytest.approx(10.0 + 3 * 1.0)  # the device waits are training's


def test_medians_are_over_the_recent_steps_and_need_some_training_time() -> None:
    clock = Clock()
    meter = CostMeter(interval=2, clock=clock, warm_logging_steps=0)
    for step in range(2 * (70 + 64)):
        slow = step < 2 * 70  # slow at first, then 64 fast steps of each kind: only these count
        meter.step(step, logging=step % 2 == 0)
        meter.enter()
        clock.now += (0.008 if slow else 0.002) * (2 if step % 2 == 0 else 0.5)
        meter.leave()
        if step % 2 == 0:
            meter.worker(0.030 if slow else 0.003)
        clock.now += 0.100 if slow else 0.010
    meter.step(2 * (70 + 64), logging=True)
    c = meter.cost()
    assert c is not None
    assert (c.step_ms, c.worker_ms, c.other_ms) == pytest.approx((10.0, 3.0, 1.0))
    assert c.logging_ms == pytest.approx(4.0 + 3.0)
    still = CostMeter(interval=1, clock=Clock(), warm_logging_steps=0)  # a clock that never moves
    still.step(0, logging=True)
    still.step(1, logging=True)
    assert still.cost() is None


def test_notice_at_the_warning_share_exactly_says_nothing() -> None:
    clock = Clock()
    meter = CostMeter(interval=1, clock=clock, warm_logging_steps=0)
    for step in range(7):
        meter.step(step, logging=True)
        assert meter.notice() is None  # 5 logging steps measured by step 5, at 0.25 / 1.25 = 20 % exactly
        meter.enter()
        clock.now += 0.25
        meter.leave()
        clock.now += 1.25
    assert meter.cost() is not None and meter.cost().share == WARN_SHARE


# ---------------------------------------------------------------------------------------------- a real run
def spin(seconds: float) -> None:
    """Busy CPU for ``seconds`` of this thread's CPU time (a sleep would not count on the worker)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class Slow(pl.LightningModule):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.slept: list[float] = []
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))

    def training_step(self, batch: list[torch.Tensor], i: int) -> torch.Tensor:
        started = time.perf_counter()
        time.sleep(self.seconds)  # training time that leaves the GIL free (torch's operators release it too)
        self.slept.append(time.perf_counter() - started)
        return self.net(batch[0]).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(tmp_path: Path, cb: NormWatch, steps: int, step_seconds: float) -> float:
    """Train; return the median wall time of the training steps' own waits (ms: what a loaded machine made of
    ``step_seconds``)."""
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(steps * 8, 4)), batch_size=8)
    trainer = pl.Trainer(
        max_steps=steps,
        default_root_dir=tmp_path,
        logger=False,
        callbacks=[cb],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    model = Slow(step_seconds)
    trainer.fit(model, data)
    return 1e3 * statistics.median(model.slept)


@pytest.mark.parametrize("pipeline", ["sync", "thread"])
def test_a_known_judging_cost_is_measured_as_normwatch_and_the_step_as_training(
    tmp_path: Path, pipeline: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = judging.judge
    spun: list[float] = []

    def slow_judge(*args: object, **kwargs: object) -> None:
        started = time.perf_counter()
        spin(0.040)
        spun.append(time.perf_counter() - started)
        original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(judging, "judge", slow_judge)
    monkeypatch.setattr("lightning_normwatch.session.session.judge", slow_judge)
    cb = NormWatch(every_n_steps=2, pipeline=pipeline, tensorboard=False)
    with caplog.at_level(logging.INFO, logger="lightning_normwatch"):
        slept = fit(tmp_path, cb, 24, 0.030)
    c = cb.cost
    assert c is not None and c.interval == 2 and c.logging_steps == 11
    # the judging's 40 ms of CPU are NormWatch's (its own small work on top), the step's 30 ms are training's:
    # bounds relative to what the machine made of them (wall times measured around them), for a loaded machine
    if pipeline == "thread":  # the worker's CPU time
        assert 40 <= c.worker_ms <= 55, c
    else:  # wall time on the training thread
        assert c.worker_ms == 0
    judged = c.worker_ms if pipeline == "thread" else 1e3 * statistics.median(spun)
    assert judged <= c.logging_ms <= judged + 20, c
    # the worker's pure-Python spin holds the GIL the training loop's Python needs: that contention shows as
    # training time (the meter cannot tell it apart), about 5-20 ms per step here
    # (the median sleep is over every step, the meter's over the steps after the first logging one: 5 % slack)
    assert 0.95 * slept <= c.step_ms <= slept + (35 if pipeline == "thread" else 20), (c, slept)
    assert 0 < c.other_ms < 5, c
    # about (50 + 1) / (2 * 33) = 77 % here: one line (INFO, not an alert's WARNING) naming an interval for 2 %
    warned = [r for r in caplog.records if "of the training time here" in r.getMessage()]
    assert len(warned) == 1 and "every_n_steps=" in warned[0].getMessage()
    assert warned[0].levelno == logging.INFO
    summary = next(r.getMessage() for r in caplog.records if "summary at step" in r.getMessage())
    assert "\ncost: NormWatch's own work took" in summary


def test_no_notice_when_normwatch_is_a_small_share(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cb = NormWatch(every_n_steps=4, tensorboard=False)
    with caplog.at_level(logging.INFO, logger="lightning_normwatch"):
        slept = fit(tmp_path, cb, 28, 0.060)  # NormWatch's few ms per 4 steps of 60 ms: a few percent
    c = cb.cost
    assert c is not None and c.share < WARN_SHARE
    assert not [r for r in caplog.records if "of the training time here" in r.getMessage()]
    assert 0.95 * slept <= c.step_ms <= slept + 20, (c, slept)


def test_loopwatch_measures_its_cost_too(tmp_path: Path) -> None:
    from lightning_normwatch import LoopWatch

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with LoopWatch(net, every_n_steps=3, tensorboard=False) as watch:
        assert watch.cost is None  # nothing measured yet
        for _ in range(13):
            x = torch.randn(8, 4)
            with watch.step(x):
                time.sleep(0.005)  # the loop's own work
                loss = net(x).square().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
    c = watch.cost
    # logging steps 0 (warm-up, not counted), 3, 6, 9 measured once the step after each began (12 is the last)
    assert c is not None and c.interval == 3 and c.logging_steps == 3
    assert 5 <= c.step_ms <= 25 and c.logging_ms > 0 and 0 < c.other_ms < c.logging_ms


def test_a_fresh_callback_still_pickles_for_ddp_spawn() -> None:
    import pickle

    # ddp_spawn pickles the trainer's callbacks to start its processes: the meter's wiring must stay picklable
    cb = pickle.loads(pickle.dumps(NormWatch(every_n_steps=3)))
    assert cb.session.meter.interval == 3 and cb.session.collector.timing.args == (cb.session.meter,)
