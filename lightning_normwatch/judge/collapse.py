"""Batch-signal collapse: the examples of a batch become indistinguishable as depth grows.

In a deep stack whose weights are too small, each layer's output is dominated by its bias: the
RMS stays normal (so ``vanishing`` stays quiet) while the variation across the examples of a batch
shrinks by a constant factor per layer. The network then outputs nearly the same thing for every
input and the loss never leaves chance level (``shared/STATISTICS.md`` §8: a 20-layer tanh MLP with
weights x0.35, spread/RMS 0.87 -> 3e-8).

The figure is ``batch_spread``: the mean over a tensor's units of each unit's std across the sampled
rows (batch and positions), divided by the tensor's RMS (``stats.figures``). It is about 0.5-1 in
healthy layers of every architecture measured (docs/windows_and_collapse.md). ``collapse`` fires at
the first tensor from which every watched tensor keeps a spread more than ``thresholds.collapse``
times below the largest spread before it, over at least ``MIN_SPAN`` tensors (as the depth rules,
no reference needed). The alert names the layer where the fall *starts*: the first tensor after
that largest spread from which the spread stays below half of it. A BatchNorm further on divides by
the batch's std and restores the spread: the rule stays quiet, as it should (BN is a cure).

Example:
    >>> from lightning_normwatch.judge.rules import TensorInfo
    >>> from lightning_normwatch.config import Thresholds
    >>> spread = [0.9, 0.9, 0.3, 1e-2, 3e-4, 1e-5, 3e-7, 1e-8, 1e-8]
    >>> seq = [(TensorInfo(f"fc{i}", "preact", "Linear", 64), {"batch_spread": s, "numel": 4096})
    ...        for i, s in enumerate(spread)]
    >>> alerts, _ = collapse_alerts(seq, Thresholds(), step=0)
    >>> [(a.module, a.kind, f"{a.value:.2g}") for a in alerts]
    [('fc2', 'collapse', '9e+04')]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..config import Thresholds
from .alerts import SEVERITY, Alert
from .depth import _gaps
from .rules import MIN_DISTRIBUTION_VALUES, TensorInfo, who

__all__ = ["collapse_alerts", "collapse_ratio", "spreads"]

#: the fall starts where the spread leaves this factor of its largest value before
START_FACTOR = 2.0


def spreads(sequence: Sequence[tuple[TensorInfo, dict[str, float]]]) -> list[tuple[TensorInfo, float]]:
    """``(info, log batch_spread)`` of the tensors that have one (enough values, non-zero spread)."""
    out = []
    for info, fig in sequence:
        if fig.get("numel", math.inf) < MIN_DISTRIBUTION_VALUES:
            continue
        s = fig.get("batch_spread", math.nan)
        if math.isfinite(s) and s > 0:
            out.append((info, math.log(s)))
    return out


def collapse_ratio(sequence: Sequence[tuple[TensorInfo, dict[str, float]]]) -> float:
    """The figure ``collapse`` compares with its threshold: how far (factor) the spread of a whole suffix
    of at least ``MIN_SPAN`` tensors stays below the largest spread before it (1.0 when it never falls).

    Example:
        >>> from lightning_normwatch.judge.rules import TensorInfo
        >>> seq = [(TensorInfo(str(i), "preact", "Linear", 8), {"batch_spread": 10.0**-i}) for i in range(6)]
        >>> round(collapse_ratio(seq), 6)
        100.0
    """
    gaps = [g for g in _gaps([x for _, x in spreads(sequence)], -1.0) if math.isfinite(g)]
    return math.exp(max(gaps)) if gaps and max(gaps) > 0 else 1.0


def collapse_alerts(
    sequence: Sequence[tuple[TensorInfo, dict[str, float]]],
    th: Thresholds,
    step: int,
    active: set[tuple[str, str]] = frozenset(),  # type: ignore[assignment]
) -> tuple[list[Alert], set[tuple[str, str]]]:
    """``collapse`` alerts for the watched tensors in execution order (inputs and prediction left out).

    Returns the alerts that hold now and the (module, kind) pairs evaluated, as ``depth.depth_alerts``.
    An alert already ``active`` stays on its tensor while the collapse is still out of range.
    """
    kind, factor = "collapse", th.collapse
    points = spreads(sequence)
    logs = [x for _, x in points]
    gaps = _gaps(logs, -1.0)
    checked = {(info.name, kind) for info, _ in points}
    at = next((i for i, g in enumerate(gaps) if g > math.log(factor)), None)
    if at is None:
        return [], checked
    peak = max(range(at), key=lambda i: logs[i])
    suffix_max = [max(logs[j:]) for j in range(len(logs))]
    start = next(j for j in range(peak + 1, at + 1) if suffix_max[j] < logs[peak] - math.log(START_FACTOR))
    held = [i for i, (info, _) in enumerate(points) if (info.name, kind) in active]
    held = [i for i in held if peak < i <= at]  # an active alert stays on its tensor while it holds
    start = held[0] if held else start
    info = points[start][0]
    ratio = math.exp(max(g for g in gaps if math.isfinite(g)))  # the whole fall, as ``collapse_ratio``
    last_info, last = points[-1][0], math.exp(logs[-1])
    message = (
        f"The batch signal collapses with depth from {who(info)} on: the spread across the examples of a "
        f"batch (mean per-unit std over the RMS) falls from {math.exp(logs[peak]):.2g} at {who(points[peak][0])} "
        f"to {math.exp(logs[start]):.2g} here and {last:.2g} at {who(last_info)}, {ratio:.3g}x (threshold "
        f"{factor:g}x), while the layers' RMS stays up: the network computes nearly the same output for every "
        "input. Usual causes: weights initialised too small for this depth, so each layer's output is mostly "
        "its bias (use He/Xavier initialization), or saturating activations; normalization (BatchNorm) or "
        "residual connections keep the examples apart."
    )
    return [Alert(step, info.name, kind, SEVERITY[kind], float(ratio), float(factor), message)], checked
