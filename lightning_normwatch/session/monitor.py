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
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..judge.alerts import SEVERITY, Alert, AlertTracker
from ..collect.batched import measure_all
from ..config import Thresholds
from ..judge.depth import depth_alerts, rms_of, small_growth
from ..stats.feature_drift import FEATURE_BINS, FeatureStats, feature_histogram
from ..collect.inputs import InputTracker, batch_tensors, is_consumer_candidate, storage_key
from ..collect.layout import Flow, module_layout
from ..collect.sampling import (
    BlockLayout,
    MeasureSpec,
    Sampled,
    measured_channels,
    saturation_bounds_for,
    take_sample,
)
from ..judge.overflow import first_exploded, overflow_alert
from ..stats.reference import Reference, drift
from ..judge.rules import CLEAR_FRACTION, TensorInfo, evaluate, nonfinite_alert
from ..collect.selection import Pattern, named_tensors, role_of, select_modules
from ..stats.figures import TensorStats, figures, figures_many

__all__ = ["Monitor", "MonitorConfig", "StepResult"]

#: rows of an input sampled at most per logging step (the per-feature drift tests' sample; a logging step's
#: cost grows with it: 1,024 rows of a 256-feature MLP input cost 3.4 ms of a 20 ms logging step)
INPUT_ROWS = 256


def _input_features(tensor: Tensor) -> int:
    """Features of an input tensor: channels of ``[B, C, *spatial]`` (4+ dims), else its last dimension."""
    return tensor.shape[1] if tensor.ndim >= 4 else (tensor.shape[-1] if tensor.ndim >= 2 else 1)


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
        input_drift: severity of ``input_drift`` alerts: ``"warn"``, ``"info"`` (data that changes on
            purpose: curriculum, domain schedule) or ``"off"`` (figures only).
        feature_names: names of the input features (columns/channels), used in ``input_drift`` messages.
        input_sample_size: values sampled per input tensor (inputs are few and drift needs rows).
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
    input_drift: str = "warn"
    feature_names: tuple[str, ...] | None = None
    input_sample_size: int = 1 << 18


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
        # input features (see inputs.py): per-input anchors, references and recent windows
        self.input_tracker = InputTracker(config.warmup_steps + config.reference_steps)
        self._tails: dict[str, list[Tensor]] = {}
        self._anchor_tensors: dict[tuple[str, torch.device], tuple[object, Tensor, Tensor]] = {}
        self._feature_stride: dict[str, int] = {}
        # discovery of the tensors the model consumes: module name -> input name (None: not found yet)
        self.consumers: dict[str, str] | None = None
        self._candidates: list[tuple[str, nn.Module]] = []
        self._auto_inputs = False
        self._batch_names: dict[tuple[str, int], str] = {}
        self._inputs_taken: set[str] = set()
        self._first_leaf: tuple[str, bool] | None = None
        self._found: dict[str, str] = {}
        self._tentative: str | None = None
        self._notes: list[Alert] = []
        #: no module ran through the discovery hooks on a logging step (e.g. a compiled model)
        self.discovery_failed = False

    # ----------------------------------------------------------------- hooks
    def attach(
        self, model: nn.Module, modules: Sequence[Pattern] | None = None, exclude: Sequence[Pattern] = ()
    ) -> list[str]:
        """Choose the modules to watch (hooks are only registered by ``arm``)."""
        self.watched = select_modules(model, modules, exclude)
        self._model = model
        self._candidates = [(name, m) for name, m in model.named_modules() if name and is_consumer_candidate(m)]
        return [name for name, _ in self.watched]

    def expect_inputs(self, batch: object) -> None:
        """Announce the batch of the forward pass to come: the float tensors of it that the model's
        modules consume are watched as its input features (``inputs.py``). Call before ``arm``/the forward.
        """
        self._auto_inputs = True
        self._batch_names = {storage_key(t): name for name, t in reversed(list(batch_tensors(batch)))}
        self._inputs_taken = set()

    @property
    def armed(self) -> bool:
        return bool(self._handles)

    def arm(self) -> None:
        """Register forward hooks on the watched modules and start a new collection."""
        self.disarm()
        self._blocks, self._tails = {}, {}
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
            if self._auto_inputs:
                wanted = (
                    self._candidates
                    if self.consumers is None
                    else [(name, m) for name, m in self._candidates if name in self.consumers]
                )
                self._handles += [m.register_forward_pre_hook(self._input_hook_for(name)) for name, m in wanted]

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
        saved, saved_tails, saved_taken, was_armed = self._blocks, self._tails, self._inputs_taken, self.armed
        saved_pass = (self._calls, self._flow, self.called)
        self._flow = Flow()
        self.arm()
        self._inputs_taken = set()
        try:
            yield
        finally:
            self.disarm()
            if was_armed:
                self.arm()
            self._blocks, self._tails, self._inputs_taken = saved, saved_tails, saved_taken
            self._calls, self._flow, self.called = saved_pass

    def _hook_for(self, name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(module: nn.Module, args: tuple[object, ...], output: object) -> None:
            if torch.compiler.is_compiling():  # traced by dynamo (a compiled call NormWatch did not detect): skip
                return
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

    def _input_hook_for(self, name: str) -> Callable[[nn.Module, tuple[object, ...]], None]:
        def pre_hook(module: nn.Module, args: tuple[object, ...]) -> None:
            if torch.compiler.is_compiling() or not args or not isinstance(args[0], Tensor):
                return  # under dynamo the hook is traced as a no-op
            tensor = args[0]
            if self.consumers is not None:
                input_name = self.consumers.get(name)
                if input_name is not None and input_name not in self._inputs_taken:
                    self._take_input(input_name, tensor)
                return
            self._discover(name, tensor)

        return pre_hook

    def _take_input(self, name: str, tensor: Tensor) -> None:
        self._inputs_taken.add(name)
        self.observe(name, tensor, role="input")

    def _discover(self, module_name: str, tensor: Tensor) -> None:
        """First logging step: which batch tensors reach a module (see ``inputs.py``)."""
        if self._first_leaf is None:
            self._first_leaf = (module_name, tensor.is_floating_point())
        if not tensor.is_floating_point():
            return
        matched = self._batch_names.get(storage_key(tensor))
        if matched is not None:
            self._found.setdefault(module_name, matched)
            if self._tentative is not None:  # the first module's input was not a feature of the batch
                self._forget(self._tentative_key())
                self._tentative = None
            if matched not in self._inputs_taken:
                self._take_input(matched, tensor)
        elif self._first_leaf[0] == module_name and not self._found and self._tentative is None:
            self._tentative = module_name
            self._take_input(self._tentative_key(), tensor)

    @staticmethod
    def _tentative_key() -> str:
        return "input"

    def _forget(self, key: str) -> None:
        for store in (self._blocks, self._tails, self._specs, self._infos):
            store.pop(key, None)
        self._inputs_taken.discard(key)

    def _finish_discovery(self, step: int) -> None:
        if self.consumers is not None:
            return
        if self._first_leaf is None:
            self.discovery_failed = self._auto_inputs
            return
        if self._found:
            self.consumers = dict(self._found)
        elif self._tentative is not None:
            self.consumers = {self._tentative: self._tentative_key()}
        else:
            self.consumers = {}
            first = self._first_leaf[0]
            self._notes.append(
                Alert(
                    step,
                    first,
                    "integer_inputs",
                    SEVERITY["integer_inputs"],
                    0.0,
                    0.0,
                    f"The model's first module `{first}` receives integer ids (token ids) and no float batch tensor "
                    "reaches a module: there are no float input features to watch, so input scale and drift are "
                    f"not measured; the outputs of `{first}` (embeddings) are the first watched tensors.",
                )
            )
        self._first_leaf, self._found, self._tentative = None, {}, None

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
        sample_size = c.sample_size
        if role == "input":  # per-feature drift needs rows: up to INPUT_ROWS rows of every feature, bounded
            channels = _input_features(tensor)
            sample_size = max(c.sample_size, min(INPUT_ROWS * min(channels, c.max_channels), c.input_sample_size))
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
            sample_size=sample_size,
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
        if self._infos[key].role == "input":
            self._tails.setdefault(key, []).append(self._input_tail(key, tensor, taken.sample))
        self._flow.record(tensor, spec.channel_first, key)

    def _input_tail(self, key: str, tensor: Tensor, sample: Tensor) -> Tensor:
        """The block tail of an input: batch items, then per-feature counts on the anchor bins (on device)."""
        channels = sample.shape[1]
        full = _input_features(tensor)
        self._feature_stride[key] = math.ceil(full / channels) if channels else 1
        items = torch.full((1,), float(tensor.shape[0]) if tensor.ndim else 1.0, device=sample.device)
        anchor = self.input_tracker.anchor(key)
        if anchor is None or len(anchor.center) != channels:
            hist = torch.zeros(channels * FEATURE_BINS, device=sample.device, dtype=sample.dtype)
        else:
            cached = self._anchor_tensors.get((key, sample.device))
            if cached is None or cached[0] is not anchor:
                cached = (anchor, *anchor.tensors(sample.device, sample.dtype))
                self._anchor_tensors[(key, sample.device)] = cached
            hist = feature_histogram(sample, cached[1], cached[2])
        return torch.cat([items.to(sample.dtype), hist])

    def local_blocks(self) -> dict[str, Tensor]:
        """This process's blocks of the current collection, ``[calls, size]`` per tensor, in execution order."""
        items = [s for taken in self._blocks.values() for s in taken]
        blocks = iter(measure_all(items))  # one set of operations for all tensors (batched.py)
        out: dict[str, Tensor] = {}
        for key, taken in self._blocks.items():
            mine = [next(blocks) for _ in taken]
            tails = self._tails.get(key)
            if tails:  # input features: the per-feature tail
                mine = [torch.cat([b, t.to(b.dtype)]) for b, t in zip(mine, tails, strict=True)]
            out[key] = mine[0].unsqueeze(0) if len(mine) == 1 else torch.stack(mine)
        return out

    def block_layout(self, key: str, channels: int) -> BlockLayout:
        """The block layout of a watched tensor: input features carry a per-feature tail."""
        info = self._infos.get(key)
        return BlockLayout(channels, FEATURE_BINS if info is not None and info.role == "input" else 0)

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
        self._blocks, self._tails = {}, {}
        if not blocks:
            return {}
        flat = torch.cat([b.reshape(-1) for b in blocks.values()]).cpu().numpy()
        out, start = {}, 0
        for key, b in blocks.items():
            stop = start + b.numel()
            bins = self.block_layout(key, self.channels(key)).feature_bins
            out[key] = TensorStats.from_blocks(flat[start:stop].reshape(b.shape), self.channels(key), bins)
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

    def _head_inputs(self, stats: dict[str, TensorStats], prediction: set[str]) -> set[str]:
        """The representation the prediction head reads: the tensors right before the prediction made by
        parameter-free modules (the pooler's tanh, a global pool and flatten): their shape changes as the
        model learns, so ``shift`` does not judge them (scale and mean drift still do)."""
        modules = dict(self.watched)
        order = [k for k in stats if k not in prediction and (k not in self._infos or self._infos[k].role != "input")]
        out: set[str] = set()
        for key in reversed(order):
            module = modules.get(re.split(r"[#@\[]", key, maxsplit=1)[0])
            if module is None or next(module.parameters(recurse=False), None) is not None:
                break
            out.add(key)
        return out

    def reference_ready(self, step: int) -> bool:
        return step >= self.config.warmup_steps + self.config.reference_steps

    def evaluate(self, step: int, stats: dict[str, TensorStats]) -> StepResult:
        """Figures, reference update, drift and alerts for one logging step (same on every rank)."""
        th = self.config.thresholds
        self._finish_discovery(step)
        all_figures: dict[str, dict[str, float]] = {}
        firing: list[Alert] = []
        checked: set[tuple[str, str]] = set()
        prediction = self._prediction_keys(stats)
        head_inputs = self._head_inputs(stats, prediction)
        computed = dict(zip(stats, figures_many(list(stats.values())), strict=True))  # all tensors at once
        for key, st in stats.items():
            info = self._infos.get(key) or TensorInfo(key, "other", "?", len(st.cn))
            fig = computed[key]
            if info.role == "input":
                fig.update(self._input_figures(key, st, step, firing, checked))
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
            # The model's prediction drifts because it learns: that is not covariate shift. Inputs are
            # judged per feature (input_drift), which supersedes the pooled tensor's drift rules.
            judged = None if key in prediction or info.role == "input" else d
            if judged is not None and key in head_inputs:
                judged = {k: v for k, v in judged.items() if k != "shape_psi"}
            a, c = evaluate(info, fig, judged, th, step, alive_before=key in self.alive)
            firing += a
            checked |= c
            if fig.get("dead", math.nan) < CLEAR_FRACTION * th.dead:
                self.alive.add(key)
        reference_rms = {
            k: math.hypot(r.moments.mean, r.moments.std)
            for k, r in self.references.items()
            if r.steps > 0 and r.moments.n > 0 and (k not in self._infos or self._infos[k].role != "input")
        }
        learning = small_growth(firing, all_figures, reference_rms)
        firing = [a for a in firing if a not in learning]
        a, c = self._depth_alerts(stats, all_figures, prediction, step)
        firing += a
        checked |= c
        new = self._notes + self.tracker.update(firing, checked, step)
        self._notes = []
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

    def _input_figures(
        self, key: str, st: TensorStats, step: int, firing: list[Alert], checked: set[tuple[str, str]]
    ) -> dict[str, float]:
        """Feature scales on recent batches, per-feature drift, and the ``input_drift`` alert if it holds."""
        fig = self.input_tracker.scale_figures(key, st.cn, st.cmean, st.cm2, st.cm3, st.cm4)
        if st.fhist is None or st.has_nonfinite:
            return fig
        th = self.config.thresholds
        current = FeatureStats(st.cn, st.cmean, st.cm2, st.cm3, st.cm4, st.fhist, st.fitems)
        labels = self._feature_labels(key, len(st.cn))
        floors = (th.input_mean_shift, th.input_scale, th.input_psi)
        drift_fig, verdict = self.input_tracker.update(key, step, current, floors, th.input_noise_z, labels)
        if "feature_drift_worst" in drift_fig:  # the worst feature's index in the input, not in the strided sample
            drift_fig["feature_drift_worst"] *= self._feature_stride.get(key, 1)
        fig.update(drift_fig)
        if not drift_fig or self.config.input_drift == "off":
            return fig
        checked.add((key, "input_drift"))
        if verdict is not None:
            end = self.input_tracker.reference_end
            firing.append(
                Alert(
                    step,
                    key,
                    "input_drift",
                    self.severity("input_drift"),
                    verdict.score,
                    1.0,
                    f"Input features of `{key}` drifted from their reference (logging steps before step {end}): "
                    f"{verdict.message}. Each change exceeds its effect floor (mean {th.input_mean_shift:g} σ, "
                    f"scale x{th.input_scale:g}, PSI {th.input_psi:g}) and {th.input_noise_z:g} standard errors of "
                    "what a batch this size produces by chance, on 2 consecutive logging steps; usual causes: a "
                    "normalization step skipped or applied twice, changed units, a broken, constant or reordered "
                    "column. If the data changes on purpose, pass input_drift='info' or 'off'.",
                )
            )
        return fig

    def _feature_labels(self, key: str, channels: int) -> list[str]:
        stride = self._feature_stride.get(key, 1)
        names = self.config.feature_names
        out = []
        for i in range(channels):
            j = i * stride
            out.append(f"`{names[j]}`" if names is not None and j < len(names) else f"feature {j}")
        return out

    def severity(self, kind: str) -> str:
        """The severity of an alert kind here (``input_drift`` follows ``MonitorConfig.input_drift``)."""
        if kind == "input_drift" and self.config.input_drift == "info":
            return "info"
        return SEVERITY[kind]

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
            counts[self.severity(kind)] += 1
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
            "inputs": self.input_tracker.state(),
            "consumers": None if self.consumers is None else dict(self.consumers),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.references = {k: Reference.from_state(v) for k, v in state.get("references", {}).items()}  # type: ignore[union-attr]
        self.tracker.load(state.get("active", []))  # type: ignore[arg-type]
        self.tracker.load_episodes(state.get("episodes", {}))  # type: ignore[arg-type]
        self.nonfinite_active = bool(state.get("nonfinite_active", False))
        self._generator_states = dict(state.get("generators", {}))  # type: ignore[arg-type]
        self._generators = {}
        self.alerts = [Alert(**a) for a in state.get("alerts", [])]  # type: ignore[union-attr]
        self.input_tracker.load(state.get("inputs", {}))  # type: ignore[arg-type]
        consumers = state.get("consumers")
        self.consumers = None if consumers is None else dict(consumers)  # type: ignore[call-overload]
