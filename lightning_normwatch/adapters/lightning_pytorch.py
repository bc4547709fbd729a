"""``NormWatch`` for the unified ``lightning`` package (``lightning.pytorch``).

``lightning_normwatch.NormWatch`` subclasses ``pytorch_lightning.Callback``: ``lightning.pytorch.Trainer``
runs it, but ``lightning.pytorch.cli.LightningCLI`` refuses it (not a subclass of *its* ``Callback``).
This class is the same callback, every line of it inherited, declared a ``lightning.pytorch.Callback``
as well, so both Trainers and both CLIs accept it. Import it as ``lightning_normwatch.lightning.NormWatch``.

Example:
    >>> import lightning.pytorch as L
    >>> from lightning_normwatch.lightning import NormWatch
    >>> isinstance(NormWatch(), L.Callback)
    True
"""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from .callback import NormWatch as _NormWatch

__all__ = ["NormWatch"]


class NormWatch(_NormWatch, Callback):
    __doc__ = _NormWatch.__doc__
