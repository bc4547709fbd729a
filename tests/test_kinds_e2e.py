"""Every alert kind in ``KINDS`` fires end to end: a real ``pl.Trainer`` trains a tiny model built to raise it,
and the test asserts the alert's module and the step it is raised at.

Kinds without such a test elsewhere are tested here; ``E2E`` names the test of every kind, and
``test_every_kind_has_an_end_to_end_test`` fails when a kind is added to ``KINDS`` without one.
Logging is at every step (``every_n_steps=1``) with the reference window at steps 4-11 (``FAST``), so the
drift rules judge from step 12 on and a fault planted at step ``AT`` = 14 is raised at step 14 exactly.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_normwatch import KINDS, NormWatch
from tests.models import Regressor, loader, regression_data, trainer

FAST = dict(every_n_steps=1, warmup_steps=4, reference_steps=8, on_alert="ignore", tensorboard=False)
AT = 14  # the step a mid-run fault starts at (after the reference window, steps 4-11)

#: the end-to-end test of each kind: ``file::test`` (a real Trainer; the test asserts module and step)
E2E = {
    "nonfinite": "tests/test_alerts.py::test_nonfinite_on_a_logging_step_names_the_first_module",
    "dead": "tests/test_architectures.py::test_channels_last_mlp_block_is_measured_per_real_channel",
    "saturated": "tests/test_alerts.py::test_saturated_sigmoid_from_large_init",
    "scale_drift": "tests/test_kinds_e2e.py::test_scale_drift_of_a_layer_at_the_step_it_starts",
    "mean_drift": "tests/test_kinds_e2e.py::test_mean_drift_of_a_layer_at_the_step_it_starts",
    "shift": "tests/test_kinds_e2e.py::test_shift_of_a_layer_whose_shape_changes",
    "feature_scale": "tests/test_alerts.py::test_feature_scale_on_an_unscaled_feature",
    "outlier": "tests/test_alerts.py::test_outlier_names_the_module_with_massive_values",
    "vanishing": "tests/test_architectures.py::test_vanishing_depth_caught_at_the_first_logging_step",
    "exploding": "tests/test_architectures.py::test_exploding_depth_caught_at_the_first_logging_step",
    "collapse": "tests/test_windows_trainer.py::test_collapse_is_caught_on_the_module_where_it_starts",
    "near_overflow": "tests/test_kinds_e2e.py::test_near_overflow_of_float32_values",
    "frozen_norm": "tests/test_model_checks.py::test_frozen_batchnorm_named_and_setup_information",
    "non_normal": "tests/test_alerts.py::test_non_normal_is_information_never_a_warning",
    "not_run": "tests/test_model_checks.py::test_frozen_batchnorm_named_and_setup_information",
    "norm_placement": "tests/test_kinds_e2e.py::test_norm_placement_and_redundant_bias_at_the_first_step",
    "redundant_bias": "tests/test_kinds_e2e.py::test_norm_placement_and_redundant_bias_at_the_first_step",
    "input_drift": "tests/test_alerts.py::test_mean_drift_on_shifted_inputs",
    "integer_inputs": "tests/test_kinds_e2e.py::test_integer_inputs_on_an_embedding_model",
    "update_size": "tests/test_updates.py::test_learning_rate_zero_in_a_param_group_raises_update_size",
    "vanishing_gradient": "tests/test_updates.py::"
    "test_deep_sigmoid_mlp_under_sgd_raises_vanishing_gradient_on_its_early_layers",
    "exploding_gradient": "tests/test_kinds_e2e.py::test_exploding_gradient_behind_an_amplifying_backward",
    "no_gradient": "tests/test_updates.py::test_a_branch_without_gradient_raises_no_gradient",
    "not_in_optimizer": "tests/test_updates.py::test_parameters_no_optimizer_holds_are_named_at_the_first_step",
}
ROOT = Path(__file__).resolve().parent.parent


def test_every_kind_has_an_end_to_end_test() -> None:
    assert set(E2E) == set(KINDS), "a kind without an end-to-end test (or one that no longer exists)"
    for kind, where in E2E.items():
        path, name = where.split("::")
        source = (ROOT / path).read_text()
        (fn,) = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == name]
        body = ast.get_source_segment(source, fn) or ""
        assert f'"{kind}"' in body, f"{where} does not name {kind!r}"
        assert "step" in body and ("module" in body or "roots(" in body), f"{where}: module and step"
        assert "trainer(" in source or "Trainer(" in source, f"{where} does not train with a Trainer"


class From(nn.Module):
    """Identity until its ``start``-th call (a step: one forward per step), then ``fn`` of its input."""

    def __init__(self, start: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.start, self.fn, self.calls = start, fn, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        call, self.calls = self.calls, self.calls + 1
        return self.fn(x) if call >= self.start else x + 0.0


def fit(tmp_path: Any, net: nn.Module, steps: int, data: DataLoader | None = None, **kw: Any) -> NormWatch:
    pl.seed_everything(0, verbose=False)
    cb = NormWatch(**{**FAST, **kw})
    model = Regressor(net, lr=1e-3, optimizer="adam")
    trainer(tmp_path, [cb], max_steps=steps).fit(model, data or loader(regression_data()))
    return cb


def roots(cb: NormWatch) -> list[tuple[str, str, int]]:
    return [(a.module, a.kind, a.step) for a in cb.alerts if a.caused_by is None and a.severity != "info"]


def faulty(fault: nn.Module) -> nn.Sequential:
    """A regression MLP whose second module (``net.1``, after the first Linear) is ``fault``."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), fault, nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))


def test_scale_drift_of_a_layer_at_the_step_it_starts(tmp_path) -> None:
    cb = fit(tmp_path, faulty(From(AT, lambda x: x * 6)), steps=AT + 2)
    assert roots(cb) == [("net.1", "scale_drift", AT)]  # the layers after it follow it
    (a,) = [a for a in cb.alerts if a.kind == "scale_drift" and a.module == "net.1"]
    assert 5.5 < a.value < 6.5 and a.threshold == 4.0  # x6, up to the sampling noise of two std estimates
    assert {a.caused_by for a in cb.alerts if a.kind == "scale_drift" and a.module != "net.1"} == {
        ("scale_drift", "net.1")
    }


def test_mean_drift_of_a_layer_at_the_step_it_starts(tmp_path) -> None:
    # the mean moves by 6 of the tensor's stds (the std of all its values, taken per batch)
    cb = fit(tmp_path, faulty(From(AT, lambda x: x + 6 * x.std())), steps=AT + 2)
    assert roots(cb) == [("net.1", "mean_drift", AT)]
    (a,) = [a for a in cb.alerts if a.kind == "mean_drift"]
    assert a.module == "net.1" and a.step == AT and a.threshold == 4.0
    # in reference stds: the layer's whole-tensor std over the std its channels had in the reference (close)
    assert 5.0 < a.value < 7.5


def test_shift_of_a_layer_whose_shape_changes(tmp_path) -> None:
    # same mean and std, another shape: every value becomes +-std (a two-point distribution)
    cb = fit(tmp_path, faulty(From(AT, lambda x: torch.sign(x) * x.std())), steps=AT + 2)
    assert [(a.module, a.kind, a.step) for a in cb.alerts if a.severity != "info"] == [("net.1", "shift", AT)]
    assert cb.alerts[-1].value > 2.5 and cb.alerts[-1].threshold == 2.5


def test_near_overflow_of_float32_values(tmp_path) -> None:
    # values of 1e37 are finite in float32 (largest 3.4e38) but above its near-overflow mark (1 %: 3.4e36)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), From(0, lambda x: x * 1e37), From(0, lambda x: x * 1e-37), nn.ReLU())
    net.append(nn.Linear(32, 1))
    cb = fit(tmp_path, net, steps=3)
    (a,) = [a for a in cb.alerts if a.kind == "near_overflow"]
    assert (a.module, a.step, a.severity) == ("net.1", 0, "warning")  # not the tensor restored right after it
    big = float(net[0](regression_data().tensors[0][:32]).abs().max()) * 1e37
    assert 0.5 * big < a.value <= 1.5 * big and a.threshold == torch.finfo(torch.float32).max * 1e-2


class AmplifyGradient(torch.autograd.Function):
    """Identity forward, gradient x1e5 backward: a custom backward with a wrong factor."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * 1e5


class Amplify(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return AmplifyGradient.apply(x)


def test_exploding_gradient_behind_an_amplifying_backward(tmp_path) -> None:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32)]
    net = nn.Sequential(*layers, Amplify(), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    cb = fit(tmp_path, net, steps=4)
    found = [(a.module, a.kind, a.step) for a in cb.alerts if a.severity != "info"]
    # the three weight matrices before the amplifier get gradients 1e5 times too large; named at the one
    # nearest the output (net.4), held two logging steps (0 and 1)
    assert found == [("net.4", "exploding_gradient", 1)]
    assert 1e4 < cb.alerts[-1].value < 1e6 and cb.alerts[-1].threshold == 1000.0


def test_norm_placement_and_redundant_bias_at_the_first_step(tmp_path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 1))
    cb = fit(tmp_path, net, steps=2)
    info = [(a.module, a.kind, a.step) for a in cb.alerts if a.severity == "info"]
    assert ("net.1", "norm_placement", 0) in info and ("net.1", "redundant_bias", 0) in info
    assert [(m, k) for m, k, _ in info if k in ("norm_placement", "redundant_bias")] == [
        ("net.1", "norm_placement"),
        ("net.1", "redundant_bias"),
    ]  # once each
    assert [a for a in cb.alerts if a.severity != "info"] == []


def test_integer_inputs_on_an_embedding_model(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    ids, y = torch.randint(0, 50, (256, 6), generator=g), torch.randn(256, 1, generator=g)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(48, 1))
    cb = fit(tmp_path, net, steps=3, data=DataLoader(TensorDataset(ids, y), batch_size=32))
    found = [(a.module, a.kind, a.step, a.severity) for a in cb.alerts if a.kind == "integer_inputs"]
    assert found == [("net.0", "integer_inputs", 0, "info")]  # the embedding receives the ids; said once
    assert "integer ids" in cb.alerts[0].message
