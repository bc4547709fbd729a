"""``TensorInfo``: what is known about a watched tensor besides its figures (name, role, layer type, width, dtype).

Example:
    >>> TensorInfo("net.1", role="activation", type_name="ReLU", channels=64).dtype
    'float32'
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TensorInfo"]


@dataclass(frozen=True)
class TensorInfo:
    """What is known about a watched tensor besides its figures.

    Attributes:
        name: alert/tag name (qualified module name, ``input``, ``name[0]`` ...).
        role: ``input``, ``preact`` (linear/conv/norm output), ``activation``, ``bounded``
            (sigmoid, tanh ...) or ``other``.
        type_name: module class name (``"batch"`` for inputs).
        channels: measured channels (features).
        dtype: the tensor's dtype (``float32``, ``float16`` ...), for the limits of its range.
    """

    name: str
    role: str
    type_name: str
    channels: int
    dtype: str = "float32"
