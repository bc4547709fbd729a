"""The ``normwatch`` TensorBoard plugin (a tab): installed with the package, found by TensorBoard at start.

See ``plugin.py`` for its routes and ``docs/tensorboard_plugin.md`` for what the tab shows.
"""
