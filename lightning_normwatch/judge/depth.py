"""Reference-free rules across depth: a signal that vanishes or explodes from layer to layer.

Scale drift compares a layer with its own past, which needs a reference (hundreds of steps).
A deep stack whose scale falls (or grows) geometrically is visible at the very first logging
step by comparing each layer with the layers before it, in execution order:

- ``vanishing`` at tensor *i*: every tensor from *i* on has an RMS more than ``thresholds.vanishing``
  times below the largest RMS before *i*, over at least ``MIN_SPAN`` tensors (the signal never
  recovers: a LayerNorm or BatchNorm further on, as in transformers and BN nets, restores the
  scale and keeps the rule quiet);
- ``exploding`` at tensor *i*: every tensor from *i* on has an RMS more than ``thresholds.exploding``
  times above the smallest RMS before *i*, over at least ``MIN_SPAN`` tensors.

Inputs are left out (raw pixels in 0-255 are the data's scale, not the network's), and so is the
model's prediction (logits grow as the model learns), as are tensors with too few values to have
a scale and all-zero tensors (a zero-initialised projection is deliberate).

Example:
    >>> import math
    >>> from lightning_normwatch.collect.info import TensorInfo
    >>> from lightning_normwatch.config import Thresholds
    >>> seq = [(TensorInfo(f"fc{i}", "preact", "Linear", 32), {"mean": 0.0, "std": 0.7**i, "numel": 512})
    ...        for i in range(20)]
    >>> alerts, _ = depth_alerts(seq, Thresholds(), step=0)
    >>> [(a.module, a.kind) for a in alerts]
    [('fc6', 'vanishing')]
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from ..collect.info import TensorInfo
from ..config import Thresholds
from .alerts import SEVERITY, Alert
from .rules import CLEAR_FRACTION, MIN_DISTRIBUTION_VALUES, who

__all__ = ["depth_alerts", "depth_ratios", "origin_hint", "origin_of", "rms_of", "small_growth", "MIN_SPAN"]

#: tensors the signal must stay out of range for (a head of one or two small layers is not vanishing)
MIN_SPAN = 4


_ORIGIN = re.compile(r"x (?:below|above) the \S+ of `([^`]+)`")


def origin_of(alert: Alert) -> str | None:
    """The origin a depth alert's message names (the layer with the largest RMS before a vanishing signal,
    the smallest before an exploding one), or None for other alerts.

    Example:
        >>> message = "... 279x below the 50 of `net.40` (Linear) ..."
        >>> origin_of(Alert(5, "net.41", "vanishing", "warning", 279.0, 8.0, message))
        'net.40'
    """
    found = _ORIGIN.search(alert.message) if alert.kind in ("vanishing", "exploding") else None
    return found.group(1) if found else None


def rms_of(fig: dict[str, float]) -> float:
    """Root mean square from the mean and std figures (NaN when unknown).

    Example:
        >>> rms_of({"mean": 3.0, "std": 4.0})
        5.0
    """
    mean, std = fig.get("mean", math.nan), fig.get("std", math.nan)
    if not (math.isfinite(mean) and math.isfinite(std)):
        return math.nan
    return math.hypot(mean, std)


def _scales(sequence: Sequence[tuple[TensorInfo, dict[str, float]]]) -> list[tuple[TensorInfo, float]]:
    out = []
    for info, fig in sequence:
        if fig.get("numel", math.inf) < MIN_DISTRIBUTION_VALUES:
            continue
        rms = rms_of(fig)
        if math.isfinite(rms) and rms > 0:
            out.append((info, math.log(rms)))
    return out


def _gaps(logs: list[float], sign: float) -> list[float]:
    """Per index i >= 1 with ``MIN_SPAN`` tensors from i on: how far (log) the whole suffix stays beyond
    the prefix's extreme (above its minimum for ``sign`` 1, below its maximum for -1); -inf elsewhere."""
    n = len(logs)
    v = [sign * x for x in logs]
    suffix_min = [0.0] * n
    running = math.inf
    for i in range(n - 1, -1, -1):
        running = min(running, v[i])
        suffix_min[i] = running
    gaps = [-math.inf] * n
    prefix_min = math.inf
    for i in range(1, n - MIN_SPAN + 1):
        prefix_min = min(prefix_min, v[i - 1])
        gaps[i] = suffix_min[i] - prefix_min
    return gaps


def depth_ratios(sequence: Sequence[tuple[TensorInfo, dict[str, float]]]) -> tuple[float, float]:
    """The figures the depth rules compare with their thresholds: (vanishing, exploding) factors,
    the largest over the sequence (1.0 when the sequence is too short to judge).

    Example:
        >>> from lightning_normwatch.collect.info import TensorInfo
        >>> seq = [(TensorInfo(str(i), "preact", "Linear", 8), {"mean": 0.0, "std": 2.0**-i}) for i in range(8)]
        >>> [round(x, 6) for x in depth_ratios(seq)]
        [16.0, 1.0]
    """
    logs = [x for _, x in _scales(sequence)]
    out = []
    for sign in (-1.0, 1.0):
        gaps = [g for g in _gaps(logs, sign) if math.isfinite(g)]
        out.append(math.exp(max(gaps)) if gaps and max(gaps) > 0 else 1.0)
    return out[0], out[1]


def _dead_between(sequence: Sequence[tuple[TensorInfo, dict[str, float]]], start: str, stop: str) -> TensorInfo | None:
    """The first activation strictly between tensors ``start`` and ``stop`` whose every output is zero (a
    layer that lost the whole signal: the depth rules leave all-zero tensors out of the profile)."""
    names = [info.name for info, _ in sequence]
    if start not in names or stop not in names:
        return None
    for info, fig in sequence[names.index(start) + 1 : names.index(stop)]:
        if info.role in ("activation", "bounded", "other") and fig.get("max_abs", math.nan) == 0.0:
            return info
    return None


def origin_hint(fig: dict[str, float], previous_rms: float | None = None) -> str:
    """What the figures say about the layer where the scale changed: a mean that dominates its RMS (a
    bias or an offset, not the weights' scale), and whether its scale changed since the last logging step.

    Example:
        >>> print(origin_hint({"mean": -49.9, "std": 1.9}, 2.0))
        ... # doctest: +NORMALIZE_WHITESPACE
        its RMS is its mean (-49.9, std 1.9: a bias or an offset that jumped, not weights initialised too small),
        and it was 2 at the previous logging step (the change began during training, not at initialization)
    """
    mean, std = fig.get("mean", math.nan), fig.get("std", math.nan)
    parts = []
    if math.isfinite(mean) and math.isfinite(std) and abs(mean) > 3 * std:
        parts.append(
            f"its RMS is its mean ({mean:.3g}, std {std:.2g}: a bias or an offset that jumped, not weights "
            "initialised too small)"
        )
    elif math.isfinite(std):
        parts.append(f"its mean is {mean:.2g} and its std {std:.3g}")
    rms = rms_of(fig)
    if previous_rms is not None and math.isfinite(rms) and previous_rms > 0:
        factor = rms / previous_rms
        if factor > 2 or factor < 0.5:
            parts.append(
                f"it was {previous_rms:.3g} at the previous logging step (the change began during training, "
                "not at initialization)"
            )
    return ", and ".join(parts)


def _depth_message(
    kind: str,
    where: str,
    origin: str,
    hint: str,
    ratio: float,
    after: float,
    before: float,
    n_after: int,
    factor: float,
    during_training: bool,
    normalizes: bool = False,
) -> str:
    if kind == "vanishing":
        if normalizes:
            causes = (
                f"{where} normalizes to unit scale: the layers before it are too large (inputs not standardized, "
                "e.g. raw 0-255 pixels), not the layers after it too small"
            )
        elif during_training or "a bias or an offset" in hint:
            causes = (
                "the scale was lost during training or by a shifted mean, not at initialization: look at that "
                "layer's bias and inputs, a learning rate too high, or a ReLU that died"
            )
        else:
            causes = (
                "weights initialised too small for this depth (use He/Xavier initialization), saturating "
                "activations, or a deep stack without normalization or residual connections"
            )
        return (
            f"The signal vanishes with depth from {where} on: the RMS of this and the {n_after - 1} watched tensors "
            f"after it is at most {after:.3g}, {ratio:.0f}x below the {before:.3g} of {origin} (threshold "
            f"{factor:g}x), and no later layer restores it; {origin}: {hint}. Usual causes: {causes}."
        )
    if during_training or "a bias or an offset" in hint:
        causes = "the scale grew during training: a learning rate too high, or a bias or input offset that jumped"
    else:
        causes = (
            "weights initialised too large for this depth, residual branches adding up without scaling, or a "
            "learning rate too high"
        )
    return (
        f"The signal explodes with depth from {where} on: the RMS of this and the {n_after - 1} watched tensors "
        f"after it is at least {after:.3g}, {ratio:.0f}x above the {before:.3g} of {origin} (threshold {factor:g}x); "
        f"{where}: {hint}. Usual causes: {causes}."
    )


def depth_alerts(
    sequence: Sequence[tuple[TensorInfo, dict[str, float]]],
    th: Thresholds,
    step: int,
    active: set[tuple[str, str]] = frozenset(),  # type: ignore[assignment]
    previous: dict[str, float] | None = None,
) -> tuple[list[Alert], set[tuple[str, str]]]:
    """Depth alerts for the watched tensors in execution order (inputs and prediction left out).

    Returns the alerts that hold now and the (module, kind) pairs evaluated, as ``rules.evaluate``.
    An alert already ``active`` on a tensor stays on that tensor while the signal there is still out
    of range (the first out-of-range tensor may move by one layer from step to step). The message names
    the origin (the layer with the largest RMS before a vanishing signal, the smallest before an exploding
    one) with its figures; ``previous`` (RMS per tensor at the previous logging step) tells a change during
    training from one present since initialization. A vanishing signal is put on the first activation
    between the origin and the out-of-range tensors that outputs only zeros, when there is one (where the
    signal was lost: a ReLU that died behind a broken bias).
    """
    scales = _scales(sequence)
    logs = [x for _, x in scales]
    figs = {info.name: fig for info, fig in sequence}
    previous = previous or {}
    out: list[Alert] = []
    checked: set[tuple[str, str]] = set()
    for kind, sign, factor in (("vanishing", -1.0, th.vanishing), ("exploding", 1.0, th.exploding)):
        gaps = _gaps(logs, sign)
        at = next((i for i, g in enumerate(gaps) if g > math.log(factor)), None)
        if at is not None:
            # an active alert stays on its tensor while the signal there is still out of range
            held = [i for i, (info, _) in enumerate(scales) if (info.name, kind) in active]
            held = [i for i in held if gaps[i] > math.log(CLEAR_FRACTION * factor)]
            at = held[0] if held else at
        if at is None:
            checked |= {(info.name, kind) for info, _ in sequence}
            continue
        prefix = logs[:at]
        j = prefix.index(max(prefix) if kind == "vanishing" else min(prefix))
        origin_info = scales[j][0]
        info = scales[at][0]
        if kind == "vanishing":
            info = _dead_between(sequence, origin_info.name, info.name) or info
        checked |= {(i.name, kind) for i, _ in sequence if i.name != info.name}
        ratio = math.exp(gaps[at])
        before = math.exp(prefix[j])
        after = math.exp(max(logs[at:]) if kind == "vanishing" else min(logs[at:]))
        n_after = len(logs) - at
        # where the scale changed: the origin of a vanishing signal; the first exploded tensor of an exploding one
        changed = origin_info if kind == "vanishing" else info
        hint = origin_hint(figs[changed.name], previous.get(changed.name))
        during = "during training" in hint
        normalizes = bool(re.search(r"norm$", info.type_name, re.IGNORECASE))
        message = _depth_message(
            kind, who(info), who(origin_info), hint, ratio, after, before, n_after, factor, during, normalizes
        )
        if info.name != scales[at][0].name:
            message += f" {who(info)} outputs only zeros: the signal is lost there."
        out.append(Alert(step, info.name, kind, SEVERITY[kind], float(ratio), float(factor), message))
        checked.add((info.name, kind))
    return out, checked


def small_growth(
    firing: Sequence[Alert], figures: dict[str, dict[str, float]], reference_rms: dict[str, float]
) -> list[Alert]:
    """The ``scale_drift`` alerts of tensors that grew but are still below twice the median RMS the
    network's tensors had in their reference window.

    A branch initialised small grows as the model learns (GPT-2 scales its residual projections by
    1/sqrt(2 x layers); attention outputs grew x4 to the network's typical scale in a healthy pre-norm
    transformer): growth to a scale still typical of the network is learning, not an explosion. The
    median is the reference one: when the whole network grows (inputs x10), it does not hide that.

    Example:
        >>> a = Alert(5, "attn.c_proj", "scale_drift", "warning", 6.0, 4.0, "grew")
        >>> figs = {"attn.c_proj": {"mean": 0.0, "std": 0.1, "std_log_ratio": 1.8}}
        >>> [x.module for x in small_growth([a], figs, {"ln": 1.0, "fc": 0.5, "attn.c_proj": 0.017})]
        ['attn.c_proj']
    """
    scales = sorted(x for x in reference_rms.values() if math.isfinite(x) and x > 0)
    if not scales:
        return []
    median = scales[len(scales) // 2]
    out = []
    for alert in firing:
        fig = figures.get(alert.module, {})
        if alert.kind == "scale_drift" and fig.get("std_log_ratio", 0.0) > 0 and rms_of(fig) < 2 * median:
            out.append(alert)
    return out
