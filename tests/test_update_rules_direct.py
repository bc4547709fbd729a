"""The parameter-side rules (``judge/updates.py``) called directly: the exact alerts (step, module, value,
threshold, severity) and their messages' figures, the streaks and their checkpoint state, and the edges that
mutation testing (``make mutate``) found unpinned."""

from __future__ import annotations

import math

import pytest

from lightning_normwatch.config import Thresholds
from lightning_normwatch.judge.updates import (
    MIN_LARGE_STEPS,
    NO_GRADIENT_STEPS,
    PERSIST,
    UpdateHistory,
    flow_alerts,
    gradient_alerts,
    gradient_factors,
    gradient_gaps,
    size_alerts,
    unheld_alerts,
    update_alerts,
)

TH = Thresholds()


def _layers(n: int = 5, ratio: float = 1e-3, lr: float = 1e-3, grad: float = 1e-2) -> dict[str, dict[str, float]]:
    return {f"fc{i}": {"update_ratio": ratio, "grad_rms": grad, "lr": lr, "has_grad": 1.0} for i in range(n)}


def test_history_counts_streaks_and_round_trips() -> None:
    h = UpdateHistory()
    assert [h.hold("a", now) for now in (True, True, False, True)] == [1, 2, 0, 1]
    h.without_grad["fc"] = -1
    h.since["fc"] = 7
    again = UpdateHistory()
    again.load(h.state())
    assert again.state() == {"streak": {"a": 1}, "without_grad": {"fc": -1}, "since": {"fc": 7}}
    assert (again.streak, again.without_grad, again.since) == ({"a": 1}, {"fc": -1}, {"fc": 7})
    again.load({})
    assert again.state() == {"streak": {}, "without_grad": {}, "since": {}}


def test_large_update_alert_and_its_message() -> None:
    figs = _layers()
    figs["fc3"]["update_ratio"] = 0.25
    history = UpdateHistory()
    for step in range(0, 5 * PERSIST, 5):
        alerts, checked = size_alerts(step, figs, TH, history)
    (a,) = alerts
    assert (a.step, a.module, a.kind, a.severity, a.value, a.threshold) == (
        5,
        "fc3",
        "update_size",
        "warning",
        0.25,
        TH.update_large,
    )
    assert "`fc3`'s updates are 0.25 of its weights per step (2 logging steps in a row above 0.1;" in a.message
    assert "(learning rate 0.001 in its param group)" in a.message
    assert checked == {(f"fc{i}", "update_size") for i in range(5)}
    assert history.since == {"fc3": 0}
    figs["fc3"]["update_ratio"] = 1e-3  # back to normal: the streak and its start are dropped
    assert size_alerts(10, figs, TH, history)[0] == [] and history.since == {}
    figs["fc3"].pop("lr")
    figs["fc3"]["update_ratio"] = 0.25
    history = UpdateHistory()
    alerts = [size_alerts(s, figs, TH, history)[0] for s in (0, MIN_LARGE_STEPS)][-1]
    assert "in its param group" not in alerts[0].message and "above 0.1; healthy layers move about 1e-3): the" in (
        alerts[0].message
    )


def test_large_update_at_exactly_the_threshold_and_the_duration() -> None:
    figs = _layers()
    figs["fc0"]["update_ratio"] = TH.update_large
    history = UpdateHistory()
    assert [size_alerts(s, figs, TH, history)[0] for s in (0, 10, 20)] == [[], [], []]
    figs["fc0"]["update_ratio"] = 0.3
    history = UpdateHistory()
    # logging every step: the streak must span MIN_LARGE_STEPS global steps, counted from its first step
    found = [len(size_alerts(s, figs, TH, history)[0]) for s in range(100, 100 + MIN_LARGE_STEPS + 1)]
    assert found == [0] * MIN_LARGE_STEPS + [1]


def test_small_update_alert_and_its_message() -> None:
    figs = _layers(ratio=1e-3)
    figs["fc1"].update(update_ratio=1e-7, lr=1e-5)
    history = UpdateHistory()
    alerts = [size_alerts(s, figs, TH, history)[0] for s in range(PERSIST)][-1]
    (a,) = alerts
    assert (a.step, a.module, a.kind, a.severity, a.threshold) == (1, "fc1", "update_size", "warning", 1000.0)
    assert a.value == pytest.approx(1e4)
    assert "`fc1` barely moves: its updates are 1e-07 of its weights per step, 1e+04x below the 0.001 of the" in (
        a.message
    )
    assert "(threshold 1000x), although its gradient is not small (learning rate 1e-05 in its param group);" in (
        a.message
    )


@pytest.mark.parametrize(
    "change",
    [
        {"lr": 1e-4},  # 10x below the median learning rate: not "far" below it
        {"grad_rms": 1e-2 / 1000 * 0.999},  # its gradient is small too: the gradient-flow rules' business
        {"grad_rms": 0.0},
        {"grad_rms": math.nan},
        {"lr": math.nan},
    ],
)
def test_small_update_needs_a_low_learning_rate_and_a_gradient(change: dict[str, float]) -> None:
    figs = _layers()
    figs["fc1"].update(update_ratio=1e-7, lr=1e-5)
    figs["fc1"].update(change)
    history = UpdateHistory()
    assert [size_alerts(s, figs, TH, history)[0] for s in range(3)] == [[], [], []]


def test_small_update_edges() -> None:
    figs = _layers()
    figs["fc1"].update(update_ratio=1e-3 / 1000, lr=1e-5)  # exactly 1000x below the median: not beyond
    history = UpdateHistory()
    assert [size_alerts(s, figs, TH, history)[0] for s in range(3)] == [[], [], []]
    figs["fc1"].update(update_ratio=1e-7, grad_rms=1e-2 / 1000)  # a gradient exactly 1000x below: not small
    history = UpdateHistory()
    assert len([size_alerts(s, figs, TH, history)[0] for s in range(PERSIST)][-1]) == 1
    # nothing learns (median ratio at MIN_LEARNING or below, or zero updates elsewhere): nothing is "too small"
    frozen = _layers(ratio=1e-7)
    frozen["fc1"].update(update_ratio=1e-12, lr=1e-9)
    history = UpdateHistory()
    assert [size_alerts(s, frozen, TH, history)[0] for s in range(3)] == [[], [], []]
    # an update of 0 has an infinite factor
    figs["fc1"].update(update_ratio=0.0, grad_rms=1e-2)
    history = UpdateHistory()
    (a,) = [size_alerts(s, figs, TH, history)[0] for s in range(PERSIST)][-1]
    assert a.value == math.inf


def test_medians_ignore_zero_and_missing_figures() -> None:
    """The median update ratio is over the layers that move, the median gradient over the non-zero ones."""
    figs = _layers(4)
    figs["fc0"].update(update_ratio=0.0, lr=0.0)  # zero updates and learning rate: left out of the medians
    figs["fc3"].update(update_ratio=1e-7, lr=1e-5)
    figs["fc2"].update(grad_rms=0.0)
    history = UpdateHistory()
    alerts = [size_alerts(s, figs, TH, history)[0] for s in range(PERSIST)][-1]
    assert sorted(a.module for a in alerts) == ["fc0", "fc3"]
    fc3 = next(a for a in alerts if a.module == "fc3")
    assert fc3.value == pytest.approx(1e4)  # 1e-3 / 1e-7: the median of the layers that move is 1e-3


def test_gradient_gaps_and_factors() -> None:
    vanish, explode = gradient_gaps([1e-6, 1e-5, 1e-4, 1e-3, 1e-2])
    assert [round(v, 6) for v in vanish] == [1.0, 1.0, 100.0, 10.0, 1.0]
    assert explode == [1.0] * 5
    vanish, explode = gradient_gaps([1e2, 1e1, 1e0, 1e-1])
    assert vanish == [1.0] * 4 and [round(x, 6) for x in explode] == [1.0, 1.0, 10.0, 1.0]
    assert gradient_gaps([1.0, 5.0]) == ([1.0, 1.0], [1.0, 1.0])
    assert [round(x, 6) for x in gradient_factors([1.0, 2.0, 4.0, 1e4])] == [2500.0, 1.0]
    assert [round(x, 6) for x in gradient_factors([1e4, 1e3, 1.0, 1e-2])] == [1.0, 100.0]
    assert gradient_factors([]) == (1.0, 1.0)


def test_flow_alert_figures_and_messages() -> None:
    figs = _layers(6)
    for i in range(3):
        figs[f"fc{i}"]["grad_rms"] = 1e-2 / 2000
    history, order = UpdateHistory(), list(figs)
    results = [flow_alerts(s, figs, order, TH, history) for s in (0, 5)]
    assert results[0][0] == []
    (a,), checked = results[1]
    assert (a.step, a.module, a.kind, a.severity, a.threshold) == (5, "fc2", "vanishing_gradient", "warning", 1000.0)
    assert a.value == pytest.approx(2000.0)
    assert "from `fc2` back: the gradient RMS of `fc2` and the 2 before it is 2e+03x below that of a later layer " in (
        a.message
    )
    assert "(threshold 1000x)" in a.message
    assert checked == {(k, kind) for k in order for kind in ("vanishing_gradient", "exploding_gradient")}
    up = _layers(4)
    for i in range(3):
        up[f"fc{i}"]["grad_rms"] = 1e-2 * 3000
    history = UpdateHistory()
    (b,) = [flow_alerts(s, up, list(up), Thresholds(exploding_gradient=100.0), history)[0] for s in (0, 5)][-1]
    assert (b.module, b.kind, b.threshold, b.value) == ("fc2", "exploding_gradient", 100.0, pytest.approx(3000.0))
    assert (
        "explode toward the input from `fc2` back: the gradient RMS of `fc2` and the 2 before it is 3e+03x" in b.message
    )


def test_flow_alerts_need_enough_layers_with_a_gradient() -> None:
    figs = _layers(4)
    for i in range(3):
        figs[f"fc{i}"]["grad_rms"] = 1e-9
    history = UpdateHistory()
    assert len([flow_alerts(s, figs, list(figs), TH, history)[0] for s in (0, 5)][-1]) == 1
    for broken in (0.0, math.nan):  # a layer without a usable gradient leaves too few
        figs["fc3"]["grad_rms"] = broken
        history = UpdateHistory()
        assert [flow_alerts(s, figs, list(figs), TH, history)[0] for s in (0, 5)] == [[], []]
    figs["fc3"]["grad_rms"] = 1e-2
    history = UpdateHistory()  # an owner in the order without figures is skipped, not fatal
    assert len([flow_alerts(s, figs, ["fc0", "gone", "fc1", "fc2", "fc3"], TH, history)[0] for s in (0, 5)][-1]) == 1


def test_flow_alert_at_exactly_the_threshold_and_held_while_above_the_clearing_level() -> None:
    figs = _layers(5)
    for i in range(2):
        figs[f"fc{i}"]["grad_rms"] = 1e-2 / 1024
    th = Thresholds(vanishing_gradient=1024.0)  # a power of two: the factor equals it exactly
    history = UpdateHistory()
    assert [flow_alerts(s, figs, list(figs), th, history)[0] for s in (0, 5)] == [[], []]
    # a layer named by an active alert stays named while its factor is above 80 % of the threshold
    figs = _layers(6)
    figs["fc0"]["grad_rms"] = figs["fc1"]["grad_rms"] = figs["fc2"]["grad_rms"] = 1e-2 / 2000
    figs["fc3"]["grad_rms"] = 1e-2 / 2000 * 1.5
    history = UpdateHistory()
    (fresh,) = [flow_alerts(s, figs, list(figs), TH, history)[0] for s in (0, 5)][-1]
    assert fresh.module == "fc3"
    history = UpdateHistory()
    active = {("fc2", "vanishing_gradient")}
    (held,) = [flow_alerts(s, figs, list(figs), TH, history, active)[0] for s in (0, 5)][-1]
    assert held.module == "fc2" and held.value == pytest.approx(2000.0)
    gone = {("fc0", "vanishing_gradient")}  # factor 1 there: below the clearing level, not held
    history = UpdateHistory()
    assert [flow_alerts(s, figs, list(figs), TH, history, gone)[0] for s in (0, 5)][-1][0].module == "fc3"


def test_no_gradient_alert_figures_and_its_streak() -> None:
    figs = {"head": {"has_grad": 0.0}, "body": {"has_grad": 1.0}, "new": {}}
    history = UpdateHistory()
    first, checked = gradient_alerts(3, figs, history)
    assert first == [] and checked == {("body", "no_gradient"), ("new", "no_gradient")}
    (a,), _ = gradient_alerts(8, figs, history)
    assert (a.step, a.module, a.kind, a.severity, a.value, a.threshold) == (
        8,
        "head",
        "no_gradient",
        "warning",
        2.0,
        float(NO_GRADIENT_STEPS),
    )
    assert "received no gradient at any of the first 2 logging steps: it is not part" in a.message
    assert gradient_alerts(13, figs, history)[0] == []  # once
    assert history.without_grad == {"head": 3, "body": -1, "new": -1}
    figs["head"]["has_grad"] = 1.0  # used at last: never again
    gradient_alerts(18, figs, history)
    figs["head"]["has_grad"] = 0.0
    history.without_grad["head"] = -1
    assert gradient_alerts(23, figs, history) == ([], set())
    (b,), _ = gradient_alerts(1, {"x": {"has_grad": 0.0}}, UpdateHistory(without_grad={"x": 1}), expected_unused=True)
    assert b.severity == "info" and "logging steps (unused parameters are expected in this run): it" in b.message


def test_not_in_optimizer_lists_at_most_six_names() -> None:
    names = [f"head.p{i}" for i in range(7)]
    (a, b, c) = unheld_alerts(4, {"head": names, "six": names[:6], "one": ["one.weight"]})
    assert (a.step, a.module, a.kind, a.severity, a.value, a.threshold) == (
        4,
        "head",
        "not_in_optimizer",
        "warning",
        7.0,
        0.0,
    )
    assert "no optimizer holds: head.p0, head.p1, head.p2, head.p3, head.p4, head.p5 ... (7 in all); they" in a.message
    assert "holds: head.p0, head.p1, head.p2, head.p3, head.p4, head.p5; they never change" in b.message
    assert b.value == 6.0 and c.message.startswith(
        "`one` has trainable parameters that no optimizer holds: one.weight;"
    )


def test_update_alerts_combines_the_three_rules() -> None:
    figs = _layers(5)
    figs["fc4"]["update_ratio"] = 0.5
    for i in range(3):
        figs[f"fc{i}"]["grad_rms"] = 1e-9
    figs["dead"] = {"has_grad": 0.0}
    history, active = UpdateHistory(), {("fc2", "vanishing_gradient")}
    for step in (0, 5):
        alerts, checked = update_alerts(step, figs, [f"fc{i}" for i in range(5)], TH, history, active=active)
    assert sorted((a.step, a.module, a.kind) for a in alerts) == [
        (5, "dead", "no_gradient"),
        (5, "fc2", "vanishing_gradient"),
        (5, "fc4", "update_size"),
    ]
    assert ("fc0", "update_size") in checked and ("fc0", "vanishing_gradient") in checked


def test_the_median_layer_is_the_middle_one_of_those_that_move() -> None:
    figs = _layers(5)
    for i, ratio in enumerate((1e-3, 2e-3, 4e-3, 8e-3)):
        figs[f"fc{i}"]["update_ratio"] = ratio
    figs["fc4"].update(update_ratio=1e-7, lr=1e-5)
    history = UpdateHistory()
    (a,) = [size_alerts(s, figs, TH, history)[0] for s in range(PERSIST)][-1]
    assert a.value == pytest.approx(2e-3 / 1e-7)  # the median of 1e-7, 1e-3, 2e-3, 4e-3, 8e-3
    # two layers that do not move (ratio 0, learning rate 0) are left out of the medians
    figs = _layers(5)
    figs["fc1"].update(update_ratio=0.0, lr=0.0)
    figs["fc2"].update(update_ratio=0.0, lr=0.0)
    figs["fc3"].update(update_ratio=1e-7, lr=1e-5)
    history = UpdateHistory()
    alerts = [size_alerts(s, figs, TH, history)[0] for s in range(PERSIST)][-1]
    assert next(a for a in alerts if a.module == "fc3").value == pytest.approx(1e4)
    # layers without a gradient are left out of the median gradient
    figs = _layers(5)
    for k in ("fc1", "fc2", "fc4"):
        figs[k]["grad_rms"] = 0.0
    figs["fc3"].update(update_ratio=1e-7, lr=1e-5, grad_rms=1e-6)  # 1e4x below the median gradient 1e-2: small
    history = UpdateHistory()
    assert [size_alerts(s, figs, TH, history)[0] for s in range(3)] == [[], [], []]
    # no layer moves: nothing to compare with
    still = _layers(3, ratio=0.0, lr=0.0, grad=0.0)
    assert size_alerts(0, still, TH, UpdateHistory())[0] == []


def test_streak_keys_in_the_checkpoint_state() -> None:
    figs = _layers(2)
    figs["fc0"]["update_ratio"] = 0.5
    figs["fc1"].update(update_ratio=0.0, lr=0.0)
    figs["fc0"]["lr"] = 1e-3
    history = UpdateHistory()
    size_alerts(3, figs, TH, history)
    assert history.state()["streak"] == {"fc0/large": 1, "fc0/small": 0, "fc1/large": 0, "fc1/small": 1}


def test_flow_alert_at_a_factor_equal_to_the_threshold_is_quiet() -> None:
    grads = [1e-2 / 3000, 1e-2 / 3000, 1e-2 / 3000, 1e-2, 1e-2]
    figs = {f"fc{i}": {"grad_rms": g} for i, g in enumerate(grads)}
    factor = gradient_factors(grads)[0]
    history = UpdateHistory()
    th = Thresholds(vanishing_gradient=factor)
    assert [flow_alerts(s, figs, list(figs), th, history)[0] for s in (0, 5)] == [[], []]
    history = UpdateHistory()
    th = Thresholds(vanishing_gradient=factor * 0.999)
    assert len([flow_alerts(s, figs, list(figs), th, history)[0] for s in (0, 5)][-1]) == 1


def test_update_alerts_passes_the_active_alerts_on() -> None:
    figs = {f"fc{i}": {"grad_rms": 1e-2, "has_grad": 1.0} for i in range(6)}
    for i in range(3):
        figs[f"fc{i}"]["grad_rms"] = 1e-2 / 2000
    figs["fc3"]["grad_rms"] = 1e-2 / 2000 * 1.5
    history, active = UpdateHistory(), {("fc2", "vanishing_gradient")}
    alerts = [update_alerts(s, figs, list(figs), TH, history, active=active)[0] for s in (0, 5)][-1]
    assert [(a.module, a.kind) for a in alerts] == [("fc2", "vanishing_gradient")]


def test_an_active_flow_alert_at_exactly_the_clearing_level_moves() -> None:
    from lightning_normwatch.judge.rules import CLEAR_FRACTION

    grads = [1e-6, 1e-6, 1e-6, 8e-6, 1e-2, 1e-2]
    figs = {f"fc{i}": {"grad_rms": g} for i, g in enumerate(grads)}
    gap = gradient_gaps(grads)[0][3]  # fc3: 1250x
    up = down = [gap / CLEAR_FRACTION]  # the float nearest gap / 0.8 whose 80 % is gap exactly
    for _ in range(4):
        up, down = up + [math.nextafter(up[-1], math.inf)], down + [math.nextafter(down[-1], -math.inf)]
    candidates = up + down
    limit = next(x for x in candidates if CLEAR_FRACTION * x == gap)
    th = Thresholds(vanishing_gradient=limit)
    history = UpdateHistory()
    active = {("fc3", "vanishing_gradient")}
    (a,) = [flow_alerts(s, figs, list(figs), th, history, active)[0] for s in (0, 5)][-1]
    assert a.module == "fc2"  # fc3 at exactly 80 % of the threshold: not held


# ------------------------------------------------------------------ through time
def test_time_factors() -> None:
    from lightning_normwatch.judge.updates import FLOAT32_TINY, time_factors

    assert [f"{x:.3g}" for x in time_factors([0.0, 1e-30, 1e-20, 1e-10, 1.0])] == ["1e+20", "1"]
    assert time_factors([1e-9, 1.0, 1e3]) == (1.0, 1.0)  # three time steps: too few to judge
    assert time_factors([1e-3, 1e-3, 1e-3, 1.0, 1.0])[0] == pytest.approx(1000.0)
    assert time_factors([1e3, 1e3, 1e3, 1.0, 1.0])[1] == pytest.approx(1000.0)
    # non-finite steps are dropped, underflowed ones count as the smallest float32
    assert time_factors([math.nan, 1e-3, 1e-3, 1e-3, 1.0, 1.0])[0] == pytest.approx(1000.0)
    assert time_factors([0.0, 0.0, 0.0, 1.0, 1.0])[0] == pytest.approx(1 / FLOAT32_TINY)
    assert time_factors([math.nan, 1.0, 1.0, 1e3, 1e3]) == (1.0, 1.0)


def test_time_alert_figures_and_messages() -> None:
    from lightning_normwatch.judge.updates import time_alerts

    profile = [1e-4] * 3 + [1.0] * 3
    history = UpdateHistory()
    results = [time_alerts(s, {"lstm": profile}, {"lstm": ["embed", "proj"]}, TH, history) for s in (0, 5)]
    assert results[0][0] == [] and results[0][1] == {("lstm", "vanishing_gradient"), ("lstm", "exploding_gradient")}
    (a,) = results[1][0]
    assert (a.step, a.module, a.kind, a.severity, a.threshold) == (5, "lstm", "vanishing_gradient", "warning", 1000.0)
    assert a.value == pytest.approx(1e4)
    assert a.message.startswith(
        "Gradients vanish through time in `lstm`: the gradient reaching its input at the first of 6 time steps is "
        "1e+04x below that at later ones (threshold 1000x), so `embed`, `proj` learn from the last time steps only"
    )
    assert history.streak["lstm/time/vanishing_gradient"] == 2
    up = [1e4] * 3 + [1.0] * 3
    history = UpdateHistory()
    (b,) = [time_alerts(s, {"rnn": up}, {}, Thresholds(exploding_gradient=100.0), history)[0] for s in (0, 5)][-1]
    assert (b.kind, b.threshold, b.value) == ("exploding_gradient", 100.0, pytest.approx(1e4))
    assert "and the layers before it take it;" in b.message
    assert b.message.startswith("Gradients explode through time in `rnn`: the gradient reaching its input at the first")
    # at the threshold itself: quiet
    history = UpdateHistory()
    flat = [1e-3] * 3 + [1.0] * 3
    limit = time_factors_of(flat)
    assert [time_alerts(s, {"lstm": flat}, {}, Thresholds(vanishing_gradient=limit), history)[0] for s in (0, 5)] == [
        [],
        [],
    ]


def time_factors_of(profile: list[float]) -> float:
    from lightning_normwatch.judge.updates import time_factors

    return time_factors(profile)[0]


def test_update_alerts_raise_one_gradient_alert_across_depth_and_through_time() -> None:
    figs = {f"fc{i}": {"grad_rms": 1e-2, "has_grad": 1.0} for i in range(5)}
    for i in range(3):
        figs[f"fc{i}"]["grad_rms"] = 1e-9
    order = list(figs)
    history = UpdateHistory()
    profiles = {"fc2": [1e-9] * 3 + [1.0] * 3, "lstm": [1e-9] * 3 + [1.0] * 3}
    alerts = [update_alerts(s, figs, order, TH, history, profiles=profiles)[0] for s in (0, 5)][-1]
    assert sorted((a.module, a.kind) for a in alerts) == [("fc2", "vanishing_gradient"), ("lstm", "vanishing_gradient")]
    assert {a.step for a in alerts} == {5}
    depth = next(a for a in alerts if a.module == "fc2")
    assert depth.message.startswith("Gradients vanish toward the input from `fc2` back")  # the across-depth one
    history = UpdateHistory()
    alerts = [update_alerts(s, figs, order, TH, history, profiles={"fc3": profiles["lstm"]})[0] for s in (0, 5)][-1]
    (timed,) = [a for a in alerts if a.module == "fc3"]
    assert "so `fc0`, `fc1`, `fc2` learn from the last time steps only" in timed.message
