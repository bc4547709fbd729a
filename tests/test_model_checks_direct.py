"""The set-up checks (``judge/model_checks.py``) and the overflow origin (``judge/overflow.py``), called
directly on small modules and hand-made data flows: every placement pattern, the frozen-norm cases,
``not_run`` at the third logging step, each check reported once, and the exploded-scale search."""

from __future__ import annotations

import math

import pytest
from torch import nn

from lightning_normwatch.judge.model_checks import (
    NOT_RUN_AFTER,
    PATTERNS,
    ModelChecks,
    base_name,
    frozen_norm_alerts,
    is_norm,
    not_run_alerts,
    placement_alerts,
    placement_of,
)
from lightning_normwatch.judge.overflow import EXPLODED_FACTOR, first_exploded, overflow_alert


class ScaleNorm(nn.Module):
    """A custom normalization layer known only by its class name."""

    def forward(self, x):  # noqa: ANN001, ANN201
        return x


def test_base_name_and_is_norm() -> None:
    assert [base_name(k) for k in ("a.b#3", "rnn@2", "lstm[0][1]", "plain")] == ["a.b", "rnn", "lstm", "plain"]
    assert base_name("x#1@2") == "x"
    assert is_norm(nn.BatchNorm1d(2)) and is_norm(nn.LayerNorm(2)) and is_norm(nn.GroupNorm(1, 2))
    assert is_norm(ScaleNorm()) and not is_norm(nn.Linear(2, 2)) and not is_norm(None)


def test_frozen_norm_while_the_model_trains() -> None:
    net = nn.Sequential(
        nn.Linear(2, 4), nn.BatchNorm1d(4), nn.BatchNorm1d(4), nn.BatchNorm1d(4, track_running_stats=False)
    )
    net.train()
    net[1].eval()
    (a,) = frozen_norm_alerts(net, dict(net.named_modules()), step=4)
    assert (a.step, a.module, a.kind, a.severity, a.value, a.threshold) == (4, "1", "frozen_norm", "warning", 1.0, 0.0)
    assert a.message.startswith("`1` (BatchNorm1d) is in eval mode during training: it normalizes with its stored")
    assert "norm layers are frozen" not in a.message
    net.eval()  # the whole model: layers 1 and 2 (3 keeps no running statistics)
    first, second = frozen_norm_alerts(net, dict(net.named_modules()), step=5)
    assert (first.module, second.module, first.value, second.value) == ("1", "2", 2.0, 2.0)
    assert "(2 norm layers are frozen; this is the first): the whole model is in eval mode" in first.message
    assert "norm layers are frozen" not in second.message
    net.train()
    assert frozen_norm_alerts(net, dict(net.named_modules()), step=6) == []


def test_not_run_names_each_module_that_did_not_run() -> None:
    watched = {"a": nn.Linear(2, 2), "b": nn.ReLU(), "c": nn.Tanh()}
    alerts = not_run_alerts(watched, {"b"}, step=7)
    assert [(x.module, x.kind, x.severity, x.step) for x in alerts] == [
        ("a", "not_run", "info", 7),
        ("c", "not_run", "info", 7),
    ]
    assert alerts[0].message.startswith("`a` (Linear) is watched but has not run")


def _modules(**named: nn.Module) -> dict[str, nn.Module]:
    return dict(named)


def test_placement_before_and_after_the_activation() -> None:
    modules = _modules(fc=nn.Linear(2, 2), bn=nn.BatchNorm1d(2), act=nn.ReLU(), bn2=nn.BatchNorm1d(2))
    order = ["fc", "bn", "act", "bn2"]
    edges = {"bn": "fc", "act": "bn", "bn2": "act"}
    roles = {"act": "activation"}
    consumers = {"fc": ["bn"], "bn": ["act"], "act": ["bn2"]}
    assert placement_of("bn", order, edges, consumers, roles, modules) == "before"
    assert placement_of("bn2", order, edges, consumers, roles, modules) == "after"
    bounded = {"act": "bounded"}
    assert placement_of("bn2", order, edges, consumers, bounded, modules) == "after"
    assert placement_of("bn", order, edges, consumers, bounded, modules) == "before"


def test_placement_of_transformer_layers_follows_norm_first() -> None:
    for norm_first, pattern in ((True, "pre-norm"), (False, "post-norm")):
        layer = nn.TransformerEncoderLayer(8, 2, 16, norm_first=norm_first)
        modules = {"layer": layer, "layer.norm1": layer.norm1}
        assert placement_of("layer.norm1", ["layer.norm1"], {}, {}, {}, modules) == pattern


def test_placement_in_a_residual_block() -> None:
    """GPT-2-like: ln_1 first in its block (pre-norm), ln_2 on the residual stream feeding its own block's mlp
    (pre-norm), ln_f last (final); BERT-like: a norm on the residual sum whose output leaves the block."""
    ln = nn.LayerNorm(2)
    modules = {"h": nn.Module(), "h.ln_1": ln, "h.attn": nn.Linear(2, 2), "h.ln_2": ln, "h.mlp": nn.Linear(2, 2)}
    modules |= {"ln_f": ln, "out": nn.Module(), "out.LayerNorm": ln, "next": nn.Linear(2, 2), "head": nn.Linear(2, 2)}
    order = ["h.ln_1", "h.attn", "h.ln_2", "h.mlp", "ln_f", "head"]
    edges = {"h.attn": "h.ln_1", "h.mlp": "h.ln_2", "head": "ln_f"}
    consumers = {"h.ln_1": ["h.attn"], "h.ln_2": ["h.mlp"], "ln_f": ["head"]}
    assert placement_of("h.ln_1", order, edges, consumers, {}, modules) == "pre-norm"
    assert placement_of("h.ln_2", order, edges, consumers, {}, modules) == "pre-norm"
    assert placement_of("ln_f", order, edges, consumers, {}, modules, last=True) == "final"
    assert placement_of("ln_f", order, edges, consumers, {}, modules, last=False) == "post-norm"
    # BERT-like: a dense layer runs first in the block, the norm of the residual sum feeds the next block
    bert = ["out.dense", "out.LayerNorm", "next"]
    modules["out.dense"] = nn.Linear(2, 2)
    assert placement_of("out.LayerNorm", bert, {"next": "out.LayerNorm"}, {"out.LayerNorm": ["next"]}, {}, modules) == (
        "post-norm"
    )
    # a norm whose output nothing watched consumes, not the last: next to no activation
    assert placement_of("out.LayerNorm", bert, {}, {}, {}, modules) == "other"
    # produced by a watched linear layer, no activation around: other
    assert placement_of("out.LayerNorm", bert, {"out.LayerNorm": "out.dense"}, {}, {}, modules) == "other"


def test_placement_summary_counts_and_redundant_bias() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 4, bias=False), nn.BatchNorm1d(4))
    net.add_module("5", nn.ReLU())
    modules = dict(net.named_modules())
    order = [str(i) for i in range(6)]
    edges = {str(i): str(i - 1) for i in range(1, 6)}
    roles = {"2": "activation", "5": "activation"}
    summary, bias = placement_alerts(order, edges, roles, modules, step=3)
    assert (summary.kind, summary.module, summary.severity, summary.value, summary.step) == (
        "norm_placement",
        "1",
        "info",
        2.0,
        3,
    )
    assert summary.message.startswith(
        "2 normalization layers (BatchNorm1d): 2 before their activation (linear/conv -> norm -> activation): "
        "`1` (BatchNorm1d), `4` (BatchNorm1d). Information:"
    )
    assert (bias.kind, bias.module, bias.severity) == ("redundant_bias", "1", "info")
    assert bias.message.startswith("`0` (Linear) has a bias and feeds `1` (BatchNorm1d), which subtracts")


def test_placement_summary_of_one_layer_and_of_many() -> None:
    one = nn.Sequential(nn.ReLU(), nn.LayerNorm(4))
    (summary,) = placement_alerts(["0", "1"], {"1": "0"}, {"0": "activation"}, dict(one.named_modules()), step=0)
    assert summary.message.startswith("1 normalization layer (LayerNorm): 1 after their activation")
    assert summary.value == 1.0
    # three norms of one pattern: two named, then "..."; a norm seen twice (called twice) counted once
    many = nn.Sequential(nn.ReLU(), nn.LayerNorm(4), nn.LayerNorm(4), nn.LayerNorm(4), nn.ReLU())
    order = ["0", "1", "2", "3", "1#2", "4"]
    edges = {"1": "0", "2": "0", "3": "0", "1#2": "0"}
    (summary,) = placement_alerts(order, edges, {"0": "activation"}, dict(many.named_modules()), step=0)
    assert "3 after their activation (activation -> norm): `1` (LayerNorm), `2` (LayerNorm) ...." in summary.message
    assert summary.message.startswith("3 normalization layers (LayerNorm)")
    # no normalization layer: nothing
    assert placement_alerts(["0"], {}, {}, {"0": nn.Linear(2, 2)}, step=0) == []
    # two types, sorted; an unknown producer name is shown without a type
    mixed = {"a": nn.ReLU(), "b": nn.LayerNorm(2), "c": nn.BatchNorm1d(2)}
    (summary,) = placement_alerts(["b", "c"], {"b": "x", "c": "x"}, {}, mixed, step=0)
    assert summary.message.startswith("2 normalization layers (BatchNorm1d, LayerNorm)")
    assert set(PATTERNS) == {"pre-norm", "post-norm", "before", "after", "final", "other"}


def test_model_checks_report_each_check_once_and_not_run_at_the_third_logging_step() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.ReLU())
    net.add_module("unused", nn.Linear(2, 2))
    modules = dict(net.named_modules())
    watched = {k: v for k, v in modules.items() if k}
    checks = ModelChecks(watched, modules)
    order, edges, roles = ["0", "1", "2"], {"1": "0", "2": "1"}, {"2": "activation"}
    first = checks.at_logging_step(net, 0, order, set(), edges, roles)
    assert [(a.module, a.kind) for a in first] == [("1", "norm_placement"), ("1", "redundant_bias")]
    assert checks.at_logging_step(net, 1, order, set(), edges, roles) == []
    third = checks.at_logging_step(net, 2, order, {"extra"}, edges, roles)
    assert NOT_RUN_AFTER == 3 and [(a.module, a.kind, a.step) for a in third] == [("unused", "not_run", 2)]
    assert checks.at_logging_step(net, 3, order, set(), edges, roles) == []
    state = checks.state()
    assert state["evaluations"] == 4 and ["unused", "not_run"] in state["reported"]
    again = ModelChecks(watched, modules)
    again.load(state)
    assert again.reported == checks.reported and again.evaluations == 4
    again.load({})
    assert again.reported == set() and again.evaluations == 0


def test_a_module_that_ran_is_not_reported_and_no_placement_without_order() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    modules = dict(net.named_modules())
    checks = ModelChecks({"0": net[0], "1": net[1]}, modules)
    for step in range(3):
        out = checks.at_logging_step(net, step, [] if step < 2 else ["0"], {"1"} if step == 0 else set(), {}, {})
    assert out == [] and checks.ran == {"0", "1"}
    checks = ModelChecks({"0": net[0]}, modules)
    assert checks.at_logging_step(net, 0, [], set(), {}, {}) == []
    assert ("", "norm_placement") not in checks.reported


def test_frozen_norm_again_after_it_cleared() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.BatchNorm1d(2))
    checks = ModelChecks({}, dict(net.named_modules()))
    net.train()
    net[1].eval()
    assert [a.module for a in checks.frozen(net, 1)] == ["1"]
    net[2].eval()
    assert [a.module for a in checks.frozen(net, 2)] == ["2"]  # still frozen: 1 not again
    net[1].train()
    assert checks.frozen(net, 3) == [] and ("2", "frozen_norm") in checks.reported
    assert ("1", "frozen_norm") not in checks.reported
    net[1].eval()
    assert [a.module for a in checks.frozen(net, 4)] == ["1"]


# ------------------------------------------------------------------ overflow origin
def test_first_exploded_against_its_own_scale_at_the_factor() -> None:
    base = {"a": 1.0, "b": 1.0}
    assert first_exploded([("a", EXPLODED_FACTOR * 0.999), ("b", 1.0)], base) is None
    assert first_exploded([("a", EXPLODED_FACTOR), ("b", 1e9)], base) == ("a", EXPLODED_FACTOR, "its scale before")
    assert first_exploded([("a", 5.0), ("b", 1e9)], base) == ("b", 1e9, "its scale before")


def test_first_exploded_against_the_layers_before_it() -> None:
    order = [("a", 2.0), ("b", 0.5), ("c", 50.0), ("d", 60.0)]
    assert first_exploded(order, {}) == ("c", 100.0, "the layers before it")  # 50 / 0.5: the smallest before
    assert first_exploded([("a", 2.0), ("b", 199.0)], {}) is None  # 99.5x: below the factor
    # non-finite, zero and baseline-less tensors are skipped or compared with their neighbours
    order = [("x", math.nan), ("y", 0.0), ("a", 1.0), ("b", 150.0)]
    assert first_exploded(order, {"a": math.nan, "b": 0.0}) == ("b", 150.0, "the layers before it")
    assert first_exploded([("a", 1e6)], {}) is None  # nothing before it
    # a tensor with a baseline still sets the smallest RMS for the ones after it
    assert first_exploded([("a", 1.0), ("b", 120.0)], {"a": 1.0}) == ("b", 120.0, "the layers before it")


def test_overflow_alert_names_the_origin_and_its_figures() -> None:
    a = overflow_alert(12, "net.4", "Linear", 3.2e5, 4.5e3, "its scale before")
    assert (a.step, a.module, a.kind, a.severity, a.value, a.threshold) == (
        12,
        "net.4",
        "nonfinite",
        "error",
        4.5e3,
        EXPLODED_FACTOR,
    )
    assert "overflowed to inf/NaN at step 12" in a.message
    assert "`net.4` (Linear) is the first module whose scale exploded (RMS 3.2e+05, 4.5e+03x its scale before)" in (
        a.message
    )


@pytest.mark.parametrize("value", [0.0, -1.0, math.inf])
def test_first_exploded_ignores_rms_that_is_not_a_positive_finite_number(value: float) -> None:
    assert first_exploded([("a", 1.0), ("b", value), ("c", 1.0)], {}) is None


def test_placement_in_nested_blocks_and_at_the_top_level() -> None:
    ln, fc = nn.LayerNorm(2), nn.Linear(2, 2)
    modules = {"enc": nn.Module(), "enc.b": nn.Module(), "enc.b.norm": ln, "enc.b.fc": fc, "x": fc, "top": ln}
    # first in its block (enc.b, not enc), fed by a linear layer outside it: pre-norm
    order = ["x", "enc.b.norm", "enc.b.fc"]
    edges = {"enc.b.norm": "x", "enc.b.fc": "enc.b.norm"}
    consumers = {"x": ["enc.b.norm"], "enc.b.norm": ["enc.b.fc"]}
    assert placement_of("enc.b.norm", order, edges, consumers, {}, modules) == "pre-norm"
    # a norm at the top level has no block: placed by its data flow, even when it runs first
    order = ["top", "x"]
    assert placement_of("top", order, {"x": "top"}, {"top": ["x"]}, {}, modules) == "post-norm"


def test_placement_summary_of_two_patterns_with_the_final_norm() -> None:
    ln = nn.LayerNorm(2)
    modules = {
        "h": nn.Module(),
        "h.ln_1": ln,
        "h.attn": nn.Linear(2, 2),
        "ln_f": nn.LayerNorm(2),
        "head": nn.Linear(2, 2),
    }
    order = ["h.ln_1", "h.attn", "ln_f", "head"]
    edges = {"h.attn": "h.ln_1", "head": "ln_f"}
    (summary,) = placement_alerts(order, edges, {}, modules, step=8)
    assert (summary.module, summary.step, summary.value) == ("h.ln_1", 8, 2.0)
    assert summary.message.startswith(
        "2 normalization layers (LayerNorm): 1 pre-norm (each block normalizes its input: x + f(norm(x))): "
        "`h.ln_1` (LayerNorm); 1 final (the last norm, on a residual stream, before the head): `ln_f` (LayerNorm). "
    )


def test_a_batchnorm_without_a_producer_and_the_redundant_bias_alert() -> None:
    net = nn.Sequential(nn.BatchNorm1d(2), nn.Linear(2, 2), nn.BatchNorm1d(2))
    modules = dict(net.named_modules())
    summary, bias = placement_alerts(["0", "1", "2"], {"1": "0", "2": "1"}, {}, modules, step=6)
    assert summary.module == "0" and (bias.step, bias.module, bias.kind, bias.value, bias.threshold) == (
        6,
        "2",
        "redundant_bias",
        1.0,
        0.0,
    )
    assert not_run_alerts({"a": nn.ReLU()}, set(), step=2)[0].value == 1.0


def test_model_checks_combine_frozen_placement_and_not_run_at_one_step() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2), nn.ReLU(), nn.Linear(2, 2), nn.BatchNorm1d(2))
    net.add_module("unused", nn.Linear(2, 2))
    modules = dict(net.named_modules())
    checks = ModelChecks({"unused": net.unused, "1": net[1]}, modules)
    net.train()
    net[4].eval()
    first = checks.at_logging_step(net, 10, ["0", "1", "2"], set(), {"1": "0", "2": "1"}, {"2": "activation"})
    assert [(a.step, a.module, a.kind) for a in first] == [(10, "4", "frozen_norm"), (10, "1", "norm_placement")]
    # the placement is summarized once per fit: a norm seen only later is not reported then
    later = ["0", "1", "2", "3", "4"]
    edges = {"1": "0", "2": "1", "3": "2", "4": "3"}
    net[4].train()
    assert checks.at_logging_step(net, 11, later, set(), edges, {"2": "activation"}) == []
    net[4].eval()  # frozen again at the third logging step, with the module that never ran
    third = checks.at_logging_step(net, 12, later, set(), edges, {})
    assert [(a.step, a.module, a.kind) for a in third] == [(12, "4", "frozen_norm"), (12, "unused", "not_run")]


def test_no_normalization_layer_at_the_first_logging_step_means_no_summary_later() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    checks = ModelChecks({}, dict(net.named_modules()))
    assert checks.at_logging_step(net, 0, ["0"], set(), {}, {}) == []
    assert checks.at_logging_step(net, 1, ["0", "1"], set(), {"1": "0"}, {}) == []


def test_first_exploded_divides_by_the_baseline() -> None:
    assert first_exploded([("a", 150.0)], {"a": 2.0}) is None  # 75x its own scale
    assert first_exploded([("a", 300.0)], {"a": 2.0}) == ("a", 150.0, "its scale before")


def test_a_nested_transformer_layer_decides_its_norms_placement() -> None:
    layer = nn.TransformerEncoderLayer(8, 2, 16, norm_first=True)
    modules = {"encoder": nn.Module(), "encoder.layer": layer, "encoder.layer.norm1": layer.norm1}
    assert placement_of("encoder.layer.norm1", ["encoder.layer.norm1"], {}, {}, {}, modules) == "pre-norm"
