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
    assert dead[0].module == "net.1"  # first in execution order; the next ReLU (constant input) may follow
    assert "net.0" not in {a.module for a in dead}
    assert dead[0].severity == "warning" and dead[0].value == 1.0 and dead[0].threshold == 0.5
    assert "net.1" in dead[0].message and "100%" in dead[0].message


def test_saturated_sigmoid_from_large_init(tmp_path):
    net = mlp(act=nn.Sigmoid)
    with torch.no_grad():
        net[0].weight.mul_(50)
    watch = fit(tmp_path, Regressor(net), regression_data(), steps=6)
    sat = [a for a in watch.alerts if a.kind == "saturated"]
    assert "net.1" in {a.module for a in sat}
    assert all(a.value >= 0.5 and a.severity == "warning" for a in sat)
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
    assert "net.0" in {a.module for a in drift}
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
    watch = fit(tmp_path, Regressor(mlp(), lr=1e-6), regression_data(scale=scale), steps=12)
    alerts = [a for a in watch.alerts if a.kind == "feature_scale"]
    assert [a.module for a in alerts] == ["input"]
    assert alerts[0].value > 100 and alerts[0].severity == "warning"
    clean = fit(tmp_path, Regressor(mlp(), lr=1e-6), regression_data(), steps=12)
    assert not [a for a in clean.alerts if a.kind == "feature_scale"]


def test_outlier_names_the_module_with_massive_values(tmp_path):
    net = nn.Sequential(nn.Linear(16, 32), Spike(), nn.ReLU(), nn.Linear(32, 1))
    watch = fit(tmp_path, Regressor(net, lr=1e-6), regression_data(), steps=4)
    outliers = [a for a in watch.alerts if a.kind == "outlier"]
    assert outliers[0].module == "net.1"
    assert outliers[0].value > outliers[0].threshold == 500
    clean = fit(tmp_path, Regressor(mlp(), lr=1e-6), regression_data(), steps=4)
    assert not [a for a in clean.alerts if a.kind == "outlier"]


def test_non_normal_is_information_never_a_warning(tmp_path, caplog):
    g = torch.Generator().manual_seed(0)
    x = torch.empty(512, 16).exponential_(generator=g)  # skew 2, excess kurtosis 6
    data = TensorDataset(x, torch.zeros(512, 1))
    with caplog.at_level(logging.INFO, logger="lightning_normwatch"):
        watch = fit(tmp_path, Regressor(mlp(), lr=1e-6), data, steps=10)
    info = [a for a in watch.alerts if a.kind == "non_normal"]
    assert "input" in {a.module for a in info}
    assert all(a.severity == "info" for a in info)
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
    watch = fit(tmp_path, Regressor(mlp(), lr=20.0), regression_data(), steps=30)
    serious = [a for a in watch.alerts if a.severity in ("warning", "error")]
    assert {a.kind for a in serious} & {"nonfinite", "scale_drift"}


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
