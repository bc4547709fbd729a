"""Rules on the parameter side: update sizes, gradient flow across depth, parameters that never learn.

Pure functions of the figures ``collect.updates.UpdateProbe`` measures at a logging step (per owner:
``update_ratio`` = ||dW||/||W|| of the optimizer step, ``grad_rms``, ``weight_rms``, ``lr``, ``has_grad``):

- ``update_size`` (warning): a layer's update ratio stays above ``thresholds.update_large`` for
  ``PERSIST`` logging steps in a row spanning ``MIN_LARGE_STEPS`` global steps (the layer is thrown
  around: learning rate too high for it), or
  it stays more than ``thresholds.update_small`` times below the median ratio of the layers that learn
  while its gradient is not small (learning rate 0 or tiny in its param group);
- ``vanishing_gradient`` / ``exploding_gradient`` (warning): going from the output back to the input
  (the way gradients flow), the gradient RMS of every weight matrix from some layer back falls below
  the largest RMS after it by ``thresholds.vanishing_gradient`` (grows above the smallest by
  ``thresholds.exploding_gradient``), over at least ``MIN_GRADIENT_SPAN`` layers; named at the layer
  where it starts (the one nearest the output); held ``PERSIST`` logging steps;
- ``no_gradient`` (warning; info when unused parameters are expected, e.g. ``find_unused_parameters``):
  trainable parameters an optimizer holds that had no gradient at any of the first ``NO_GRADIENT_STEPS``
  logging steps (an unused branch);
- ``not_in_optimizer`` (warning, at the first step): trainable parameters no optimizer holds.

Example:
    >>> from lightning_normwatch.config import Thresholds
    >>> figs = {f"fc{i}": {"update_ratio": 1e-3, "grad_rms": 1e-2, "lr": 0.1, "has_grad": 1.0} for i in range(4)}
    >>> figs["fc1"].update(update_ratio=0.0, lr=0.0)
    >>> history = UpdateHistory()
    >>> for step in (0, 10):
    ...     alerts, _ = update_alerts(step, figs, list(figs), Thresholds(), history)
    >>> [(a.module, a.kind) for a in alerts]
    [('fc1', 'update_size')]
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from ..config import Thresholds
from .alerts import SEVERITY, Alert
from .rules import CLEAR_FRACTION

__all__ = [
    "UpdateHistory",
    "update_alerts",
    "gradient_gaps",
    "gradient_factors",
    "unheld_alerts",
    "time_alerts",
    "time_factors",
    "PERSIST",
    "MIN_GRADIENT_SPAN",
    "NO_GRADIENT_STEPS",
]

#: logging steps in a row a size or gradient-flow condition must hold before it is raised
PERSIST = 2
#: weight matrices the gradient must stay out of range over: one small first layer is not vanishing, nor
#: are an attention's query and key projections (their gradients are ~1e-3 of the value's at init, BERT)
MIN_GRADIENT_SPAN = 3
#: global steps a too-large update must last (first to last logging step of the streak): with logging at
#: every step, two steps are a transient (a tiny head's first SGD steps), not a learning rate too high
MIN_LARGE_STEPS = 4
#: logging steps without any gradient before ``no_gradient`` is raised
NO_GRADIENT_STEPS = 2
#: factor by which a layer's learning rate must be below the median layer's for its updates to be "too small"
LOW_LR = 10.0
#: update ratio of the median learning layer below which nothing is judged "too small" (nothing learns)
MIN_LEARNING = 1e-7


@dataclass
class UpdateHistory:
    """What the rules remember between logging steps (plain values: saved in checkpoints).

    Attributes:
        streak: (owner, condition) -> logging steps in a row the condition held.
        without_grad: owner -> logging steps evaluated so far in which it never had a gradient
            (-1 once it had one).
    """

    streak: dict[str, int] = field(default_factory=dict)
    without_grad: dict[str, int] = field(default_factory=dict)
    since: dict[str, int] = field(default_factory=dict)  # owner -> step its too-large streak started

    def hold(self, key: str, now: bool) -> int:
        """Count a condition's run of logging steps; return its length (0 when it does not hold)."""
        self.streak[key] = self.streak.get(key, 0) + 1 if now else 0
        return self.streak[key]

    def state(self) -> dict[str, object]:
        return {"streak": dict(self.streak), "without_grad": dict(self.without_grad), "since": dict(self.since)}

    def load(self, state: Mapping[str, object]) -> None:
        self.streak = {str(k): int(v) for k, v in dict(state.get("streak", {})).items()}  # type: ignore[call-overload]
        self.without_grad = {str(k): int(v) for k, v in dict(state.get("without_grad", {})).items()}  # type: ignore[call-overload]
        self.since = {str(k): int(v) for k, v in dict(state.get("since", {})).items()}  # type: ignore[call-overload]


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2] if s else math.nan


def _lr_text(lr: float) -> str:
    return f" (learning rate {lr:.3g} in its param group)" if _finite(lr) else ""


def size_alerts(
    step: int, figures: Mapping[str, Mapping[str, float]], th: Thresholds, history: UpdateHistory
) -> tuple[list[Alert], set[tuple[str, str]]]:
    """``update_size`` alerts: too large for ``PERSIST`` logging steps, or too small while others learn."""
    ratios = {k: f["update_ratio"] for k, f in figures.items() if _finite(f.get("update_ratio"))}
    grads = [f["grad_rms"] for f in figures.values() if _finite(f.get("grad_rms")) and f["grad_rms"] > 0]
    median = _median([r for r in ratios.values() if r > 0])
    median_grad = _median(grads)
    median_lr = _median([f["lr"] for f in figures.values() if _finite(f.get("lr")) and f["lr"] > 0])
    out, checked = [], set()
    for owner, ratio in ratios.items():
        fig = figures[owner]
        checked.add((owner, "update_size"))
        large = history.hold(owner + "/large", ratio > th.update_large)
        started = history.since.setdefault(owner, step) if large else history.since.pop(owner, step)
        grad = fig.get("grad_rms", math.nan)
        learning = _finite(median) and median > MIN_LEARNING and _finite(grad) and grad > 0
        # the learning rate is the cause: its group's is 0 or far below the others' (vanishing gradients, which
        # also make updates small, are the gradient-flow rules' business)
        lr = fig.get("lr", math.nan)
        low_lr = _finite(lr) and _finite(median_lr) and lr * LOW_LR < median_lr
        small_now = learning and low_lr and ratio * th.update_small < median and grad * th.update_small >= median_grad
        small = history.hold(owner + "/small", bool(small_now))
        if large >= PERSIST and step - started >= MIN_LARGE_STEPS:
            message = (
                f"`{owner}`'s updates are {ratio:.3g} of its weights per step ({large} logging steps in a row above "
                f"{th.update_large:g}; healthy layers move about 1e-3){_lr_text(fig.get('lr', math.nan))}: the layer "
                "is thrown around; usual cause: a learning rate too high for it (lower it, warm it up, clip gradients)."
            )
            out.append(Alert(step, owner, "update_size", SEVERITY["update_size"], ratio, th.update_large, message))
        elif small >= PERSIST:
            factor = median / ratio if ratio > 0 else math.inf
            message = (
                f"`{owner}` barely moves: its updates are {ratio:.3g} of its weights per step, {factor:.3g}x below the "
                f"{median:.3g} of the median layer (threshold {th.update_small:g}x), although its gradient is not "
                f"small{_lr_text(fig.get('lr', math.nan))}; usual cause: a learning rate of 0 or far too small in its "
                "param group (a layer frozen by accident)."
            )
            out.append(Alert(step, owner, "update_size", SEVERITY["update_size"], factor, th.update_small, message))
    return out, checked


def gradient_gaps(grads: Sequence[float]) -> tuple[list[float], list[float]]:
    """Per layer *i* (forward order): how far the gradients of layers ``0..i`` stay below the largest gradient
    RMS of the layers after *i* (vanishing), and above the smallest of them (exploding), as factors.

    Gradients flow from the output back, so "before" a layer in the flow means after it in the forward
    pass. 1.0 where the layer has fewer than ``MIN_GRADIENT_SPAN`` layers up to it or none after it.

    Example:
        >>> vanish, explode = gradient_gaps([1e-6, 1e-5, 1e-4, 1e-3, 1e-2])
        >>> [round(v) for v in vanish], max(explode)
        ([1, 1, 100, 10, 1], 1.0)
    """
    logs = [math.log(g) for g in grads]
    n = len(logs)
    vanish, explode = [1.0] * n, [1.0] * n
    for i in range(MIN_GRADIENT_SPAN - 1, n - 1):
        earlier, later = logs[: i + 1], logs[i + 1 :]
        vanish[i] = max(1.0, math.exp(max(later) - max(earlier)))
        explode[i] = max(1.0, math.exp(min(earlier) - min(later)))
    return vanish, explode


def gradient_factors(grads: Sequence[float]) -> tuple[float, float]:
    """The figures the gradient-flow rules compare with their thresholds: the largest vanishing and exploding factors.

    Example:
        >>> [round(x) for x in gradient_factors([1.0, 2.0, 4.0, 1e4])]
        [2500, 1]
    """
    vanish, explode = gradient_gaps(grads)
    return max(vanish, default=1.0), max(explode, default=1.0)


def flow_alerts(
    step: int,
    figures: Mapping[str, Mapping[str, float]],
    order: Sequence[str],
    th: Thresholds,
    history: UpdateHistory,
    active: Collection[tuple[str, str]] = (),
) -> tuple[list[Alert], set[tuple[str, str]]]:
    """``vanishing_gradient`` / ``exploding_gradient`` over the owners in ``order`` (weight matrices, forward order).

    An alert already ``active`` on a layer stays there while the factor at that layer is still beyond
    ``CLEAR_FRACTION`` of the threshold (where it starts may move by a layer from step to step).
    """
    seq = [(k, figures[k]["grad_rms"]) for k in order if k in figures and _finite(figures[k].get("grad_rms"))]
    seq = [(k, g) for k, g in seq if g > 0]
    out, checked = [], {(k, kind) for k, _ in seq for kind in ("vanishing_gradient", "exploding_gradient")}
    if len(seq) < MIN_GRADIENT_SPAN + 1:
        return out, checked
    vanish, explode = gradient_gaps([g for _, g in seq])
    for kind, gaps, limit in (
        ("vanishing_gradient", vanish, th.vanishing_gradient),
        ("exploding_gradient", explode, th.exploding_gradient),
    ):
        # where it starts: the layer nearest the output from which the gradients back to the input are out of range
        at = next((i for i in range(len(gaps) - 1, -1, -1) if gaps[i] > limit), None)
        if at is not None:
            held_at = [i for i, (k, _) in enumerate(seq) if (k, kind) in active and gaps[i] > CLEAR_FRACTION * limit]
            at = held_at[0] if held_at else at
        held = history.hold(kind, at is not None)
        if held < PERSIST or at is None:
            continue
        owner, factor = seq[at][0], gaps[at]
        before = [k for k, _ in seq[:at]]
        span = f" and the {len(before)} before it" if before else ""
        if kind == "vanishing_gradient":
            message = (
                f"Gradients vanish toward the input from `{owner}` back: the gradient RMS of `{owner}`{span} is "
                f"{factor:.3g}x below that of a later layer (threshold {limit:g}x), so these layers barely learn; "
                "usual causes: saturating activations (sigmoid, tanh) in a deep stack, an RNN over long sequences, "
                "weights initialised too small; use ReLU-like activations, normalization or residual connections."
            )
        else:
            message = (
                f"Gradients explode toward the input from `{owner}` back: the gradient RMS of `{owner}`{span} is "
                f"{factor:.3g}x above that of a later layer (threshold {limit:g}x); usual causes: weights initialised "
                "too large for the depth, an RNN with recurrent gain above 1; clip gradients, normalise, re-initialise."
            )
        out.append(Alert(step, owner, kind, SEVERITY[kind], factor, limit, message))
    return out, checked


#: the smallest positive float32: a time step whose gradient underflowed to 0 got at most this much
FLOAT32_TINY = 1.1754943508222875e-38


def time_factors(profile: Sequence[float]) -> tuple[float, float]:
    """Vanishing and exploding factors through time: ``gradient_factors`` of a recurrent layer's per-time-step
    input-gradient RMS, time step 0 taken as the input end (a gradient underflowed to 0 counts as ``FLOAT32_TINY``).

    Example:
        >>> [f"{x:.3g}" for x in time_factors([0.0, 1e-30, 1e-20, 1e-10, 1.0])]
        ['1e+20', '1']
    """
    seq = [max(g, FLOAT32_TINY) for g in profile if math.isfinite(g)]
    return gradient_factors(seq) if len(seq) > MIN_GRADIENT_SPAN else (1.0, 1.0)


def time_alerts(
    step: int,
    profiles: Mapping[str, Sequence[float]],
    before: Mapping[str, Sequence[str]],
    th: Thresholds,
    history: UpdateHistory,
) -> tuple[list[Alert], set[tuple[str, str]]]:
    """``vanishing_gradient`` / ``exploding_gradient`` through time, on a recurrent layer (``collect.through_time``).

    Time is depth for a recurrence: the gradient reaching the layer's input at time step *t* went back through
    the recurrence from the later steps, so the same factors as across depth (``time_factors``) are compared with
    the same thresholds, held ``PERSIST`` logging steps. ``before``: the layers before each recurrent one (they
    learn only from what reaches its input), named in the message.

    Example:
        >>> history = UpdateHistory()
        >>> profile = [10.0 ** (t - 20) for t in range(21)]
        >>> for step in (0, 10):
        ...     alerts, _ = time_alerts(step, {"lstm": profile}, {"lstm": ["embed"]}, Thresholds(), history)
        >>> [(a.module, a.kind, f"{a.value:.0e}") for a in alerts]
        [('lstm', 'vanishing_gradient', '1e+18')]
    """
    out, checked = [], set()
    for owner, profile in profiles.items():
        vanish, explode = time_factors(profile)
        layers = ", ".join(f"`{k}`" for k in before.get(owner, ())) or "the layers before it"
        for kind, factor, limit in (
            ("vanishing_gradient", vanish, th.vanishing_gradient),
            ("exploding_gradient", explode, th.exploding_gradient),
        ):
            checked.add((owner, kind))
            if history.hold(f"{owner}/time/{kind}", factor > limit) < PERSIST:
                continue
            if kind == "vanishing_gradient":
                message = (
                    f"Gradients vanish through time in `{owner}`: the gradient reaching its input at the first of "
                    f"{len(profile)} time steps is {factor:.3g}x below that at later ones (threshold {limit:g}x), so "
                    f"{layers} learn from the last time steps only, nothing from the start of the sequences; usual "
                    "causes: sequences too long for the recurrence, gates saturated by the init; use truncated or "
                    "shorter sequences, a forget-gate bias of 1, a GRU/LSTM instead of a plain RNN, or attention."
                )
            else:
                message = (
                    f"Gradients explode through time in `{owner}`: the gradient reaching its input at the first of "
                    f"{len(profile)} time steps is {factor:.3g}x above that at later ones (threshold {limit:g}x), "
                    f"and {layers} take it; usual cause: a recurrent gain above 1 (recurrent weights initialised "
                    "too large); clip gradients, initialise the recurrent weights orthogonal, use a gated cell."
                )
            out.append(Alert(step, owner, kind, SEVERITY[kind], factor, limit, message))
    return out, checked


def gradient_alerts(
    step: int, figures: Mapping[str, Mapping[str, float]], history: UpdateHistory, expected_unused: bool = False
) -> tuple[list[Alert], set[tuple[str, str]]]:
    """``no_gradient``: owners that had no gradient at every one of the first ``NO_GRADIENT_STEPS`` logging steps."""
    out, checked = [], set()
    for owner, fig in figures.items():
        has = fig.get("has_grad", 1.0)
        count = history.without_grad.get(owner, 0)
        if count < 0:
            continue  # it had a gradient once: used
        if has > 0:
            history.without_grad[owner] = -1
            checked.add((owner, "no_gradient"))
            continue
        history.without_grad[owner] = count + 1
        if count + 1 == NO_GRADIENT_STEPS:
            severity = "info" if expected_unused else SEVERITY["no_gradient"]
            note = " (unused parameters are expected in this run)" if expected_unused else ""
            message = (
                f"`{owner}` has trainable parameters that received no gradient at any of the first {count + 1} "
                f"logging steps{note}: it is not part of the loss (an unused branch, a detached path, an output "
                "never used); remove it or set requires_grad=False."
            )
            out.append(Alert(step, owner, "no_gradient", severity, float(count + 1), float(NO_GRADIENT_STEPS), message))
    return out, checked


def unheld_alerts(step: int, by_owner: Mapping[str, Sequence[str]]) -> list[Alert]:
    """``not_in_optimizer``: one alert per owner, naming its trainable parameters that no optimizer holds.

    Example:
        >>> [a.message[:40] for a in unheld_alerts(0, {"head": ["head.weight", "head.bias"]})]
        ['`head` has trainable parameters that no ']
    """
    out = []
    for owner, names in by_owner.items():
        listed = ", ".join(names[:6]) + (f" ... ({len(names)} in all)" if len(names) > 6 else "")
        message = (
            f"`{owner}` has trainable parameters that no optimizer holds: {listed}; they never change. Usual causes: "
            "a submodule created after configure_optimizers ran, or left out of the param groups (pass "
            "self.parameters(), or set requires_grad=False if it is frozen on purpose)."
        )
        out.append(
            Alert(step, owner, "not_in_optimizer", SEVERITY["not_in_optimizer"], float(len(names)), 0.0, message)
        )
    return out


def update_alerts(
    step: int,
    figures: Mapping[str, Mapping[str, float]],
    order: Sequence[str],
    th: Thresholds,
    history: UpdateHistory,
    expected_unused: bool = False,
    active: Collection[tuple[str, str]] = (),
    profiles: Mapping[str, Sequence[float]] | None = None,
) -> tuple[list[Alert], set[tuple[str, str]]]:
    """Every parameter-side rule at one logging step: alerts that hold now and the (owner, kind) pairs evaluated.

    ``order``: owners with weight matrices, in forward order (the gradient-flow rules read only these).
    ``profiles``: recurrent layer -> per-time-step gradient RMS at its input (``time_alerts``; the layers
    before it in ``order`` are named).
    """
    out, checked = [], set()
    profiles = profiles or {}
    before = {k: [o for o in order[: order.index(k)]] if k in order else [] for k in profiles}
    for alerts, evaluated in (
        size_alerts(step, figures, th, history),
        flow_alerts(step, figures, order, th, history, active),
        time_alerts(step, profiles, before, th, history),
        gradient_alerts(step, figures, history, expected_unused),
    ):
        seen = {(a.module, a.kind) for a in out}
        out += [a for a in alerts if (a.module, a.kind) not in seen]  # across depth and through time: one alert
        checked |= evaluated
    return out, checked
