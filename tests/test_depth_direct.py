"""The depth and collapse rules (``judge/depth.py``, ``judge/collapse.py``) called directly: the figures the
rules compare, the origin and hints in their messages, the layer that lost the signal, growth that is still
typical of the network, and the edges that mutation testing (``make mutate``) found unpinned."""

from __future__ import annotations

import math

import pytest

from lightning_normwatch.collect.info import TensorInfo
from lightning_normwatch.config import Thresholds
from lightning_normwatch.judge.alerts import Alert
from lightning_normwatch.judge.collapse import collapse_alerts, collapse_ratio, spreads
from lightning_normwatch.judge.depth import depth_alerts, depth_ratios, origin_hint, origin_of, rms_of, small_growth

TH = Thresholds()


def _seq(scales: list[float], role: str = "preact", type_name: str = "Linear", **extra: dict[str, float]) -> list:
    out = []
    for i, s in enumerate(scales):
        fig = {"mean": 0.0, "std": s, "numel": 512.0, **extra.get(f"net.{i}", {})}
        out.append((TensorInfo(f"net.{i}", role, type_name, 32), fig))
    return out


def test_origin_of_reads_depth_messages_only() -> None:
    message = "... 279x below the 50 of `net.40` (Linear) ..."
    assert origin_of(Alert(5, "net.41", "vanishing", "warning", 279.0, 8.0, message)) == "net.40"
    up = "... 40x above the 0.1 of `emb` (Embedding) ..."
    assert origin_of(Alert(5, "net.41", "exploding", "warning", 40.0, 30.0, up)) == "emb"
    assert origin_of(Alert(5, "net.41", "scale_drift", "warning", 279.0, 8.0, message)) is None
    assert origin_of(Alert(5, "net.41", "vanishing", "warning", 279.0, 8.0, "no origin named")) is None


def test_rms_of() -> None:
    assert rms_of({"mean": 3.0, "std": 4.0}) == 5.0
    assert math.isnan(rms_of({"std": 4.0})) and math.isnan(rms_of({"mean": 3.0}))
    assert math.isnan(rms_of({"mean": math.inf, "std": 1.0}))


def test_depth_ratios_both_ways() -> None:
    down = _seq([2.0**-i for i in range(8)])
    assert [round(x, 6) for x in depth_ratios(down)] == [16.0, 1.0]
    up = _seq([2.0**i for i in range(8)])
    assert [round(x, 6) for x in depth_ratios(up)] == [1.0, 16.0]
    assert depth_ratios(_seq([1.0, 2.0])) == (1.0, 1.0)  # too short to judge


def test_origin_hint_branches() -> None:
    assert origin_hint({"mean": 0.5, "std": 2.0}) == "its mean is 0.5 and its std 2"
    # |mean| exactly 3 std: not yet a mean that dominates
    assert origin_hint({"mean": 3.0, "std": 1.0}) == "its mean is 3 and its std 1"
    hint = origin_hint({"mean": -3.5, "std": 1.0})
    assert (
        hint == "its RMS is its mean (-3.5, std 1: a bias or an offset that jumped, not weights initialised too small)"
    )
    assert origin_hint({"mean": math.nan, "std": math.nan}) == ""
    # the change since the previous logging step: more than 2x either way
    assert origin_hint({"mean": 0.0, "std": 4.0}, 2.0) == "its mean is 0 and its std 4"
    assert origin_hint({"mean": 0.0, "std": 1.0}, 2.0) == "its mean is 0 and its std 1"
    grew = origin_hint({"mean": 0.0, "std": 4.5}, 2.0)
    assert grew == (
        "its mean is 0 and its std 4.5, and it was 2 at the previous logging step (the change began during "
        "training, not at initialization)"
    )
    assert "it was 2 at the previous" in origin_hint({"mean": 0.0, "std": 0.9}, 2.0)
    assert "previous" not in origin_hint({"mean": 0.0, "std": 9.0}, 0.0)


def test_vanishing_message_figures_and_causes() -> None:
    (a,), _ = depth_alerts(_seq([1.0, 2.0, 0.1, 0.1, 0.05, 0.1]), TH, step=3)
    assert (a.step, a.module, a.kind, a.value, a.threshold) == (3, "net.2", "vanishing", pytest.approx(20.0), 8.0)
    assert a.message.startswith(
        "The signal vanishes with depth from `net.2` (Linear) on: the RMS of this and the 3 watched tensors after "
        "it is at most 0.1, 20x below the 2 of `net.1` (Linear) (threshold 8x), and no later layer restores it; "
        "`net.1` (Linear): its mean is 0 and its std 2. Usual causes: weights initialised too small"
    )
    # during training (the origin's scale changed since the previous logging step)
    (b,), _ = depth_alerts(_seq([1.0, 2.0, 0.1, 0.1, 0.05, 0.1]), TH, step=3, previous={"net.1": 0.5})
    assert "Usual causes: the scale was lost during training or by a shifted mean" in b.message
    # a mean that dominates the origin's RMS points to a bias too
    seq = _seq([1.0, 2.0, 0.1, 0.1, 0.05, 0.1], **{"net.1": {"mean": 9.0, "std": 0.5}})
    (c,), _ = depth_alerts(seq, TH, step=3)
    assert "Usual causes: the scale was lost during training or by a shifted mean" in c.message
    # the out-of-range layer normalizes: the layers before it are too large
    seq = [(TensorInfo("ln", "preact", "LayerNorm", 32), f) if info.name == "net.2" else (info, f) for info, f in seq]
    (d,), _ = depth_alerts(seq, TH, step=3)
    assert d.module == "ln" and "Usual causes: `ln` (LayerNorm) normalizes to unit scale" in d.message


def test_exploding_message_figures_and_causes() -> None:
    (a,), _ = depth_alerts(_seq([1.0, 0.5, 20.0, 20.0, 40.0, 20.0]), TH, step=3)
    assert (a.module, a.kind, a.value, a.threshold) == ("net.2", "exploding", pytest.approx(40.0), 30.0)
    assert a.message.startswith(
        "The signal explodes with depth from `net.2` (Linear) on: the RMS of this and the 3 watched tensors after "
        "it is at least 20, 40x above the 0.5 of `net.1` (Linear) (threshold 30x); `net.2` (Linear): its mean is 0 "
        "and its std 20. Usual causes: weights initialised too large"
    )
    (b,), _ = depth_alerts(_seq([1.0, 0.5, 20.0, 20.0, 40.0, 20.0]), TH, step=3, previous={"net.2": 1.0})
    assert "Usual causes: the scale grew during training" in b.message
    seq = _seq([1.0, 0.5, 20.0, 20.0, 40.0, 20.0], **{"net.2": {"mean": 20.0, "std": 1.0}})
    (c,), _ = depth_alerts(seq, TH, step=3)
    assert "Usual causes: the scale grew during training" in c.message


def test_vanishing_is_put_on_the_activation_that_outputs_only_zeros() -> None:
    seq = _seq([1.0, 2.0, 0.1, 0.1, 0.05, 0.1])
    relu = (TensorInfo("act", "activation", "ReLU", 32), {"mean": 0.0, "std": 0.0, "max_abs": 0.0, "numel": 512.0})
    seq.insert(2, relu)  # between the origin net.1 and the first out-of-range net.2 (left out of the profile)
    (a,), checked = depth_alerts(seq, TH, step=3)
    assert a.module == "act" and a.message.endswith(" `act` (ReLU) outputs only zeros: the signal is lost there.")
    assert a.message.startswith("The signal vanishes with depth from `act` (ReLU) on: the RMS of this and the 3")
    assert ("act", "vanishing") in checked and ("net.2", "vanishing") in checked
    for role in ("bounded", "other"):
        alt = [(TensorInfo("act", role, "ReLU", 32), relu[1]) if i.name == "act" else (i, f) for i, f in seq]
        assert depth_alerts(alt, TH, step=3)[0][0].module == "act"
    for info, fig in ((TensorInfo("act", "preact", "Linear", 32), relu[1]), (relu[0], {**relu[1], "max_abs": 1e-3})):
        alt = [(info, fig) if i.name == "act" else (i, f) for i, f in seq]
        assert depth_alerts(alt, TH, step=3)[0][0].module == "net.2"
    before_origin = [relu, *_seq([1.0, 2.0, 0.1, 0.1, 0.05, 0.1])]  # not between origin and stop: not it
    assert depth_alerts(before_origin, TH, step=3)[0][0].module == "net.2"


def test_no_depth_alert_checks_every_tensor() -> None:
    seq = _seq([1.0] * 6)
    alerts, checked = depth_alerts(seq, TH, step=0)
    assert alerts == [] and checked == {(f"net.{i}", k) for i in range(6) for k in ("vanishing", "exploding")}


def test_small_growth() -> None:
    grew = Alert(5, "attn", "scale_drift", "warning", 6.0, 4.0, "grew")
    reference = {"a": 1.0, "b": 0.5, "attn": 0.017, "c": math.nan, "d": 0.0}
    assert small_growth([grew], {"attn": {"mean": 0.0, "std": 0.1, "std_log_ratio": 1.8}}, reference) == [grew]
    # at twice the median (the median of 0.017, 0.5 and 1 is 0.5): no longer small
    assert small_growth([grew], {"attn": {"mean": 0.0, "std": 1.0, "std_log_ratio": 1.8}}, reference) == []
    assert small_growth([grew], {"attn": {"mean": 0.0, "std": 0.99, "std_log_ratio": 1.8}}, reference) == [grew]
    # shrinking, another kind, no figures, no reference: not small growth
    assert small_growth([grew], {"attn": {"mean": 0.0, "std": 0.1, "std_log_ratio": -1.8}}, reference) == []
    assert small_growth([grew], {"attn": {"mean": 0.0, "std": 0.1}}, reference) == []
    other = Alert(5, "attn", "mean_drift", "warning", 6.0, 4.0, "moved")
    assert small_growth([other], {"attn": {"mean": 0.0, "std": 0.1, "std_log_ratio": 1.8}}, reference) == []
    assert small_growth([grew], {}, reference) == []
    assert small_growth([grew], {"attn": {"mean": 0.0, "std": 0.1, "std_log_ratio": 1.8}}, {"a": 0.0}) == []
    # the median of an even count is the upper middle value: 0.2, 0.4, 1.0, 3.0 -> 1.0
    even = {"a": 0.2, "b": 0.4, "c": 1.0, "e": 3.0}
    assert small_growth([grew], {"attn": {"mean": 0.0, "std": 1.9, "std_log_ratio": 1.0}}, even) == [grew]


# ------------------------------------------------------------------ collapse
def _spread(values: list[float], numel: float = 4096.0) -> list:
    return [
        (TensorInfo(f"fc{i}", "preact", "Linear", 64), {"batch_spread": s, "numel": numel})
        for i, s in enumerate(values)
    ]


def test_spreads_skip_small_tensors_and_missing_figures() -> None:
    seq = _spread([0.9, 0.5])
    seq.append((TensorInfo("tiny", "preact", "Linear", 1), {"batch_spread": 0.1, "numel": 31.0}))
    seq.append((TensorInfo("edge", "preact", "Linear", 1), {"batch_spread": 0.1, "numel": 32.0}))
    seq.append((TensorInfo("none", "preact", "Linear", 1), {"numel": 64.0}))
    seq.append((TensorInfo("zero", "preact", "Linear", 1), {"batch_spread": 0.0}))
    seq.append((TensorInfo("last", "preact", "Linear", 1), {"batch_spread": 0.2}))
    assert [(i.name, round(math.exp(x), 6)) for i, x in spreads(seq)] == [
        ("fc0", 0.9),
        ("fc1", 0.5),
        ("edge", 0.1),
        ("last", 0.2),
    ]


def test_collapse_ratio() -> None:
    assert collapse_ratio(_spread([10.0**-i for i in range(6)])) == pytest.approx(100.0)
    assert collapse_ratio(_spread([1.0] * 6)) == 1.0
    assert collapse_ratio(_spread([1e-3, 1.0, 1.0, 1.0, 1.0])) == 1.0  # rising: no fall


def test_collapse_at_exactly_the_threshold_is_quiet() -> None:
    seq = _spread([1.0, 1.0, 2.0**-10, 2.0**-10, 2.0**-10, 2.0**-10])
    assert collapse_alerts(seq, Thresholds(collapse=1024.0), step=0)[0] == []
    (a,), _ = collapse_alerts(seq, Thresholds(collapse=1000.0), step=0)
    assert (a.module, a.value, a.threshold) == ("fc2", pytest.approx(1024.0), 1000.0)


def test_collapse_message_names_peak_start_and_last() -> None:
    spread = [0.9, 0.9, 0.3, 1e-2, 3e-4, 1e-5, 3e-7, 1e-8, 2e-8]
    (a,), checked = collapse_alerts(_spread(spread), TH, step=4)
    assert (a.step, a.module, a.kind, a.severity) == (4, "fc2", "collapse", "warning")
    assert "falls from 0.9 at `fc0` (Linear) to 0.3 here and 2e-08 at `fc8` (Linear)" in a.message
    assert "(threshold 1000x)" in a.message and checked == {(f"fc{i}", "collapse") for i in range(9)}
    # the fall starts where the spread drops below half of the peak for good: exactly half is not below
    (b,), _ = collapse_alerts(_spread([0.8, 0.4, 1e-4, 1e-5, 1e-6, 1e-7]), TH, step=4)
    assert b.module == "fc2"


def test_an_active_collapse_stays_on_its_tensor() -> None:
    spread = [0.9, 0.9, 0.3, 1e-2, 3e-4, 1e-5, 3e-7, 1e-8, 1e-8]
    seq = _spread(spread)
    (a,), _ = collapse_alerts(seq, TH, step=5, active={("fc3", "collapse")})
    assert a.module == "fc3"
    (b,), _ = collapse_alerts(seq, TH, step=5, active={("fc3", "collapse"), ("fc4", "collapse")})
    assert b.module == "fc3"
    # an active alert on the peak itself, or past the first out-of-range tensor, does not hold it
    (c,), _ = collapse_alerts(seq, TH, step=5, active={("fc0", "collapse")})
    assert c.module == "fc2"


def test_small_tensors_are_left_out_of_the_depth_profile() -> None:
    seq = _seq([1.0, 2.0, 0.1, 0.1, 0.1, 0.1])
    tiny = (TensorInfo("tiny", "preact", "Linear", 1), {"mean": 0.0, "std": 50.0, "numel": 31.0})
    seq.insert(3, tiny)
    (a,), _ = depth_alerts(seq, TH, step=0)
    assert (a.module, a.value) == ("net.2", pytest.approx(20.0))
    edge = (TensorInfo("edge", "preact", "Linear", 1), {"mean": 0.0, "std": 50.0, "numel": 32.0})
    seq[3] = edge  # from 32 values on it counts, and restores the signal
    assert depth_alerts(seq, TH, step=0)[0] == []


def test_the_signal_lost_at_the_second_tensor() -> None:
    (a,), _ = depth_alerts(_seq([1.0, 0.01, 0.01, 0.01, 0.01]), TH, step=0)
    assert (a.module, a.value) == ("net.1", pytest.approx(100.0))


def test_depth_and_collapse_ratios_below_e() -> None:
    assert [round(x, 6) for x in depth_ratios(_seq([1.0, 1.0, 0.5, 0.5, 0.5, 0.5]))] == [2.0, 1.0]
    assert collapse_ratio(_spread([1.0, 1.0, 0.5, 0.5, 0.5, 0.5])) == pytest.approx(2.0)


def test_vanishing_at_exactly_the_threshold_is_quiet() -> None:
    seq = _seq([1.0, 1.0, 2.0**-10, 2.0**-10, 2.0**-10, 2.0**-10])
    assert depth_alerts(seq, Thresholds(vanishing=1024.0), step=0)[0] == []
    assert len(depth_alerts(seq, Thresholds(vanishing=1000.0), step=0)[0]) == 1


def test_the_zero_activation_right_before_the_origin_is_not_where_the_signal_was_lost() -> None:
    seq = _seq([1.0, 2.0, 0.1, 0.1, 0.05, 0.1])
    relu = (TensorInfo("act", "activation", "ReLU", 32), {"mean": 0.0, "std": 0.0, "max_abs": 0.0, "numel": 512.0})
    seq.insert(1, relu)  # between net.0 and the origin net.1
    (a,), _ = depth_alerts(seq, TH, step=0)
    assert a.module == "net.2" and a.message.startswith("The signal vanishes with depth from `net.2`")


def test_origin_hint_with_missing_figures_and_a_mean_between_one_and_three_stds() -> None:
    assert origin_hint({"std": 2.0}) == "its mean is nan and its std 2"
    assert origin_hint({"mean": 2.0}) == ""
    assert origin_hint({"mean": 5.0, "std": 2.0}) == "its mean is 5 and its std 2"


def test_an_active_depth_alert_stays_on_its_tensor_while_above_the_clearing_level() -> None:
    seq = _seq([1.0, 2.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    (a,), _ = depth_alerts(seq, TH, step=0, active={("net.3", "vanishing")})
    assert (a.module, a.severity) == ("net.3", "warning")
    assert a.message.startswith("The signal vanishes with depth from `net.3` (Linear) on")
    seq = _seq([1.0, 2.0, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1])  # net.2 is 4x below: under 80 % of the threshold
    (b,), _ = depth_alerts(seq, TH, step=0, active={("net.2", "vanishing")})
    assert b.module == "net.3"
    # 7x below (between 80 % of the threshold and the threshold): no alert, active or not (the active one
    # only keeps its place while the signal is out of range)
    seq = _seq([1.0, 1.0, 1 / 7, 1 / 7, 1 / 7, 1 / 7])
    assert depth_alerts(seq, TH, step=0)[0] == []
    assert depth_alerts(seq, TH, step=0, active={("net.2", "vanishing")})[0] == []


def test_an_exploding_alert_leaves_the_vanishing_checks_in_place() -> None:
    (a,), checked = depth_alerts(_seq([1.0, 0.5, 20.0, 20.0, 40.0, 20.0]), TH, step=3)
    assert a.kind == "exploding" and a.severity == "warning"
    assert {(f"net.{i}", "vanishing") for i in range(6)} <= checked


def test_small_growth_median_of_the_positive_finite_reference() -> None:
    grew = Alert(5, "attn", "scale_drift", "warning", 6.0, 4.0, "grew")
    fig = {"attn": {"mean": 0.0, "std": 3.0, "std_log_ratio": 1.0}}
    assert small_growth([grew], fig, {"a": 1.0, "b": 0.0, "c": 0.0, "x": 2.0}) == [grew]  # median 2: 3 < 4
    fig = {"attn": {"mean": 0.0, "std": 5.0, "std_log_ratio": 1.0}}
    assert small_growth([grew], fig, {"a": 1.0, "b": 2.0, "c": math.inf, "d": math.inf}) == []


def test_an_active_collapse_on_the_first_out_of_range_tensor_holds() -> None:
    spread = [0.9, 0.9, 0.3, 1e-2, 3e-4, 1e-5, 3e-7, 1e-8, 1e-8]
    (a,), _ = collapse_alerts(_spread(spread), TH, step=5, active={("fc4", "collapse")})
    assert a.module == "fc4"


def test_an_active_depth_alert_at_exactly_the_clearing_level_moves() -> None:
    seq = _seq([1.0, 1.0, 0.125, 0.05, 0.05, 0.05, 0.05])
    th = Thresholds(vanishing=10.0)
    assert -math.log(0.125) == math.log(0.8 * 10.0)  # net.2 is exactly 8x below: 80 % of the threshold
    (a,), _ = depth_alerts(seq, th, step=0, active={("net.2", "vanishing")})
    assert a.module == "net.3"
