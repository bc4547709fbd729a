"""Which modules to watch, what role each plays, and how their outputs are named.

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 2))
    >>> [name for name, _ in select_modules(model)]
    ['0', '1', '3']
    >>> [name for name, _ in select_modules(model, modules=["0", nn.ReLU])]
    ['0', '1']
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from torch import Tensor, nn

from .layout import RUNNING_NORMS
from .sampling import saturation_bounds_for

__all__ = ["select_modules", "named_tensors", "role_of", "validate_patterns", "user_name", "Pattern"]

Pattern = str | type

# Leaves that only copy or randomly mask their input (watching them repeats the layer before), and losses.
_SKIPPED_BY_DEFAULT = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.modules.loss._Loss,
)

# Modules with children that are watched as one leaf: MultiheadAttention uses its out_proj's
# parameters without calling it, so its own output is the attention output to watch.
_WATCHED_AS_A_WHOLE = (nn.MultiheadAttention,)

_PREACT = (
    nn.Linear,
    nn.Bilinear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    *RUNNING_NORMS,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
)

_ACTIVATIONS = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
    nn.Hardswish,
    nn.Threshold,
)


def validate_patterns(name: str, patterns: object) -> tuple[Pattern, ...]:
    """Normalize ``modules``/``exclude``: a pattern, a class, or an iterable of them."""
    if isinstance(patterns, (str, type)):
        patterns = (patterns,)
    if not isinstance(patterns, Iterable):
        raise ValueError(
            f"NormWatch: {name} must be a glob pattern, an nn.Module class or a list of them, got {patterns!r}"
        )
    out = tuple(patterns)
    for p in out:
        if isinstance(p, str):
            continue
        if isinstance(p, type) and issubclass(p, nn.Module):
            continue
        raise ValueError(f"NormWatch: {name} entries must be glob patterns or nn.Module classes, got {p!r}")
    return out


def _matches(name: str, module: nn.Module, patterns: Sequence[Pattern]) -> bool:
    for p in patterns:
        if isinstance(p, str) and fnmatch.fnmatchcase(name, p):
            return True
        if isinstance(p, type) and isinstance(module, p):
            return True
    return False


def select_modules(
    model: nn.Module, modules: Sequence[Pattern] | None = None, exclude: Sequence[Pattern] = ()
) -> list[tuple[str, nn.Module]]:
    """Watched ``(qualified name, module)`` pairs in ``named_modules()`` order.

    ``modules=None`` selects every leaf module except identity and dropout layers (a
    ``MultiheadAttention`` counts as a leaf: its output is the attention output); otherwise the
    modules whose qualified name matches a glob pattern or which are instances of a listed class.
    The model itself (name ``""``) is never selected.
    """
    chosen = []
    seen: set[str] = set()
    units = [user_name(n) for n, m in model.named_modules() if n and isinstance(m, _WATCHED_AS_A_WHOLE)]
    for qualified, module in model.named_modules():
        name = user_name(qualified)
        if not name or name in seen:  # the model itself; a compiled module's wrapper and the module it wraps
            continue
        if modules is None:
            if any(name.startswith(u + ".") for u in units):
                continue  # a part of a module watched as a whole
            whole = isinstance(module, _WATCHED_AS_A_WHOLE)
            if (any(True for _ in module.children()) and not whole) or isinstance(module, _SKIPPED_BY_DEFAULT):
                continue
        elif not _matches(name, module, modules):
            continue
        if exclude and _matches(name, module, exclude):
            continue
        chosen.append((name, module))
        seen.add(name)
    return chosen


#: class names of activations in other libraries (``transformers``' ``NewGELUActivation``, ``SiLUActivation`` ...)
_ACTIVATION_NAME = re.compile(r"(activation|gelu|relu|silu|swish|mish|softplus|quickgelu)$", re.IGNORECASE)
_NORM_NAME = re.compile(r"(norm|layernorm|rmsnorm)$", re.IGNORECASE)
#: attribute names of wrappers that are not part of the user's model: ``torch.compile``'s ``OptimizedModule``
#: and Fabric's ``_FabricModule``
_WRAPPERS = ("_orig_mod", "_forward_module")


def user_name(qualified: str) -> str:
    """A module's name as the user wrote the model: without the wrappers' path components.

    Example:
        >>> user_name("_forward_module.encoder._orig_mod.0")
        'encoder.0'
    """
    if not any(w in qualified for w in _WRAPPERS):
        return qualified
    return ".".join(part for part in qualified.split(".") if part not in _WRAPPERS)


def role_of(module: nn.Module | None) -> str:
    """``preact``, ``bounded``, ``activation`` or ``other`` (see ``rules.TensorInfo``).

    Modules from other libraries are recognised by shape and name: a module holding a 2-d weight
    (``transformers``' ``Conv1D``) or named like a norm (``LlamaRMSNorm``) is a pre-activation; a
    parameter-free module named like an activation (``NewGELUActivation``) is an activation.

    Example:
        >>> class NewGELUActivation(nn.Module): pass
        >>> class Conv1D(nn.Module):
        ...     def __init__(self): super().__init__(); self.weight = nn.Parameter(torch.zeros(4, 8))
        >>> import torch
        >>> role_of(NewGELUActivation()), role_of(Conv1D()), role_of(nn.Tanh())
        ('activation', 'preact', 'bounded')
    """
    if module is None:
        return "other"
    if saturation_bounds_for(module) is not None:
        return "bounded"
    if isinstance(module, _ACTIVATIONS):
        return "activation"
    if isinstance(module, _PREACT):
        return "preact"
    own = list(module.parameters(recurse=False))
    name = type(module).__name__
    if not own and _ACTIVATION_NAME.search(name):
        return "activation"
    if any(p.ndim == 2 for p in own) or (own and _NORM_NAME.search(name)):
        return "preact"
    return "other"


def named_tensors(output: Any, prefix: str, depth: int = 3, all_tensors: bool = False) -> Iterator[tuple[str, Tensor]]:
    """Floating-point tensors in a module output, named ``prefix``, ``prefix[i]`` or ``prefix.key``.

    Tuples, lists, dicts and dataclasses are walked (up to ``depth`` levels); ``None``, integer
    tensors and other objects are skipped (with ``all_tensors``, every tensor is yielded: the caller
    says why it does not measure one, ``collect/measurable.py``).
    """
    if isinstance(output, Tensor):
        if all_tensors or output.is_floating_point():
            yield prefix, output
        return
    if depth == 0:
        return
    if isinstance(output, dict):
        items: Iterable[tuple[str, Any]] = ((f"{prefix}.{k}", v) for k, v in output.items())
    elif isinstance(output, (tuple, list)):
        items = ((f"{prefix}[{i}]", v) for i, v in enumerate(output))
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        items = ((f"{prefix}.{f.name}", getattr(output, f.name)) for f in dataclasses.fields(output))
    else:
        return
    for name, value in items:
        yield from named_tensors(value, name, depth - 1, all_tensors)
