"""Set-up checks, blow-ups between logging steps, flapping, odd outputs and repeated fits, with a real Trainer."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from models import Regressor, loader, mlp, regression_data, trainer
from torch import nn

from lightning_normwatch import NormWatch

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*the trainer has no logger.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
    pytest.mark.filterwarnings("ignore:.*sparse.*"),
]


def watch(**kwargs: Any) -> NormWatch:
    kwargs.setdefault("every_n_steps", 1)
    kwargs.setdefault("on_alert", "ignore")
    kwargs.setdefault("tensorboard", False)
    return NormWatch(**kwargs)


def fit(model: pl.LightningModule, cb: NormWatch, tmp_path, steps: int, shuffle: bool = False, **kw: Any) -> None:
    trainer(tmp_path, [cb], max_steps=steps, **kw).fit(model, loader(regression_data(n=512), shuffle=shuffle))


# --------------------------------------------------------------------------- frozen BN, placement, not run
class FrozenBN(Regressor):
    """The frozen-BN bug: a BatchNorm put in eval mode at every epoch start while the rest trains."""

    def __init__(self) -> None:
        super().__init__(nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 1)))
        self.unused = nn.Linear(4, 4)  # never called

    def on_train_epoch_start(self) -> None:
        self.net[1].eval()


def test_frozen_batchnorm_named_and_setup_information(tmp_path) -> None:
    cb = watch(inputs=False)
    fit(FrozenBN(), cb, tmp_path, steps=4)
    warnings = [(a.module, a.kind, a.step) for a in cb.alerts if a.severity == "warning"]
    # once, naming the layer; the never-called Linear's parameters never get a gradient either
    assert warnings == [("net.1", "frozen_norm", 0), ("unused", "no_gradient", 1)]
    info = {(a.module, a.kind): a for a in cb.alerts if a.severity == "info"}
    placement = info[("net.1", "norm_placement")].message
    assert placement.startswith("1 normalization layer (BatchNorm1d): 1 before their activation (linear/conv -> norm")
    assert "`net.0` (Linear)" in info[("net.1", "redundant_bias")].message  # the Linear's bias before BN
    assert ("unused", "not_run") in info and info[("unused", "not_run")].step == 2  # the third logging step
    assert not [k for k in info if k[1] == "not_run" and k[0] != "unused"]


def test_norm_after_activation_and_healthy_bn_without_bias(tmp_path) -> None:
    net = nn.Sequential(nn.Linear(16, 32, bias=False), nn.ReLU(), nn.BatchNorm1d(32), nn.Linear(32, 1))
    cb = watch(inputs=False)
    fit(Regressor(net), cb, tmp_path, steps=2)
    kinds = {(a.module, a.kind) for a in cb.alerts}
    assert ("net.2", "norm_placement") in kinds and ("net.2", "frozen_norm") not in kinds
    assert not [k for k in kinds if k[1] == "redundant_bias"]
    (placement,) = [a for a in cb.alerts if a.kind == "norm_placement"]
    assert "1 after their activation (activation -> norm): `net.2` (BatchNorm1d)" in placement.message
    assert placement.severity == "info"


# --------------------------------------------------------------------------- blow-ups between logging steps
class LrJump(Regressor):
    """SGD whose learning rate jumps x30 at step 12: activations grow, finite, until the loss overflows."""

    def __init__(self) -> None:
        super().__init__(mlp(), lr=0.05)
        self.record: list[tuple[float, float]] = []  # (max |output|, loss) per step

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self(x)
        loss = nn.functional.mse_loss(out, y)
        self.record.append((float(out.detach().abs().max()), float(loss.detach())))
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < 12 else 30.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_loss_overflow_after_a_finite_forward_names_the_first_exploding_module(tmp_path) -> None:
    torch.manual_seed(0)
    model, cb = LrJump(), watch(every_n_steps=5)
    fit(model, cb, tmp_path, steps=20, shuffle=True)
    first_inf = next(i for i, (_, loss) in enumerate(model.record) if not math.isfinite(loss))
    assert math.isfinite(model.record[first_inf][0])  # the forward was finite, the loss overflowed
    assert model.record[first_inf - 1][0] > 1e3 * model.record[11][0]  # activations exploded before
    (alert,) = [a for a in cb.alerts if a.kind == "nonfinite"]
    assert alert.step == first_inf and alert.module == "net.0" and alert.severity == "error"
    assert "loss overflowed" in alert.message and "`net.0` (Linear)" in alert.message


# --------------------------------------------------------------------------- dead during training
class KillAt(pl.Callback):
    """Sets the first layer's bias to -100 at ``step``: its ReLU dies during training."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.net[0].bias.fill_(-100.0)


def test_dead_during_training_versus_dead_from_the_start(tmp_path) -> None:
    cb = watch(inputs=False)
    trainer(tmp_path, [cb, KillAt(5)], max_steps=8).fit(Regressor(mlp(), lr=1e-4), loader(regression_data()))
    (dead,) = [a for a in cb.alerts if a.kind == "dead"]
    assert (dead.module, dead.step) == ("net.1", 5) and "died during training" in dead.message
    assert "`net.1` (ReLU)" in dead.message and "learning rate" in dead.message
    born_dead = mlp()
    nn.init.constant_(born_dead[0].bias, -100.0)
    cb = watch(inputs=False)
    fit(Regressor(born_dead, lr=1e-4), cb, tmp_path, steps=2)
    (dead,) = [a for a in cb.alerts if a.kind == "dead"]
    assert dead.step == 0 and "initialization" in dead.message and "first logging step" in dead.message


# --------------------------------------------------------------------------- flapping
@pytest.mark.slow
def test_no_alert_raised_more_than_three_times_in_an_unstable_run(tmp_path) -> None:
    """Adam whose learning rate jumps x300 at step 150: figures swing around their clearing levels
    (before alerts were tracked per problem, `shift` on one layer was raised 5 times in this run)."""

    class Unstable(Regressor):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.Adam(self.parameters(), lr=self.lr)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < 150 else 300.0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    torch.manual_seed(0)
    cb = watch(every_n_steps=2, warmup_steps=20, reference_steps=100)
    fit(Unstable(mlp(width=64), lr=1e-3), cb, tmp_path, steps=500, shuffle=True)
    counts: dict[tuple[str, str], int] = {}
    for a in cb.alerts:
        counts[(a.module, a.kind)] = counts.get((a.module, a.kind), 0) + 1
    assert counts, "the jump destabilises training: some alert is expected"
    assert max(counts.values()) <= 3, counts


# --------------------------------------------------------------------------- odd outputs, repeated fits
class OddOutputs(nn.Module):
    """Returns a sparse copy, a complex copy and a 0-d auxiliary loss next to the real output."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        aux = (x.mean() ** 2) * (1.0 + 0.5 * torch.rand(()))  # a balance loss: one value that moves
        return x, x.detach().to_sparse(), torch.complex(x, x).detach(), aux


class OddModel(Regressor):
    def __init__(self) -> None:
        super().__init__(nn.Sequential(nn.Linear(16, 16), nn.ReLU()))
        self.odd = OddOutputs()
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _, _, aux = self.odd(self.net(x))
        return self.head(h) + 0.0 * aux


def test_sparse_complex_and_scalar_outputs_never_crash_or_alarm(tmp_path, caplog) -> None:
    cb = watch(inputs=False, warmup_steps=2, reference_steps=3)
    with caplog.at_level(logging.DEBUG, logger="lightning_normwatch"):
        fit(OddModel(), cb, tmp_path, steps=30)
    figs = cb.last_result.figures  # type: ignore[union-attr]
    assert "odd[0]" in figs and "odd[3]" in figs and "odd[1]" not in figs and "odd[2]" not in figs
    assert "mean_shift" in figs["odd[3]"]  # the scalar is measured and logged ...
    assert not [a for a in cb.alerts if a.module == "odd[3]"]  # ... but has no distribution to alert on
    skipped = [r.getMessage() for r in caplog.records if "not measured" in r.getMessage()]
    assert len(skipped) == 2 and any("sparse" in m for m in skipped) and any("complex" in m for m in skipped)


def test_second_fit_keeps_the_first_fits_alerts(tmp_path) -> None:
    net = mlp()
    nn.init.constant_(net[0].bias, -100.0)
    model, cb = Regressor(net, lr=1e-4), watch(inputs=False)
    fit(model, cb, tmp_path, steps=2)
    first = list(cb.alerts)
    assert ("net.1", "dead") in [(a.module, a.kind) for a in first]
    fit(model, cb, tmp_path / "again", steps=4)  # a new fit: a fresh monitor, the dead layers alerted again
    assert cb.alerts[: len(first)] == first
    assert [(a.module, a.kind) for a in cb.alerts[len(first) :]] == [(a.module, a.kind) for a in first]
