"""Re-running a forward pass without disturbing training: RNG states and buffers restored.

Used to locate where non-finite values start: when a step's loss is NaN/Inf, the batch's forward
is replayed with hooks armed, before the optimizer applies the update, with the random state the
original forward had (same dropout masks) and the model's buffers (BatchNorm running statistics)
put back afterwards, bit for bit.

Example:
    >>> import torch
    >>> from torch import nn
    >>> bn = nn.BatchNorm1d(3)
    >>> state = RngState.capture()
    >>> with preserved(bn, replay_rng=state):
    ...     _ = bn(torch.randn(8, 3))
    >>> bool((bn.running_mean == 0).all())
    True
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["RngState", "preserved", "is_compiled"]


@dataclass
class RngState:
    """The global random states a forward pass may draw from (torch CPU/CUDA, numpy, random)."""

    torch_cpu: torch.Tensor
    torch_cuda: list[torch.Tensor] | None
    numpy: Any = None
    python: Any = None

    @classmethod
    def capture(cls, torch_only: bool = False) -> RngState:
        """The current states; ``torch_only`` skips numpy's and Python's (85 us of numpy's alone).

        Taken every step for a possible replay, torch's state is what dropout and friends draw from;
        numpy's and Python's are still saved and put back around the replay itself.
        """
        # is_initialized first: a flag, where is_available asks the driver (14 us, at every step)
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() and torch.cuda.is_available() else None
        if torch_only:
            return cls(torch.get_rng_state(), cuda)
        return cls(torch.get_rng_state(), cuda, np.random.get_state(), random.getstate())

    def restore(self) -> None:
        torch.set_rng_state(self.torch_cpu)
        if self.torch_cuda is not None:
            torch.cuda.set_rng_state_all(self.torch_cuda)
        if self.numpy is not None:
            np.random.set_state(self.numpy)
        if self.python is not None:
            random.setstate(self.python)


@contextmanager
def preserved(model: nn.Module, replay_rng: RngState | None = None) -> Iterator[None]:
    """Run the body with ``replay_rng`` (if given) and no gradient; restore RNG and buffers after.

    The body runs on copies of the buffers: the originals are never written to, because the pending
    backward pass may have saved them (BatchNorm saves its running statistics) and any in-place write,
    even one restoring the same values, bumps their version and makes that backward fail.
    """
    current = RngState.capture()
    owners = [(m, name, b) for m in model.modules() for name, b in m._buffers.items() if b is not None]
    try:
        for module, name, buf in owners:
            module._buffers[name] = buf.detach().clone()
        if replay_rng is not None:
            replay_rng.restore()
        with torch.no_grad():
            yield
    finally:
        for module, name, buf in owners:
            module._buffers[name] = buf
        current.restore()


def is_compiled(model: nn.Module) -> bool:
    """Whether ``torch.compile`` wraps the model or one of its submodules (its layers are then measured by
    an eager replay of the batch, see ``session/session.py``).

    ``trainer.fit(torch.compile(model))`` unwraps the module and compiles its ``forward`` and
    ``training_step``, recorded in ``_compiler_ctx`` (Lightning has no public attribute for it);
    ``self.net = torch.compile(net)`` leaves an ``OptimizedModule`` in the tree.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2))
        >>> is_compiled(net), is_compiled(torch.nn.Sequential(torch.compile(net)))
        (False, True)
    """
    if getattr(model, "_compiler_ctx", None):
        return True
    try:
        from torch._dynamo.eval_frame import OptimizedModule  # torch exports no public name for the class
    except ImportError:  # pragma: no cover - torch without dynamo
        return False
    return any(isinstance(m, OptimizedModule) for m in model.modules())
