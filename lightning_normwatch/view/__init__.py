"""Readers of what NormWatch logged: the TensorBoard plugin (``view.tensorboard_plugin``)."""
