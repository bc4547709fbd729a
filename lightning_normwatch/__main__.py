"""``python -m lightning_normwatch report LOGDIR``: the ``normwatch`` command."""

import sys

from .view.cli import main

if __name__ == "__main__":
    sys.exit(main())
