"""Which figures are logged as scalars ``normwatch/<tensor>/<figure>``, by tensor role.

By default (``scalars="default"``) a tensor gets the figures a person reads and the ones the alert
rules compare, and only those that can apply to it: ``dead`` only for activations (a Linear's
output has no dead units), ``saturated`` only for bounded activations (sigmoid, tanh ...), the
within-channel shape only where the ``non_normal`` rule judges it (inputs and pre-activations),
the feature-scale and per-feature drift figures only for inputs (whose drift is judged per
feature: their pooled drift figures are left out), ``nonfinite`` only once it is not zero. ``scalars="all"``
logs every figure (still skipping the role-less ones: a ReLU cannot saturate).

Example:
    >>> scalar_names("activation")
    ('mean', 'std', 'zeros', 'std_log_ratio', 'mean_shift', 'shape_psi', 'dead')
    >>> scalar_names("bounded")[-2:]
    ('dead', 'saturated')
    >>> len(scalar_names("preact")), "dead" in scalar_names("preact")
    (8, False)
    >>> len(scalar_names("preact", "all")), len(scalar_names("bounded", "all"))
    (20, 22)
"""

from __future__ import annotations

import functools
import math

from ..config import SCALAR_SETS

__all__ = ["SCALAR_SETS", "ALL_SCALARS", "scalar_names", "scalar_metrics", "threshold_metrics"]

#: every figure that can be logged as a scalar (``scalars="all"``)
ALL_SCALARS = (
    "mean",
    "std",
    "min",
    "max",
    "zeros",
    "nonfinite",
    "skew",
    "kurtosis",
    "channel_skew",
    "channel_kurtosis",
    "channel_scale_ratio",
    "dead",
    "saturated",
    "normal_ks",
    "normaltest_p",
    "jarque_bera_p",
    "std_log_ratio",
    "mean_shift",
    "psi",
    "ks",
    "shape_psi",
    "shape_ks",
    "feature_rms_ratio",
    "feature_rms_max",
    "feature_drift_share",
    "feature_changed_share",
    "feature_drift_worst",
    "feature_mean_shift_max",
    "feature_std_log_ratio_max",
    "feature_psi_max",
    "update_ratio",
    "grad_rms",
    "weight_rms",
    "update_drift",
    "grad_drift",
    "weight_drift",
)
#: the parameter side (``collect/updates.py``): only for modules with parameters an optimizer steps
_PARAMS = ("update_ratio", "grad_rms", "weight_rms", "update_drift", "grad_drift", "weight_drift")
#: the per-feature input drift figures (inputs are judged per feature, not on the pooled tensor's drift)
_INPUT_DRIFT = ("feature_drift_share", "feature_mean_shift_max", "feature_std_log_ratio_max", "feature_psi_max")
#: logged even when not finite (a NaN std is news)
_ALWAYS = frozenset({"mean", "std", "min", "max"})
#: default set: scale, zeros, and the three drift figures the rules compare with thresholds
_COMMON = ("mean", "std", "zeros", "std_log_ratio", "mean_shift", "shape_psi")
_BY_ROLE = {
    "input": ("channel_skew", "channel_kurtosis", "feature_rms_ratio", "feature_rms_max", *_INPUT_DRIFT),
    "preact": ("channel_skew", "channel_kurtosis"),
    "activation": ("dead",),
    "bounded": ("dead", "saturated"),
    "other": ("dead",),
}
#: figures that only mean something for some roles (left out for the others in every set)
_ONLY_FOR = {
    "dead": ("activation", "bounded", "other"),
    "saturated": ("bounded",),
    "feature_rms_ratio": ("input",),
    "feature_rms_max": ("input",),
    **{name: ("input",) for name in ALL_SCALARS if name.startswith("feature_")},
}


def scalar_names(role: str, which: str = "default") -> tuple[str, ...]:
    """The figures logged for a tensor of this role (``input``, ``preact``, ``activation``, ``bounded``, ``other``)."""
    if which == "all":
        return tuple(n for n in ALL_SCALARS if role in _ONLY_FOR.get(n, (role,)) and n not in _PARAMS)
    if role == "input":  # the pooled tensor's drift figures are not what input_drift judges
        return _COMMON[:3] + _BY_ROLE["input"]
    return _COMMON + _BY_ROLE.get(role, ())


@functools.lru_cache(maxsize=4096)
def _plan(key: str, role: str, which: str, updates: bool) -> tuple[tuple[str, str, bool], ...]:
    """``(figure, tag, logged even when not finite)`` of each scalar a tensor may log (a logging step's loop,
    computed once per tensor)."""
    names = scalar_names(role, which)
    if which == "default" and updates:
        # one update figure per module; a pre-activation's share of exact zeros (never judged, about 0 for a
        # Linear/conv/norm output) gives way to it, so that the budget stays at 8 scalars per tensor
        names = tuple(n for n in names if not (role == "preact" and n == "zeros")) + ("update_ratio",)
    elif which == "all" and updates:
        names = names + _PARAMS
    return tuple((stat, f"normwatch/{key}/{stat}", stat in _ALWAYS) for stat in names)


def scalar_metrics(key: str, role: str, fig: dict[str, float], which: str = "default") -> dict[str, float]:
    """``{"normwatch/<key>/<figure>": value}`` for one tensor at one logging step.

    Figures that are not finite are left out (NaN skew of a constant tensor, drift before the
    reference is complete), except mean/std/min/max; a module whose parameters an optimizer steps has
    ``update_ratio`` too (with ``which="all"`` also ``grad_rms``, ``weight_rms`` and their drifts; a
    pre-activation's ``zeros`` gives way to it in the default set); ``nonfinite`` is logged once it is non-zero
    (always with ``which="all"``); ``mean_minus_std`` / ``mean_plus_std`` only with ``which="all"``.

    Example:
        >>> scalar_metrics("net.1", "activation", {"mean": 0.5, "std": float("nan"), "dead": 0.25, "nonfinite": 0.0})
        {'normwatch/net.1/mean': 0.5, 'normwatch/net.1/std': nan, 'normwatch/net.1/dead': 0.25}
        >>> sorted(scalar_metrics("net.0", "preact", {"mean": 0.0, "std": 1.0, "zeros": 0.0, "update_ratio": 1e-3}))
        ['normwatch/net.0/mean', 'normwatch/net.0/std', 'normwatch/net.0/update_ratio']
    """
    out: dict[str, float] = {}
    for stat, tag, always in _plan(key, role, which, "update_ratio" in fig):
        value = fig.get(stat)
        if value is not None and (always or math.isfinite(value)):
            out[tag] = float(value)
    bad = fig.get("nonfinite")
    base = f"normwatch/{key}/"
    if which == "default" and bad is not None and (bad > 0 or not math.isfinite(bad)):
        out[base + "nonfinite"] = float(bad)
    if which == "all":
        mean, std = fig.get("mean", math.nan), fig.get("std", math.nan)
        if math.isfinite(mean) and math.isfinite(std):
            out[base + "mean_minus_std"] = mean - std
            out[base + "mean_plus_std"] = mean + std
    return out


def threshold_metrics(th: object, logged: dict[str, float]) -> dict[str, float]:
    """``normwatch/thresholds/*`` for the figures logged at this step, both sides where a figure has two.

    A threshold is only logged at steps where its figure is, so its line starts where the figure's
    does: ``log_scale_drift`` (``+log(scale_drift)``) with ``log_scale_drift_low`` (its negative),
    ``mean_drift`` with ``mean_drift_low``, ``shift`` (shape PSI), ``dead``, ``saturated``; for inputs
    the per-feature effect floors ``input_mean_shift``, ``input_log_scale`` (``log(input_scale)``), ``input_psi``.

    Example:
        >>> from lightning_normwatch.config import Thresholds
        >>> th = threshold_metrics(Thresholds(), {"normwatch/net.1/std_log_ratio": 0.1})
        >>> sorted(th.items())  # doctest: +ELLIPSIS
        [('normwatch/thresholds/log_scale_drift', 1.386...), ('normwatch/thresholds/log_scale_drift_low', -1.386...)]
        >>> threshold_metrics(Thresholds(), {"normwatch/net.1/std": 1.0})
        {}
    """
    figures = {tag.rsplit("/", 1)[1] for tag in logged}
    out: dict[str, float] = {}
    base = "normwatch/thresholds/"
    if "std_log_ratio" in figures:
        out[base + "log_scale_drift"] = math.log(th.scale_drift)  # type: ignore[attr-defined]
        out[base + "log_scale_drift_low"] = -math.log(th.scale_drift)  # type: ignore[attr-defined]
    if "mean_shift" in figures:
        out[base + "mean_drift"] = th.mean_drift  # type: ignore[attr-defined]
        out[base + "mean_drift_low"] = -th.mean_drift  # type: ignore[attr-defined]
    for figure, name in (("shape_psi", "shift"), ("dead", "dead"), ("saturated", "saturated")):
        if figure in figures:
            out[base + name] = float(getattr(th, name))
    # inputs: the per-feature effect floors (a change must also beat sampling noise to count)
    if "feature_mean_shift_max" in figures:
        out[base + "input_mean_shift"] = th.input_mean_shift  # type: ignore[attr-defined]
    if "feature_std_log_ratio_max" in figures:
        out[base + "input_log_scale"] = math.log(th.input_scale)  # type: ignore[attr-defined]
    if "feature_psi_max" in figures:
        out[base + "input_psi"] = th.input_psi  # type: ignore[attr-defined]
    return out
