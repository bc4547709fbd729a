"""Adapters: NormWatch for each way of training, each a thin layer over one ``Session``.

- ``callback``: ``NormWatch``, the ``pytorch_lightning`` callback (``lightning_normwatch.NormWatch``);
- ``lightning_pytorch``: the same callback for the unified ``lightning`` package
  (``lightning_normwatch.lightning.NormWatch``);
- ``loop``: ``LoopWatch`` for a hand-written PyTorch loop or Lightning Fabric (needs no Lightning);
- ``guard``: a clear error when a callback hook is called without a Trainer (Fabric).
"""
