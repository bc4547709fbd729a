"""Finding the input features on the first logging step: which batch tensors the model's modules consume.

On the first logging step every leaf module (losses excepted) gets a forward pre-hook; a batch tensor
(or a view of it) arriving as a module's first positional argument is an input feature. When no batch
tensor reaches a module directly, the float input of the first module that runs is the input
(``input``, tentatively). Later logging steps hook only the modules found (``consumers``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> found = InputDiscovery()
    >>> found.attach(nn.Sequential(nn.Linear(3, 2)))
    >>> x = torch.zeros(4, 3)
    >>> found.expect((x, torch.zeros(4)))
    >>> taken = []
    >>> found.seen("0", x, lambda name, t: taken.append(name), lambda name: None)
    >>> found.finish(), found.consumers, taken
    (None, {'0': 'input'}, ['input'])
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .inputs import batch_tensors, is_consumer_candidate, storage_key

__all__ = ["InputDiscovery", "TENTATIVE"]

#: the name of the input found as the float input of the model's first module
TENTATIVE = "input"


class InputDiscovery:
    """Which modules consume the batch's input features (module name -> input name)."""

    def __init__(self) -> None:
        #: module name -> input name; None until the first logging step's forward pass finished
        self.consumers: dict[str, str] | None = None
        #: no module ran through the discovery hooks on a logging step (e.g. a compiled model)
        self.failed = False
        self.expected = False
        self.taken: set[str] = set()
        self._candidates: list[tuple[str, nn.Module]] = []
        self._batch_names: dict[tuple[str, int], str] = {}
        self._first_leaf: tuple[str, bool] | None = None
        self._found: dict[str, str] = {}
        self._tentative: str | None = None

    def attach(self, model: nn.Module) -> None:
        self._candidates = [(name, m) for name, m in model.named_modules() if name and is_consumer_candidate(m)]

    def expect(self, batch: object) -> None:
        """The batch of the forward pass to come: its float tensors are the candidate features."""
        self.expected = True
        self._batch_names = {storage_key(t): name for name, t in reversed(list(batch_tensors(batch)))}
        self.taken = set()

    def modules(self) -> list[tuple[str, nn.Module]]:
        """The modules to pre-hook: every candidate until the consumers are known, then those."""
        if self.consumers is None:
            return self._candidates
        return [(name, m) for name, m in self._candidates if name in self.consumers]

    def seen(
        self, module_name: str, tensor: Tensor, take: Callable[[str, Tensor], None], forget: Callable[[str], None]
    ) -> None:
        """A module receives ``tensor``: ``take(input_name, tensor)`` when it is an input feature."""
        if self.consumers is not None:
            input_name = self.consumers.get(module_name)
            if input_name is not None and input_name not in self.taken:
                self._take(input_name, tensor, take)
            return
        if self._first_leaf is None:
            self._first_leaf = (module_name, tensor.is_floating_point())
        if not tensor.is_floating_point():
            return
        matched = self._batch_names.get(storage_key(tensor))
        if matched is not None:
            self._found.setdefault(module_name, matched)
            if self._tentative is not None:  # the first module's input was not a feature of the batch
                forget(TENTATIVE)
                self.taken.discard(TENTATIVE)
                self._tentative = None
            if matched not in self.taken:
                self._take(matched, tensor, take)
        elif self._first_leaf[0] == module_name and not self._found and self._tentative is None:
            self._tentative = module_name
            self._take(TENTATIVE, tensor, take)

    def _take(self, name: str, tensor: Tensor, take: Callable[[str, Tensor], None]) -> None:
        self.taken.add(name)
        take(name, tensor)

    def finish(self) -> str | None:
        """End of the first logging step's discovery; returns the first module's name when it receives
        integer ids and no float batch tensor reaches a module (no input features to watch)."""
        if self.consumers is not None:
            return None
        if self._first_leaf is None:
            self.failed = self.expected
            return None
        integer_ids = None
        if self._found:
            self.consumers = dict(self._found)
        elif self._tentative is not None:
            self.consumers = {self._tentative: TENTATIVE}
        else:
            self.consumers = {}
            integer_ids = self._first_leaf[0]
        self._first_leaf, self._found, self._tentative = None, {}, None
        return integer_ids
