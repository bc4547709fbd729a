"""``from lightning_normwatch.lightning import NormWatch``: the callback for ``lightning.pytorch``.

Use it with ``import lightning as L`` / ``lightning.pytorch.cli.LightningCLI``
(``class_path: lightning_normwatch.lightning.NormWatch``); with ``pytorch_lightning`` use
``lightning_normwatch.NormWatch``. Both are one implementation (``adapters/callback.py``).
"""

from __future__ import annotations

from .adapters.lightning_pytorch import NormWatch

__all__ = ["NormWatch"]
