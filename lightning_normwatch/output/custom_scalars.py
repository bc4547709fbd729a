"""The custom-scalars layout: one chart per tensor and figure, both threshold lines, tensors in short
categories by layer group (``group_of``), so that a 100-layer model stays browsable.

Example:
    >>> group_of("encoder.0.conv1"), group_of("net.3"), group_of("fc1"), group_of("input/x")
    ('encoder.0', 'net', 'model', 'inputs')
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .overview import row_label

__all__ = ["layout_for", "group_of", "group_pattern", "TENSORS_PER_CATEGORY"]


def group_of(key: str) -> str:
    """The layer group of a tensor key: its block, i.e. the path up to the first numeric index.

    ``encoder.0.conv1`` -> ``encoder.0`` (a block of a Sequential/ModuleList), ``net.3`` -> ``net``
    (a layer of a Sequential), ``model.layers.2.mlp.fc1`` -> ``model.layers.2``, a top-level module
    ``fc1`` -> ``model``; batch inputs -> ``inputs``. Output parts (``lstm[0]``) and repeated calls
    (``fc@2``) belong to their module's group.

    Example:
        >>> group_of("model.layers.2.mlp.fc1"), group_of("lstm[0]"), group_of("block.fc@2")
        ('model.layers.2', 'model', 'block')
    """
    if key == "input" or key.startswith("input/"):
        return "inputs"
    parts = re.split(r"[\[@]", key, maxsplit=1)[0].split(".")
    if len(parts) == 1:
        return "model"
    for i, part in enumerate(parts[:-1]):
        if part.isdigit() and i > 0:
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) if parts[-1].isdigit() else parts[0]


def group_pattern(group: str) -> str:
    """Regular expression for the tensor keys under a group (its whole subtree).

    The same group gives the same pattern whatever the model, so layouts of several runs in one
    log directory merge into one set of charts.

    Example:
        >>> import re
        >>> p = group_pattern("net")
        >>> [bool(re.fullmatch(p, k)) for k in ("net.0", "net.3[1]", "net.0.conv", "network.0", "input")]
        [True, True, True, False, False]
        >>> [bool(re.fullmatch(group_pattern("model"), k)) for k in ("fc1", "lstm[0]", "input", "net.0")]
        [True, True, False, False]
    """
    if group == "inputs":
        return r"input(/[^/]+)?"
    if group == "model":
        return r"(?!(input|thresholds|alerts)(/|$))[^/.]+"
    return re.escape(group) + r"\.[^/]*"


#: tensors per custom-scalars category: a 100-layer model gets 13 short categories, not one of 500 charts
TENSORS_PER_CATEGORY = 8


def layout_for(
    keys: Sequence[str], kinds: Mapping[str, tuple[str, str]] | None = None, per_category: int = TENSORS_PER_CATEGORY
) -> dict[str, dict[str, list[Any]]]:
    """Custom-scalars layout: one chart per tensor and figure, in categories of ``per_category`` tensors.

    TensorBoard draws every series of a run in the same colour, so no chart mixes tensors: each
    chart holds one tensor's figure, titled with the tensor and its layer type (``net.1 (ReLU)``),
    and its thresholds. Drift figures that alert on both sides are drawn with both threshold lines
    (``normwatch/thresholds/<name>_low`` and ``normwatch/thresholds/<name>``). ``dead`` is charted
    for activations, ``saturated`` for bounded activations only; inputs get their per-feature drift
    figures against the effect floors instead of the pooled drift charts. ``kinds`` maps tensors to
    ``(layer type, role)``. Every chart is a Multiline chart (TensorBoard draws Margin charts after
    all Multiline charts of a category, which would separate a tensor's charts); its regular
    expressions are matched from the start of the tag.

    Example:
        >>> layout = layout_for(["net.0", "net.1"], {"net.0": ("Linear", "preact"), "net.1": ("ReLU", "activation")})
        >>> list(layout)
        ['normwatch: alerts', 'normwatch: 1/1 net.0 (Linear) ... net.1 (ReLU)']
        >>> charts = layout["normwatch: 1/1 net.0 (Linear) ... net.1 (ReLU)"]
        >>> charts["net.1 (ReLU): log(std / reference std), alert beyond either threshold line"]
        ['Multiline', ['^normwatch/net\\\\.1/std_log_ratio$', '^normwatch/thresholds/log_scale_drift(_low)?$']]
        >>> [t for t in charts if "dead" in t]
        ['net.1 (ReLU): share of dead units, alert above the threshold line']
    """
    kinds = kinds or {}
    layout: dict[str, dict[str, list[Any]]] = {
        "normwatch: alerts": {
            "active alerts by severity": ["Multiline", [r"^normwatch/alerts/(info|warning|error)$"]],
        }
    }
    chunks = [list(keys[i : i + per_category]) for i in range(0, len(keys), per_category)]
    th = "normwatch/thresholds"
    for number, chunk in enumerate(chunks, 1):
        labels = [row_label(k, kinds.get(k, ("", ""))[0]) for k in chunk]
        span = labels[0] if len(chunk) == 1 else f"{labels[0]} ... {labels[-1]}"
        category = layout.setdefault(f"normwatch: {number}/{len(chunks)} {span}", {})
        for key, label in zip(chunk, labels, strict=True):
            base = f"normwatch/{key}"
            pattern = "^" + re.escape(base)
            role = kinds.get(key, ("", "other"))[1]
            category[f"{label}: std"] = ["Multiline", [pattern + "/std$"]]
            if role == "input":  # judged per feature (input_drift): the worst feature against its effect floor
                for figure, floor, what in (
                    ("feature_mean_shift_max", "input_mean_shift", "largest |mean shift| of a feature (reference σ)"),
                    ("feature_std_log_ratio_max", "input_log_scale", "largest |log std ratio| of a feature"),
                    ("feature_psi_max", "input_psi", "largest PSI of a feature"),
                ):
                    category[f"{label}: {what}, effect floor line"] = [
                        "Multiline",
                        [pattern + f"/{figure}$", f"^{th}/{floor}$"],
                    ]
                category[f"{label}: share of features drifted (input_drift)"] = [
                    "Multiline",
                    [pattern + "/feature_drift_share$"],
                ]
                continue
            category[f"{label}: log(std / reference std), alert beyond either threshold line"] = [
                "Multiline",
                [pattern + "/std_log_ratio$", f"^{th}/log_scale_drift(_low)?$"],
            ]
            category[f"{label}: mean shift in reference stds, alert beyond either threshold line"] = [
                "Multiline",
                [pattern + "/mean_shift$", f"^{th}/mean_drift(_low)?$"],
            ]
            category[f"{label}: shape PSI vs reference, alert above the threshold line"] = [
                "Multiline",
                [pattern + "/shape_psi$", f"^{th}/shift$"],
            ]
            if role in ("activation", "bounded", "other"):
                category[f"{label}: share of dead units, alert above the threshold line"] = [
                    "Multiline",
                    [pattern + "/dead$", f"^{th}/dead$"],
                ]
            if role == "bounded":
                category[f"{label}: share of saturated outputs, alert above the threshold line"] = [
                    "Multiline",
                    [pattern + "/saturated$", f"^{th}/saturated$"],
                ]
    return layout
