"""Every alert kind fires on a model built to trigger it, naming the right module; healthy runs stay quiet."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lightning_normwatch import KINDS, NormWatch, NormWatchAlertError
from tests.models import Regressor, loader, mlp, regression_data, trainer

FAST = dict(warmup_steps=4, reference_steps=8)


def fit(tmp_path, model, data, steps=30, **watch_kwargs):
    watch = NormWatch(**{**FAST, **watch_kwargs})
    trainer(tmp_path, [watch], max_steps=steps).fit(model, loader(data))
    return watch


def kinds_at(watch, module):
    return {a.kind for a in watch.alerts if a.module == module}


def changed_after(data: TensorDataset, batch: int, step: int, fn) -> TensorDataset:
    """Inputs of batches from ``step`` on transformed by ``fn`` (no shuffling: batch i = rows i*B...)."""
    x, y = data.tensors
    x = x.clone()
    x[step * batch :] = fn(x[step * batch :])
    return TensorDataset(x, y)


class NaNFrom(nn.Module):
    """Passes its input through until its ``start``-th call, then returns NaN (not in place)."""

    def __init__(self, start: int) -> None:
        super().__init__()
        self.start, self.calls = start, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * float("nan") if self.calls > self.start else x + 0.0


class Spike(nn.Module):
    """Adds one massive value to its output (a corrupted unit)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[0, 0] = 1e4
        return out


def test_every_kind_is_documented_with_a_severity():
    assert set(KINDS) == {
        "nonfinite",
        "dead",
        "saturated",
        "scale_drift",
        "mean_drift",
        "shift",
        "feature_scale",
        "outlier",
        "vanishing",
        "exploding",
        "collapse",
        "near_overflow",
        "frozen_norm",
        "non_normal",
        "not_run",
        "norm_placement",
        "redundant_bias",
        "input_drift",
        "integer_inputs",
        "update_size",
        "vanishing_gradient",
        "exploding_gradient",
        "no_gradient",
        "not_in_optimizer",
    }


def test_dead_relu_from_large_negative_bias(tmp_path):
    net = mlp()
    nn.init.constant_(net[0].bias, -100.0)
    watch = fit(tmp_path, Regressor(net), regression_data(), steps=6)
    dead = [a for a in watch.alerts if a.kind == "dead"]
    assert (dead[0].module, dead[0].step) == ("net.1", 0)  # first in execution order; the next ReLU may follow
    assert "net.0" not in {a.module for a in dead}
    assert dead[0].severity == "warning" and dead[0].value == 1.0 and dead[0].threshold == 0.5
    assert "net.1" in dead[0].message and "100%" in dead[0].message


def test_saturated_sigmoid_from_large_init(tmp_path):
    net = mlp(act=nn.Sigmoid)
    with torch.no_grad():
        net[0].weight.mul_(50)
        out = net[:2](regression_data().tensors[0][:32])  # the first batch's sigmoid outputs
    share = float(((out <= 0.01) | (out >= 0.99)).double().mean())  # within 1 % of its range from a limit
    watch = fit(tmp_path, Regressor(net), regression_data(), steps=6)
    sat = [a for a in watch.alerts if a.kind == "saturated"]
    assert [(a.module, a.step, a.severity) for a in sat][:1] == [("net.1", 0, "warning")]
    assert sat[0].value == pytest.approx(share, abs=1e-9) and sat[0].threshold == 0.5
    healthy = fit(tmp_path, Regressor(mlp(act=nn.Sigmoid)), regression_data(), steps=6)
    assert not [a for a in healthy.alerts if a.kind == "saturated"]


def test_scale_change_mid_training_moves_drift_and_keeps_reference(tmp_path):
    data = changed_after(regression_data(n=1024), 32, 20, lambda x: x * 10)
    watch = fit(tmp_path, Regressor(mlp(), lr=1e-4), data, steps=28)
    ref = watch.session.evaluator.references["input"]
    assert ref.steps == FAST["reference_steps"]  # accumulated over the window only, not after
    fig = watch.last_result.figures["input"]
    assert fig["std_log_ratio"] == pytest.approx(math.log(10), abs=0.15)
    assert fig["feature_std_log_ratio_max"] == pytest.approx(math.log(10), abs=0.3)
    drift = [a for a in watch.alerts if a.kind == "scale_drift"]
    assert ("net.0", 20) in {(a.module, a.step) for a in drift}  # at the first batch rescaled x10
    assert all(a.step >= 20 for a in drift)
    # the input is judged per feature: one input_drift alert, after two consecutive logging steps
    (inp,) = [a for a in watch.alerts if a.module == "input" and a.severity == "warning"]
    assert inp.kind == "input_drift" and inp.step == 21
    assert "all 16 features rescaled x10" in inp.message or "all 16 features rescaled x9" in inp.message


def test_mean_drift_on_shifted_inputs(tmp_path):
    data = changed_after(regression_data(n=1024), 32, 20, lambda x: x + 5)
    watch = fit(tmp_path, Regressor(mlp(), lr=1e-4), data, steps=24)
    alerts = [a for a in watch.alerts if a.module == "input" and a.severity == "warning"]
    assert [(a.kind, a.step) for a in alerts] == [("input_drift", 21)]
    assert "all 16 features shifted by +5" in alerts[0].message
    # value: the worst feature's change over its effect floor (5 σ is 10x the 0.5 σ floor; PSI over 0.2 more)
    assert alerts[0].value >= 9 and alerts[0].threshold == 1.0


def test_input_shape_change_at_equal_scale_is_input_drift(tmp_path):
    # Rademacher values keep mean 0 and a similar std but change the shape completely.
    data = changed_after(regression_data(n=1024), 32, 20, torch.sign)
    watch = fit(tmp_path, Regressor(mlp(), lr=1e-4), data, steps=24)
    alerts = [a for a in watch.alerts if a.module == "input" and a.severity == "warning"]
    assert [(a.kind, a.step) for a in alerts] == [("input_drift", 21)]
    assert "changed distribution (PSI" in alerts[0].message
    before = fit(tmp_path, Regressor(mlp(), lr=1e-4), regression_data(n=1024), steps=24)
    assert not [a for a in before.alerts if a.severity != "info"]


def test_feature_scale_on_an_unscaled_feature(tmp_path):
    scale = torch.ones(16)
    scale[3] = 1000.0
    data = regression_data(scale=scale)
    watch = fit(tmp_path, Regressor(mlp(), lr=1e-6), data, steps=12)
    alerts = [a for a in watch.alerts if a.kind == "feature_scale"]
    # judged once the recent batches hold 256 rows: 8 batches of 32, steps 0-7
    assert [(a.module, a.step, a.severity) for a in alerts] == [("input", 7, "warning")]
    rms = float(data.tensors[0][:256, 3].double().pow(2).mean().sqrt())  # feature 3's RMS over those rows
    assert alerts[0].value == pytest.approx(rms, rel=1e-2) and alerts[0].threshold == 100
    clean = fit(tmp_path, Regressor(mlp(), lr=1e-6), regression_data(), steps=12)
    assert not [a for a in clean.alerts if a.kind == "feature_scale"]


def test_outlier_names_the_module_with_massive_values(tmp_path):
    net = nn.Sequential(nn.Linear(16, 32), Spike(), nn.ReLU(), nn.Linear(32, 1))
    with torch.no_grad():
        out = net[:2](regression_data().tensors[0][:32]).abs()
    ratio = 1e4 / float(out[out > 0].double().median())  # max |x| over the median non-zero |x|
    watch = fit(tmp_path, Regressor(net, lr=1e-6), regression_data(), steps=4)
    outliers = [a for a in watch.alerts if a.kind == "outlier"]
    assert (outliers[0].module, outliers[0].step) == ("net.1", 0)
    # the median comes from the shared histogram bins: within 10 % of the exact one
    assert outliers[0].value == pytest.approx(ratio, rel=0.1) and outliers[0].threshold == 500
    clean = fit(tmp_path, Regressor(mlp(), lr=1e-6), regression_data(), steps=4)
    assert not [a for a in clean.alerts if a.kind == "outlier"]


def test_non_normal_is_information_never_a_warning(tmp_path, caplog):
    g = torch.Generator().manual_seed(0)
    x = torch.empty(512, 16).exponential_(generator=g)  # skew 2, excess kurtosis 6
    data = TensorDataset(x, torch.zeros(512, 1))
    with caplog.at_level(logging.INFO, logger="lightning_normwatch"):
        watch = fit(tmp_path, Regressor(mlp(), lr=1e-6), data, steps=10)
    info = [a for a in watch.alerts if a.kind == "non_normal"]
    # judged on the recent batches once they hold 256 rows (steps 0-7); value: the larger of |skew| / 2 and
    # excess kurtosis / 4 of the features standardized one by one over those rows
    z = x[:256].double()
    z = (z - z.mean(0)) / z.std(0, unbiased=False)
    expected = max(abs(float(z.pow(3).mean())) / 2, (float(z.pow(4).mean()) - 3) / 4)
    assert [(a.module, a.step, a.severity) for a in info] == [("input", 7, "info")]
    assert info[0].value == pytest.approx(expected, rel=1e-6) and info[0].threshold == 1.0
    # post-activation outputs are never Gaussian: no shape report for them
    assert not {"net.1", "net.3"} & {a.module for a in info}
    levels = {r.levelno for r in caplog.records if "non_normal" in r.getMessage()}
    assert levels == {logging.INFO}


def test_nonfinite_on_a_logging_step_names_the_first_module(tmp_path):
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), NaNFrom(5), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    watch = fit(tmp_path, Regressor(net), regression_data(), steps=10, check_nonfinite=False)
    nonfinite = [a for a in watch.alerts if a.kind == "nonfinite"]
    assert len(nonfinite) == 1  # later steps (every layer poisoned) do not repeat it
    assert nonfinite[0].module == "net.2" and nonfinite[0].severity == "error" and nonfinite[0].step == 5
    assert "net.2" in nonfinite[0].message


def test_nonfinite_between_logging_steps_is_located_by_replay(tmp_path):
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), NaNFrom(7), nn.Linear(32, 1))
    watch = fit(tmp_path, Regressor(net), regression_data(), steps=12, every_n_steps=1000)
    nonfinite = [a for a in watch.alerts if a.kind == "nonfinite"]
    assert len(nonfinite) == 1
    assert nonfinite[0].module == "net.2" and nonfinite[0].step == 7
    assert "replaying" in nonfinite[0].message


def test_learning_rate_blow_up_is_caught(tmp_path):
    torch.manual_seed(0)
    watch = fit(tmp_path, Regressor(mlp(), lr=20.0), regression_data(), steps=30)
    serious = [(a.module, a.kind, a.step) for a in watch.alerts if a.severity in ("warning", "error")]
    # SGD at lr 20: after two updates the second ReLU's inputs are huge (massive values, dead units), and at
    # step 3 the prediction overflows: the first non-finite tensor in execution order is the last Linear
    assert serious[0][2] == 2 and {m for m, _, s in serious if s == 2} <= {"net.2", "net.3"}
    assert [(m, s) for m, k, s in serious if k == "nonfinite"] == [("net.4", 3)]
    assert [a.severity for a in watch.alerts if a.kind == "nonfinite"] == ["error"]


def test_healthy_run_raises_no_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="lightning_normwatch"):
        watch = NormWatch(every_n_steps=5, warmup_steps=40, reference_steps=60)
        trainer(tmp_path, [watch], max_steps=200).fit(
            Regressor(mlp(), lr=0.05), loader(regression_data(n=2048), shuffle=True)
        )
    assert watch.session.evaluator.reference_ready(watch.last_result.step)
    assert [a for a in watch.alerts if a.severity != "info"] == []
    assert not [r for r in caplog.records if r.name == "lightning_normwatch"]


def test_on_alert_raise_stops_training_with_the_alert(tmp_path):
    net = mlp()
    nn.init.constant_(net[0].bias, -100.0)
    watch = NormWatch(on_alert="raise", **FAST)
    with pytest.raises(NormWatchAlertError) as info:
        trainer(tmp_path, [watch], max_steps=10).fit(Regressor(net), loader(regression_data()))
    assert info.value.alert.kind == "dead" and info.value.alert.module == "net.1"
    assert all(not m._forward_hooks for m in net.modules())


class Gate(nn.Module):
    """ReLU whose units are all dead on the forward calls (0-based) inside any of ``periods``."""

    def __init__(self, *periods: tuple[int, int]) -> None:
        super().__init__()
        self.periods, self.calls = periods, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        call, self.calls = self.calls, self.calls + 1
        dead = any(a <= call < b for a, b in self.periods)
        return torch.relu(x - 1e3) if dead else torch.relu(x)


def test_alert_logged_once_until_condition_clears(tmp_path, caplog):
    net = nn.Sequential(nn.Linear(16, 32), Gate((2, 6), (8, 10)), nn.Linear(32, 1))
    with caplog.at_level(logging.WARNING, logger="lightning_normwatch"):
        watch = fit(tmp_path, Regressor(net, lr=1e-6), regression_data(), steps=12, check_nonfinite=False)
    dead = [(a.module, a.step) for a in watch.alerts if a.kind == "dead"]
    # cleared at step 6 and back at step 8, no worse: the same problem (flapping), raised once
    assert dead == [("net.1", 2)]
    logged = [r for r in caplog.records if "[dead]" in r.getMessage()]
    assert len(logged) == 1 and {r.levelno for r in logged} == {logging.WARNING}


def test_tracker_raises_a_returning_alert_again_only_when_worse_or_after_the_window():
    from lightning_normwatch.judge.alerts import REARM_WINDOW, Alert, AlertTracker

    tracker = AlertTracker()
    key = {("fc", "scale_drift")}

    def step(s: int, value: float | None) -> list[Alert]:
        firing = [] if value is None else [Alert(s, "fc", "scale_drift", "warning", value, 4.0, "std grew")]
        return tracker.update(firing, key, s)

    assert len(step(0, 5.0)) == 1
    assert step(1, None) == [] and step(2, 5.5) == []  # back within the window, not materially worse
    assert step(3, None) == []
    again = step(4, 9.0)  # twice as far beyond the threshold: raised again, saying since when
    assert len(again) == 1 and "step 0" in again[0].message and "4 steps" in again[0].message
    for s in range(5, 6 + REARM_WINDOW):
        assert step(s, None) == []
    assert [a.message for a in step(6 + REARM_WINDOW, 5.0)] == ["std grew"]  # a new problem after the window


class NaNGate(nn.Module):
    """NaN at the global steps inside any of ``periods`` (``step`` is set by the model at each batch, so a
    replayed forward sees the same step); ``masked_fill`` keeps the other values' gradient finite."""

    def __init__(self, *periods: tuple[int, int]) -> None:
        super().__init__()
        self.periods, self.step = periods, 0
        self.last = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nan = any(a <= self.step < b for a, b in self.periods)
        self.last = x.masked_fill(torch.full_like(x, nan, dtype=torch.bool), math.nan)
        return self.last


class Finite(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num(x, 0.0, 0.0, 0.0)


class NaNEpisodes(Regressor):
    """The loss is NaN while the gate is (a detached term: no NaN gradient, the weights stay finite)."""

    def on_train_batch_start(self, batch, batch_idx: int) -> None:  # noqa: ANN001
        self.net[1].step = self.global_step

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:  # noqa: ANN001
        return super().training_step(batch, batch_idx) + 0.0 * self.net[1].last.detach().sum()


@pytest.mark.parametrize("every", [1, 1000], ids=["on-logging-steps", "between-logging-steps"])
def test_a_second_nan_episode_alerts_again(tmp_path, every: int):
    # NaN at steps 3-4, finite at 5-7, NaN again at 8-9: a second episode, raised again at its first step,
    # whether hooks see it on a logging step or the loss check and a replay between logging steps
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), NaNGate((3, 5), (8, 10)), Finite(), nn.ReLU(), nn.Linear(32, 1))
    watch = fit(tmp_path, NaNEpisodes(net, lr=1e-3), regression_data(), steps=12, every_n_steps=every)
    nonfinite = [(a.module, a.step, a.severity) for a in watch.alerts if a.kind == "nonfinite"]
    assert nonfinite == [("net.1", 3, "error"), ("net.1", 8, "error")]
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_dead_recovered_and_dead_again_after_the_rearm_window_alerts_again(tmp_path, caplog):
    from lightning_normwatch.judge.alerts import REARM_WINDOW

    back = 6 + REARM_WINDOW + 2  # alive from step 6 for more than REARM_WINDOW logging steps, then dead again
    net = nn.Sequential(nn.Linear(16, 32), Gate((2, 6), (back, back + 3)), nn.Linear(32, 1))
    with caplog.at_level(logging.WARNING, logger="lightning_normwatch"):
        watch = fit(tmp_path, Regressor(net, lr=1e-6), regression_data(n=2048), steps=back + 3, check_nonfinite=False)
    dead = [(a.module, a.step, a.value) for a in watch.alerts if a.kind == "dead"]
    assert dead == [("net.1", 2, 1.0), ("net.1", back, 1.0)]  # a new problem: raised as at first, no note
    assert [a.message for a in watch.alerts if a.kind == "dead"][1] == watch.alerts[0].message.replace("step 2", "")
    assert len([r for r in caplog.records if "[dead]" in r.getMessage()]) == 2
