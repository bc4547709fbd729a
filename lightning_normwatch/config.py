"""Thresholds and validation of user configuration (errors name the parameter and the value).

Example:
    >>> Thresholds(dead=0.6).dead
    0.6
    >>> Thresholds(dead=2)
    Traceback (most recent call last):
    ...
    ValueError: NormWatch: thresholds.dead must be in (0, 1], got 2
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

__all__ = ["Thresholds", "check_positive_int", "check_choice"]


def _fail(name: str, rule: str, value: object) -> ValueError:
    return ValueError(f"NormWatch: {name} must be {rule}, got {value!r}")


def check_positive_int(name: str, value: object, allow_none: bool = False, minimum: int = 1) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an int >= ``minimum`` (or None if allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(name, f"an integer >= {minimum}" + (" or None" if allow_none else ""), value)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise _fail(name, "one of " + ", ".join(repr(c) for c in choices), value)


@dataclass(frozen=True)
class Thresholds:
    """Alert thresholds. Defaults were calibrated on healthy and broken runs (README, "Calibration").

    Attributes:
        dead: share of a layer's units that are zero on the whole sampled batch.
        saturated: share of a bounded activation's outputs within 1 % of its range from a limit.
        scale_drift: factor by which std may move from the reference (either way).
        mean_drift: reference stds by which the mean may move.
        shift: PSI between the reference and current distributions after standardizing each by its
            median and IQR (a change of shape; location and scale have their own alerts).
        feature_scale: ratio of the largest input feature RMS to the median feature's (constant
            features left out, over all batches seen); also fires when a feature's RMS exceeds it.
        outlier: max |x| over the median non-zero |x| ("Massive Activations", Sun et al. 2024, use
            about 1000x the median; healthy standardized inputs with rare features reached 80x).
        outlier_min_abs: ... and max |x| at least this large (ignore tiny tensors' noise).
        skew: |within-channel skewness| above which the shape is reported as non-normal (info).
        kurtosis: within-channel excess kurtosis above which the shape is reported as non-normal (info).
        vanishing: factor by which the RMS of every tensor from some layer on may stay below the largest
            RMS of the layers before it (``depth.py``; no reference needed).
        exploding: factor by which the RMS of every tensor from some layer on may stay above the smallest
            RMS of the layers before it.
        input_mean_shift: effect-size floor of an input feature's mean shift, in its reference stds.
        input_scale: effect-size floor of an input feature's std ratio (either way).
        input_psi: effect-size floor of an input feature's PSI on its anchor bins.
        input_noise_z: a feature's change must also exceed this many standard errors of what a batch
            of that size produces by chance (``features.feature_drift``); then it must hold on two
            consecutive logging steps to raise ``input_drift``.
        update_large: update-to-weight ratio ||dW||/||W|| of one optimizer step above which a layer's
            updates are too large (``update_size``; held 2 logging steps; docs/updates.md).
        update_small: factor by which a layer's update ratio may stay below the median layer's while its
            gradient is not that small (``update_size``: learning rate 0 in its param group).
        vanishing_gradient: factor by which the gradient RMS of the weight matrices from some layer back
            to the input may stay below that of a later layer (``judge/updates.py``).
        exploding_gradient: factor by which it may stay above the smallest gradient RMS of a later layer.
    """

    dead: float = 0.5
    saturated: float = 0.5
    scale_drift: float = 4.0
    mean_drift: float = 4.0
    shift: float = 2.5
    feature_scale: float = 100.0
    outlier: float = 500.0
    outlier_min_abs: float = 6.0
    skew: float = 2.0
    kurtosis: float = 4.0
    vanishing: float = 8.0
    exploding: float = 30.0
    input_mean_shift: float = 0.5
    input_scale: float = 1.5
    input_psi: float = 0.2
    input_noise_z: float = 5.0
    update_large: float = 0.1
    update_small: float = 1000.0
    vanishing_gradient: float = 1000.0
    exploding_gradient: float = 1000.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise _fail(f"thresholds.{f.name}", "a finite number", value)
        for name in ("dead", "saturated"):
            if not 0 < getattr(self, name) <= 1:
                raise _fail(f"thresholds.{name}", "in (0, 1]", getattr(self, name))
        ratios = ("update_small", "vanishing_gradient", "exploding_gradient")
        for name in ("scale_drift", "feature_scale", "outlier", "input_scale", "vanishing", "exploding", *ratios):
            if getattr(self, name) <= 1:
                raise _fail(f"thresholds.{name}", "> 1", getattr(self, name))
        positive = ("mean_drift", "shift", "outlier_min_abs", "skew", "kurtosis")
        for name in (*positive, "input_mean_shift", "input_psi", "input_noise_z", "update_large"):
            if getattr(self, name) <= 0:
                raise _fail(f"thresholds.{name}", "> 0", getattr(self, name))

    @classmethod
    def coerce(cls, value: Thresholds | dict[str, float] | None) -> Thresholds:
        """Accept a ``Thresholds``, a dict of overrides, or None (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise _fail("thresholds", "a dict with keys among " + ", ".join(sorted(known)), unknown)
            return cls(**value)
        raise _fail("thresholds", "a Thresholds, a dict or None", value)
