"""The "not measured" line of the NormWatch tab: what a run's logs lack, and why.

Example:
    >>> tensors = [{"name": "input", "role": "input"}, {"name": "net.0", "role": "preact"}]
    >>> figures = {"input": ["mean", "std"], "net.0": ["mean", "std"]}
    >>> for line in not_measured(tensors, figures, last_step=250, first_drift=None, thresholds={},
    ...                          histograms={"input", "net.0"}, alert_table=True):
    ...     print(line)
    drift (scale drift, mean drift, shape PSI) not measured up to step 250: the reference window was not complete yet
    input: drift judged per feature (input_drift), not as one pooled tensor
    update size not logged by this run (update_ratio: parameter side off, or an older NormWatch)
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

__all__ = ["not_measured"]

#: threshold scalar -> the rule it belongs to
_RULES = {"log_scale_drift": "scale_drift", "mean_drift": "mean_drift", "shift": "shift", "dead": "dead"}


def not_measured(
    tensors: Sequence[Mapping[str, str]],
    figures: Mapping[str, Collection[str]],
    last_step: int,
    first_drift: int | None,
    thresholds: Mapping[str, float],
    histograms: Collection[str],
    alert_table: bool,
) -> list[str]:
    """One line per figure the run does not have (or has only in part), with the reason."""
    out = []
    judged = [t for t in tensors if t["role"] != "input"]
    if judged and first_drift is None:
        out.append(
            f"drift (scale drift, mean drift, shape PSI) not measured up to step {last_step}: the reference "
            "window was not complete yet"
        )
    elif judged and first_drift is not None and first_drift > 0:
        out.append(f"drift measured from step {first_drift} on: the steps before it form the warm-up and reference")
    inputs = [t["name"] for t in tensors if t["role"] == "input"]
    if inputs:
        out.append(f"{', '.join(inputs)}: drift judged per feature (input_drift), not as one pooled tensor")
    has_dead = sum("dead" in figures.get(t["name"], ()) for t in tensors)
    if 0 < has_dead < len(tensors):
        out.append(f"dead units: only activations have units that can die ({has_dead} of {len(tensors)} tensors)")
    for name, value in sorted(thresholds.items()):
        if name in _RULES and not math.isfinite(value):
            out.append(f"{_RULES[name]}: rule off (threshold {value})")
    if not any("update_ratio" in fs for fs in figures.values()):
        out.append("update size not logged by this run (update_ratio: parameter side off, or an older NormWatch)")
    missing = [t["name"] for t in tensors if t["name"] not in histograms]
    if missing:
        out.append(f"no histograms for {len(missing)} tensor(s) (no TensorBoardLogger, or written by another logger)")
    if not alert_table:
        out.append("no alert table in this run (no alert raised, or no TensorBoardLogger)")
    return out
