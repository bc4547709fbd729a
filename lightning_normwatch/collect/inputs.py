"""Which tensors are the model's input features: the batch tensors its modules consume.

**Which tensors.** Not "the first float tensor of the batch" (that may be an attention mask or a
regression target): the input features are the batch tensors that the model's modules actually
consume. On the first logging step every leaf module gets a forward pre-hook; a batch tensor (or a
view of it) arriving as a module's first positional argument is an input feature, named ``input``
(a tensor batch, or element 0 of a tuple), ``input/<i>`` (other tuple elements) or ``input/<key>``
(dict batches). When no batch tensor reaches a module directly (the training step transforms it
first), the float input of the first module that runs is the input. When that first module receives
integer ids (an embedding), there are no float input features: NormWatch says so once (``info``)
and the embedding outputs are the first watched tensors. Later logging steps hook only the modules
found (``consumers``). Losses are never consumers (their arguments are predictions and targets).

Their per-feature scale and drift over training are judged in ``judge/input_drift.py``.

Example:
    >>> import torch
    >>> [name for name, _ in batch_tensors({"ids": torch.ones(2, dtype=torch.long), "x": torch.zeros(2, 3)})]
    ['input/x']
    >>> [name for name, _ in batch_tensors((torch.zeros(2, 3), torch.zeros(2)))]
    ['input', 'input/1']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from torch import Tensor, nn

from .selection import named_tensors

__all__ = ["InputSpec", "batch_tensors", "find_inputs", "storage_key", "is_consumer_candidate"]

#: ``inputs=``: automatic (True), off (False), a dict key, a tuple index, or a callable ``batch -> tensor | dict``
InputSpec = bool | str | int | Callable[[Any], Any]


def batch_tensors(batch: Any, prefix: str = "input", depth: int = 2) -> Iterator[tuple[str, Tensor]]:
    """Floating-point tensors of a batch with their input names (see the module docstring)."""
    if isinstance(batch, Tensor):
        if batch.is_floating_point():
            yield prefix, batch
        return
    if depth == 0:
        return
    if isinstance(batch, Mapping):
        for key, value in batch.items():
            yield from batch_tensors(value, f"{prefix}/{key}", depth - 1)
    elif isinstance(batch, (tuple, list)):
        for i, value in enumerate(batch):
            yield from batch_tensors(value, prefix if i == 0 and prefix == "input" else f"{prefix}/{i}", depth - 1)


def storage_key(tensor: Tensor) -> tuple[str, int]:
    """Identifies the memory a tensor views: a batch tensor and its reshaped views share it."""
    try:
        return (str(tensor.device), tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # sparse, nested or fake tensors have no plain storage
        return (str(tensor.device), id(tensor))


def is_consumer_candidate(module: nn.Module) -> bool:
    """Leaf modules other than losses (their first argument is a prediction, not a feature)."""
    # torch has no public base class of its losses (``_Loss``)
    return not any(True for _ in module.children()) and not isinstance(module, nn.modules.loss._Loss)


_NOT_FEATURES = ("mask", "label", "target", "weight", "ids")


def find_inputs(batch: Any, spec: InputSpec) -> list[tuple[str, Tensor]]:
    """The batch's input features to watch when they are named explicitly: ``[(name, tensor)]``.

    A string: that key of a dict batch; an int: that position of a tuple/list batch; a callable:
    called with the batch, returning a tensor or a dict of tensors. ``True`` (automatic) is resolved
    by the collector from what the model's modules consume (``collect/discovery.py``); only where that
    is impossible (no module ran through its hooks, e.g. a compiled model) does it fall back to the
    batch: the first floating-point tensor (of a tuple: its first element) whose key does not name a
    mask, label, target, weight or ids.
    """
    if spec is False:
        return []
    if callable(spec) and not isinstance(spec, bool):
        chosen = spec(batch)
        if isinstance(chosen, Mapping):
            return [(f"input/{k}", v) for k, v in chosen.items() if isinstance(v, Tensor) and v.is_floating_point()]
        return [("input", chosen)] if isinstance(chosen, Tensor) and chosen.is_floating_point() else []
    if isinstance(spec, str):
        value = batch.get(spec) if isinstance(batch, Mapping) else None
        return [(f"input/{spec}", value)] if isinstance(value, Tensor) and value.is_floating_point() else []
    if isinstance(spec, int) and not isinstance(spec, bool):
        value = batch[spec] if isinstance(batch, (tuple, list)) and -len(batch) <= spec < len(batch) else None
        return [("input", value)] if isinstance(value, Tensor) and value.is_floating_point() else []
    if isinstance(batch, Mapping):
        for key, value in batch.items():
            if isinstance(value, Tensor) and value.is_floating_point() and not _names_no_feature(str(key)):
                return [(f"input/{key}", value)]
        return []
    first = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    for _, tensor in named_tensors(first, "input"):
        return [("input", tensor)]
    return []


def _names_no_feature(key: str) -> bool:
    key = key.lower()
    return any(word in key for word in _NOT_FEATURES)
