"""Alert rules: pure functions from one tensor's figures to the alerts that hold now.

Scale problems are warnings; a non-Gaussian shape is information, and is only reported where a
Gaussian shape is usually expected (inputs and pre-activations: linear, conv and norm outputs),
never for post-activation outputs, which are not Gaussian by construction.

Example:
    >>> info = TensorInfo("fc", role="activation", type_name="ReLU", channels=64)
    >>> alerts, checked = evaluate(info, {"dead": 0.9, "channel_rows": 32}, None, Thresholds(), step=7)
    >>> [(a.kind, a.module, a.severity) for a in alerts]
    [('dead', 'fc', 'warning')]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

from ..collect.info import TensorInfo
from ..config import Thresholds
from .alerts import SEVERITY, Alert

__all__ = ["evaluate", "feature_scale_message", "nonfinite_alert", "Checks"]

#: an active alert clears when its figure falls below this fraction of the threshold
CLEAR_FRACTION = 0.8
#: rows per unit below which `dead` is not judged (a healthy ReLU unit is zero on 16 rows with p ~ 2e-5)
MIN_DEAD_ROWS = 16
#: rows per channel below which within-channel skewness/kurtosis are too biased to report a shape
MIN_SHAPE_ROWS = 64
#: values per tensor and step below which a tensor has no distribution to drift or to shape (a 0-d
#: auxiliary loss, a per-sample scalar of a tiny batch): drift and shape rules are skipped
MIN_DISTRIBUTION_VALUES = 32
#: share of a dtype's largest finite value above which values are close to overflowing (a square,
#: a sum or one more layer overflows); float16's range is small enough that 10 % (6,550) is the mark
NEAR_OVERFLOW_SHARE = {"float16": 0.1}
NEAR_OVERFLOW_DEFAULT = 1e-2


def who(info: TensorInfo) -> str:
    """How a message names a tensor: ```net.1` (ReLU)``."""
    return f"`{info.name}` ({info.type_name})"


@lru_cache(maxsize=32)
def near_overflow_limit(dtype: str) -> float:
    """|x| above which values of ``dtype`` are close to overflowing.

    Example:
        >>> f"{near_overflow_limit('float16'):.5g}", f"{near_overflow_limit('float32'):.3g}"
        ('6550.4', '3.4e+36')
    """
    import torch

    try:
        largest = float(torch.finfo(getattr(torch, dtype)).max)
    except (AttributeError, TypeError):
        largest = float(torch.finfo(torch.float32).max)
    return NEAR_OVERFLOW_SHARE.get(dtype, NEAR_OVERFLOW_DEFAULT) * largest


def _alert(step: int, info: TensorInfo, kind: str, value: float, threshold: float, message: str) -> Alert:
    return Alert(step, info.name, kind, SEVERITY[kind], float(value), float(threshold), message)


def nonfinite_alert(step: int, origin: str, share: float, downstream: int, source: str) -> Alert:
    """The ``nonfinite`` alert naming the first module (in execution order) that produced NaN/Inf."""
    rest = f"; {downstream} later watched tensor(s) are non-finite too" if downstream else ""
    what = f"{share:.1%} of sampled values" if math.isfinite(share) and share > 0 else "NaN/Inf values"
    return Alert(
        step,
        origin,
        "nonfinite",
        SEVERITY["nonfinite"],
        float(share) if math.isfinite(share) else 1.0,
        0.0,
        f"Non-finite values first appear in `{origin}` at step {step} ({what}, found by {source}{rest}); "
        "usual causes: a learning rate too high, log/sqrt/division of non-positive values, or fp16 overflow.",
    )


def feature_scale_message(name: str, ratio: float, largest: float, th: Thresholds) -> str:
    """The ``feature_scale`` message, saying which limit was crossed: the absolute size of the largest
    feature's RMS, the ratio of the largest to the median feature's, or both.

    Example:
        >>> feature_scale_message("input", 1.19, 183.0, Thresholds())[:99]
        'Input features of `input` are far from unit scale: the largest feature RMS 183 exceeds the absolute'
    """
    limit = th.feature_scale
    size = f"the largest feature RMS {largest:.3g} exceeds the absolute limit {limit:g}"
    spread = f"the largest feature RMS is {ratio:.3g}x the median feature's, above the ratio limit {limit:g}x"
    if largest > limit and ratio > limit:
        what, problem = f"{size}, and {spread}", "far from unit scale and not on comparable scales"
    elif largest > limit:
        what = f"{size} (it is {ratio:.3g}x the median feature's, within the ratio limit {limit:g}x)"
        problem = "far from unit scale"
    else:
        what = f"{spread} (the largest RMS {largest:.3g} is within the absolute limit {limit:g})"
        problem = "not on comparable scales"
    return (
        f"Input features of `{name}` are {problem}: {what}; standardize them (e.g. StandardScaler, or a Normalize "
        "transform for raw 0-255 pixels) so that no feature dominates the gradients and the first layers see "
        f"values of order 1 (the feature_scale threshold, {limit:g}, bounds both)."
    )


class Checks:
    """The alerts that hold for one tensor now, and the (module, kind) pairs evaluated (for the tracker)."""

    def __init__(self, info: TensorInfo, step: int) -> None:
        self.info, self.step = info, step
        self.label = who(info)
        self.out: list[Alert] = []
        self.checked: set[tuple[str, str]] = set()

    def check(self, kind: str, condition: bool, value: float, threshold: float, message: Callable[[], str]) -> None:
        """Hysteresis: an active alert clears only once the figure is clearly back (below 80 % of the
        threshold), so a figure hovering around its threshold does not raise the alert again and again.
        ``message`` is called only when the alert fires (most checks at most steps do not: no text to format)."""
        if condition:
            self.out.append(_alert(self.step, self.info, kind, value, threshold, message()))
            self.checked.add((self.info.name, kind))
        elif value < CLEAR_FRACTION * threshold:
            self.checked.add((self.info.name, kind))


def evaluate(
    info: TensorInfo,
    fig: dict[str, float],
    drift: dict[str, float] | None,
    th: Thresholds,
    step: int,
    alive_before: bool = False,
) -> tuple[list[Alert], set[tuple[str, str]]]:
    """Alerts whose condition holds for this tensor now, and the (module, kind) pairs evaluated.

    ``nonfinite`` is handled across tensors by the evaluator (it names the first one), and the
    depth rules (``vanishing``, ``exploding``) by ``depth.py``, not here. ``alive_before``: the
    tensor's units were alive at an earlier logging step (the ``dead`` message names the causes
    of units dying during training rather than at initialization).
    """
    c = Checks(info, step)
    if fig.get("numel", math.inf) < MIN_DISTRIBUTION_VALUES:
        drift = None  # a scalar (e.g. a mixture-of-experts balance loss) has no distribution to drift
    # every row identical (a broadcast embedding: BERT's token types when all are 0): the values are
    # the layer's parameters, one per channel, not a distribution over the data; its scale still counts
    constant_rows = fig.get("channel_std_max", math.nan) <= 1e-6 * fig.get("max_abs", math.nan)
    if drift is not None and constant_rows:
        drift = {"std_log_ratio": drift.get("std_log_ratio", math.nan)}
    unit_rules(c, fig, th, alive_before)
    scale_rules(c, fig, th)
    if not constant_rows:
        shape_rules(c, fig, th)
    if drift is not None:
        drift_rules(c, drift, th)
    return c.out, c.checked


def unit_rules(c: Checks, fig: dict[str, float], th: Thresholds, alive_before: bool) -> None:
    """``dead`` units of an activation, ``saturated`` outputs of a bounded one."""
    info, label = c.info, c.label
    dead = fig.get("dead")
    # Units of activations (not of linear/conv outputs: a zero-initialised projection is deliberate),
    # judged on enough rows that a healthy ReLU unit is practically never zero on all of them.
    judged = (
        info.role in ("activation", "bounded", "other")
        and dead is not None
        and math.isfinite(dead)
        and info.channels >= 4
        and fig.get("channel_rows", 0) >= MIN_DEAD_ROWS
    )
    if judged:
        if alive_before:
            cause = (
                "its units were alive at earlier logging steps and died during training; usual causes: a "
                "learning rate too high (one large update pushes the bias or the weights negative) or a bias "
                "drifting negative; try a lower learning rate or warm-up, LeakyReLU/GELU, or a normalization "
                "before the activation"
            )
        else:
            cause = (
                "dead from the first logging step; usual cause: the set-up, i.e. initialization (a large negative "
                "bias, or weights too small for this depth so that pre-activations vanish or are all negative) "
                "or unnormalized inputs; try He (Kaiming) initialization, a zero bias, or a normalization before "
                "the activation"
            )
        c.check(
            "dead",
            dead >= th.dead,
            dead,
            th.dead,
            lambda: (
                f"{dead:.0%} of {label}'s {info.channels} units output zero for the whole sampled batch "
                f"(threshold {th.dead:.0%}): {cause}."
            ),
        )
    sat = fig.get("saturated")
    if info.role == "bounded" and sat is not None and math.isfinite(sat):
        c.check(
            "saturated",
            sat >= th.saturated,
            sat,
            th.saturated,
            lambda: (
                f"{sat:.0%} of {label}'s outputs sit at the limits of its range (threshold "
                f"{th.saturated:.0%}), where its gradient vanishes; usual cause: large weights or initialization, "
                "or unnormalized inputs."
            ),
        )


def scale_rules(c: Checks, fig: dict[str, float], th: Thresholds) -> None:
    """``outlier`` (massive values), ``feature_scale`` (inputs), ``near_overflow`` (the dtype's range)."""
    info, label, name = c.info, c.label, c.info.name
    typical, max_abs = fig.get("abs_median", math.nan), fig.get("max_abs", math.nan)
    if math.isfinite(typical) and math.isfinite(max_abs) and typical > 0 and fig.get("sampled", 0) >= 100:
        ratio = max_abs / typical
        c.check(
            "outlier",
            ratio > th.outlier and max_abs >= th.outlier_min_abs,
            ratio,
            th.outlier,
            lambda: (
                f"{label} has massive values: max |x| = {max_abs:.4g} is {ratio:.0f}x its median non-zero |x| "
                f"{typical:.3g} (threshold {th.outlier:g}x); usual causes: a few exploding units, unclipped inputs "
                "or corrupted samples."
            ),
        )
    ratio, largest = fig.get("feature_rms_ratio", math.nan), fig.get("feature_rms_max", math.nan)
    if info.role == "input" and math.isfinite(ratio) and math.isfinite(largest):
        value = max(ratio, largest)
        c.check(
            "feature_scale",
            value > th.feature_scale,
            value,
            th.feature_scale,
            lambda: feature_scale_message(name, ratio, largest, th),
        )
    limit = near_overflow_limit(info.dtype)
    if math.isfinite(max_abs):
        c.check(
            "near_overflow",
            max_abs > limit,
            max_abs,
            limit,
            lambda: (
                f"{label} holds values of {max_abs:.3g}, close to the largest {info.dtype} ({limit:.3g} is the mark): "
                "one more layer, a square or a sum overflows to inf; usual causes: exploding activations from a "
                "learning rate too high, or half precision without loss scaling / normalization."
            ),
        )


def shape_rules(c: Checks, fig: dict[str, float], th: Thresholds) -> None:
    """``non_normal`` (information) where a Gaussian shape is usually expected: inputs and pre-activations."""
    info, label = c.info, c.label
    shaped = info.role == "input" or (info.role == "preact" and fig.get("channel_rows", 0) >= MIN_SHAPE_ROWS)
    if shaped and fig.get("numel", math.inf) >= MIN_DISTRIBUTION_VALUES:
        g1, g2 = fig.get("channel_skew", math.nan), fig.get("channel_kurtosis", math.nan)
        value = max(abs(g1) / th.skew if math.isfinite(g1) else 0.0, g2 / th.kurtosis if math.isfinite(g2) else 0.0)
        c.check(
            "non_normal",
            value > 1.0,
            value,
            1.0,
            lambda: (
                f"{label} is far from Gaussian-shaped (within-channel skewness {g1:.2f}, excess kurtosis "
                f"{g2:.2f}; thresholds |{th.skew:g}| and {th.kurtosis:g}). Information, not a fault: networks "
                "do not need Gaussian values, only comparable, stable scales."
            ),
        )


def drift_rules(c: Checks, drift: dict[str, float], th: Thresholds) -> None:
    """``scale_drift``, ``mean_drift`` and ``shift`` against the tensor's reference."""
    label = c.label
    slr = drift.get("std_log_ratio", math.nan)
    if math.isfinite(slr):
        factor = math.exp(abs(slr))
        direction = "grew" if slr > 0 else "shrank"
        c.check(
            "scale_drift",
            factor > th.scale_drift,
            factor,
            th.scale_drift,
            lambda: (
                f"The std of {label} {direction} {factor:.1f}x from its reference (threshold "
                f"{th.scale_drift:g}x); usual causes: a learning rate too high (exploding) or a vanishing "
                "signal, or input data whose scale changed."
            ),
        )
    shift = drift.get("mean_shift", math.nan)
    if math.isfinite(shift):
        c.check(
            "mean_drift",
            abs(shift) > th.mean_drift,
            abs(shift),
            th.mean_drift,
            lambda: (
                f"The mean of {label} moved {shift:+.1f} reference stds from its reference (threshold "
                f"{th.mean_drift:g}); usual causes: a shifted input distribution or a bias running away."
            ),
        )
    value = drift.get("shape_psi", math.nan)
    if math.isfinite(value):
        c.check(
            "shift",
            value > th.shift,
            value,
            th.shift,
            lambda: (
                f"The shape of {label}'s distribution moved away from its reference: PSI {value:.2f} after "
                f"standardizing both (threshold {th.shift:g}); usual causes: changed input data, units dying "
                "or saturating, or unstable training."
            ),
        )
