"""``Collector``: forward hooks on the watched modules and the input features, one logging step's samples,
and their merge into ``TensorStats`` on the host (one device-to-host transfer).

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
    >>> collector = Collector(SessionConfig())
    >>> collector.attach(model)
    ['0', '1']
    >>> collector.arm()
    >>> collector.observe("input", x := torch.randn(32, 8), role="input")
    >>> _ = model(x)
    >>> collector.disarm()
    >>> stats = collector.collect()
    >>> list(stats), collector.info("1").type_name
    (['input', '0', '1'], 'ReLU')
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..config import SessionConfig
from ..stats.block import BlockLayout
from ..stats.feature_drift import FEATURE_BINS, Anchor, feature_histogram
from ..stats.figures import TensorStats
from .batched import measure_flat
from .discovery import InputDiscovery
from .info import TensorInfo
from .layout import Flow, module_layout
from .measurable import Skipped, unmeasurable
from .sampling import MeasureSpec, Sampled, measured_channels, saturation_bounds_for, take_sample
from .selection import Pattern, named_tensors, role_of, select_modules

__all__ = ["Collector", "input_features"]

log = logging.getLogger("lightning_normwatch")


def input_features(tensor: Tensor) -> int:
    """Features of an input tensor: channels of ``[B, C, *spatial]`` (4+ dims), else its last dimension.

    Example:
        >>> input_features(torch.zeros(2, 3, 4, 4)), input_features(torch.zeros(2, 5))
        (3, 5)
    """
    return tensor.shape[1] if tensor.ndim >= 4 else (tensor.shape[-1] if tensor.ndim >= 2 else 1)


def _untimed(hook: Callable[..., None]) -> Callable[..., None]:
    """``Collector.timing`` without a cost meter (module-level, so that a collector pickles: ``ddp_spawn``)."""
    return hook


def _ignored(seconds: float) -> None:
    """``Collector.device_wait`` without a cost meter."""


class Collector:
    """Samples the watched tensors of a logging step on their devices and merges them on the host.

    Args:
        config: the session's settings (sample sizes, seed, world size).
        anchors: the anchor of an input's feature bins (``judge.input_drift.InputTracker.anchor``), or None.
    """

    def __init__(self, config: SessionConfig, anchors: Callable[[str], Anchor | None] = lambda key: None) -> None:
        self.config = config
        self.anchors = anchors
        self.watched: list[tuple[str, nn.Module]] = []
        self.discovery = InputDiscovery()
        self.infos: dict[str, TensorInfo] = {}
        self.called: set[str] = set()  # watched modules that ran since the collection started
        self.edges: dict[str, str] = {}  # tensor key -> key of the watched tensor its module consumed
        self.feature_stride: dict[str, int] = {}  # input key -> stride of its measured features
        self.generator_states: dict[str, Tensor] = {}  # loaded from a checkpoint, by device and device type
        self._specs: dict[str, MeasureSpec] = {}
        self._blocks: dict[str, list[Sampled]] = {}  # samples taken in the hooks, measured by local_blocks()
        self._tails: dict[str, list[Tensor]] = {}
        self._handles: list[RemovableHandle] = []
        self._generators: dict[torch.device, torch.Generator] = {}
        self._model: nn.Module | None = None
        self._flow = Flow()  # layout and producer of the tensors output in the current forward pass
        self._calls: dict[str, int] = {}  # calls of each watched module in the current forward pass
        self.skipped = Skipped()  # tensors not measured, each named once with the reason (info line)
        self._anchor_tensors: dict[tuple[str, torch.device], tuple[object, Tensor, Tensor]] = {}
        #: wraps every hook when it is registered (the session's ``session.cost.timed``: counts its time)
        self.timing: Callable[[Callable[..., None]], Callable[..., None]] = _untimed
        #: told how long the transfer waited for a device's queued work (the session's ``CostMeter.device``)
        self.device_wait: Callable[[float], None] = _ignored

    # ----------------------------------------------------------------- hooks
    def attach(
        self, model: nn.Module, modules: Sequence[Pattern] | None = None, exclude: Sequence[Pattern] = ()
    ) -> list[str]:
        """Choose the modules to watch (hooks are only registered by ``arm``)."""
        self.watched = select_modules(model, modules, exclude)
        self._model = model
        self.discovery.attach(model)
        return [name for name, _ in self.watched]

    def expect_inputs(self, batch: object) -> None:
        """Announce the batch of the forward pass to come: the float tensors of it that the model's
        modules consume are watched as its input features. Call before ``arm``/the forward."""
        self.discovery.expect(batch)

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

        Called by a pre-hook on the attached model and by the session at every batch, so that
        accumulated batches merge into the same per-call entries.
        """
        self._calls = {}
        self._flow.reset()

    def resume(self) -> None:
        """Register the hooks again after ``pause``, keeping what was collected."""
        if self._handles:
            return
        hooks = [(module, self._hook_for(name)) for name, module in self.watched]
        self._handles = [module.register_forward_hook(self.timing(hook)) for module, hook in hooks]
        if self._model is not None and self.watched:
            self._handles.append(self._model.register_forward_pre_hook(lambda *_: self.next_pass()))
        if self.discovery.expected:
            pre = [(m, self.timing(self._input_hook_for(n))) for n, m in self.discovery.modules()]
            self._handles += [m.register_forward_pre_hook(hook) for m, hook in pre]

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
        saved, saved_tails, saved_taken, was_armed = self._blocks, self._tails, self.discovery.taken, self.armed
        saved_pass = (self._calls, self._flow, self.called)
        self._flow = Flow()
        self.arm()
        self.discovery.taken = set()
        try:
            yield
        finally:
            self.disarm()
            if was_armed:
                self.arm()
            self._blocks, self._tails, self.discovery.taken = saved, saved_tails, saved_taken
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
            for key, tensor in named_tensors(output, base, all_tensors=True):
                try:
                    self.observe(key, tensor, module, source=source)
                except Exception as exc:  # whatever cannot be measured never breaks the forward pass
                    self.skipped.note(key, f"measuring it failed ({exc!r})")

        return hook

    def _input_hook_for(self, name: str) -> Callable[[nn.Module, tuple[object, ...]], None]:
        def pre_hook(module: nn.Module, args: tuple[object, ...]) -> None:
            if torch.compiler.is_compiling() or not args or not isinstance(args[0], Tensor):
                return  # under dynamo the hook is traced as a no-op
            self.discovery.seen(name, args[0], self._take_input, self._forget)

        return pre_hook

    def _take_input(self, name: str, tensor: Tensor) -> None:
        self.observe(name, tensor, role="input")

    def _forget(self, key: str) -> None:
        for store in (self._blocks, self._tails, self._specs, self.infos):
            store.pop(key, None)

    # ----------------------------------------------------------- sampling
    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            # a checkpoint holds rank 0's states: another rank resumes from its device type's (e.g. cuda:0 for cuda:1)
            saved = self.generator_states.get(str(device), self.generator_states.get(device.type))
            if saved is not None:
                gen.set_state(saved)
            else:
                gen.manual_seed(self.config.seed)
            self._generators[device] = gen
        return gen

    def generator_state(self) -> dict[str, Tensor]:
        """The sampling generators' states by device and device type (plain CPU tensors, for a checkpoint)."""
        for device, gen in self._generators.items():
            self.generator_states[str(device)] = self.generator_states[device.type] = gen.get_state()
        return dict(self.generator_states)

    def load_generator_state(self, states: dict[str, Tensor]) -> None:
        self.generator_states = dict(states)
        self._generators = {}

    def _spec(self, tensor: Tensor, module: nn.Module | None, role: str | None, source: object = None) -> MeasureSpec:
        c = self.config
        sample_size = c.sample_size
        if role == "input":  # per-feature drift needs rows: up to input_rows rows of every feature, bounded
            channels = input_features(tensor)
            sample_size = max(c.sample_size, min(c.input_rows * min(channels, c.max_channels), c.input_sample_size))
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
        and complex tensors, and others that cannot be measured, are skipped with one info line each
        (``collect/measurable.py``).
        """
        if not isinstance(tensor, Tensor):
            return
        reason = unmeasurable(tensor)
        if reason is not None:
            self.skipped.note(name, reason)
            return
        key, spec = name, self._specs.get(name)
        channels = measured_channels(tensor, spec or self._spec(tensor, module, role, source))
        call = 1
        while spec is not None and self.infos[key].channels != channels:
            call += 1  # same module called with a differently shaped tensor: a separate entry
            key = f"{name}@{call}"
            spec = self._specs.get(key)
        if spec is None:
            spec = self._specs[key] = self._spec(tensor, module, role, source)
            self.infos[key] = TensorInfo(
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
        if self.infos[key].role == "input":
            self._tails.setdefault(key, []).append(self._input_tail(key, tensor, taken.sample))
        self._flow.record(tensor, spec.channel_first, key)

    def _input_tail(self, key: str, tensor: Tensor, sample: Tensor) -> Tensor:
        """The block tail of an input: batch items, then per-feature counts on the anchor bins (on device)."""
        channels = sample.shape[1]
        full = input_features(tensor)
        self.feature_stride[key] = math.ceil(full / channels) if channels else 1
        items = torch.full((1,), float(tensor.shape[0]) if tensor.ndim else 1.0, device=sample.device)
        anchor = self.anchors(key)
        if anchor is None or len(anchor.center) != channels:
            hist = torch.zeros(channels * FEATURE_BINS, device=sample.device, dtype=sample.dtype)
        else:
            cached = self._anchor_tensors.get((key, sample.device))
            if cached is None or cached[0] is not anchor:
                cached = (anchor, *anchor.tensors(sample.device, sample.dtype))
                self._anchor_tensors[(key, sample.device)] = cached
            hist = feature_histogram(sample, cached[1], cached[2])
        return torch.cat([items.to(sample.dtype), hist])

    # ----------------------------------------------------------- blocks
    def local_blocks(self) -> tuple[Tensor, dict[str, tuple[int, int]]]:
        """This process's blocks of the current collection in one vector (float64, on the device), and the
        ``[calls, size]`` of every tensor's blocks in it, in execution order."""
        items = [s for taken in self._blocks.values() for s in taken]
        source, sizes = measure_flat(items)  # one set of operations for all tensors (batched.py)
        pieces: list[Tensor] = []
        shapes: dict[str, tuple[int, int]] = {}
        i = done = end = 0  # items passed, values of source in pieces, values of source passed
        for key, taken in self._blocks.items():
            tails = self._tails.get(key, [])
            for tail in tails:  # input features: every call's block is followed by its per-feature tail
                end += sizes[i]
                pieces += [source[done:end], tail.to(source.dtype)]
                done, i = end, i + 1
            end += sum(sizes[i : i + len(taken) - len(tails)])
            i += len(taken) - len(tails)
            shapes[key] = (len(taken), sizes[i - 1] + (tails[0].numel() if tails else 0))
        pieces.append(source[done:end])
        return (torch.cat(pieces) if len(pieces) > 1 else pieces[0]), shapes

    def block_layout(self, key: str, channels: int) -> BlockLayout:
        """The block layout of a watched tensor: input features carry a per-feature tail."""
        info = self.infos.get(key)
        return BlockLayout(channels, FEATURE_BINS if info is not None and info.role == "input" else 0)

    def channels(self, key: str) -> int:
        return self.infos[key].channels

    def info(self, key: str) -> TensorInfo:
        return self.infos[key]

    def register(self, info: TensorInfo) -> None:
        """Learn about a tensor another rank observed (its role decides which rules apply)."""
        self.infos.setdefault(info.name, info)

    def collect(self) -> dict[str, TensorStats]:
        """Merge this process's blocks on the host (one device-to-host transfer for all tensors)."""
        if not self._blocks:
            return {}
        flat, shapes = self.local_blocks()
        self._blocks, self._tails = {}, {}
        if flat.device.type == "cpu":
            host = flat.numpy()
        else:  # waits for everything queued on the device before it, the training's kernels first
            started = time.perf_counter()
            host = flat.cpu().numpy()
            self.device_wait(time.perf_counter() - started)
        out, start = {}, 0
        for key, (calls, size) in shapes.items():
            stop = start + calls * size
            bins = self.block_layout(key, self.channels(key)).feature_bins
            out[key] = TensorStats.from_blocks(host[start:stop].reshape(calls, size), self.channels(key), bins)
            start = stop
        return out

    @staticmethod
    def first_nonfinite(stats: dict[str, TensorStats]) -> tuple[str, float, int] | None:
        """(first tensor in execution order with NaN/Inf, its non-finite share, how many others have some)."""
        bad = [(k, st.nonfinite) for k, st in stats.items() if st.has_nonfinite]
        if not bad:
            return None
        return bad[0][0], bad[0][1], len(bad) - 1
