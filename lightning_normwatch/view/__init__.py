"""Reading back what a run logged: ``normwatch report`` (the text and JSON report of event files, and its
command line) and the ``normwatch`` TensorBoard tab (``view.tensorboard_plugin``). Depends on ``output.tags``
only, so it starts without torch or Lightning."""
