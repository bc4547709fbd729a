"""Roots and followers (``judge/diagnosis.py``) and the alert records and tracker (``judge/alerts.py``),
called directly: which alert may follow which, the order that decides a root, grouping for the report, and
the plain values saved in checkpoints; the edges that mutation testing (``make mutate``) found unpinned."""

from __future__ import annotations

import pytest

from lightning_normwatch.judge.alerts import Alert, AlertTracker, NormWatchAlertError, _worse
from lightning_normwatch.judge.diagnosis import diagnose, downstream, follower_note, roots_first

ORDER = ["net.0", "net.1", "net.2", "net.3", "net.4"]


def _a(module: str, kind: str, step: int = 5, severity: str = "warning", message: str = "m") -> Alert:
    return Alert(step, module, kind, severity, 1.0, 0.5, message)


def _causes(alerts: list[Alert]) -> list[tuple[str, str, tuple[str, str] | None]]:
    return [(a.module, a.kind, a.caused_by) for a in alerts]


# ------------------------------------------------------------------ alerts
def test_alert_to_dict_and_back() -> None:
    root = _a("fc", "dead")
    assert root.to_dict() == {
        "step": 5,
        "module": "fc",
        "kind": "dead",
        "severity": "warning",
        "value": 1.0,
        "threshold": 0.5,
        "message": "m",
        "caused_by": None,
    }
    follower = Alert(5, "fc", "dead", "warning", 1.0, 0.5, "m", caused_by=("vanishing", "net.3"))
    assert follower.to_dict()["caused_by"] == ["vanishing", "net.3"]
    assert Alert.from_dict(follower.to_dict()) == follower and Alert.from_dict(root.to_dict()) == root
    extra = {**root.to_dict(), "unknown": 1}
    assert Alert.from_dict(extra) == root


def test_alert_error_carries_the_alert() -> None:
    alert = _a("fc", "nonfinite", message="NaN in fc")
    err = NormWatchAlertError(alert)
    assert str(err) == "NormWatch alert at step 5 (nonfinite on `fc`): NaN in fc" and err.alert is alert


def test_worse_at_its_edges() -> None:
    # twice as far beyond the threshold as before, and 25 % larger: exactly both
    assert _worse(1.0, 0.75, 0.5) and not _worse(0.999, 0.75, 0.5)
    assert _worse(12.5, 10.0, 0.5) is False  # 25 % larger but not twice as far beyond
    assert _worse(25.0, 20.0, 15.0)  # 10 >= 2 * 5 and 25 >= 1.25 * 20


def test_tracker_state_and_episodes_round_trip() -> None:
    tracker = AlertTracker()
    tracker.update([_a("fc", "dead", 3)], {("fc", "dead")}, 3)
    tracker.update([_a("fc", "dead", 4), _a("b", "outlier", 4)], {("fc", "dead"), ("b", "outlier")}, 4)
    assert tracker.state() == [["b", "outlier"], ["fc", "dead"]]
    saved = tracker.episode_state()
    assert saved == {
        "updates": 2,
        "episodes": [["b", "outlier", 4.0, 2.0, 1.0, 4.0], ["fc", "dead", 3.0, 2.0, 1.0, 3.0]],
    }
    again = AlertTracker()
    again.load(tracker.state())
    again.load_episodes(saved)
    assert again.active == {("fc", "dead"), ("b", "outlier")} and again.updates == 2
    assert again.episodes == {("b", "outlier"): [4.0, 2.0, 1.0, 4.0], ("fc", "dead"): [3.0, 2.0, 1.0, 3.0]}
    again.load_episodes({})
    assert again.updates == 0 and again.episodes == {}


# ------------------------------------------------------------------ diagnosis
def test_downstream_edges() -> None:
    edges = {"b1": "a", "b2": "a", "c": "b2"}
    order = ["a", "b1", "b2", "c"]
    assert downstream("a", "c", order, edges) and not downstream("c", "a", order, edges)
    assert not downstream("a", "a", order, edges)  # itself: not after it
    assert not downstream("b1", "c", order, edges) and downstream("b2", "c", order, edges)
    # an input not among the watched tensors feeds everything; a module missing from the order feeds nothing
    assert downstream("input", "a", order, edges) and downstream("input/x", "c", order, edges)
    assert not downstream("input", "missing", order, edges) and not downstream("gone", "c", order, edges)
    assert not downstream("a", "gone", order, edges)
    # a watched tensor named input is placed by the order like any other
    assert not downstream("input", "a", ["a", "input"], {})
    # a chain that loops, or breaks at a residual sum: the order decides
    assert downstream("a", "c", order, {"c": "x", "x": "c"}) and downstream("a", "c", order, {})
    # a chain that reaches the root's own position from a tensor before it is another branch
    assert not downstream("b2", "c", order, {"c": "b1"})


def test_follower_note() -> None:
    note = follower_note(Alert(150, "net.41", "vanishing", "warning", 9.0, 8.0, ""))
    assert note == " (Follows the vanishing alert on `net.41` from step 150: a consequence of it, fix that first.)"


def test_diagnose_marks_followers_downstream_and_keeps_the_order() -> None:
    new = [_a("net.3", "dead"), _a("net.1", "scale_drift"), _a("net.4", "outlier")]
    out = diagnose(new, [], ORDER)
    assert _causes(out) == [
        ("net.3", "dead", ("scale_drift", "net.1")),
        ("net.1", "scale_drift", None),
        ("net.4", "outlier", ("scale_drift", "net.1")),
    ]
    assert out[0].message == "m" + follower_note(new[1]) and out[1] is new[1]


def test_a_more_severe_alert_never_follows_and_kinds_that_explain_nothing() -> None:
    out = diagnose([_a("net.1", "dead"), _a("net.3", "nonfinite", severity="error")], [], ORDER)
    assert _causes(out) == [("net.1", "dead", None), ("net.3", "nonfinite", None)]
    out = diagnose([_a("net.1", "non_normal", severity="info"), _a("net.3", "dead")], [], ORDER)
    assert [a.caused_by for a in out] == [None, None]  # information explains nothing
    # severities unknown to the ranking count as warnings
    out = diagnose([_a("net.1", "dead", severity="odd"), _a("net.3", "outlier", severity="odd")], [], ORDER)
    assert out[1].caused_by == ("dead", "net.1")
    out = diagnose([_a("net.1", "dead"), _a("net.3", "outlier", severity="odd")], [], ORDER)
    assert out[1].caused_by == ("dead", "net.1")
    out = diagnose([_a("net.1", "dead", severity="odd"), _a("net.3", "outlier", severity="error")], [], ORDER)
    assert out[1].caused_by is None
    # kinds outside the signal rules are neither roots nor followers here
    unrelated = _a("net.3", "update_size")
    assert diagnose([_a("net.1", "dead"), unrelated], [], ORDER)[1] is unrelated


def test_same_cause_kinds_follow_their_first_wherever_they_are() -> None:
    out = diagnose([_a("net.3", "frozen_norm"), _a("net.1", "frozen_norm", step=9)], [], ORDER)
    assert _causes(out) == [("net.3", "frozen_norm", None), ("net.1", "frozen_norm", ("frozen_norm", "net.3"))]
    out = diagnose([_a("net.1", "dead"), _a("net.3", "frozen_norm")], [], ORDER)
    assert out[1].caused_by is None


def test_the_window_and_the_start_steps_decide() -> None:
    root = _a("net.1", "scale_drift", step=100)
    assert diagnose([_a("net.3", "dead", step=150)], [root], ORDER, window=50)[0].caused_by == ("scale_drift", "net.1")
    assert diagnose([_a("net.3", "dead", step=151)], [root], ORDER, window=50)[0].caused_by is None
    assert diagnose([_a("net.3", "dead", step=99)], [root], ORDER, window=50)[0].caused_by is None
    assert diagnose([_a("net.3", "dead", step=100)], [root], ORDER)[0].caused_by == ("scale_drift", "net.1")
    # started: when each alert's episode began (a re-raised alert keeps its first start)
    late = _a("net.3", "dead", step=400)
    started = {("net.3", "dead"): 100, ("net.1", "scale_drift"): 100}
    assert diagnose([late], [root], ORDER, started=started)[0].caused_by == ("scale_drift", "net.1")
    # an active follower is not a root for new alerts
    follower = Alert(100, "net.2", "dead", "warning", 1.0, 0.5, "m", caused_by=("scale_drift", "net.1"))
    out = diagnose([_a("net.4", "outlier", step=100)], [follower], ORDER)
    assert out[0].caused_by is None


def test_two_alerts_on_one_tensor_and_the_kind_order() -> None:
    out = diagnose([_a("net.2", "dead"), _a("net.2", "mean_drift")], [], ORDER)
    assert _causes(out) == [("net.2", "dead", ("mean_drift", "net.2")), ("net.2", "mean_drift", None)]
    # an alert of a kind missing from the order of kinds comes after the known ones at one tensor and step
    out = diagnose([_a("net.2", "saturated"), _a("net.2", "non_normal", severity="info")], [], ORDER)
    assert out[1].caused_by == ("saturated", "net.2")


def test_inputs_lead_and_modules_missing_from_the_order_come_last() -> None:
    out = diagnose([_a("net.0", "scale_drift"), _a("input", "feature_scale")], [], ORDER)
    assert _causes(out) == [("net.0", "scale_drift", ("feature_scale", "input")), ("input", "feature_scale", None)]
    out = diagnose([_a("gone", "dead"), _a("net.4", "dead")], [], ORDER)
    assert [a.caused_by for a in out] == [None, None]  # nothing downstream of or from an unplaced module


def test_a_depth_alert_follows_only_a_root_at_or_after_its_origin_and_at_its_start() -> None:
    vanish = _a("net.3", "vanishing", message="... 50x below the 2 of `net.2` (Linear) ...")
    out = diagnose([vanish, _a("net.1", "dead")], [], ORDER)
    assert out[0].caused_by is None  # the dead layer runs before the origin it names: another fault
    out = diagnose([vanish, _a("net.2", "mean_drift")], [], ORDER)
    assert out[0].caused_by == ("mean_drift", "net.2")
    late = diagnose([vanish], [_a("net.2", "mean_drift", step=0)], ORDER, window=50)
    assert late[0].caused_by is None  # started later than its root: its own fault
    no_origin = _a("net.3", "vanishing", message="no origin named")
    assert diagnose([no_origin, _a("net.1", "dead")], [], ORDER)[0].caused_by == ("dead", "net.1")
    assert diagnose([vanish, _a("input", "feature_scale")], [], ORDER)[0].caused_by == ("feature_scale", "input")
    assert diagnose([vanish, _a("net.1", "vanishing")], [], ORDER)[0].caused_by == ("vanishing", "net.1")


def test_roots_first_groups_followers_under_their_root() -> None:
    root = _a("net.1", "vanishing", step=150)
    again = _a("net.1", "vanishing", step=300)
    f1 = Alert(150, "net.3", "dead", "warning", 1.0, 0.5, "m", caused_by=("vanishing", "net.1"))
    orphan = Alert(160, "net.4", "dead", "warning", 1.0, 0.5, "m", caused_by=("scale_drift", "net.0"))
    orphan2 = Alert(170, "net.4", "dead", "warning", 1.0, 0.5, "m", caused_by=("scale_drift", "net.0"))
    early = _a("net.0", "outlier", step=10)
    groups = roots_first([f1, orphan, root, again, orphan2, early])
    assert [(r.step, r.module, [x.module for x in fs]) for r, fs in groups] == [
        (10, "net.0", []),
        (150, "net.1", ["net.3"]),
        (160, "net.4", []),
        (170, "net.4", []),
    ]
    assert roots_first([]) == []


@pytest.mark.parametrize("kind", ["dead", "collapse", "shift"])
def test_a_nonfinite_root_explains_the_signal_kinds(kind: str) -> None:
    out = diagnose([_a("net.3", kind, severity="warning"), _a("net.1", "nonfinite", severity="error")], [], ORDER)
    assert out[0].caused_by == ("nonfinite", "net.1")


def test_an_old_checkpoint_alert_without_caused_by_loads_as_a_root() -> None:
    old = {"step": 1, "module": "fc", "kind": "dead", "severity": "warning", "value": 0.9, "threshold": 0.5}
    assert Alert.from_dict({**old, "message": "m"}) == Alert(1, "fc", "dead", "warning", 0.9, 0.5, "m")


def test_tracker_does_not_raise_an_active_alert_again_even_when_worse() -> None:
    tracker = AlertTracker()
    key = {("fc", "dead")}
    assert len(tracker.update([Alert(1, "fc", "dead", "warning", 0.6, 0.5, "m")], key, 1)) == 1
    assert tracker.update([Alert(2, "fc", "dead", "warning", 0.99, 0.5, "m")], key, 2) == []


def test_tracker_rearm_window_counts_logging_steps_since_the_last_firing() -> None:
    def fire(t: AlertTracker, step: int, value: float = 0.6, module: str = "fc") -> list[Alert]:
        return t.update([Alert(step, module, "dead", "warning", value, 0.5, "m")], {(module, "dead")}, step)

    tracker = AlertTracker()
    for step in range(30):  # 30 logging steps with nothing
        tracker.update([], set(), step)
    assert len(fire(tracker, 30)) == 1
    tracker.update([], {("fc", "dead")}, 31)  # cleared
    assert fire(tracker, 32) == []  # back within the window, not worse: the same problem
    # exactly REARM_WINDOW logging steps after its last firing: still the same problem
    tracker = AlertTracker()
    fire(tracker, 0)
    for step in range(1, 25):
        tracker.update([], {("fc", "dead")}, step)
    assert fire(tracker, 25) == []
    for step in range(26, 52):
        tracker.update([], {("fc", "dead")}, step)
    assert len(fire(tracker, 52)) == 1  # 26 logging steps later: a new problem


def test_tracker_raised_again_message_and_the_next_alert_of_the_same_update() -> None:
    tracker = AlertTracker()
    keys = {("fc", "dead"), ("other", "dead")}
    tracker.update([Alert(10, "fc", "dead", "warning", 0.6, 0.5, "m")], keys, 10)
    tracker.update([], keys, 11)
    worse = Alert(16, "fc", "dead", "warning", 0.8, 0.5, "m")
    new = Alert(14, "other", "dead", "warning", 0.6, 0.5, "m")
    out = tracker.update([Alert(14, "fc", "dead", "warning", 0.61, 0.5, "m"), new], keys, 14)
    assert out == [new]  # the first one re-armed (not worse), the second one new
    tracker.update([], keys, 15)
    (again,) = tracker.update([worse], keys, 16)
    assert (
        again.message == "m (Raised again: worse than its 0.6 at step 10; the problem has come and gone for 6 steps.)"
    )
    tracker.update([], keys, 17)
    (third,) = tracker.update([Alert(18, "fc", "dead", "warning", 1.2, 0.5, "m")], keys, 18)
    assert "worse than its 0.8 at step 16; the problem has come and gone for 8 steps" in third.message


def test_before_and_unplaced_origins_of_depth_alerts() -> None:
    vanish = _a("net.3", "vanishing", message="... 50x below the 2 of `net.0` (Linear) ...")
    # an input's own drift (a signal kind on a tensor not in the order) runs before every watched tensor
    assert diagnose([vanish, _a("input", "mean_drift")], [], ORDER)[0].caused_by is None
    # an origin missing from the order: every placed root runs before it
    gone = _a("net.3", "vanishing", message="... 50x below the 2 of `gone` (Linear) ...")
    assert diagnose([gone, _a("net.1", "mean_drift")], [], ORDER)[0].caused_by is None


def test_severity_rank_of_the_root_and_kinds_that_explain_nothing() -> None:
    # an input_drift made information (input_drift="info") explains no warning
    out = diagnose([_a("input", "input_drift", severity="info"), _a("net.3", "dead")], [], ORDER)
    assert [a.caused_by for a in out] == [None, None]
    # information kinds explain no information either
    out = diagnose([_a("net.1", "non_normal", severity="info"), _a("net.3", "non_normal", severity="info")], [], ORDER)
    assert [a.caused_by for a in out] == [None, None]


def test_diagnose_defaults_to_no_window() -> None:
    root = _a("net.1", "scale_drift", step=100)
    assert diagnose([_a("net.3", "dead", step=101)], [root], ORDER)[0].caused_by is None


def test_unplaced_modules_come_after_placed_ones() -> None:
    out = diagnose([_a("gone", "frozen_norm"), _a("net.1", "frozen_norm")], [], ORDER)
    assert _causes(out) == [("gone", "frozen_norm", ("frozen_norm", "net.1")), ("net.1", "frozen_norm", None)]


def test_roots_are_tried_in_their_order() -> None:
    roots = [_a("net.3", "scale_drift"), _a("net.1", "scale_drift"), _a("net.1", "update_size")]
    (out,) = diagnose([_a("net.4", "dead")], roots, ORDER)
    assert out.caused_by == ("scale_drift", "net.1")


# ------------------------------------------------------------------ update followers
def test_update_followers_kinds_places_and_start() -> None:
    from lightning_normwatch.judge.diagnosis import update_followers

    root = Alert(8, "net.1", "update_size", "warning", 0.4, 0.1, "m")
    alerts = [
        _a("net.0", "scale_drift", step=4),  # before the layer: not explained
        _a("net.1", "outlier", step=4),  # the layer itself
        _a("net.2", "vanishing", step=4),  # a kind an update does not explain
        _a("net.2", "non_normal", step=4),
        _a("net.3", "mean_drift", step=1),  # started before the streak
        _a("net.4", "dead", step=4),
        Alert(4, "net.4", "outlier", "warning", 1.0, 0.5, "m", caused_by=("dead", "net.4")),
        Alert(4, "net.3", "shift", "warning", 1.0, 0.5, "m", caused_by=("scale_drift", "net.0")),
    ]
    out = update_followers(root, 2, alerts, ORDER)
    assert [(a.module, a.kind) for a in out] == [("net.1", "outlier"), ("net.4", "dead"), ("net.4", "outlier")]
    # the start steps of the tracker's episodes decide, not the alerts' own steps
    late = update_followers(root, 2, [_a("net.3", "mean_drift", step=9)], ORDER, started={("net.3", "mean_drift"): 1})
    assert late == []
    assert update_followers(root, 4, [_a("net.3", "mean_drift", step=4)], ORDER) != []
    # a branch that does not carry the layer's output
    assert update_followers(root, 2, [_a("net.3", "dead")], ORDER, edges={"net.3": "net.0"}) == []


def test_joined_sentence() -> None:
    from lightning_normwatch.judge.diagnosis import joined_sentence

    root = Alert(8, "net.3", "update_size", "warning", 0.04, 0.1, "m")
    own = [_a("net.3", "scale_drift", step=6)]
    assert joined_sentence(root, 2, own, {}, 2) == (
        "`net.3`'s updates are 40x the usual 0.001 of its weights per step from step 2; its activations started "
        "drifting 2 logging steps later (scale_drift on `net.3` from step 6): they follow from it."
    )
    after = [_a("net.4", "dead", step=4), _a("net.4", "outlier", step=9)]
    sentence = joined_sentence(root, 2, after, {("net.4", "outlier"): 3}, 2)
    assert "the activations after it started drifting at the same logging step (dead on `net.4` from step 4, " in (
        sentence
    )
    assert "outlier on `net.4` from step 3)" in sentence
    assert "1 logging step later (" in joined_sentence(root, 2, [_a("net.4", "dead", step=4)], {}, 2)
    assert "3 logging steps later (" in joined_sentence(root, 2, [_a("net.4", "dead", step=5)], {}, 0)
    four = [_a(f"net.{i}", "dead", step=4) for i in range(4)]
    assert "dead on `net.3` from step 4): they follow" in joined_sentence(root, 4, four, {}, 1)
    five = [_a(f"net.{i}", "dead", step=4) for i in range(5)]
    assert "dead on `net.3` from step 4 and 1 more): they follow" in joined_sentence(root, 4, five, {}, 1)
    many = [_a(f"net.{i}", "dead", step=4) for i in range(6)]
    sentence = joined_sentence(root, 4, many, {}, 1)
    assert "dead on `net.3` from step 4 and 2 more): they follow" in sentence and "net.4" not in sentence
    assert sentence.split(";")[1].startswith(" its activations started drifting at the same logging step")


def test_join_updates_marks_followers_rewrites_notes_and_joins_the_sentence() -> None:
    from lightning_normwatch.judge.diagnosis import join_updates

    early = Alert(6, "net.3", "update_size", "warning", 0.3, 0.1, "early.")  # raised at an earlier logging step
    late = Alert(8, "net.1", "update_size", "warning", 0.4, 0.1, "late.")  # raised at this logging step
    drift = _a("net.4", "scale_drift", step=8)  # after both layers and both streaks: the nearer one (net.3) takes it
    dead = _a("net.2", "dead", step=8)  # after net.1 only
    follower = Alert(8, "net.4", "outlier", "warning", 1.0, 0.5, "o." + follower_note(drift), caused_by=(
        "scale_drift", "net.4"))  # fmt: skip
    inactive = _a("net.2", "mean_drift", step=8)  # not active any more: untouched
    alerts = [drift, dead, follower, inactive]
    active = [("net.4", "scale_drift"), ("net.2", "dead"), ("net.4", "outlier"), ("net.9", "dead")]
    roots, since = {"net.1": late, "net.3": early}, {"net.1": 8, "net.3": 6}
    replaced, joined = join_updates(roots, since, [late], alerts, active, ORDER, None, {}, 2)

    assert set(replaced) == {id(drift), id(dead), id(follower)}
    assert replaced[id(drift)].caused_by == ("update_size", "net.3")
    assert replaced[id(follower)].caused_by == ("update_size", "net.3")
    assert replaced[id(dead)].caused_by == ("update_size", "net.1")
    # the follower's note now names the update; a first follower of an update raised earlier gets the sentence
    assert replaced[id(follower)].message == "o." + follower_note(early)
    assert replaced[id(drift)].message.startswith("m" + follower_note(early) + " `net.3`'s updates are 300x")
    # a first follower of an update raised now gets the note only: the sentence goes on the update
    assert replaced[id(dead)].message == "m" + follower_note(late)
    assert set(joined) == {id(late)}
    assert joined[id(late)].message.startswith("late. `net.1`'s updates are 400x the usual 0.001")
    assert "(dead on `net.2` from step 8)" in joined[id(late)].message


def test_join_updates_without_followers_changes_nothing() -> None:
    from lightning_normwatch.judge.diagnosis import join_updates

    root = Alert(8, "net.3", "update_size", "warning", 0.4, 0.1, "m")
    before = _a("net.1", "scale_drift", step=8)  # before the layer
    assert join_updates({"net.3": root}, {"net.3": 8}, [root], [before], [("net.1", "scale_drift")],
                        ORDER, None, {}, 2) == ({}, {})  # fmt: skip


def test_join_updates_edges_episode_starts_and_unplaced_roots() -> None:
    from lightning_normwatch.judge.diagnosis import join_updates

    def join(roots, alerts, edges=None, started=None):  # noqa: ANN001, ANN202 - short test helper
        since = {m: 8 for m in roots}
        active = [(a.module, a.kind) for a in alerts]
        return join_updates(roots, since, [], alerts, active, ORDER, edges, started or {}, 2)[0]

    near = Alert(8, "net.3", "update_size", "warning", 0.4, 0.1, "m")
    far = Alert(8, "net.1", "update_size", "warning", 0.4, 0.1, "m")
    dead = _a("net.2", "dead", step=8)
    # the nearest root explains nothing: the next one is still tried
    assert join({"net.3": near, "net.1": far}, [dead])[id(dead)].caused_by == ("update_size", "net.1")
    # a branch that does not carry net.1's output (the edges decide)
    assert join({"net.1": far}, [dead], edges={"net.2": "net.0"}) == {}
    # the episode's start decides, not the alert's own step: started before the streak, not a follower
    assert join({"net.1": far}, [dead], started={("net.2", "dead"): 4}) == {}
    # a root on a module the execution order does not know explains its own layer
    odd_root = Alert(8, "head", "update_size", "warning", 0.4, 0.1, "m")
    odd = _a("head", "scale_drift", step=8)
    assert join({"head": odd_root, "net.1": far}, [odd, dead])[id(odd)].caused_by == ("update_size", "head")
