"""A clear error when a ``Trainer`` hook of ``NormWatch`` is called without a trainer (e.g. by Fabric).

``Fabric(callbacks=[NormWatch()])`` then ``fabric.call("on_train_batch_start", batch, i)`` would fail
with "missing 4 required positional arguments"; the wrapped hooks say what to use instead.

Example:
    >>> class Hooks:
    ...     def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
    ...         return "ran"
    >>> _ = trainer_hooks_only(Hooks)
    >>> Hooks().on_train_batch_start("a batch", 0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: NormWatch.on_train_batch_start was called without a Lightning Trainer (got str). ...
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["trainer_hooks_only"]

T = TypeVar("T", bound=type)


#: types already found to be trainers: the check runs at every hook call, and ``hasattr`` on a Trainer's
#: properties (``global_step`` walks its loops) costs microseconds each time
_TRAINER_TYPES: set[type] = set()


def _is_trainer(obj: Any) -> bool:
    if type(obj) in _TRAINER_TYPES:
        return True
    if hasattr(obj, "global_step") and hasattr(obj, "loggers") and hasattr(obj, "strategy"):
        _TRAINER_TYPES.add(type(obj))
        return True
    return False


def _guarded(name: str, hook: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(hook)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        trainer = args[0] if args else kwargs.get("trainer")
        if not _is_trainer(trainer):
            raise TypeError(
                f"NormWatch.{name} was called without a Lightning Trainer (got {type(trainer).__name__}). "
                "NormWatch is a Trainer callback: with Fabric or a hand-written loop use "
                "`lightning_normwatch.LoopWatch(model, sink=...)` and `with watch.step(batch):` around each "
                'forward pass (docs/usage.md, "Plain PyTorch and Fabric").'
            )
        return hook(self, *args, **kwargs)

    return wrapper


def trainer_hooks_only(cls: T) -> T:
    """Wrap every public method of ``cls`` whose first parameter is ``trainer`` with the check (in place)."""
    for name, value in list(vars(cls).items()):
        if name.startswith("_") or not inspect.isfunction(value):
            continue
        params = list(inspect.signature(value).parameters)
        if len(params) >= 2 and params[1] == "trainer":
            setattr(cls, name, _guarded(name, value))
    return cls
