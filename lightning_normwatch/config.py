"""Every setting and threshold, defined once, validated at construction (errors name the parameter and the value).

``SessionConfig`` holds the settings of a session (the arguments of ``NormWatch`` and ``LoopWatch``),
``Thresholds`` the alert thresholds; both are passed down with each step, never looked up elsewhere.

Example:
    >>> Thresholds(dead=0.6).dead
    0.6
    >>> Thresholds(dead=2)
    Traceback (most recent call last):
    ...
    ValueError: NormWatch: thresholds.dead must be in (0, 1], got 2
    >>> SessionConfig(sample_size=8)
    Traceback (most recent call last):
    ...
    ValueError: NormWatch: sample_size must be an integer >= 16, got 8
    >>> SessionConfig().interval(None), SessionConfig().interval(10), SessionConfig(every_n_steps=5).interval(10)
    (50, 10, 5)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

__all__ = ["SessionConfig", "Thresholds", "DEFAULT_INTERVAL", "SCALAR_SETS", "check_positive_int", "check_choice"]

#: logging interval (global steps) when neither ``every_n_steps`` nor the trainer gives one
DEFAULT_INTERVAL = 50
#: ``scalars=``: per tensor the figures a person reads (by role), or every figure
SCALAR_SETS = ("default", "all")


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
    """Alert thresholds. Defaults were calibrated on healthy and broken runs (docs/alerts.md, "Calibration").

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
        collapse: factor by which the spread across a batch's examples (mean per-unit std over the RMS) of
            every tensor from some layer on may stay below the largest spread before it (``judge/collapse.py``).
        input_mean_shift: effect-size floor of an input feature's mean shift, in its reference stds.
        input_scale: effect-size floor of an input feature's std ratio (either way).
        input_psi: effect-size floor of an input feature's PSI on its anchor bins.
        input_noise_z: a feature's change must also exceed this many standard errors of what a batch
            of that size produces by chance (``stats.feature_drift.feature_drift``); then it must hold on two
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
    collapse: float = 1000.0
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
        ratios = ("collapse", "update_small", "vanishing_gradient", "exploding_gradient")
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


@dataclass(frozen=True)
class SessionConfig:
    """The settings of a session: the arguments of ``NormWatch``/``LoopWatch`` and a few internal bounds.

    Attributes:
        every_n_steps: logging interval in global steps; None: the trainer's ``log_every_n_steps``, else 50.
        sample_size: values sampled per watched tensor per logging step (the bound on the cost per layer).
        pvalue_size: values the normality p-values are computed on (fixed, whatever the layer size).
        warmup_steps: global steps before the reference window opens; None (default): fitted to the run's
            length (``judge/windows.py``: 25 % of the run, at most 100; 100 when the length is unknown).
        reference_steps: length of the reference window in global steps; drift is measured after it. None
            (default): fitted (25 % of the run, at least 4 logging steps, at most 200; 200 when unknown).
        total_steps: the run's length in global steps, a hint for the fitted windows (``LoopWatch``; the
            Lightning adapter reads it from the trainer); None: unknown.
        thresholds: alert thresholds (``Thresholds``, or a dict of overrides, coerced).
        on_alert: ``"warn"`` (log), ``"raise"`` (``NormWatchAlertError`` on a warning or error) or ``"ignore"``.
        check_nonfinite: check the loss every step and name the first module producing NaN/Inf.
        seed: seed of the session's own sampling generator.
        tensorboard: write histograms, the custom-scalars layout and the alert table to TensorBoard.
        plot_every_n_steps: write Q-Q/histogram figures every this many steps (None: never).
        input_drift: severity of ``input_drift`` alerts: ``"warn"``, ``"info"`` or ``"off"`` (figures only).
        feature_names: names of the input features (columns/channels), used in ``input_drift`` messages.
        scalars: ``"default"`` (per tensor the figures for its role) or ``"all"``.
        updates: measure update sizes, gradients and weights of the watched modules' parameters around the
            optimizer step of each logging step, and judge them (``docs/updates.md``); False turns it off.
        params: ``"default"``, or ``"histograms"``: also weight and gradient histograms per module in
            TensorBoard (``normwatch/params/<module>/weight`` and ``.../grad``), binned on the device.
        pipeline: ``"thread"``: the judging and writing of a logging step run on a worker thread while training
            goes on, in step order (``docs/pipeline.md``); ``"sync"``: on the training thread, as the step ends
            (the same alerts, event files and checkpoints); ``"auto"`` (default): the thread when the logging
            interval is longer than one step (the judging overlaps the steps in between), else sync.
        min_rows: rows (batch positions) sampled at least per tensor.
        max_channels: channels measured at most per tensor.
        world_size: number of processes whose samples are merged (the p-value subsample is split).
        input_sample_size: values sampled at most per input tensor (inputs are few and drift needs rows).
        input_rows: rows of an input sampled at most per feature and logging step (the per-feature drift
            tests' sample; 1,024 rows of a 256-feature input cost 3.4 ms of a 20 ms MLP logging step).
    """

    every_n_steps: int | None = None
    sample_size: int = 8192
    pvalue_size: int = 5000
    warmup_steps: int | None = None
    reference_steps: int | None = None
    total_steps: int | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    on_alert: str = "warn"
    check_nonfinite: bool = True
    seed: int = 0
    tensorboard: bool = True
    plot_every_n_steps: int | None = None
    input_drift: str = "warn"
    feature_names: tuple[str, ...] | None = None
    scalars: str = "default"
    updates: bool = True
    params: str = "default"
    pipeline: str = "auto"
    min_rows: int = 16
    max_channels: int = 2048
    world_size: int = 1
    input_sample_size: int = 1 << 18
    input_rows: int = 256

    def __post_init__(self) -> None:
        check_positive_int("every_n_steps", self.every_n_steps, allow_none=True)
        check_positive_int("sample_size", self.sample_size, minimum=16)
        check_positive_int("pvalue_size", self.pvalue_size, minimum=8)
        check_positive_int("warmup_steps", self.warmup_steps, allow_none=True, minimum=0)
        check_positive_int("reference_steps", self.reference_steps, allow_none=True)
        check_positive_int("total_steps", self.total_steps, allow_none=True)
        check_choice("on_alert", self.on_alert, ("warn", "raise", "ignore"))
        check_positive_int("plot_every_n_steps", self.plot_every_n_steps, allow_none=True)
        check_choice("input_drift", self.input_drift, ("warn", "info", "off"))
        check_choice("scalars", self.scalars, SCALAR_SETS)
        check_choice("params", self.params, ("default", "histograms"))
        check_choice("pipeline", self.pipeline, ("auto", "thread", "sync"))
        names = self.feature_names
        if names is not None:
            if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
                raise _fail("feature_names", "a sequence of strings or None", names)
            object.__setattr__(self, "feature_names", tuple(names))
        for name in ("check_nonfinite", "tensorboard", "updates"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(name, "a bool", getattr(self, name))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise _fail("seed", "an int", self.seed)
        object.__setattr__(self, "thresholds", Thresholds.coerce(self.thresholds))

    def interval(self, trainer_default: int | None) -> int:
        """The logging interval: ``every_n_steps``, else the trainer's, else ``DEFAULT_INTERVAL``."""
        return self.every_n_steps or trainer_default or DEFAULT_INTERVAL
