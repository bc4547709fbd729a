"""The framework-agnostic core: hooks, per-step collection, reference, drift and alerts.

The Lightning callback (``callback.py``) is a thin layer over this class; it can also be used
with a plain PyTorch loop.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    >>> mon = Monitor(MonitorConfig(warmup_steps=0, reference_steps=1))
    >>> mon.attach(model)
    ['0', '1', '2']
    >>> mon.arm()
    >>> mon.observe("input", x := torch.randn(32, 8), role="input")
    >>> _ = model(x)
    >>> result = mon.evaluate(0, mon.collect())
    >>> mon.disarm()
    >>> sorted(result.figures)
    ['0', '1', '2', 'input']
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .alerts import SEVERITY, Alert, AlertTracker
from .config import Thresholds
from .depth import depth_alerts, rms_of, small_growth
from .layout import Flow, module_layout
from .measure import (
    MeasureSpec,
    Sampled,
    measure_sampled,
    measured_channels,
    saturation_bounds_for,
    take_sample,
)
from .moments import merge_groups
from .overflow import first_exploded, overflow_alert
from .reference import Reference, drift
from .rules import CLEAR_FRACTION, TensorInfo, evaluate, nonfinite_alert
from .selection import Pattern, named_tensors, role_of, select_modules
from .summary import TensorStats, feature_figures, figures

__all__ = ["Monitor", "MonitorConfig", "StepResult"]

log = logging.getLogger("lightning_normwatch")


@dataclass(frozen=True)
class MonitorConfig:
    """Monitor settings (validated by ``NormWatch``).

    Attributes:
        sample_size: values sampled per watched tensor per logging step.
        pvalue_size: values the normality p-values are computed on (fixed, whatever the layer size).
        min_rows: rows (batch positions) sampled at least per tensor.
        max_channels: channels measured at most per tensor.
        warmup_steps: global steps before the reference window opens.
        reference_steps: length of the reference window in global steps.
        thresholds: alert thresholds.
        seed: seed of the monitor's own sampling generator.
        world_size: number of processes whose samples are merged (p-value subsample is split).
    """

    sample_size: int = 8192
    pvalue_size: int = 5000
    min_rows: int = 16
    max_channels: int = 2048
    warmup_steps: int = 100
    reference_steps: int = 200
    thresholds: Thresholds = field(default_factory=Thresholds)
    seed: int = 0
    world_size: int = 1


@dataclass
class StepResult:
    """What one logging step produced.

    Attributes:
        step: global step.
        figures: per watched tensor, figure name to value (drift figures included once the
            reference is complete).
        alerts: alerts newly raised at this step.
        active: active alert count by severity (``info``, ``warning``, ``error``).
    """

    step: int
    figures: dict[str, dict[str, float]]
    alerts: list[Alert]
    active: dict[str, int]


class Monitor:
    """Watches a model's modules and turns their outputs into figures and alerts."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.alerts: list[Alert] = []
        self.tracker = AlertTracker()
        self.references: dict[str, Reference] = {}
        self.nonfinite_active = False
        self.inputs_seen: dict[str, tuple[np.ndarray, ...]] = {}
        self.watched: list[tuple[str, nn.Module]] = []
        self._infos: dict[str, TensorInfo] = {}
        self._specs: dict[str, MeasureSpec] = {}
        self._blocks: dict[str, list[Sampled]] = {}  # samples taken in the hooks, measured by local_blocks()
        self._handles: list[RemovableHandle] = []
        self._generators: dict[torch.device, torch.Generator] = {}
        self._generator_states: dict[str, Tensor] = {}
        self._model: nn.Module | None = None
        self._flow = Flow()  # layout and producer of the tensors output in the current forward pass
        self._calls: dict[str, int] = {}  # calls of each watched module in the current forward pass
        self.called: set[str] = set()  # watched modules that ran since the collection started
        self.edges: dict[str, str] = {}  # tensor key -> key of the watched tensor its module consumed
        self._skipped: set[str] = set()  # tensors skipped with a debug line (sparse, complex)
        self.alive: set[str] = set()  # tensors whose units were judged alive at some logging step
        self.last_rms: dict[str, float] = {}  # RMS of each tensor at the last logging step (finite ones)

    # ----------------------------------------------------------------- hooks
    def attach(
        self, model: nn.Module, modules: Sequence[Pattern] | None = None, exclude: Sequence[Pattern] = ()
    ) -> list[str]:
        """Choose the modules to watch (hooks are only registered by ``arm``)."""
        self.watched = select_modules(model, modules, exclude)
        self._model = model
        return [name for name, _ in self.watched]

    @property
    def armed(self) -> bool:
        return bool(self._handles)

    def arm(self) -> None:
        """Register forward hooks on the watched modules and start a new collection."""
        self.disarm()
        self._blocks = {}
        self.called = set()
        self.next_pass()
        self.resume()

    def next_pass(self) -> None:
        """A new forward pass starts: call counts restart (``act``, ``act#2`` ... name call sites).

        Called by a pre-hook on the attached model and by the callback at every batch, so that
        accumulated batches merge into the same per-call entries.
        """
        self._calls = {}
        self._flow.reset()

    def resume(self) -> None:
        """Register the hooks again after ``pause``, keeping what was collected."""
        if not self._handles:
            self._handles = [module.register_forward_hook(self._hook_for(name)) for name, module in self.watched]
            if self._model is not None and self.watched:
                self._handles.append(self._model.register_forward_pre_hook(lambda *_: self.next_pass()))

    def pause(self) -> None:
        """Remove the hooks but keep the collection (e.g. while validation runs inside a logging step)."""
        self.disarm()

    def disarm(self) -> None:
        """Remove every hook (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextmanager
    def separate_collection(self) -> Iterator[None]:
        """Armed hooks collecting into a fresh buffer; the current collection and hook state come back after.

        Used to replay a forward pass (to locate NaN/Inf) in the middle of a logging step.
        """
        saved, was_armed = (self._blocks, self._calls, self._flow, self.called), self.armed
        self._flow = Flow()
        self.arm()
        try:
            yield
        finally:
            self.disarm()
            if was_armed:
                self.resume()
            self._blocks, self._calls, self._flow, self.called = saved

    def _hook_for(self, name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(module: nn.Module, args: tuple[object, ...], output: object) -> None:
            # one entry per call site of a module reused within a forward pass: ``act``, ``act#2`` ...
            call = self._calls[name] = self._calls.get(name, 0) + 1
            base = name if call == 1 else f"{name}#{call}"
            self.called.add(name)
            source = args[0] if args else None
            producer = self._flow.lookup(source)
            if producer is not None:
                self.edges.setdefault(base, producer[1])
            for key, tensor in named_tensors(output, base, complex_too=True):
                self.observe(key, tensor, module, source=source)

        return hook

    # ----------------------------------------------------------- collection
    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            # a checkpoint holds rank 0's states: another rank resumes from its device type's (e.g. cuda:0 for cuda:1)
            saved = self._generator_states.get(str(device), self._generator_states.get(device.type))
            if saved is not None:
                gen.set_state(saved)
            else:
                gen.manual_seed(self.config.seed)
            self._generators[device] = gen
        return gen

    def _spec(self, tensor: Tensor, module: nn.Module | None, role: str | None, source: object = None) -> MeasureSpec:
        c = self.config
        if role == "input":
            channel_first = tensor.ndim >= 4
        else:
            # the module decides (a Linear on [B, H, W, C] has its channels last); a parameter-free
            # module inherits the layout of the tensor it transforms; else [B, C, ...] for 4+ dims
            layout = module_layout(module, tensor.shape)
            if layout is None:
                layout = self._flow.inherited(source, tensor.shape)
            channel_first = tensor.ndim >= 4 if layout is None else layout
        return MeasureSpec(
            sample_size=c.sample_size,
            pvalue_size=math.ceil(c.pvalue_size / c.world_size),
            min_rows=c.min_rows,
            max_channels=c.max_channels,
            channel_first=channel_first,
            bounds=saturation_bounds_for(module),
        )

    def observe(
        self,
        name: str,
        tensor: Tensor,
        module: nn.Module | None = None,
        role: str | None = None,
        source: object = None,
    ) -> None:
        """Sample one tensor now (on its device, no host sync); repeated observations of a name merge.

        Only the random draws and the full-tensor extremes happen here; the arithmetic on the
        sample waits for ``local_blocks`` (all tensors in a row, with warm caches). ``source`` is
        the module's input (a parameter-free module's output takes its channel layout). Sparse
        and complex tensors are skipped with one debug line.
        """
        if not isinstance(tensor, Tensor):
            return
        if tensor.layout != torch.strided or tensor.is_complex():
            if name not in self._skipped:
                self._skipped.add(name)
                what = "complex" if tensor.is_complex() else f"{tensor.layout}"
                log.debug("NormWatch: `%s` outputs a %s tensor: not measured", name, what)
            return
        if not tensor.is_floating_point():
            return
        key, spec = name, self._specs.get(name)
        channels = measured_channels(tensor, spec or self._spec(tensor, module, role, source))
        call = 1
        while spec is not None and self._infos[key].channels != channels:
            call += 1  # same module called with a differently shaped tensor: a separate entry
            key = f"{name}@{call}"
            spec = self._specs.get(key)
        if spec is None:
            spec = self._specs[key] = self._spec(tensor, module, role, source)
            self._infos[key] = TensorInfo(
                key,
                role or role_of(module),
                type(module).__name__ if module is not None else "batch",
                channels,
                str(tensor.dtype).removeprefix("torch."),
            )
        taken = take_sample(tensor, spec, self._generator(tensor.device))
        if key in self._blocks:  # a further call (module reused, accumulated batches): p-values stay on one sample
            taken = replace(taken, pvalues=taken.pvalues[:0])
        self._blocks.setdefault(key, []).append(taken)
        self._flow.record(tensor, spec.channel_first, key)

    def local_blocks(self) -> dict[str, Tensor]:
        """This process's blocks of the current collection, ``[calls, size]`` per tensor, in execution order."""
        return {key: torch.stack([measure_sampled(s) for s in taken]) for key, taken in self._blocks.items()}

    def channels(self, key: str) -> int:
        return self._infos[key].channels

    def info(self, key: str) -> TensorInfo:
        return self._infos[key]

    def register(self, info: TensorInfo) -> None:
        """Learn about a tensor another rank observed (its role decides which rules apply)."""
        self._infos.setdefault(info.name, info)

    def collect(self) -> dict[str, TensorStats]:
        """Merge this process's blocks on the host (one device-to-host transfer for all tensors)."""
        blocks = self.local_blocks()
        self._blocks = {}
        if not blocks:
            return {}
        flat = torch.cat([b.reshape(-1) for b in blocks.values()]).cpu().numpy()
        out, start = {}, 0
        for key, b in blocks.items():
            stop = start + b.numel()
            out[key] = TensorStats.from_blocks(flat[start:stop].reshape(b.shape), self.channels(key))
            start = stop
        return out

    # ----------------------------------------------------------- evaluation
    def in_reference_window(self, step: int, reference: Reference | None = None) -> bool:
        """Whether this logging step goes into the reference: inside the window, or the first logging
        step after the warm-up when none fell inside it (a logging interval longer than the window)."""
        start = self.config.warmup_steps
        if start <= step < start + self.config.reference_steps:
            return True
        return step >= start and reference is not None and reference.steps == 0

    def _prediction_keys(self, stats: dict[str, TensorStats]) -> set[str]:
        """The model's output: the last tensor in execution order and, when that one is an activation
        (softmax, log-softmax, sigmoid ...), the logits before it."""
        order = [k for k in stats if self._infos.get(k) is None or self._infos[k].role != "input"]
        if not order:
            return set()
        last = order[-1]
        info = self._infos.get(last)
        if len(order) > 1 and (info is None or info.role != "preact"):
            return {last, order[-2]}
        return {last}

    def reference_ready(self, step: int) -> bool:
        return step >= self.config.warmup_steps + self.config.reference_steps

    def evaluate(self, step: int, stats: dict[str, TensorStats]) -> StepResult:
        """Figures, reference update, drift and alerts for one logging step (same on every rank)."""
        th = self.config.thresholds
        all_figures: dict[str, dict[str, float]] = {}
        firing: list[Alert] = []
        checked: set[tuple[str, str]] = set()
        prediction = self._prediction_keys(stats)
        for key, st in stats.items():
            info = self._infos.get(key) or TensorInfo(key, "other", "?", len(st.cn))
            fig = figures(st)
            if info.role == "input":
                fig.update(self._input_figures(key, st))
            ref = self.references.setdefault(key, Reference())
            overall = st.overall
            if not st.has_nonfinite and self.in_reference_window(step, ref) and overall.n > 0:
                ref.add(overall, st.hist)
            d = None
            if self.reference_ready(step) and ref.steps > 0:
                d = drift(ref, overall, st.hist)
                fig.update(d)
            all_figures[key] = fig
            if math.isfinite(rms := rms_of(fig)):
                self.last_rms[key] = rms
            # The model's prediction drifts because it learns: that is not covariate shift.
            a, c = evaluate(info, fig, None if key in prediction else d, th, step, alive_before=key in self.alive)
            firing += a
            checked |= c
            if fig.get("dead", math.nan) < CLEAR_FRACTION * th.dead:
                self.alive.add(key)
        learning = small_growth(
            firing, all_figures, {k for k in stats if self._infos.get(k) is not None and self._infos[k].role == "input"}
        )
        firing = [a for a in firing if a not in learning]
        a, c = self._depth_alerts(stats, all_figures, prediction, step)
        firing += a
        checked |= c
        new = self.tracker.update(firing, checked, step)
        first = self.first_nonfinite(stats)
        if first is not None:
            new = self.raise_nonfinite(step, *first, "the logging-step sample") + new
        elif stats:
            self.nonfinite_active = False
        self.alerts.extend(a for a in new if a.kind != "nonfinite")
        return StepResult(step, all_figures, new, self.active_counts())

    def _depth_alerts(
        self, stats: dict[str, TensorStats], all_figures: dict[str, dict[str, float]], prediction: set[str], step: int
    ) -> tuple[list[Alert], set[tuple[str, str]]]:
        """``vanishing``/``exploding`` across the watched tensors in execution order (no reference needed)."""
        sequence = []
        for key in stats:
            info = self._infos.get(key)
            if info is not None and info.role != "input" and key not in prediction and not stats[key].has_nonfinite:
                sequence.append((info, all_figures[key]))
        return depth_alerts(sequence, self.config.thresholds, step, self.tracker.active)

    def _input_figures(self, key: str, st: TensorStats, min_rows: float = 256) -> dict[str, float]:
        """Per-feature scales and within-feature shape of an input over every batch seen so far.

        One batch misleads on sparse features (a pixel that is almost always 0); data is usually
        stationary, so the per-feature moments of all logged batches are merged exactly.
        """
        current = (st.cn, st.cmean, st.cm2, st.cm3, st.cm4)
        seen = self.inputs_seen.get(key)
        if seen is not None and len(seen[0]) == len(st.cn):
            current = merge_groups(*(np.stack([a, b]) for a, b in zip(seen, current, strict=True)))
        self.inputs_seen[key] = current
        return feature_figures(*current, min_rows=min_rows)

    def raise_nonfinite(self, step: int, origin: str, share: float, downstream: int, source: str) -> list[Alert]:
        """Record the run's ``nonfinite`` alert unless one is active; returns the new alert (or nothing)."""
        if self.nonfinite_active:
            return []
        self.nonfinite_active = True
        alert = nonfinite_alert(step, origin, share, downstream, source)
        self.alerts.append(alert)
        return [alert]

    def raise_overflow(self, step: int, stats: dict[str, TensorStats]) -> list[Alert] | None:
        """When the loss is non-finite but the replayed forward (``stats``) is finite: the ``nonfinite``
        alert naming the first module whose scale exploded (None when no module's did)."""
        order, baseline = [], {}
        for key, st in stats.items():
            info = self._infos.get(key)
            if info is None or info.role == "input":
                continue
            order.append((key, rms_of(figures(st))))
            ref = self.references.get(key)
            if ref is not None and ref.steps > 0 and ref.moments.n > 0:
                baseline[key] = math.hypot(ref.moments.mean, ref.moments.std)
            elif key in self.last_rms:
                baseline[key] = self.last_rms[key]
        found = first_exploded(order, baseline)
        if found is None:
            return None
        if self.nonfinite_active:
            return []
        self.nonfinite_active = True
        name, factor, basis = found
        alert = overflow_alert(step, name, self._infos[name].type_name, dict(order)[name], factor, basis)
        self.alerts.append(alert)
        return [alert]

    def active_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("info", "warning", "error"), 0)
        for _, kind in self.tracker.active:
            counts[SEVERITY[kind]] += 1
        counts["error"] += int(self.nonfinite_active)
        return counts

    def first_nonfinite(self, stats: dict[str, TensorStats]) -> tuple[str, float, int] | None:
        """(first tensor in execution order with NaN/Inf, its non-finite share, how many others have some)."""
        bad = [(k, st.nonfinite) for k, st in stats.items() if st.has_nonfinite]
        if not bad:
            return None
        return bad[0][0], bad[0][1], len(bad) - 1

    # ----------------------------------------------------------- state
    def state_dict(self) -> dict[str, object]:
        """Plain values (and CPU tensors) for a checkpoint."""
        for device, gen in self._generators.items():
            self._generator_states[str(device)] = self._generator_states[device.type] = gen.get_state()
        return {
            "references": {k: r.state() for k, r in self.references.items()},
            "active": self.tracker.state(),
            "episodes": self.tracker.episode_state(),
            "nonfinite_active": self.nonfinite_active,
            "generators": dict(self._generator_states),
            "alerts": [a.to_dict() for a in self.alerts],
            "inputs_seen": {k: [a.tolist() for a in v] for k, v in self.inputs_seen.items()},
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.references = {k: Reference.from_state(v) for k, v in state.get("references", {}).items()}  # type: ignore[union-attr]
        self.tracker.load(state.get("active", []))  # type: ignore[arg-type]
        self.tracker.load_episodes(state.get("episodes", {}))  # type: ignore[arg-type]
        self.nonfinite_active = bool(state.get("nonfinite_active", False))
        self._generator_states = dict(state.get("generators", {}))  # type: ignore[arg-type]
        self._generators = {}
        self.alerts = [Alert(**a) for a in state.get("alerts", [])]  # type: ignore[union-attr]
        self.inputs_seen = {
            k: tuple(np.asarray(a, dtype=np.float64) for a in v)
            for k, v in state.get("inputs_seen", {}).items()  # type: ignore[union-attr]
        }
