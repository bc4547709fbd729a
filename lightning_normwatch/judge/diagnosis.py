"""Root alerts and followers: one fault, one root alert, however many tensors show it.

A fault rarely shows in one tensor only. A bias broken in one layer of a deep MLP kills the ReLU
after it, the signal vanishes below, and the units of the layers further down die one after the
other; ``model.eval()`` by mistake freezes every BatchNorm of a ResNet at once; raw 0-255 pixels
make the input's scale wrong and the first LayerNorm's output look "vanished". This module picks,
among the alerts of a logging step, the **root** of each fault (``Alert.caused_by is None``) and
marks the others as its **followers** (``caused_by = (root kind, root module)``).

How a root is chosen (pure: no torch, no state; see docs/diagnosis.md):

1. **Same cause** (``frozen_norm``): every alert of such a kind follows the first one, in execution
   order, or the one already active (one ``model.eval()`` behind 20 BatchNorm layers).
2. **Start step**: an alert can only follow a root that started at the same logging step or before it,
   at most ``window`` steps before (a fault at step 150 is not explained by a root from step 0 that
   is still active; the monitor's window is one logging interval). A ``vanishing``/``exploding`` alert
   names the layer where its scale was lost: it follows only a root that started at the same step.
3. **Execution order and the module graph**: a follower sits after its root in execution order, and
   on its data path where the graph (``edges``: tensor -> the watched tensor its module consumed)
   says so: a chain of edges from the follower that reaches a tensor before the root without
   passing through it is a parallel branch, not a follower.
4. **What a root can cause** (``CAUSES``): a signal that vanishes or explodes, dead or saturated units,
   drift, outliers downstream of the root; an input's wrong scale or drift everything after it.
   An alert never follows a root of lower severity (information explains no warning).
5. Candidates are taken oldest first, then in execution order, then by ``KIND_ORDER`` at the same
   tensor (a depth alert, whose message names the origin, before the dead units at its tensor); each
   one follows the first root it can follow (a root of this step or an active one), else it is a root.

Example:
    >>> order = ["input", "net.0", "net.1", "net.2", "net.3"]
    >>> new = [Alert(150, "net.3", "dead", "warning", 0.7, 0.5, "m"),
    ...        Alert(150, "net.1", "dead", "warning", 1.0, 0.5, "m"),
    ...        Alert(150, "net.2", "vanishing", "warning", 40.0, 8.0, "m")]
    >>> [(a.module, a.kind, a.caused_by) for a in diagnose(new, [], order)]
    [('net.3', 'dead', ('dead', 'net.1')), ('net.1', 'dead', None), ('net.2', 'vanishing', ('dead', 'net.1'))]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from .alerts import Alert
from .depth import origin_of

__all__ = [
    "CAUSES",
    "KIND_ORDER",
    "SAME_CAUSE",
    "UPDATE_EXPLAINS",
    "diagnose",
    "downstream",
    "follower_note",
    "join_updates",
    "joined_sentence",
    "roots_first",
    "update_followers",
]

#: kinds explained by one cause whatever their place: every alert of the kind follows the first one
SAME_CAUSE = frozenset({"frozen_norm"})
#: what shows downstream of a problem in a signal: the kinds that can follow a root
_SIGNAL = frozenset(
    {
        "vanishing",
        "exploding",
        "collapse",
        "dead",
        "saturated",
        "scale_drift",
        "mean_drift",
        "shift",
        "outlier",
        "near_overflow",
        "non_normal",
    }
)
#: alerts that locate their own origin (the layer where the scale was lost)
_DEPTH = frozenset({"vanishing", "exploding"})
#: root kind -> the kinds of the alerts downstream of it that it explains
CAUSES: dict[str, frozenset[str]] = {
    "nonfinite": _SIGNAL,
    "feature_scale": _SIGNAL,
    "input_drift": _SIGNAL,
    "frozen_norm": _SIGNAL,
    **{kind: _SIGNAL for kind in _SIGNAL - {"non_normal"}},  # information explains nothing
}
#: at one tensor and one start step, which alert leads (the one whose message tells the most about the origin)
KIND_ORDER = (
    "nonfinite",
    "feature_scale",
    "input_drift",
    "frozen_norm",
    "mean_drift",
    "scale_drift",
    "vanishing",
    "exploding",
    "collapse",
    "dead",
    "saturated",
    "near_overflow",
    "outlier",
    "shift",
    "non_normal",
)
_RANK = {"info": 0, "warning": 1, "error": 2}
#: what a layer's too-large updates explain in the activations of that layer and the ones after it
UPDATE_EXPLAINS = _SIGNAL - {"non_normal", "vanishing"}
#: the rule of thumb for a healthy layer's update ratio ||dW|| / ||W|| per step
USUAL_UPDATE = 1e-3


def downstream(root: str, tensor: str, order: Sequence[str], edges: Mapping[str, str]) -> bool:
    """Whether ``tensor`` can carry what ``root`` outputs: after it in execution order, and not on a branch
    that the graph shows bypasses it (a chain of consumed tensors from ``tensor`` that reaches one before
    ``root`` without passing through ``root``; where the chain breaks, e.g. at a residual sum, the order decides).

    Example:
        >>> order = ["a", "b1", "b2", "c"]
        >>> edges = {"b1": "a", "b2": "a", "c": "b2"}   # two branches from a: b1, then b2 -> c
        >>> [downstream(r, t, order, edges) for r, t in (("b1", "c"), ("b2", "c"), ("c", "b1"))]
        [False, True, False]
    """
    pos = {name: i for i, name in enumerate(order)}
    if root not in pos or tensor not in pos or pos[root] >= pos[tensor]:
        return root.startswith("input") and tensor in pos and root not in pos
    node, seen = tensor, set()
    while node in edges and node not in seen:
        seen.add(node)
        node = edges[node]
        if node == root:
            return True
        if node in pos and pos[node] < pos[root]:
            return False
    return True


def follower_note(root: Alert) -> str:
    """What a follower's message gains: the root alert it follows.

    Example:
        >>> follower_note(Alert(150, "net.41", "vanishing", "warning", 9.0, 8.0, ""))
        ' (Follows the vanishing alert on `net.41` from step 150: a consequence of it, fix that first.)'
    """
    where = f"`{root.module}` from step {root.step}"
    return f" (Follows the {root.kind} alert on {where}: a consequence of it, fix that first.)"


def _before(a: str, b: str, order: Sequence[str]) -> bool:
    """Whether tensor ``a`` runs before tensor ``b`` (inputs before everything)."""
    pos = {name: i for i, name in enumerate(order)}
    return pos.get(a, -1 if a.startswith("input") else len(pos)) < pos.get(b, len(pos))


def _can_follow(
    alert: Alert, root: Alert, start: int, root_start: int, order: Sequence[str], edges: Mapping[str, str], window: int
) -> bool:
    if _RANK.get(alert.severity, 1) > _RANK.get(root.severity, 1) or (alert.module, alert.kind) == (
        root.module,
        root.kind,
    ):
        return False
    if root.kind in SAME_CAUSE and alert.kind == root.kind:
        return True
    if not 0 <= start - root_start <= window or alert.kind not in CAUSES.get(root.kind, ()):
        return False
    if alert.kind in _DEPTH:
        origin = origin_of(alert)
        upstream = origin is not None and root.kind in _SIGNAL - _DEPTH and _before(root.module, origin, order)
        if start != root_start or upstream:
            return False  # a depth alert names where its own scale was lost: a root before that layer is another fault
    if alert.module == root.module:
        return alert.kind != root.kind
    return downstream(root.module, alert.module, order, edges)


def diagnose(
    new: Sequence[Alert],
    active: Iterable[Alert],
    order: Sequence[str],
    edges: Mapping[str, str] | None = None,
    started: Mapping[tuple[str, str], int] | None = None,
    window: int = 0,
) -> list[Alert]:
    """The alerts raised at a logging step, each marked as a root or as the follower of a root.

    Args:
        new: alerts raised at this step (in any order; returned in the same order).
        active: alerts raised earlier and still active, roots and followers (their ``caused_by`` is kept).
        order: watched tensors in execution order (a module missing from it is placed by the first rule
            that applies; inputs come first).
        edges: tensor -> the watched tensor its module consumed (``Collector.edges``).
        started: (module, kind) -> step its alert started (the tracker's episodes); default: the alert's step.
        window: steps an alert may start after its root (one logging interval in the monitor).

    Returns:
        ``new`` with ``caused_by`` set on the followers and a note added to their messages.
    """
    edges = edges or {}
    started = started or {}
    pos = {name: i for i, name in enumerate(order)}
    kind_rank = {k: i for i, k in enumerate(KIND_ORDER)}

    def start_of(a: Alert) -> int:
        return int(started.get((a.module, a.kind), a.step))

    def place(a: Alert) -> tuple[int, int, int]:
        at = -1 if a.module.startswith("input") and a.module not in pos else pos.get(a.module, len(pos))
        return start_of(a), at, kind_rank.get(a.kind, len(kind_rank))

    known = {(a.module, a.kind): a for a in active}
    roots = [a for a in known.values() if a.caused_by is None]
    diagnosable = [a for a in new if a.kind in CAUSES or a.kind in _SIGNAL or a.kind in SAME_CAUSE]
    decided: dict[int, Alert] = {}
    for alert in sorted(diagnosable, key=place):
        root = next(
            (
                r
                for r in sorted(roots, key=place)
                if _can_follow(alert, r, start_of(alert), start_of(r), order, edges, window)
            ),
            None,
        )
        if root is None:
            roots.append(alert)
            decided[id(alert)] = alert
        else:
            decided[id(alert)] = replace(
                alert, caused_by=(root.kind, root.module), message=alert.message + follower_note(root)
            )
    return [decided.get(id(a), a) for a in new]


def roots_first(alerts: Sequence[Alert]) -> list[tuple[Alert, list[Alert]]]:
    """Root alerts, oldest first, each with the alerts that follow it (in the order given); a follower whose
    root is not among ``alerts`` is listed as a root.

    Example:
        >>> r = Alert(150, "net.41", "vanishing", "warning", 9.0, 8.0, "m")
        >>> f = Alert(150, "net.43", "dead", "warning", 0.6, 0.5, "m", caused_by=("vanishing", "net.41"))
        >>> [(root.module, [x.module for x in followers]) for root, followers in roots_first([f, r])]
        [('net.41', ['net.43'])]
    """
    keys = {(a.kind, a.module) for a in alerts if a.caused_by is None}
    groups: dict[tuple[str, ...], tuple[Alert, list[Alert]]] = {}
    for a in alerts:
        if a.caused_by is not None and a.caused_by in keys:
            continue
        key = (a.kind, a.module) if a.caused_by is None else (a.kind, a.module, str(a.step))
        groups.setdefault(key, (a, []))  # a root raised again (re-armed) joins its first raising
    for a in alerts:
        if a.caused_by is not None and a.caused_by in keys:
            groups[a.caused_by][1].append(a)
    return sorted(groups.values(), key=lambda g: g[0].step)


def update_followers(
    root: Alert,
    since: int,
    alerts: Sequence[Alert],
    order: Sequence[str],
    edges: Mapping[str, str] | None = None,
    started: Mapping[tuple[str, str], int] | None = None,
) -> list[Alert]:
    """The activation alerts that a too-large update on ``root.module`` (an ``update_size`` root whose streak began
    at step ``since``) explains: of a kind in ``UPDATE_EXPLAINS``, on that layer or ``downstream`` of it, started at
    ``since`` or later, and not explained by another root already; with them the alerts that follow them.

    Example:
        >>> order = ["net.0", "net.1", "net.2", "net.3"]
        >>> root = Alert(8, "net.1", "update_size", "warning", 0.4, 0.1, "m")
        >>> alerts = [Alert(4, "net.0", "scale_drift", "warning", 3.0, 2.0, "m"),
        ...           Alert(6, "net.2", "scale_drift", "warning", 3.0, 2.0, "m"),
        ...           Alert(6, "net.3", "outlier", "warning", 9.0, 6.0, "m", caused_by=("scale_drift", "net.2"))]
        >>> [(a.module, a.kind) for a in update_followers(root, 2, alerts, order)]
        [('net.2', 'scale_drift'), ('net.3', 'outlier')]
    """
    started = started or {}
    firsts = [
        a
        for a in alerts
        if a.caused_by is None
        and a.kind in UPDATE_EXPLAINS
        and int(started.get((a.module, a.kind), a.step)) >= since
        and (a.module == root.module or downstream(root.module, a.module, order, edges or {}))
    ]
    keys = {(a.kind, a.module) for a in firsts}
    return firsts + [a for a in alerts if a.caused_by in keys]


def joined_sentence(
    root: Alert, since: int, followers: Sequence[Alert], started: Mapping[tuple[str, str], int], interval: int
) -> str:
    """One sentence joining a too-large update (``root``, its streak from step ``since``) with the activation alerts
    it explains: how far above the usual ratio, and how many logging steps (of ``interval``) later they started.

    Example:
        >>> root = Alert(8, "net.3", "update_size", "warning", 0.04, 0.1, "m")
        >>> after = [Alert(6, "net.3", "scale_drift", "warning", 3.0, 2.0, "m")]
        >>> import textwrap
        >>> print(textwrap.fill(joined_sentence(root, 2, after, {}, 2), 100))
        `net.3`'s updates are 40x the usual 0.001 of its weights per step from step 2; its activations
        started drifting 2 logging steps later (scale_drift on `net.3` from step 6): they follow from it.
    """
    starts = {(a.module, a.kind): int(started.get((a.module, a.kind), a.step)) for a in followers}
    first = min(starts.values())
    later = (first - since) // interval if interval > 0 else first - since
    when = "at the same logging step" if later <= 0 else f"{later} logging step{'s' if later > 1 else ''} later"
    whose = "its activations" if any(a.module == root.module for a in followers) else "the activations after it"
    listed = ", ".join(f"{a.kind} on `{a.module}` from step {starts[(a.module, a.kind)]}" for a in followers[:4])
    more = f" and {len(followers) - 4} more" if len(followers) > 4 else ""
    return (
        f"`{root.module}`'s updates are {root.value / USUAL_UPDATE:.3g}x the usual {USUAL_UPDATE:g} of its weights per "
        f"step from step {since}; {whose} started drifting {when} ({listed}{more}): they follow from it."
    )


def join_updates(
    roots: Mapping[str, Alert],
    since: Mapping[str, int],
    new: Sequence[Alert],
    alerts: Sequence[Alert],
    active: Iterable[tuple[str, str]],
    order: Sequence[str],
    edges: Mapping[str, str] | None,
    started: Mapping[tuple[str, str], int],
    interval: int,
) -> tuple[dict[int, Alert], dict[int, Alert]]:
    """The two halves joined: each too-large update (``roots``: module -> its latest ``update_size`` alert, its
    streak from step ``since[module]``), nearest the output first, takes as followers the active activation
    alerts (``active`` keys ``(module, kind)`` of ``alerts``) it explains (``update_followers``). Returns the
    replaced activation alerts (by ``id`` of the old one: ``caused_by`` the update, the note naming it; a root of
    the activations raised earlier than the update also gets the joined sentence) and the update alerts raised at
    this logging step (in ``new``) with the sentence added, by ``id``.

    Example:
        >>> root = Alert(8, "net.1", "update_size", "warning", 0.4, 0.1, "updates too large.")
        >>> drift = Alert(8, "net.2", "scale_drift", "warning", 3.0, 2.0, "std moved.")
        >>> replaced, joined = join_updates({"net.1": root}, {"net.1": 8}, [root, drift], [drift],
        ...                                 [("net.2", "scale_drift")], ["net.1", "net.2"], None, {}, 2)
        >>> replaced[id(drift)].caused_by, joined[id(root)].message.startswith("updates too large. `net.1`'s")
        (('update_size', 'net.1'), True)
    """
    by_key = {(a.module, a.kind): a for a in alerts}
    current = [by_key[key] for key in active if key in by_key]
    replaced: dict[int, Alert] = {}
    joined: dict[int, Alert] = {}
    pos = {name: i for i, name in enumerate(order)}
    for module, root in sorted(roots.items(), key=lambda kv: -pos.get(kv[0], -1)):  # the nearest root first
        found = update_followers(root, since[module], current, order, edges, started)
        found = [a for a in found if id(a) not in replaced]
        firsts = [a for a in found if a.caused_by is None]
        if not firsts:
            continue
        sentence = joined_sentence(root, since[module], firsts, started, interval)
        raised_now = any(a is root for a in new)
        for a in found:
            if a.caused_by is None:  # a root of the activations: it now follows the update
                message = a.message + follower_note(root) + ("" if raised_now else " " + sentence)
            else:  # it followed one of those: now the update, with the note naming it
                was = by_key.get((a.caused_by[1], a.caused_by[0]))
                message = a.message.replace(follower_note(was), follower_note(root)) if was else a.message
            replaced[id(a)] = replace(a, caused_by=(root.kind, root.module), message=message)
        if raised_now:
            joined[id(root)] = replace(root, message=root.message + " " + sentence)
    return replaced, joined
