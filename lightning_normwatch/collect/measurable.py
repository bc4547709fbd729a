"""Which tensors NormWatch can measure, and why not the others.

A watched module may output anything: nested tuples, dicts and dataclasses, ``None``, integer or
boolean tensors (indices, masks), complex, quantized, sparse or meta tensors, empty tensors. Dense
real floating-point tensors with values on a real device are measured (an empty one as ``numel`` 0);
``unmeasurable`` gives the reason for every other tensor, which the collector reports once per tensor
with one info line (``Skipped``) and never as an exception into training.

Example:
    >>> import torch
    >>> unmeasurable(torch.ones(2, 3)) is None
    True
    >>> unmeasurable(torch.ones(2, 3).to_sparse()), unmeasurable(torch.ones(2, dtype=torch.int64))
    ('a sparse tensor (torch.sparse_coo)', 'an integer tensor (torch.int64): no distribution to watch')
    >>> unmeasurable(torch.empty(2, device="meta")), unmeasurable(torch.empty(0, 4))
    ('a meta tensor (no values)', None)
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

__all__ = ["Skipped", "unmeasurable"]

log = logging.getLogger("lightning_normwatch")


def unmeasurable(tensor: Tensor) -> str | None:
    """Why ``tensor`` cannot be measured (a phrase), or None when it can."""
    if tensor.is_quantized:
        return f"a quantized tensor ({tensor.dtype})"
    if tensor.layout != torch.strided:
        return f"a sparse tensor ({tensor.layout})" if "sparse" in str(tensor.layout) else f"a {tensor.layout} tensor"
    if tensor.is_meta:
        return "a meta tensor (no values)"
    if tensor.is_complex():
        return f"a complex tensor ({tensor.dtype})"
    if tensor.dtype == torch.bool:
        return "a boolean tensor (a mask): no distribution to watch"
    if not tensor.is_floating_point():
        return f"an integer tensor ({tensor.dtype}): no distribution to watch"
    return None  # an empty tensor is measured: numel 0 (a branch that received no rows this step)


class Skipped:
    """Tensors not measured: one info line per tensor name and run, naming it and the reason.

    Example:
        >>> skipped = Skipped()
        >>> skipped.note("head[1]", "an integer tensor (torch.int64): no distribution to watch")
        >>> skipped.note("head[1]", "an integer tensor (torch.int64): no distribution to watch")  # no second line
        >>> skipped.reasons
        {'head[1]': 'an integer tensor (torch.int64): no distribution to watch'}
    """

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}

    def note(self, name: str, reason: str) -> None:
        if name in self.reasons:
            return
        self.reasons[name] = reason
        log.info("NormWatch: `%s` is not measured: %s.", name, reason)
