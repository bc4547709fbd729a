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
from collections.abc import Sequence

from ..collect.info import TensorInfo
from ..config import Thresholds
from .alerts import SEVERITY, Alert
from .rules import CLEAR_FRACTION, MIN_DISTRIBUTION_VALUES, who

__all__ = ["depth_alerts", "depth_ratios", "rms_of", "small_growth", "MIN_SPAN"]

#: tensors the signal must stay out of range for (a head of one or two small layers is not vanishing)
MIN_SPAN = 4


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


def depth_alerts(
    sequence: Sequence[tuple[TensorInfo, dict[str, float]]],
    th: Thresholds,
    step: int,
    active: set[tuple[str, str]] = frozenset(),  # type: ignore[assignment]
) -> tuple[list[Alert], set[tuple[str, str]]]:
    """Depth alerts for the watched tensors in execution order (inputs and prediction left out).

    Returns the alerts that hold now and the (module, kind) pairs evaluated, as ``rules.evaluate``.
    An alert already ``active`` on a tensor stays on that tensor while the signal there is still out
    of range (the first out-of-range tensor may move by one layer from step to step).
    """
    scales = _scales(sequence)
    logs = [x for _, x in scales]
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
        for i, (info, _) in enumerate(scales):
            if i != at:
                checked.add((info.name, kind))  # evaluated and not firing here: clears an alert held on it
        if at is None:
            continue
        info = scales[at][0]
        ratio = math.exp(gaps[at])
        before = math.exp(max(logs[:at]) if kind == "vanishing" else min(logs[:at]))
        after = math.exp(max(logs[at:]) if kind == "vanishing" else min(logs[at:]))
        n_after = len(logs) - at
        if kind == "vanishing":
            message = (
                f"The signal vanishes with depth from {who(info)} on: the RMS of this and the {n_after - 1} "
                f"watched tensors after it is at most {after:.3g}, {ratio:.0f}x below the {before:.3g} of an "
                f"earlier layer (threshold {factor:g}x), and no later layer restores it; usual causes: weights "
                "initialised too small for this depth (use He/Xavier initialization), saturating activations, "
                "or a deep stack without normalization or residual connections."
            )
        else:
            message = (
                f"The signal explodes with depth from {who(info)} on: the RMS of this and the {n_after - 1} "
                f"watched tensors after it is at least {after:.3g}, {ratio:.0f}x above the {before:.3g} of an "
                f"earlier layer (threshold {factor:g}x); usual causes: weights initialised too large for this "
                "depth, residual branches adding up without scaling, or a learning rate too high."
            )
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
