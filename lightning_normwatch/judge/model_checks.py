"""Checks of the model's set-up that activations reveal only weakly: run at fit start and logging steps.

- ``frozen_norm`` (warning): a BatchNorm/InstanceNorm layer in eval mode while the model trains
  (the frozen-BN bug: it normalizes with stale running statistics and never updates them);
- ``not_run`` (info, once): a watched module that has not run by the third logging step (an
  unused branch, or a module whose parameters are used functionally);
- ``norm_placement`` (info, once per model): how the normalization layers sit (pre-norm, post-norm,
  before or after their activation) and how many of each, from the data flow of one forward pass;
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

__all__ = [
    "ModelChecks",
    "PATTERNS",
    "frozen_norm_alerts",
    "placement_alerts",
    "placement_of",
    "not_run_alerts",
    "base_name",
    "is_norm",
]

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
    """A ``frozen_norm`` alert for each running-statistics norm layer in eval mode while training steps run.

    Called only during training steps: a norm layer in eval mode there is frozen whether the rest of the
    model trains (a ``.eval()`` on the layer) or not (``model.eval()`` left on for the whole loop: every norm
    layer normalizes with the running statistics of its initialization). The first alert says how many
    layers are frozen; ``diagnosis.py`` makes it the root and the others its followers.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.BatchNorm1d(4)).eval()
        >>> alerts = frozen_norm_alerts(net, dict(net.named_modules()), step=0)
        >>> [a.module for a in alerts], "the whole model is in eval mode" in alerts[0].message
        (['1', '2'], True)
    """
    frozen = [
        (name, module)
        for name, module in modules.items()
        if isinstance(module, RUNNING_NORMS) and module.track_running_stats and not module.training
    ]
    if not frozen:
        return []
    n = len(frozen)
    if model.training:
        cause = (
            "it normalizes with its stored running statistics and never updates them (the frozen-BN bug: usually "
            "a `.eval()` call, or a `train()` override, that the training loop does not undo)"
        )
    else:
        cause = (
            "the whole model is in eval mode while training steps run (`model.eval()` before the training loop "
            "or in a hook, with no `model.train()` after it): every norm layer normalizes with the running "
            "statistics it had at initialization and dropout is off"
        )
    out = []
    for i, (name, module) in enumerate(frozen):
        others = f" ({n} norm layers are frozen; this is the first)" if i == 0 and n > 1 else ""
        out.append(
            _alert(
                step,
                name,
                "frozen_norm",
                f"`{name}` ({type(module).__name__}) is in eval mode during training{others}: {cause}. If freezing "
                "it is deliberate (fine-tuning), exclude it from NormWatch or ignore this warning.",
                value=float(n),
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


#: what each placement pattern means, for the summary
PATTERNS = {
    "pre-norm": "pre-norm (each block normalizes its input: x + f(norm(x)))",
    "post-norm": "post-norm (the residual sum is normalized: norm(x + f(x)))",
    "before": "before their activation (linear/conv -> norm -> activation)",
    "after": "after their activation (activation -> norm)",
    "final": "final (the last norm, on a residual stream, before the head)",
    "other": "next to no activation (e.g. before a residual sum)",
}


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def placement_of(
    key: str,
    order: list[str],
    edges: Mapping[str, str],
    consumers: Mapping[str, list[str]],
    roles: Mapping[str, str],
    modules: Mapping[str, nn.Module],
    last: bool = False,
) -> str:
    """Where one normalization layer sits: a key of ``PATTERNS``.

    A transformer layer's own ``norm_first`` decides when it has one (``nn.TransformerEncoderLayer``); then an
    activation right before or after it; else a norm is pre-norm when it runs first among the tensors of its
    parent module (GPT-2's ``ln_1``); on an input no watched module produced (a residual stream), it is
    pre-norm when it feeds a module of its own block (GPT-2's ``ln_2``), final when it is the model's last
    norm (``ln_f``), post-norm when its output leaves its block (BERT's ``output.LayerNorm``).
    """
    name = base_name(key)
    parent = modules.get(_parent(name))
    if parent is not None and isinstance(getattr(parent, "norm_first", None), bool):
        return "pre-norm" if parent.norm_first else "post-norm"  # type: ignore[union-attr]
    producer = edges.get(key)

    def is_activation(k: str) -> bool:
        return roles.get(k) in ("activation", "bounded")

    if producer is not None and is_activation(producer):
        return "after"
    if any(is_activation(c) for c in consumers.get(key, [])):
        return "before"
    prefix = _parent(name) + "." if _parent(name) else ""
    siblings = [k for k in order if base_name(k).startswith(prefix) and k != key] if prefix else []
    if siblings and order.index(key) < order.index(siblings[0]):
        return "pre-norm"  # the first thing its block does
    if producer is None:  # its input is a residual stream (a sum no watched module produced)
        if prefix and any(base_name(c).startswith(prefix) for c in consumers.get(key, [])):
            return "pre-norm"  # it feeds a sublayer of its own block (GPT-2's ln_2)
        if last:
            return "final"
        if consumers.get(key):
            return "post-norm"  # the normalized sum leaves its block (BERT's output.LayerNorm)
    return "other"


def placement_alerts(
    order: list[str],
    edges: Mapping[str, str],
    roles: Mapping[str, str],
    modules: Mapping[str, nn.Module],
    step: int,
) -> list[Alert]:
    """One ``norm_placement`` summary for the model, and a ``redundant_bias`` info per norm layer concerned.

    Args:
        order: tensor keys in execution order.
        edges: tensor key -> key of the watched tensor its module consumed (data flow of one pass).
        roles: tensor key -> role (``activation``, ``bounded`` ...).
        modules: module name -> module.
        step: the logging step.

    Example:
        >>> block = lambda: [nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU()]
        >>> net = nn.Sequential(*block(), *block())
        >>> order = [str(i) for i in range(6)]
        >>> edges = {str(i): str(i - 1) for i in range(1, 6)}
        >>> roles = {"2": "activation", "5": "activation"}
        >>> alerts = placement_alerts(order, edges, roles, dict(net.named_modules()), 0)
        >>> [(a.kind, a.module) for a in alerts]
        [('norm_placement', '1'), ('redundant_bias', '1'), ('redundant_bias', '4')]
        >>> print(alerts[0].message[:84])
        2 normalization layers (BatchNorm1d): 2 before their activation (linear/conv -> norm
    """
    consumers: dict[str, list[str]] = {}
    for key, producer in edges.items():
        consumers.setdefault(producer, []).append(key)

    def label(key: str) -> str:
        module = modules.get(base_name(key))
        return f"`{key}` ({type(module).__name__})" if module is not None else f"`{key}`"

    seen: set[str] = set()
    found: dict[str, list[str]] = {}
    out = []
    norms = [k for k in order if is_norm(modules.get(base_name(k)))]
    for key in order:
        name = base_name(key)
        module = modules.get(name)
        if not is_norm(module) or name in seen:
            continue
        seen.add(name)
        pattern = placement_of(key, order, edges, consumers, roles, modules, last=key == norms[-1])
        found.setdefault(pattern, []).append(key)
        producer = edges.get(key)
        source = modules.get(base_name(producer)) if producer is not None else None
        if isinstance(module, RUNNING_NORMS) and isinstance(getattr(source, "bias", None), Tensor):
            out.append(
                _alert(
                    step,
                    key,
                    "redundant_bias",
                    f"{label(producer)} has a bias and feeds {label(key)}, which subtracts the per-channel mean: "  # type: ignore[arg-type]
                    "the bias is removed exactly and has no effect (`bias=False` saves the parameters). "
                    "Information only.",
                )
            )
    if not seen:
        return out
    keys = [k for pattern in PATTERNS for k in found.get(pattern, [])]
    types = sorted({type(modules[base_name(k)]).__name__ for k in keys})
    parts = []
    for pattern, meaning in PATTERNS.items():
        these = found.get(pattern, [])
        if these:
            example = ", ".join(label(k) for k in these[:2]) + (" ..." if len(these) > 2 else "")
            parts.append(f"{len(these)} {meaning}: {example}")
    n = len(seen)
    summary = _alert(
        step,
        next(k for k in order if base_name(k) in seen),
        "norm_placement",
        f"{n} normalization layer{'s' if n != 1 else ''} ({', '.join(types)}): " + "; ".join(parts) + ". Information: "
        "every one of these arrangements trains (BN before the activation as in the original paper, after it as "
        "often done since; pre-norm transformers train deep stacks without warm-up, post-norm ones need it); "
        "this is how yours sits.",
        value=float(n),
    )
    return [summary, *out]


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
