"""Checks of the model's set-up that activations reveal only weakly: run at fit start and logging steps.

- ``frozen_norm`` (warning): a BatchNorm/InstanceNorm layer in eval mode while the model trains
  (the frozen-BN bug: it normalizes with stale running statistics and never updates them);
- ``not_run`` (info, once): a watched module that has not run by the third logging step (an
  unused branch, or a module whose parameters are used functionally);
- ``norm_placement`` (info, once per normalization layer): whether it sits before or after its
  activation, from the data flow of one forward pass;
- ``redundant_bias`` (info, once): a bias right before a BatchNorm/InstanceNorm, which subtracts
  the per-channel mean and so removes the bias exactly.

Example:
    >>> from torch import Tensor, nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
    >>> _ = model.train(); _ = model[1].eval()
    >>> [a.module for a in frozen_norm_alerts(model, dict(model.named_modules()), step=0)]
    ['1']
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from ..collect.layout import RUNNING_NORMS
from .alerts import SEVERITY, Alert

__all__ = ["ModelChecks", "frozen_norm_alerts", "placement_alerts", "not_run_alerts", "base_name", "is_norm"]

#: logging steps evaluated before a watched module that never ran is reported
NOT_RUN_AFTER = 3

_NORMS = (*RUNNING_NORMS, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.LocalResponseNorm)
_NORM_NAME = re.compile(r"norm$", re.IGNORECASE)


def base_name(key: str) -> str:
    """The module name of a tensor key: ``act#2`` -> ``act``, ``lstm[0]`` -> ``lstm``, ``m@2`` -> ``m``.

    Example:
        >>> base_name("block.act#2"), base_name("rnn#2[1][0]"), base_name("attn.output")
        ('block.act', 'rnn', 'attn.output')
    """
    return re.split(r"[#@\[]", key, maxsplit=1)[0]


def is_norm(module: nn.Module | None) -> bool:
    return isinstance(module, _NORMS) or (module is not None and bool(_NORM_NAME.search(type(module).__name__)))


def _alert(step: int, module: str, kind: str, message: str, value: float = 1.0) -> Alert:
    return Alert(step, module, kind, SEVERITY[kind], float(value), 0.0, message)


def frozen_norm_alerts(model: nn.Module, modules: Mapping[str, nn.Module], step: int) -> list[Alert]:
    """A ``frozen_norm`` alert for each running-statistics norm layer in eval mode while ``model`` trains."""
    if not model.training:
        return []
    out = []
    for name, module in modules.items():
        if isinstance(module, RUNNING_NORMS) and module.track_running_stats and not module.training:
            out.append(
                _alert(
                    step,
                    name,
                    "frozen_norm",
                    f"`{name}` ({type(module).__name__}) is in eval mode while the model trains: it normalizes "
                    "with its stored running statistics and never updates them (the frozen-BN bug: usually a "
                    "`.eval()` call, or a `train()` override, that the training loop does not undo). If freezing "
                    "it is deliberate (fine-tuning), exclude it from NormWatch or ignore this warning.",
                )
            )
    return out


def not_run_alerts(watched: Mapping[str, nn.Module], ran: set[str], step: int) -> list[Alert]:
    """A ``not_run`` info alert for each watched module not in ``ran``."""
    return [
        _alert(
            step,
            name,
            "not_run",
            f"`{name}` ({type(module).__name__}) is watched but has not run on any logging step so far: an "
            "unused branch or head, or a module whose parameters are used without calling it (e.g. "
            "MultiheadAttention's out_proj). Information only.",
        )
        for name, module in watched.items()
        if name not in ran
    ]


def placement_alerts(
    order: list[str],
    edges: Mapping[str, str],
    roles: Mapping[str, str],
    modules: Mapping[str, nn.Module],
    step: int,
) -> list[Alert]:
    """``norm_placement`` and ``redundant_bias`` info alerts for the normalization layers in ``order``.

    Args:
        order: tensor keys in execution order.
        edges: tensor key -> key of the watched tensor its module consumed (data flow of one pass).
        roles: tensor key -> role (``activation``, ``bounded`` ...).
        modules: module name -> module.
        step: the logging step.
    """
    out = []
    consumers: dict[str, list[str]] = {}
    for key, producer in edges.items():
        consumers.setdefault(producer, []).append(key)

    def label(key: str) -> str:
        module = modules.get(base_name(key))
        return f"`{key}` ({type(module).__name__})" if module is not None else f"`{key}`"

    def is_activation(key: str) -> bool:
        return roles.get(key) in ("activation", "bounded")

    seen: set[str] = set()
    for key in order:
        name = base_name(key)
        module = modules.get(name)
        if not is_norm(module) or name in seen:
            continue
        seen.add(name)
        producer = edges.get(key)
        after = [c for c in consumers.get(key, []) if is_activation(c)]
        if producer is not None and is_activation(producer):
            where = f"after the activation {label(producer)}"
            if after:
                where += f" and before {label(after[0])}"
        elif after:
            where = f"before its activation {label(after[0])}" + (f", after {label(producer)}" if producer else "")
        elif producer is not None:
            where = f"after {label(producer)}, not next to an activation"
        else:
            where = "on a tensor no watched module produced (e.g. a residual sum: pre-norm), not next to an activation"
        out.append(
            _alert(
                step,
                key,
                "norm_placement",
                f"{label(key)} normalizes {where}. Information: both orders train (BN before the activation "
                "as in the original paper, after it as often done since); this is where yours sits.",
            )
        )
        source = modules.get(base_name(producer)) if producer is not None else None
        if isinstance(module, RUNNING_NORMS) and isinstance(getattr(source, "bias", None), Tensor):
            out.append(
                _alert(
                    step,
                    key,
                    "redundant_bias",
                    f"{label(producer)} has a bias and feeds {label(key)}, which subtracts the per-channel mean: "
                    "the bias is removed exactly and has no effect (`bias=False` saves the parameters). "
                    "Information only.",
                )
            )
    return out


class ModelChecks:
    """The set-up checks of one fit: which were reported (each once; ``frozen_norm`` again after it cleared).

    Args:
        watched: watched module name -> module.
        modules: every module of the model by name.
    """

    def __init__(self, watched: Mapping[str, nn.Module], modules: Mapping[str, nn.Module]) -> None:
        self.watched = dict(watched)
        self.norms = {name: m for name, m in modules.items() if isinstance(m, RUNNING_NORMS)}
        self.modules = dict(modules)
        self.reported: set[tuple[str, str]] = set()
        self.ran: set[str] = set()
        self.evaluations = 0

    def _new(self, alerts: list[Alert]) -> list[Alert]:
        fresh = [a for a in alerts if (a.module, a.kind) not in self.reported]
        self.reported |= {(a.module, a.kind) for a in fresh}
        return fresh

    def frozen(self, model: nn.Module, step: int) -> list[Alert]:
        """New ``frozen_norm`` alerts; a layer back in train mode may be reported again later."""
        alerts = frozen_norm_alerts(model, self.norms, step)
        now = {(a.module, a.kind) for a in alerts}
        self.reported -= {key for key in self.reported if key[1] == "frozen_norm" and key not in now}
        return self._new(alerts)

    def at_logging_step(
        self,
        model: nn.Module,
        step: int,
        order: list[str],
        called: set[str],
        edges: Mapping[str, str],
        roles: Mapping[str, str],
    ) -> list[Alert]:
        """Every check for one logging step (``order``: tensor keys measured, in execution order)."""
        self.evaluations += 1
        self.ran |= called | {base_name(k) for k in order}
        out = self.frozen(model, step)
        if order and not any(kind in ("norm_placement", "redundant_bias") for _, kind in self.reported):
            out += self._new(placement_alerts(order, edges, roles, self.modules, step))
            self.reported.add(("", "norm_placement"))  # once per fit, even with no normalization layer
        if self.evaluations == NOT_RUN_AFTER:
            out += self._new(not_run_alerts(self.watched, self.ran, step))
        return out

    def state(self) -> dict[str, object]:
        """Plain values for a checkpoint."""
        return {"reported": sorted([m, k] for m, k in self.reported), "evaluations": self.evaluations}

    def load(self, state: Mapping[str, object]) -> None:
        self.reported = {(str(m), str(k)) for m, k in state.get("reported", [])}  # type: ignore[union-attr]
        self.evaluations = int(state.get("evaluations", 0))  # type: ignore[call-overload]
