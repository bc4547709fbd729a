"""Gradient through time at the input of recurrent layers (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``), on logging steps.

A recurrent layer's weight gradient sums over the time steps, and the late ones (near the loss) carry
it: an LSTM over 200 steps whose early steps get no gradient at all has weight gradients only ~20x
below its head's. What does show it is the gradient that reaches the layer's **input**, per time step:
the gradient at step *t* has flowed back through the recurrence from every later loss term, so
``RMS(dL/dx_t)`` along *t* is to time what the gradient RMS of the layers is to depth (the layers
before the recurrent one learn only from what arrives there). ``TimeProbe`` measures it on the device:
on a logging step (``arm``), the forward hook of each recurrent layer registers a hook on its input
tensor (once, on the first call), and that hook takes the per-time-step RMS of the gradient during
``backward`` (one ``vector_norm``); ``profiles`` hands the vectors to the caller, which brings them to
the host with its own transfer. Other steps cost one attribute check in the forward hook.

Not measured: packed sequences (``PackedSequence`` inputs), inputs that do not require a gradient
(nothing before the layer learns from them), recurrent layers inside ``torch.compile``-d code (the hook is
a no-op there); under DDP the profile is of the rank's own batch.

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.GRU(4, 4, batch_first=True))
    >>> probe = TimeProbe()
    >>> probe.attach(model, ["0", "1"])
    ['1']
    >>> probe.arm()
    >>> out, _ = model(torch.randn(2, 5, 3))
    >>> out[:, -1].sum().backward()
    >>> profile = probe.profiles()["1"]
    >>> profile.shape, bool(profile[-1] > profile[0])
    (torch.Size([5]), True)
    >>> probe.close()
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .selection import user_name

__all__ = ["TimeProbe"]


def _time_rms(grad: Tensor, batch_first: bool) -> Tensor:
    """Per-time-step RMS of a gradient ``[B, T, D]`` (``batch_first``), ``[T, B, D]`` or unbatched ``[T, D]``, float64.

    Example:
        >>> _time_rms(torch.ones(2, 3, 4) * torch.arange(1.0, 4.0)[None, :, None], True).tolist()
        [1.0, 2.0, 3.0]
    """
    g = grad.detach().double()
    if g.ndim == 2:
        return g.pow(2).mean(1).sqrt()
    dims = (0, 2) if batch_first else (1, 2)
    return g.pow(2).mean(dims).sqrt()


class TimeProbe:
    """Per-time-step gradient RMS at the input of the watched recurrent layers (see module docstring)."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []
        self._armed = False
        self._hooked: set[str] = set()  # layers whose input got its tensor hook in this logging step
        self._profiles: dict[str, Tensor] = {}

    def attach(self, model: nn.Module, watched: Container[str]) -> list[str]:
        """Hook the recurrent layers among the ``watched`` modules; return their names."""
        self.close()
        names = []
        for qualified, module in model.named_modules():
            name = user_name(qualified)
            if isinstance(module, nn.RNNBase) and name in watched:
                self._handles.append(module.register_forward_hook(self._hook(name, module.batch_first)))
                names.append(name)
        return names

    def _hook(self, name: str, batch_first: bool) -> Any:
        def forward(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if torch.compiler.is_compiling() or not self._armed or name in self._hooked or not args:
                return  # compiled code sees a no-op (no guard on the probe's state, no hook in the graph)
            x = args[0]
            if not isinstance(x, Tensor) or not x.requires_grad or x.ndim not in (2, 3):
                return  # packed sequences, or nothing before the layer learns through its input
            self._hooked.add(name)
            x.register_hook(lambda g: self._profiles.__setitem__(name, _time_rms(g, batch_first and g.ndim == 3)))

        return forward

    def arm(self) -> None:
        """Start a logging step: the next forward of each recurrent layer is measured."""
        self._armed, self._hooked, self._profiles = True, set(), {}

    def profiles(self) -> dict[str, Tensor]:
        """Per layer, the per-time-step gradient RMS at its input (on the device); ends the logging step."""
        out, self._profiles, self._armed = self._profiles, {}, False
        return out

    def close(self) -> None:
        """Remove the forward hooks (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles, self._armed = [], False
