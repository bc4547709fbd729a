"""Adapters: NormWatch for each way of training, over one implementation.

- ``lightning``: the callback for the unified ``lightning`` package (``lightning.pytorch``);
  the ``pytorch_lightning`` one is ``lightning_normwatch.NormWatch`` (``callback.py``).
- ``loop``: ``LoopWatch`` for a hand-written PyTorch loop or Lightning Fabric.
- ``loggers``: scalars to any Lightning logger (keys an MLflow store keeps distinct) and the
  TensorBoard writers of every ``TensorBoardLogger``.

Each adapter drives the same ``NormWatch`` hooks and ``Monitor``; none re-implements the logic.
"""
