"""``torch.compile``d models: same graphs, no added graph break or recompilation, measured on logging steps.

Dynamo's ``eager`` backend keeps the tests fast (no C++ compilation) and the compiled model's numerics
identical to eager PyTorch, so the figures can be compared with an uncompiled run; graph breaks and
recompilations are dynamo's own (the backend only runs the captured graphs).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch._dynamo
from models import Regressor, loader, mlp, regression_data, trainer
from torch import nn
from torch._dynamo.utils import counters

from lightning_normwatch import NormWatch

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*the trainer has no logger.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
]

STEPS = 12
EVERY = 4


def net() -> nn.Sequential:
    """Dropout (the replay must draw the same mask) and BatchNorm (its running statistics must not move twice)."""
    return nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 1))


class Quiet(Regressor):
    """No ``self.log`` in ``training_step``: dynamo cannot trace Lightning's ``log`` (nothing to do with NormWatch)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)


def run(tmp_path: Any, how: str, watch: bool, fullgraph: bool = False) -> tuple[Quiet, NormWatch | None, dict]:
    """Train ``STEPS`` steps; ``how``: ``eager``, ``module`` (``torch.compile(lightning_module)``) or ``submodule``."""
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = Quiet(net())
    fitted: Any = model
    if how == "module":
        fitted = torch.compile(model, backend="eager", fullgraph=fullgraph)
    elif how == "submodule":
        model.net = torch.compile(model.net, backend="eager", fullgraph=fullgraph)
    cb = NormWatch(every_n_steps=EVERY, warmup_steps=0, reference_steps=2, on_alert="ignore") if watch else None
    trainer(tmp_path, [cb] if cb else [], max_steps=STEPS).fit(fitted, loader(regression_data(256)))
    seen = {
        "graph_breaks": sum(counters["graph_break"].values()),
        "unique_graphs": counters["stats"]["unique_graphs"],
        "frames": dict(counters["frames"]),
        "recompiles": sum(counters["recompiles"].values()),
    }
    return model, cb, seen


@pytest.mark.parametrize("fullgraph", [False, True], ids=["default", "fullgraph"])
@pytest.mark.parametrize("how", ["module", "submodule"])
def test_compiled_model_trains_with_the_same_graphs_and_is_measured(tmp_path: Any, how: str, fullgraph: bool) -> None:
    plain_model, _, plain = run(tmp_path / "plain", how, watch=False, fullgraph=fullgraph)
    model, cb, watched = run(tmp_path / "watched", how, watch=True, fullgraph=fullgraph)
    assert plain["unique_graphs"] >= 1  # the model really was compiled
    # the same graphs: no graph break, no recompilation, no extra frame added by NormWatch
    assert watched == plain
    # training unchanged (same graphs, and the measuring replay restores RNG and buffers)
    for a, b in zip(plain_model.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # measured on the logging steps, under the user's names (no ``_orig_mod``)
    assert cb is not None and cb.last_result is not None and cb.last_result.step == 8
    assert sorted(cb.last_result.figures) == ["input", "net.0", "net.1", "net.2", "net.4"]  # dropout is not watched


def test_compiled_figures_equal_eager_figures(tmp_path: Any) -> None:
    """What the replay measures is what the training step computed: same figures as an uncompiled run."""
    _, eager_cb, _ = run(tmp_path / "eager", "eager", watch=True)
    _, compiled_cb, _ = run(tmp_path / "compiled", "module", watch=True, fullgraph=True)
    assert eager_cb is not None and compiled_cb is not None
    eager, compiled = eager_cb.last_result, compiled_cb.last_result
    assert eager is not None and compiled is not None
    assert eager.figures.keys() == compiled.figures.keys()
    for key, fig in eager.figures.items():
        for name, value in fig.items():
            other = compiled.figures[key][name]
            assert other == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), (key, name)


def test_compiled_model_nonfinite_loss_is_located(tmp_path: Any) -> None:
    """The NaN replay also runs the compiled model eagerly: it names the module, and adds no graph."""

    class Blowup(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * float("inf")

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = Regressor(nn.Sequential(nn.Linear(16, 8), Blowup(), nn.Linear(8, 1)))
    model.net = torch.compile(model.net, backend="eager", fullgraph=True)
    cb = NormWatch(every_n_steps=50, on_alert="ignore")
    trainer(tmp_path, [cb], max_steps=2).fit(model, loader(regression_data(64)))
    nonfinite = [a for a in cb.alerts if a.kind == "nonfinite"]
    assert nonfinite and nonfinite[0].module == "net.1"
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


def test_wrapper_names_are_stripped() -> None:
    from lightning_normwatch.collect.selection import select_modules

    model = nn.Sequential(torch.compile(mlp(), backend="eager"))
    assert [n for n, _ in select_modules(model)] == ["0.0", "0.1", "0.2", "0.3", "0.4"]
    assert [n for n, _ in select_modules(model, ["0.2"])] == ["0.2"]
