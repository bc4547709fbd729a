"""Property-based: whatever a watched module outputs and whatever the batches are, training completes,
and every tensor NormWatch cannot measure is named once, with the reason, on an info line.

``hypothesis`` draws a module output (nested tuples, lists, dicts and dataclasses of up to two levels,
with ``None``, strings, float, 0-d, empty, complex, integer, boolean, quantized, meta and sparse tensors,
NaN/Inf at any position of a float tensor) and the batches (from batch size 1 up, a last batch smaller
than the rest, NaN/Inf anywhere in the input features). Each example trains a tiny model with a real
``Trainer`` for a few steps with NormWatch logging every step. The default run draws few examples;
``test_odd_outputs_many`` (slow) draws many more.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import warnings
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import Regressor, trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_normwatch.adapters.callback import NormWatch

# leaf kinds: what the odd module builds from its input h ([B, 8])
MEASURED = ("float", "scalar", "nan", "inf")
SKIPPED = {
    "complex": "a complex tensor",
    "int": "an integer tensor",
    "bool": "a boolean tensor",
    "quantized": "a quantized tensor",
    "meta": "a meta tensor",
    "sparse": "a sparse tensor",
}
OTHER = ("empty", "none", "text")  # an empty tensor is measured as numel 0


@dataclasses.dataclass
class Pair:
    first: Any
    second: Any


def _leaf(kind: str, h: torch.Tensor, at: int) -> Any:
    h = h.detach()
    if kind == "float":
        return h * 2
    if kind == "scalar":
        return h.sum()
    if kind in ("nan", "inf"):
        out = h.clone()
        out.view(-1)[at % out.numel()] = math.nan if kind == "nan" else -math.inf
        return out
    if kind == "empty":
        return h[:0]
    if kind == "complex":
        return torch.complex(h, h)
    if kind == "int":
        return h.long()
    if kind == "bool":
        return h > 0
    if kind == "quantized":
        return torch.quantize_per_tensor(h, 0.1, 0, torch.qint8)
    if kind == "meta":
        return torch.empty_like(h, device="meta")
    if kind == "sparse":
        return h.to_sparse()
    return None if kind == "none" else "text"


def _build(recipe: Any, h: torch.Tensor) -> Any:
    if isinstance(recipe, tuple) and recipe[0] == "leaf":
        return _leaf(recipe[1], h, recipe[2])
    shape, parts = recipe
    built = [_build(p, h) for p in parts]
    if shape == "tuple":
        return tuple(built)
    if shape == "list":
        return built
    if shape == "dict":
        return {f"k{i}": b for i, b in enumerate(built)}
    return Pair(built[0], built[1] if len(built) > 1 else None)


def _leaves(recipe: Any, name: str) -> list[tuple[str, str]]:
    """(tensor name, kind) of every leaf, named as NormWatch names parts of an output."""
    if isinstance(recipe, tuple) and recipe[0] == "leaf":
        return [(name, recipe[1])]
    shape, parts = recipe
    if shape == "pair":
        parts = (parts + [("leaf", "none", 0)])[:2]
    out = []
    for i, part in enumerate(parts):
        sub = {"tuple": f"{name}[{i}]", "list": f"{name}[{i}]", "dict": f"{name}.k{i}"}.get(shape)
        out += _leaves(part, sub if sub else f"{name}.{('first', 'second')[i]}")
    return out


leaf = st.tuples(st.just("leaf"), st.sampled_from([*MEASURED, *SKIPPED, *OTHER]), st.integers(0, 1000))
SHAPES = ["tuple", "list", "dict", "pair"]
recipes = st.recursive(
    leaf,
    lambda inner: st.tuples(st.sampled_from(SHAPES), st.lists(inner, min_size=1, max_size=3)),
    max_leaves=6,
).filter(lambda r: _depth(r) <= 2)


def _depth(recipe: Any) -> int:
    if isinstance(recipe, tuple) and recipe[0] == "leaf":
        return 0
    return 1 + max(_depth(p) for p in recipe[1])


class Odd(nn.Module):
    def __init__(self, recipe: Any) -> None:
        super().__init__()
        self.recipe = recipe

    def forward(self, h: torch.Tensor) -> Any:
        return _build(self.recipe, h)


class Net(nn.Module):
    def __init__(self, recipe: Any) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.odd = Odd(recipe)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        self.odd(h)  # its output is only watched
        return self.head(torch.relu(h))


batches = st.tuples(
    st.integers(1, 40),  # samples
    st.integers(1, 16),  # batch size: 1 possible, a smaller last batch whenever it does not divide
    st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from([math.nan, math.inf, -math.inf])), max_size=3),
)


def _check(recipe: Any, data: tuple[int, int, list[tuple[int, float]]]) -> None:
    n, batch_size, bad = data
    torch.manual_seed(0)
    x, y = torch.randn(n, 8), torch.randn(n, 1)
    for at, value in bad:
        x.view(-1)[at % x.numel()] = value
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    steps = min(6, 2 * len(loader))  # two epochs at most: the last (smaller) batch comes round
    nw = NormWatch(every_n_steps=1, warmup_steps=1, reference_steps=2, tensorboard=False)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    log = logging.getLogger("lightning_normwatch")
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tr = trainer(root, [nw], max_steps=steps)
            tr.fit(Regressor(Net(recipe), lr=0.01), loader)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert tr.global_step == steps  # training completed
    skipped_lines = [r.getMessage() for r in records if "is not measured" in r.getMessage()]
    expected = dict(_leaves(recipe, "net.odd"))
    for name, kind in expected.items():
        said = [m for m in skipped_lines if f"`{name}` is not measured" in m]
        if kind in SKIPPED:
            assert len(said) == 1 and SKIPPED[kind] in said[0], (name, kind, skipped_lines)
        else:
            assert said == [], (name, kind, said)
    assert len(skipped_lines) == sum(kind in SKIPPED for kind in expected.values())
    measured = nw.last_result.figures if nw.last_result else {}
    for name, kind in expected.items():
        if kind in ("float", "nan", "inf", "scalar"):
            assert name in measured, (name, sorted(measured))
        elif kind in SKIPPED:
            assert name not in measured


pytestmark = pytest.mark.filterwarnings("ignore")
FAST = settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
MANY = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@FAST
@given(recipes, batches)
def test_odd_outputs_and_batches(recipe: Any, data: Any) -> None:
    _check(recipe, data)


@pytest.mark.slow
@MANY
@given(recipes, batches)
def test_odd_outputs_many(recipe: Any, data: Any) -> None:
    _check(recipe, data)
