"""Update sizes, gradients and weights around the optimizer step, and the parameter-side rules, with a real Trainer."""

from __future__ import annotations

import math
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from models import Regressor, loader, mlp, regression_data, trainer
from torch import nn

from lightning_normwatch import NormWatch
from lightning_normwatch.collect.updates import UpdateProbe
from lightning_normwatch.config import Thresholds
from lightning_normwatch.judge.updates import MIN_LARGE_STEPS, PERSIST, UpdateHistory, update_alerts

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*the trainer has no logger.*"),
    pytest.mark.filterwarnings("ignore:.*Seed set to.*"),
]

PARAM_KINDS = {"update_size", "vanishing_gradient", "exploding_gradient", "no_gradient", "not_in_optimizer"}


def watch(**kw: Any) -> NormWatch:
    return NormWatch(on_alert="ignore", tensorboard=False, **{"every_n_steps": 5, **kw})


class Copies(pl.Callback):
    """Parameter and gradient copies before and after the optimizer step of one global step (hand computation)."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.before: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if trainer.global_step == self.step:
            for n, p in pl_module.named_parameters():
                self.before[n] = p.detach().clone().double()
                self.grads[n] = p.grad.detach().clone().double()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_step == self.step + 1 and not self.after:
            self.after = {n: p.detach().clone().double() for n, p in pl_module.named_parameters()}


def hand_figures(c: Copies, prefix: str) -> dict[str, float]:
    names = [n for n in c.before if n.rsplit(".", 1)[0] == prefix]
    w2 = sum(float(c.before[n].pow(2).sum()) for n in names)
    d2 = sum(float((c.after[n] - c.before[n]).pow(2).sum()) for n in names)
    g2 = sum(float(c.grads[n].pow(2).sum()) for n in names)
    numel = sum(c.before[n].numel() for n in names)
    return {"update_ratio": math.sqrt(d2 / w2), "grad_rms": math.sqrt(g2 / numel), "weight_rms": math.sqrt(w2 / numel)}


@pytest.mark.parametrize(("optimizer", "accumulate"), [("adam", 1), ("sgd", 2)])
def test_update_figures_equal_a_hand_computation(tmp_path, optimizer: str, accumulate: int) -> None:
    pl.seed_everything(0)
    model = Regressor(mlp(), lr=0.01, optimizer=optimizer)
    copies, cb = Copies(step=5), watch()
    trainer(tmp_path, [copies, cb], max_steps=6, accumulate_grad_batches=accumulate).fit(
        model, loader(regression_data(n=512), batch_size=16)
    )
    figures = cb.last_result.figures
    assert cb.last_result.step == 5
    for module in ("net.0", "net.2", "net.4"):
        expected = hand_figures(copies, module)
        for name, value in expected.items():
            assert figures[module][name] == pytest.approx(value, rel=1e-6), (module, name)
        assert figures[module]["lr"] == pytest.approx(0.01)
    assert "update_ratio" not in figures["net.1"]  # a ReLU has no parameters


def test_updates_false_measures_nothing(tmp_path) -> None:
    cb = watch(updates=False)
    trainer(tmp_path, [cb], max_steps=6).fit(Regressor(mlp()), loader(regression_data()))
    assert "update_ratio" not in cb.last_result.figures["net.0"]
    assert cb.session.updates is None


class Forgotten(Regressor):
    """A head created in the module but left out of ``configure_optimizers``."""

    def __init__(self) -> None:
        super().__init__(mlp(d_out=8))
        self.extra = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extra(self.net(x))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.net.parameters(), lr=0.05)


def test_parameters_no_optimizer_holds_are_named_at_the_first_step(tmp_path) -> None:
    cb = watch()
    trainer(tmp_path, [cb], max_steps=2).fit(Forgotten(), loader(regression_data()))
    found = [a for a in cb.alerts if a.kind == "not_in_optimizer"]
    assert [(a.module, a.step, a.severity) for a in found] == [("extra", 0, "warning")]
    assert "extra.weight" in found[0].message and "extra.bias" in found[0].message


class FrozenGroup(Regressor):
    """AdamW with ``net.2`` in a param group of learning rate 0 (frozen by accident)."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        frozen = list(self.net[2].parameters())
        rest = [p for n, p in self.net.named_parameters() if not n.startswith("2.")]
        return torch.optim.AdamW([{"params": rest}, {"params": frozen, "lr": 0.0}], lr=1e-3)


def test_learning_rate_zero_in_a_param_group_raises_update_size(tmp_path) -> None:
    pl.seed_everything(0)
    cb = watch(every_n_steps=2)
    trainer(tmp_path, [cb], max_steps=8).fit(FrozenGroup(mlp()), loader(regression_data()))
    found = [(a.module, a.step) for a in cb.alerts if a.kind in PARAM_KINDS]
    assert found == [("net.2", 2)]  # held PERSIST=2 logging steps: 0 and 2
    assert "learning rate 0 in its param group" in next(a.message for a in cb.alerts if a.kind == "update_size")


class Classifier(pl.LightningModule):
    def __init__(self, net: nn.Module, opt: str = "adam", lr: float = 1e-3, warmup: int = 0, steps: int = 60) -> None:
        super().__init__()
        self.net, self.opt, self.lr, self.warmup, self.steps = net, opt, lr, warmup, steps

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self.net(x)
        return nn.functional.cross_entropy(out.flatten(0, -2) if out.ndim == 3 else out, y.flatten())

    def configure_optimizers(self) -> Any:
        cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[self.opt]
        kw = {"momentum": 0.9} if self.opt == "sgd" else {}
        opt = cls(self.net.parameters(), lr=self.lr, **kw)
        if not self.warmup:
            return opt

        def factor(step: int) -> float:
            if step < self.warmup:
                return (step + 1) / self.warmup
            return 0.5 * (1 + math.cos(math.pi * (step - self.warmup) / max(1, self.steps - self.warmup)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def digits(image: bool = False, batch_size: int = 32) -> Any:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    ds = torch.utils.data.TensorDataset(x.view(-1, 1, 8, 8) if image else x, torch.tensor(data.target))
    return loader(ds, batch_size=batch_size, shuffle=True)


def tokens(n: int = 512, length: int = 16, vocab: int = 32) -> Any:
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(vocab, vocab, generator=g) * 3, -1)
    seq = [torch.randint(0, vocab, (n,), generator=g)]
    for _ in range(length):
        seq.append(torch.multinomial(probs[seq[-1]], 1, generator=g).squeeze(1))
    s = torch.stack(seq, 1)
    return loader(torch.utils.data.TensorDataset(s[:, :-1], s[:, 1:]), batch_size=32, shuffle=True)


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 32, d: int = 32, layers: int = 2, norm_first: bool = True) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.head(self.encoder(self.tok(x), mask=mask, is_causal=True))


def cnn_bn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip


def digits_mlp(act: type[nn.Module] = nn.ReLU, depth: int = 3, width: int = 64) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = 64
    for _ in range(depth):
        layers += [nn.Linear(d, width), act()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, 10))


HEALTHY = {
    "mlp_sgd": lambda: (Classifier(digits_mlp(), "sgd", 0.05), digits()),
    "mlp_adam": lambda: (Classifier(digits_mlp(), "adam"), digits()),
    "cnn_bn_adamw": lambda: (Classifier(cnn_bn(), "adamw"), digits(image=True)),
    "cnn_bn_sgd": lambda: (Classifier(cnn_bn(), "sgd", 0.05), digits(image=True)),
    "transformer_adamw_cosine": lambda: (Classifier(TinyLM(), "adamw", 3e-3, warmup=10), tokens()),
    "transformer_sgd": lambda: (Classifier(TinyLM(), "sgd", 0.05), tokens()),
}


@pytest.mark.parametrize("case", list(HEALTHY))
def test_healthy_runs_raise_no_parameter_alert(tmp_path, case: str) -> None:
    pl.seed_everything(0)
    model, data = HEALTHY[case]()
    cb = watch(every_n_steps=3)
    trainer(tmp_path, [cb], max_steps=60).fit(model, data)
    assert "update_ratio" in next(iter(f for f in cb.last_result.figures.values() if "update_ratio" in f))
    assert [(a.module, a.kind) for a in cb.alerts if a.kind in PARAM_KINDS] == []


def test_deep_sigmoid_mlp_under_sgd_raises_vanishing_gradient_on_its_early_layers(tmp_path) -> None:
    pl.seed_everything(0)
    cb = watch(every_n_steps=2)
    trainer(tmp_path, [cb], max_steps=6).fit(Classifier(digits_mlp(nn.Sigmoid, depth=10), "sgd", 0.1), digits())
    found = [a for a in cb.alerts if a.kind == "vanishing_gradient"]
    assert len(found) == 1 and found[0].step == 2  # held 2 logging steps
    layer = int(found[0].module.split(".")[1])  # net.<i>: the layer nearest the output where it starts
    assert 4 <= layer <= 16 and found[0].value > 1000
    assert not [a for a in cb.alerts if a.kind == "update_size"]  # small updates here are the gradients' fault


class Unused(Regressor):
    """A branch built but never used in the loss."""

    def __init__(self) -> None:
        super().__init__(mlp())
        self.side = nn.Linear(16, 4)


def test_a_branch_without_gradient_raises_no_gradient(tmp_path) -> None:
    cb = watch(every_n_steps=2)
    trainer(tmp_path, [cb], max_steps=6).fit(Unused(), loader(regression_data()))
    found = [(a.module, a.kind, a.step) for a in cb.alerts if a.kind in PARAM_KINDS]
    assert found == [("side", "no_gradient", 2)]


class TwoOptimizers(pl.LightningModule):
    """Manual optimization, two optimizers stepping in one batch (GAN-like)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.a, self.b = nn.Linear(16, 8), nn.Linear(8, 1)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        opt_a, opt_b = self.optimizers()
        loss = nn.functional.mse_loss(self.b(torch.relu(self.a(x))), y)
        opt_a.zero_grad(), opt_b.zero_grad()
        self.manual_backward(loss)
        opt_a.step()
        opt_b.step()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.Adam(self.b.parameters(), lr=1e-3)


def test_manual_optimization_with_two_optimizers(tmp_path) -> None:
    cb = watch(every_n_steps=4)
    trainer(tmp_path, [cb], max_steps=8).fit(TwoOptimizers(), loader(regression_data()))
    figs = cb.last_result.figures
    assert figs["a"]["lr"] == pytest.approx(0.1) and figs["b"]["lr"] == pytest.approx(1e-3)
    assert figs["a"]["update_ratio"] > 0 and figs["b"]["update_ratio"] > 0


def test_a_step_gradscaler_skipped_is_not_a_zero_update() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    probe = UpdateProbe()
    probe.attach(model, [opt])
    opt.register_step_post_hook(lambda o, *_: probe.after_step(o))
    for poison, expect_skip in ((True, 1), (False, 0)):
        opt.zero_grad()
        scaler.scale(model(torch.randn(8, 4)).sum() * (math.inf if poison else 1.0)).backward()
        scaler.unscale_(opt)
        probe.arm()
        probe.before_step(opt)
        scaler.step(opt)
        scaler.update()
        figs = probe.collect()
        assert probe.skipped == expect_skip
        assert math.isnan(figs["0"]["update_ratio"]) == bool(expect_skip)
    # and a skipped step raises no update_size: the rules skip NaN ratios
    history = UpdateHistory()
    nan = {"0": {"update_ratio": math.nan, "grad_rms": 1.0, "lr": 0.1, "has_grad": 1.0}}
    for step in range(PERSIST + 1):
        assert update_alerts(step, nan, ["0"], Thresholds(), history)[0] == []


class Losses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any) -> None:
        self.losses.append(float(outputs["loss"]))


def test_learning_rate_x30_on_a_transformer_raises_update_size_before_the_loss_suffers(tmp_path) -> None:
    """Post-norm TransformerEncoder, AdamW with 20 warm-up steps: 3e-3 (healthy) against 9e-2 (x30)."""
    runs = {}
    for lr in (3e-3, 9e-2):
        pl.seed_everything(0)
        model = Classifier(TinyLM(vocab=64, d=64, layers=4, norm_first=False), "adamw", lr, warmup=20, steps=60)
        cb, losses = watch(every_n_steps=2), Losses()
        trainer(tmp_path / str(lr), [cb, losses], max_steps=12).fit(model, tokens(n=1024, length=32, vocab=64))
        runs[lr] = (cb, losses.losses)
    healthy, broken = runs[3e-3], runs[9e-2]
    assert [a for a in healthy[0].alerts if a.kind in PARAM_KINDS] == []
    found = [a for a in broken[0].alerts if a.kind == "update_size"]
    first = min(a.step for a in found)
    assert first <= 4 and all(a.value > 0.1 for a in found)
    assert {a.module for a in found if a.step == first} >= {f"net.encoder.layers.{i}.linear2" for i in range(4)}
    assert "learning rate" in found[0].message
    worse = [s for s in range(12) if broken[1][s] > 1.1 * healthy[1][s]]
    assert worse and first < worse[0]  # raised before the loss is 10 % worse than the healthy run's


# ------------------------------------------------------------------ the rules at their thresholds (pure functions)
ABOVE, BELOW = 1.0001, 0.9999


def _held(figs: dict[str, dict[str, float]], th: Thresholds, order: list[str] | None = None) -> list[Any]:
    """The alerts at the logging step where a condition has held PERSIST steps."""
    history, alerts = UpdateHistory(), []
    for step in range(0, 5 * PERSIST, 5):  # logging every 5 steps
        alerts, _ = update_alerts(step, figs, order or list(figs), th, history)
    return alerts


def _layers(n: int = 5, ratio: float = 1e-3, lr: float = 1e-3) -> dict[str, dict[str, float]]:
    return {f"fc{i}": {"update_ratio": ratio, "grad_rms": 1e-2, "lr": lr, "has_grad": 1.0} for i in range(n)}


@pytest.mark.parametrize("limit", [None, 0.02])
def test_update_size_large_at_its_threshold(limit: float | None) -> None:
    th = Thresholds() if limit is None else Thresholds(update_large=limit)
    for factor, fires in ((ABOVE, True), (BELOW, False)):
        figs = _layers()
        figs["fc3"]["update_ratio"] = th.update_large * factor
        found = [(a.module, a.kind, a.threshold) for a in _held(figs, th)]
        assert found == ([("fc3", "update_size", th.update_large)] if fires else [])
    figs["fc3"]["update_ratio"] = th.update_large * 2  # one logging step alone is not enough (Adam's first step)
    assert update_alerts(0, figs, list(figs), th, UpdateHistory())[0] == []
    history = UpdateHistory()  # nor two logging steps one global step apart (a transient)
    assert [update_alerts(s, figs, list(figs), th, history)[0] for s in range(MIN_LARGE_STEPS)] == [[]] * 4
    assert [a.module for a in update_alerts(MIN_LARGE_STEPS, figs, list(figs), th, history)[0]] == ["fc3"]


@pytest.mark.parametrize("limit", [None, 50.0])
def test_update_size_small_at_its_threshold_and_only_for_a_low_learning_rate(limit: float | None) -> None:
    th = Thresholds() if limit is None else Thresholds(update_small=limit)
    for factor, fires in ((ABOVE, True), (BELOW, False)):
        figs = _layers()
        figs["fc1"].update(update_ratio=1e-3 / (th.update_small * factor), lr=1e-5)
        found = [(a.module, a.kind) for a in _held(figs, th)]
        assert found == ([("fc1", "update_size")] if fires else [])
    figs["fc1"].update(update_ratio=0.0, lr=1e-3)  # same learning rate as the others: not the optimizer's fault
    assert _held(figs, th) == []
    figs["fc1"].update(lr=0.0)
    alert = _held(figs, th)[0]
    assert alert.value == math.inf and "learning rate 0 in its param group" in alert.message


@pytest.mark.parametrize("kind", ["vanishing_gradient", "exploding_gradient"])
def test_gradient_flow_at_its_threshold_named_where_it_starts(kind: str) -> None:
    th = Thresholds()
    limit = getattr(th, kind)
    for factor, fires in ((ABOVE, True), (BELOW, False)):
        figs = _layers(6)
        for i in range(3):  # the three layers nearest the input are out of range
            scale = limit * factor
            figs[f"fc{i}"]["grad_rms"] = 1e-2 / scale if kind == "vanishing_gradient" else 1e-2 * scale
        found = [(a.module, a.kind) for a in _held(figs, th)]
        assert found == ([("fc2", kind)] if fires else [])


def test_a_module_without_gradient_at_two_logging_steps_raises_no_gradient_once() -> None:
    figs = _layers()
    figs["fc2"].update(has_grad=0.0, grad_rms=math.nan)
    history, raised = UpdateHistory(), []
    for step in range(4):
        raised += [  # (logging steps 0..3)
            (a.step, a.module, a.severity) for a in update_alerts(step, figs, list(figs), Thresholds(), history)[0]
        ]
    assert raised == [(1, "fc2", "warning")]
    info = update_alerts(1, figs, [], Thresholds(), UpdateHistory(without_grad={"fc2": 1}), expected_unused=True)[0]
    assert [(a.kind, a.severity) for a in info] == [("no_gradient", "info")]


def test_params_histograms_writes_weight_and_gradient_histograms(tmp_path) -> None:
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pl.seed_everything(0)
    cb = NormWatch(every_n_steps=2, on_alert="ignore", params="histograms")
    logger = TensorBoardLogger(str(tmp_path), name="run")
    trainer(tmp_path, [cb], max_steps=4, logger=logger).fit(Regressor(mlp()), loader(regression_data()))
    acc = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0})
    acc.Reload()
    tags = set(acc.Tags()["histograms"])
    assert {f"normwatch/params/net.{i}/{w}" for i in (0, 2, 4) for w in ("weight", "grad")} <= tags
    weight = acc.Histograms("normwatch/params/net.0/weight")
    assert [e.step for e in weight] == [0, 2]
    assert weight[0].histogram_value.num == 16 * 32 + 32  # every weight and bias of net.0, binned on the device
    with pytest.raises(ValueError, match="params"):
        NormWatch(params="all")
    assert not any(t.startswith("normwatch/params/") for t in tags if "net.1" in t)  # a ReLU has no parameters
