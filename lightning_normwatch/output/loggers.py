"""Scalars to any Lightning logger, under keys every logger keeps distinct; every TensorBoard writer.

Lightning loggers differ in what they do to a metric key:

- ``TensorBoardLogger``, ``CSVLogger``, ``WandbLogger``: keep it as is;
- ``MLFlowLogger``: deletes every character outside ``[a-zA-Z0-9_/. -]``, so ``lstm[1][0]``
  becomes ``lstm10`` and ``net.1[0]`` (first output of ``net.1``) would collide with ``net.10``.

For loggers that rewrite keys, ``SafeKeys`` renames each tensor once per run, injectively, into
characters they keep: ``[i]`` becomes ``-i``, ``@k`` (k-th differently shaped call of a module)
becomes ``-callk``, anything else outside the set ``_``; a name that would still meet another
gets ``-2``, ``-3`` ... in order of first appearance. Other loggers get the names unchanged.

Example:
    >>> keys = SafeKeys()
    >>> [keys.metric(k) for k in ("normwatch/net.1[0]/mean", "normwatch/net.10/mean", "normwatch/net.1-0/std")]
    ['normwatch/net.1-0/mean', 'normwatch/net.10/mean', 'normwatch/net.1-0-2/std']
    >>> keys.metric("normwatch/lstm[1][0]/std"), keys.metric("normwatch/enc.0@2/mean")
    ('normwatch/lstm-1-0/std', 'normwatch/enc.0-call2/mean')
"""

from __future__ import annotations

import re
import sys
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from . import checksum

__all__ = [
    "Recorder",
    "SafeKeys",
    "safe_name",
    "log_scalars",
    "write_scalars",
    "is_tensorboard_logger",
    "rewrites_keys",
    "tensorboard_writer",
    "TensorBoardWriters",
]

#: characters MLflow keeps in a metric key (``MLFlowLogger.log_metrics`` deletes the others)
_UNSAFE = re.compile(r"[^a-zA-Z0-9_/. -]")


def safe_name(name: str) -> str:
    """A readable MLflow-safe form of a tensor name (not injective by itself: see ``SafeKeys``).

    Example:
        >>> safe_name("lstm[1][0]"), safe_name("net.0@2"), safe_name("head.out:logits")
        ('lstm-1-0', 'net.0-call2', 'head.out_logits')
    """
    name = name.replace("[", "-").replace("]", "").replace("@", "-call")
    return _UNSAFE.sub("_", name)


class SafeKeys:
    """Per-run injective renaming of metric keys ``<prefix>/<tensor>/<figure>`` into MLflow-safe keys.

    The tensor part is renamed once (the same name for all its figures, stable for the run); prefix
    and figure are plain identifiers. A key without two slashes is renamed as a whole.
    """

    def __init__(self) -> None:
        self._names: dict[str, str] = {}
        self._taken: set[str] = set()

    def tensor(self, name: str) -> str:
        safe = self._names.get(name)
        if safe is None:
            base = safe = safe_name(name)
            k = 2
            while safe in self._taken:
                safe = f"{base}-{k}"
                k += 1
            self._names[name] = safe
            self._taken.add(safe)
        return safe

    def metric(self, key: str) -> str:
        head, sep, rest = key.partition("/")
        middle, sep2, last = rest.rpartition("/")
        if not sep or not sep2:
            return self.tensor(key)
        return f"{safe_name(head)}/{self.tensor(middle)}/{safe_name(last)}"


def _classes(name: str) -> list[type]:
    """``name`` from the loggers of ``pytorch_lightning`` and of ``lightning.pytorch``, when imported."""
    found = []
    for package in ("pytorch_lightning.loggers", "lightning.pytorch.loggers"):
        module = sys.modules.get(package)
        cls = getattr(module, name, None) if module is not None else None
        if isinstance(cls, type):
            found.append(cls)
    return found


def is_tensorboard_logger(logger: Any) -> bool:
    """A ``TensorBoardLogger`` of ``pytorch_lightning`` or of ``lightning.pytorch``.

    Example:
        >>> from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
        >>> is_tensorboard_logger(TensorBoardLogger("logs")), is_tensorboard_logger(CSVLogger("logs"))
        (True, False)
    """
    return any(isinstance(logger, cls) for cls in _classes("TensorBoardLogger"))


def rewrites_keys(logger: Any) -> bool:
    """Whether this logger deletes characters from metric keys (Lightning's ``MLFlowLogger``)."""
    return any(isinstance(logger, cls) for cls in _classes("MLFlowLogger"))


#: one ``SafeKeys`` per logger that rewrites keys, for the logger's lifetime
_SAFE_KEYS: weakref.WeakKeyDictionary[Any, SafeKeys] = weakref.WeakKeyDictionary()


def log_scalars(logger: Any, metrics: Mapping[str, float], step: int) -> None:
    """``logger.log_metrics(metrics, step)``, with all scalars in one event for a ``TensorBoardLogger``.

    ``TensorBoardLogger.log_metrics`` writes one event per scalar, about 0.1 ms each in the training
    thread (a protobuf, then a queue of 10 shared with a writer thread that checksums in pure Python):
    25 ms for the 240 scalars of an 8-layer model. One event holding every value costs 0.3 ms and
    reads back the same (TensorBoard, ``EventAccumulator``). A logger that rewrites keys (MLflow)
    gets ``SafeKeys`` names, distinct for distinct tensors.
    """
    from torch.utils.tensorboard import SummaryWriter

    writer = logger.experiment if is_tensorboard_logger(logger) else None
    if not isinstance(writer, SummaryWriter):  # another logger, or tensorboardX's writer
        if rewrites_keys(logger):
            keys = _SAFE_KEYS.setdefault(logger, SafeKeys())
            metrics = {keys.metric(k): v for k, v in metrics.items()}
        logger.log_metrics(dict(metrics), step=step)
        return
    checksum.install()  # its event checksums by a compiled CRC32C, where one is installed (same bytes)
    prefix = getattr(logger, "_prefix", "")  # TensorBoardLogger(prefix=...), joined as log_metrics does
    if prefix:
        metrics = {f"{prefix}{logger.LOGGER_JOIN_CHAR}{k}": v for k, v in metrics.items()}
    write_scalars(writer, metrics, step)


def write_summary(writer: Any, summary: Any, step: int) -> None:
    """One ``Summary`` protobuf (several values in one event) through a ``SummaryWriter``.

    No public method of torch's ``SummaryWriter`` writes a ``Summary`` of several values or with
    metadata of our own; its file writer (``_get_file_writer``, which also reopens a closed writer)
    is the one way, used here only.
    """
    writer._get_file_writer().add_summary(summary, step)


def write_scalars(writer: Any, metrics: Mapping[str, float], step: int) -> None:
    """All ``metrics`` in one event of a ``torch.utils.tensorboard.SummaryWriter``."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    summary = Summary()
    add = summary.value.add
    for tag, v in metrics.items():
        add(tag=tag, simple_value=float(v))
    write_summary(writer, summary, step)


class TensorBoardWriters:
    """Several ``SummaryWriter``s behind the one-writer interface ``Panels`` uses.

    Example:
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        >>> import tempfile
        >>> dirs = [tempfile.mkdtemp(), tempfile.mkdtemp()]
        >>> both = TensorBoardWriters([SummaryWriter(d) for d in dirs])
        >>> both.add_text("normwatch/alerts", "none", global_step=0)
        >>> both.flush()
        >>> [EventAccumulator(d).Reload().Tags()["tensors"] for d in dirs]   # the text is in both runs
        [['normwatch/alerts/text_summary'], ['normwatch/alerts/text_summary']]
    """

    def __init__(self, writers: Sequence[Any]) -> None:
        self.writers = list(writers)

    def add_histogram_raw(self, *args: Any, **kwargs: Any) -> None:
        for w in self.writers:
            w.add_histogram_raw(*args, **kwargs)

    def add_custom_scalars(self, layout: Any) -> None:
        for w in self.writers:
            w.add_custom_scalars(layout)

    def add_text(self, *args: Any, **kwargs: Any) -> None:
        for w in self.writers:
            w.add_text(*args, **kwargs)

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        for w in self.writers:
            w.add_scalar(*args, **kwargs)

    def add_figure(self, tag: str, figure: Any, global_step: int | None = None, close: bool = True) -> None:
        for i, w in enumerate(self.writers):  # the figure is closed after the last writer rendered it
            w.add_figure(tag, figure, global_step=global_step, close=close and i == len(self.writers) - 1)

    def flush(self) -> None:
        for w in self.writers:
            w.flush()

    def _get_file_writer(self) -> _FileWriters:
        """Raw summaries (one event for several values, ``Panels``) go to every writer's file writer."""
        return _FileWriters([w._get_file_writer() for w in self.writers])


class _FileWriters:
    def __init__(self, file_writers: Sequence[Any]) -> None:
        self.file_writers = list(file_writers)

    def add_summary(self, summary: Any, global_step: int | None = None) -> None:
        for fw in self.file_writers:
            fw.add_summary(summary, global_step)


def tensorboard_writer(loggers: Sequence[Any]) -> Any:
    """The ``SummaryWriter`` of every ``TensorBoardLogger`` among ``loggers`` as one writer (None: none)."""
    writers = [lg.experiment for lg in loggers if is_tensorboard_logger(lg)]
    if not writers:
        return None
    return writers[0] if len(writers) == 1 else TensorBoardWriters(writers)


class Recorder:
    """A sink that keeps ``(step, metrics)`` in a list: for tests, examples, or your own handling.

    Example:
        >>> seen = []
        >>> Recorder(seen).log_metrics({"normwatch/x/std": 1.0}, step=3)
        >>> seen
        [(3, {'normwatch/x/std': 1.0})]
    """

    def __init__(self, into: list[tuple[int, dict[str, float]]]) -> None:
        self.into = into

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.into.append((int(step or 0), dict(metrics)))
