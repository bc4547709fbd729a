"""What a checkpoint's NormWatch state was made for, and what of it still holds when a run resumes.

A checkpoint carries ``format`` (``FORMAT``) and ``made_for``: the watched modules (type and parameter
shapes), the tensors that have a reference, and the settings that change what the state means
(sample sizes, the warm-up and reference windows, the logging interval, the thresholds). On resume,
``plan_resume`` compares it with the run at hand and says, per part, what is kept and what is reset:

- a tensor whose module is gone or changed (a head swapped for fine-tuning): its reference, active
  alerts and model-check notes are reset (a fresh reference is taken at the next logging step); the
  other tensors keep theirs;
- other warm-up/reference windows or another logging interval: every reference is reset;
- other thresholds: the references are kept, the active alerts are reset (judged again);
- other sample sizes: kept (a reference describes the values, not how many were drawn), said so;
- no ``format`` (an older NormWatch): what belongs to modules still watched is kept; the settings it
  was made for are unknown, said so.

Example:
    >>> from torch import nn
    >>> from lightning_normwatch.config import SessionConfig
    >>> config = SessionConfig(warmup_steps=2, reference_steps=4)
    >>> old = made_for(config, {"body": nn.Linear(4, 8), "head": nn.Linear(8, 10)}, ["body", "head"], 5)
    >>> plan = plan_resume({"format": FORMAT, "made_for": old}, made_for(
    ...     config, {"body": nn.Linear(4, 8), "head": nn.Linear(8, 3)}, [], 5))
    >>> plan.keeps_reference("body"), plan.keeps("head"), plan.keeps("head[0]"), plan.keeps_reference("input")
    (True, False, False, True)
    >>> print(plan.message)  # doctest: +NORMALIZE_WHITESPACE
    NormWatch: the checkpoint's NormWatch state does not fully match this run. Reset: the reference, active
    alerts and model-check notes of `head` (module changed: Linear(weight 10x8, bias 10) -> Linear(weight 3x8,
    bias 3)); a fresh reference is taken at the next logging step. Kept: the references and alert state of
    the inputs and of the 1 unchanged modules. Training continues.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from ..config import SessionConfig

__all__ = ["FORMAT", "ResumePlan", "made_for", "module_of", "plan_resume", "signature"]

#: version of the checkpoint state; 1 is the unversioned state of NormWatch before it (no ``format`` key)
FORMAT = 2

_WINDOWS = ("warmup_steps", "reference_steps", "interval")
_SIZES = ("sample_size", "pvalue_size")


def signature(module: nn.Module) -> str:
    """Type and own parameter shapes: ``Linear(weight 3x8, bias 3)``; changes when a layer is replaced.

    Example:
        >>> signature(nn.Linear(8, 3)), signature(nn.ReLU())
        ('Linear(weight 3x8, bias 3)', 'ReLU()')
    """
    shapes = ", ".join(f"{n} {'x'.join(map(str, p.shape))}" for n, p in module.named_parameters(recurse=False))
    return f"{type(module).__name__}({shapes})"


def made_for(config: SessionConfig, watched: Mapping[str, nn.Module], tensors: Iterable[str], interval: int) -> dict:
    """What this state is made for, as plain values (see the module docstring)."""
    settings: dict[str, Any] = {name: getattr(config, name) for name in ("warmup_steps", "reference_steps", *_SIZES)}
    settings["interval"] = int(interval)
    settings["thresholds"] = {k: float(v) for k, v in asdict(config.thresholds).items()}
    return {
        "modules": {name: signature(module) for name, module in watched.items()},
        "tensors": sorted(tensors),
        "settings": settings,
    }


def module_of(key: str, modules: Iterable[str]) -> str | None:
    """The watched module a tensor name belongs to (``enc.0[1]``, ``enc.0#2``, ``enc.0.key`` -> ``enc.0``);
    None for batch inputs and unknown names.

    Example:
        >>> module_of("enc.0#2@2", ["enc", "enc.0"]), module_of("input/x", ["enc"])
        ('enc.0', None)
    """
    best = None
    for name in modules:
        inside = key == name or (key.startswith(name) and key[len(name)] in "#@[.")
        if inside and (best is None or len(name) > len(best)):
            best = name
    return best


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@dataclass
class ResumePlan:
    """What of a checkpoint's state is kept.

    Attributes:
        reset_modules: modules whose tensors start afresh (changed, not in the checkpoint, or no longer watched).
        reset_references: every reference is reset (other windows); inputs included.
        reset_alerts: the active alerts and episodes are reset (other thresholds).
        message: the one warning to give, or None when everything matches.
        modules: the watched modules of this run and of the checkpoint.
    """

    reset_modules: set[str] = field(default_factory=set)
    reset_references: bool = False
    reset_alerts: bool = False
    message: str | None = None
    modules: tuple[str, ...] = ()

    def keeps(self, key: str) -> bool:
        """Whether tensor ``key``'s alert state is kept (its module is unchanged)."""
        module = module_of(key, self.modules)
        return module is None or module not in self.reset_modules

    def keeps_reference(self, key: str) -> bool:
        """Whether tensor ``key``'s reference is kept."""
        return not self.reset_references and self.keeps(key)

    def keeps_module(self, name: str) -> bool:
        return name not in self.reset_modules


def _changed_modules(saved: Mapping[str, str], now: Mapping[str, str]) -> tuple[set[str], list[str]]:
    reset, notes = set(), []
    for name, sig in now.items():
        if name not in saved:
            reset.add(name)
            notes.append(f"`{name}` (newly watched)")
        elif saved[name] != sig:
            reset.add(name)
            notes.append(f"`{name}` (module changed: {saved[name]} -> {sig})")
    gone = sorted(set(saved) - set(now))
    reset |= set(gone)
    return reset, notes + [f"`{name}` (no longer watched; dropped)" for name in gone]


def plan_resume(state: Mapping[str, Any], now: dict) -> ResumePlan:
    """Compare a checkpoint's state with ``now`` (``made_for`` of this run); see the module docstring."""
    plan = ResumePlan(modules=tuple(now["modules"]))
    version = state.get("format")
    saved = state.get("made_for")
    if version is None or not isinstance(saved, Mapping):
        kept = sorted(k for k in state.get("references", {}) if module_of(k, now["modules"]) or k.startswith("input"))
        plan.message = (
            "NormWatch: the checkpoint was written by an older NormWatch (no state format version): the settings "
            f"and modules it was made for are unknown. Kept: the references and alert state of {len(kept)} "
            "tensors whose names are still watched here. Reset: nothing else could be checked; if the model or "
            "NormWatch's settings changed since, references may not fit. Training continues."
        )
        return plan
    resets, keeps = [], []
    if version != FORMAT:
        resets.append(f"(state format {version}, this NormWatch writes {FORMAT}: read as far as it goes)")
    old, new = saved.get("settings", {}), now["settings"]
    windows = [f"{k} {old.get(k)} -> {new[k]}" for k in _WINDOWS if not _same(old.get(k), new[k])]
    if windows:
        plan.reset_references = True
        resets.append(f"every reference ({', '.join(windows)}: taken over another window)")
    thresholds = [
        f"{k} {old.get('thresholds', {}).get(k)} -> {v:g}"
        for k, v in new["thresholds"].items()
        if not _same(old.get("thresholds", {}).get(k), v)
    ]
    if thresholds:
        plan.reset_alerts = True
        resets.append(f"the active alerts (thresholds {', '.join(thresholds)}: judged again)")
    sizes = [f"{k} {old.get(k)} -> {new[k]}" for k in _SIZES if not _same(old.get(k), new[k])]
    if sizes and not windows:
        keeps.append(f"the references despite {', '.join(sizes)} (a reference describes values, not sample sizes)")
    plan.reset_modules, notes = _changed_modules(saved.get("modules", {}), now["modules"])
    plan.modules = (*now["modules"], *(m for m in saved.get("modules", {}) if m not in now["modules"]))
    if notes:
        resets.append(f"the reference, active alerts and model-check notes of {', '.join(notes)}")
    if not resets and not keeps:
        return plan
    parts = [name for name, reset in (("references", windows), ("alert state", thresholds)) if not reset]
    if parts:
        left = [k for k in now["modules"] if k not in plan.reset_modules]
        keeps.append(f"the {' and '.join(parts)} of the inputs and of the {len(left)} unchanged modules")
    text = "NormWatch: the checkpoint's NormWatch state does not fully match this run."
    if resets:
        fresh = "; a fresh reference is taken at the next logging step" if windows or notes else ""
        text += f" Reset: {'; '.join(resets)}{fresh}."
    plan.message = f"{text} Kept: {'; '.join(keeps) or 'the alert history'}. Training continues."
    return plan
