"""Hooks with a real ``pl.Trainer``: lifetime, module selection, output naming, repeated calls, inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from models import Regressor, loader, mlp, regression_data, trainer
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_normwatch import NormWatch

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*the trainer has no logger.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
    pytest.mark.filterwarnings("ignore:.*nothing to watch.*"),
]


def watch(**kwargs: Any) -> NormWatch:
    kwargs.setdefault("every_n_steps", 1)
    kwargs.setdefault("on_alert", "ignore")
    kwargs.setdefault("tensorboard", False)
    return NormWatch(**kwargs)


def fit(model: pl.LightningModule, callback: NormWatch, steps: int = 1, data: Any = None, **kwargs: Any) -> None:
    data = data if data is not None else loader(regression_data(n=64))
    trainer(kwargs.pop("tmp_path"), [callback], max_steps=steps, **kwargs).fit(model, data)


def hook_counts(model: nn.Module) -> dict[str, int]:
    return {name: len(m._forward_hooks) for name, m in model.named_modules()}


def assert_no_hooks(model: nn.Module) -> None:
    assert all(n == 0 for n in hook_counts(model).values()), hook_counts(model)


def figure_keys(callback: NormWatch) -> list[str]:
    assert callback.last_result is not None
    return list(callback.last_result.figures)


def assert_figures_describe(fig: dict[str, float], values: np.ndarray) -> None:
    """The figures of a fully sampled tensor are those numpy/scipy give for its values."""
    v = np.asarray(values, dtype=np.float64).ravel()
    assert fig["sampled"] == fig["numel"] == v.size
    np.testing.assert_allclose(
        [fig["mean"], fig["std"], fig["min"], fig["max"], fig["skew"], fig["kurtosis"], fig["zeros"]],
        [v.mean(), v.std(), v.min(), v.max(), stats.skew(v), stats.kurtosis(v), np.mean(v == 0)],
        rtol=1e-5,
        atol=1e-6,
    )


# --------------------------------------------------------------------------- hook lifetime
class HookCounter(nn.Module):
    """Identity that records how many forward hooks it carries at each call."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(len(self._forward_hooks))
        return x


def test_hooks_exist_only_on_logging_steps_and_are_removed_after_fit(tmp_path) -> None:
    counter = HookCounter()
    model = Regressor(nn.Sequential(nn.Linear(16, 8), counter, nn.ReLU(), nn.Linear(8, 1)))
    cb = watch(every_n_steps=5)
    fit(model, cb, steps=12, tmp_path=tmp_path)
    assert counter.seen == [1 if step % 5 == 0 else 0 for step in range(12)]
    assert_no_hooks(model)
    assert cb.last_result is not None and cb.last_result.step == 10
    assert not cb.session.collector.armed


def test_every_n_steps_none_follows_the_trainer(tmp_path) -> None:
    counter = HookCounter()
    model = Regressor(nn.Sequential(nn.Linear(16, 8), counter, nn.ReLU(), nn.Linear(8, 1)))
    fit(model, watch(every_n_steps=None), steps=9, tmp_path=tmp_path, log_every_n_steps=4)
    assert counter.seen == [1 if step % 4 == 0 else 0 for step in range(9)]


def test_gradient_accumulation_merges_the_batches_of_one_step(tmp_path) -> None:
    """With 2 batches per optimizer step, a logging step's figures cover both batches exactly."""
    counter = HookCounter()
    model = Regressor(nn.Sequential(nn.Linear(16, 8), counter, nn.ReLU(), nn.Linear(8, 1)))
    cb = watch(every_n_steps=2)
    fit(model, cb, steps=3, tmp_path=tmp_path, accumulate_grad_batches=2, data=loader(regression_data(n=256)))
    assert counter.seen == [1, 1, 0, 0, 1, 1]  # global steps 0, 0, 1, 1, 2, 2
    assert cb.last_result is not None and cb.last_result.step == 2
    x = regression_data(n=256).tensors[0]
    assert_figures_describe(cb.last_result.figures["input"], x[128:192].numpy())  # batches 4 and 5
    assert_no_hooks(model)


class HookCheck(pl.Callback):
    """Placed after NormWatch: records which watched modules carry a hook during each training step."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.at_start: list[int] = []
        self.at_end: list[int] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.at_start.append(len(self.module._forward_hooks))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        self.at_end.append(len(self.module._forward_hooks))


def test_hooks_armed_at_batch_start_and_removed_at_batch_end(tmp_path) -> None:
    model = Regressor(mlp(width=8))
    cb, check = watch(every_n_steps=3), HookCheck(model.net[0])
    trainer(tmp_path, [cb, check], max_steps=7).fit(model, loader(regression_data(n=64)))
    assert check.at_start == [1, 0, 0, 1, 0, 0, 1]
    assert check.at_end == [0] * 7  # NormWatch's batch-end ran first: hooks already gone
    assert_no_hooks(model)


class FailingRegressor(Regressor):
    """Raises inside ``training_step`` (after the forward pass) at one global step."""

    def __init__(self, net: nn.Module, fail_at: int) -> None:
        super().__init__(net)
        self.fail_at = fail_at

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        if self.global_step == self.fail_at:
            raise RuntimeError(f"boom at {self.global_step}")
        return loss


@pytest.mark.parametrize("every_n_steps", [1, 2])
def test_hooks_removed_when_training_stops_with_an_exception(tmp_path, every_n_steps: int) -> None:
    model = FailingRegressor(mlp(width=8), fail_at=2)
    seen: list[dict[str, int]] = []
    original = model.net.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append(hook_counts(model.net))
        return original(x)

    model.net.forward = forward  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="boom at 2"):
        fit(model, watch(every_n_steps=every_n_steps), steps=5, tmp_path=tmp_path)
    assert seen[2]["0"] == 1  # step 2 is a logging step: the hooks were armed when it failed
    assert_no_hooks(model)


# --------------------------------------------------------------------------- selection
@pytest.mark.parametrize(
    ("modules", "exclude", "keys"),
    [
        (None, (), ["net.0", "net.1", "net.3", "net.4", "net.5"]),  # leaves, Dropout skipped
        (["net.*"], [nn.ReLU], ["net.0", "net.2", "net.3", "net.5"]),  # glob takes Dropout too
        ([nn.ReLU], (), ["net.1", "net.4"]),
        (["net.[03]", nn.ReLU], ["net.4"], ["net.0", "net.1", "net.3"]),
        (["net"], (), ["net"]),  # a container: its output
        ("*.5", (), ["net.5"]),
        (None, ["net.?"], []),
    ],
)
def test_module_selection(tmp_path, modules: Any, exclude: Any, keys: list[str]) -> None:
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    cb = watch(modules=modules, exclude=exclude, inputs=False)
    fit(Regressor(net), cb, tmp_path=tmp_path)
    assert [name for name, _ in cb.session.collector.watched] == keys
    assert figure_keys(cb) == keys  # in execution order


# --------------------------------------------------------------------------- outputs
class LSTMRegressor(Regressor):
    def __init__(self) -> None:
        super().__init__(nn.Identity())
        self.lstm = nn.LSTM(4, 6, batch_first=True)
        self.head = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.reshape(x.shape[0], 4, 4))
        return self.head(out[:, -1])


def test_lstm_tuple_outputs_are_named_by_position(tmp_path) -> None:
    cb = watch(inputs=False)
    fit(LSTMRegressor(), cb, tmp_path=tmp_path)
    figs = cb.last_result.figures  # type: ignore[union-attr]
    # (the LSTM's update figures come under its own name, after the tensors)
    assert [k for k in figs if "std" in figs[k]] == ["lstm[0]", "lstm[1][0]", "lstm[1][1]", "head"]
    assert figs["lstm[0]"]["numel"] == 32 * 4 * 6  # [B, T, H]
    assert figs["lstm[1][0]"]["numel"] == 32 * 6  # h_n [1, B, H]
    assert cb.session.collector.info("lstm[0]").channels == 6
    assert figs["lstm[1][0]"]["min"] >= -1 and figs["lstm[1][0]"]["max"] <= 1  # h = o * tanh(c)


class DictOut(nn.Module):
    """Returns a dict with a float tensor, an integer tensor, a nested list and None."""

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        return {"value": x * 2, "index": x.argmax(-1), "pair": [x + 1, x.long()], "nothing": None}


class DictRegressor(Regressor):
    def __init__(self) -> None:
        super().__init__(nn.Linear(16, 1))
        self.split = DictOut()
        self.seen: list[dict[str, Any]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.split(x)
        self.seen.append(out)
        return self.net(out["value"])


def test_dict_outputs_are_named_by_key_and_integer_tensors_skipped(tmp_path) -> None:
    model = DictRegressor()
    cb = watch(inputs=False)
    fit(model, cb, tmp_path=tmp_path)
    figs = cb.last_result.figures  # type: ignore[union-attr]
    assert list(figs) == ["split.value", "split.pair[0]", "net"]
    out = model.seen[0]
    assert_figures_describe(figs["split.value"], out["value"].detach().numpy())
    assert_figures_describe(figs["split.pair[0]"], out["pair"][0].detach().numpy())


class Reused(nn.Module):
    """One activation module called twice per forward (widths ``a`` then ``b``)."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, a), nn.Linear(a, b), nn.Linear(b, 1)
        self.act = nn.Tanh()
        self.outputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1 = self.act(self.fc1(x))
        h2 = self.act(self.fc2(h1))
        self.outputs += [h1.detach().clone(), h2.detach().clone()]
        return self.fc3(h2)


def test_module_called_twice_gets_one_entry_per_call_site(tmp_path) -> None:
    net = Reused(8, 8)
    cb = watch(inputs=False)
    fit(Regressor(net), cb, tmp_path=tmp_path)
    figs = cb.last_result.figures  # type: ignore[union-attr]
    assert list(figs) == ["net.fc1", "net.act", "net.fc2", "net.act#2", "net.fc3"]
    assert_figures_describe(figs["net.act"], net.outputs[0].numpy())
    assert_figures_describe(figs["net.act#2"], net.outputs[1].numpy())
    second = net.outputs[1].double().numpy()
    assert figs["net.act#2"]["saturated"] == pytest.approx(np.mean(np.abs(second) >= 0.98))


def test_call_sites_merge_over_accumulated_batches(tmp_path) -> None:
    """Two accumulated batches in one logging step: each call site merges its own two calls."""
    net = Reused(8, 8)
    cb = watch(inputs=False, modules=["net.act"])
    fit(Regressor(net), cb, tmp_path=tmp_path, accumulate_grad_batches=2)
    figs = cb.last_result.figures  # type: ignore[union-attr]
    assert list(figs) == ["net.act", "net.act#2"]
    assert_figures_describe(figs["net.act"], torch.cat([net.outputs[0], net.outputs[2]]).numpy())
    assert_figures_describe(figs["net.act#2"], torch.cat([net.outputs[1], net.outputs[3]]).numpy())


def test_module_called_with_different_widths_gets_two_entries(tmp_path) -> None:
    net = Reused(8, 5)
    cb = watch(inputs=False, modules=["net.act"])
    fit(Regressor(net), cb, tmp_path=tmp_path)
    figs = cb.last_result.figures  # type: ignore[union-attr]
    assert list(figs) == ["net.act", "net.act#2"]
    assert_figures_describe(figs["net.act"], net.outputs[0].numpy())
    assert_figures_describe(figs["net.act#2"], net.outputs[1].numpy())


class DeadThirdCall(nn.Module):
    """One ReLU module called after three layers; its third call is completely dead."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 32)
        self.out = nn.Linear(32, 1)
        self.act = nn.ReLU()
        with torch.no_grad():
            self.fc3.bias.fill_(-100.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))))


def test_dead_third_call_of_a_reused_activation_alerts_on_that_call(tmp_path) -> None:
    cb = watch(inputs=False)
    fit(Regressor(DeadThirdCall()), cb, steps=2, tmp_path=tmp_path)
    figs = cb.last_result.figures  # type: ignore[union-attr]
    assert figs["net.act#3"]["dead"] == 1.0 and figs["net.act"]["dead"] < 0.5 and figs["net.act#2"]["dead"] < 0.5
    dead = [a for a in cb.alerts if a.kind == "dead"]
    assert [a.module for a in dead] == ["net.act#3"] and dead[0].step == 0
    assert "`net.act#3` (ReLU)" in dead[0].message


class EmptyBranch(Regressor):
    """A conv branch that receives no rows (as a detection head with no proposals does)."""

    def __init__(self) -> None:
        super().__init__(nn.Linear(16, 1))
        self.conv = nn.Conv2d(1, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        picked = x[x.sum(1) > 1e9]  # no row qualifies
        extra = self.conv(picked.reshape(-1, 1, 4, 4)).sum()
        return self.net(x) + extra


def test_empty_outputs_do_not_break_training_or_raise_nonfinite(tmp_path) -> None:
    cb = watch(inputs=False)
    fit(EmptyBranch(), cb, steps=2, tmp_path=tmp_path)
    figs = cb.last_result.figures  # type: ignore[union-attr]
    assert figs["conv"]["numel"] == 0 and figs["net"]["numel"] == 32
    assert not [a for a in cb.alerts if a.kind == "nonfinite"] and not cb.session.evaluator.nonfinite_active


# --------------------------------------------------------------------------- inputs
class DictData(Dataset):
    def __init__(self, n: int = 64) -> None:
        ds = regression_data(n=n)
        self.x, self.y = ds.tensors
        self.mask = torch.ones(n, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"mask": self.mask[i], "features": self.x[i], "target": self.y[i]}


class DictBatchRegressor(Regressor):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.mse_loss(self(batch["features"]), batch["target"])


def first_batch() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = regression_data(n=64).tensors
    return x[:32], y[:32]


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        (True, {"input": lambda x, y: x}),
        (0, {"input": lambda x, y: x}),
        (1, {"input": lambda x, y: y}),
        (-1, {"input": lambda x, y: y}),
        (lambda b: b[0] * 2, {"input": lambda x, y: 2 * x}),
        (lambda b: {"a": b[0], "b": b[1], "i": b[0].long()}, {"input/a": lambda x, y: x, "input/b": lambda x, y: y}),
        (False, {}),
        ("features", {}),  # a key, but the batch is a tuple: nothing
        (5, {}),  # out of range: nothing
    ],
)
def test_inputs_on_tuple_batches(tmp_path, inputs: Any, expected: dict[str, Callable[..., torch.Tensor]]) -> None:
    cb = watch(inputs=inputs, modules=["net.0"])
    fit(Regressor(mlp(width=8)), cb, tmp_path=tmp_path)
    figs = cb.last_result.figures  # type: ignore[union-attr]
    assert list(figs) == [*expected, "net.0"]
    x, y = first_batch()
    for key, make in expected.items():
        assert_figures_describe(figs[key], make(x, y).numpy())
        assert cb.session.collector.info(key).role == "input"


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        (True, {"input/features": "features"}),  # first floating-point entry (mask is integer)
        ("target", {"input/target": "target"}),
        ("mask", {}),  # integer: skipped
        ("missing", {}),
        (lambda b: {"f": b["features"]}, {"input/f": "features"}),
        (False, {}),
    ],
)
def test_inputs_on_dict_batches(tmp_path, inputs: Any, expected: dict[str, str]) -> None:
    cb = watch(inputs=inputs, modules=["net.0"])
    data = DataLoader(DictData(), batch_size=32)
    fit(DictBatchRegressor(mlp(width=8)), cb, data=data, tmp_path=tmp_path)
    figs = cb.last_result.figures  # type: ignore[union-attr]
    assert list(figs) == [*expected, "net.0"]
    x, y = first_batch()
    for key, field in expected.items():
        assert_figures_describe(figs[key], {"features": x, "target": y}[field].numpy())
